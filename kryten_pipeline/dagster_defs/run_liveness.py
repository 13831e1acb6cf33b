"""Runs whose process died: mark them failed, so they do not stay "started" forever.

A refresh executed in-process (CLI, admin endpoint, NATS command) records its run in the instance. If the
process is killed (SIGKILL, OOM, a power cut of the container), nothing reports the end of the run: the UI
would show it as running forever, and the instance's queue limit of one run per namespace partition would
keep every queued run of that namespace waiting behind it.

So the process executing a refresh leaves an owner record, ``{KRYTEN_DATA_DIR}/.run-owners/{run_id}.json``
(host, pid and the kernel's start time of that pid), for as long as it executes the run — kept beside the data
rather than as run tags, so the runs list shows no per-process noise. Unfinished runs of this host whose owner
process is gone are marked failed:

- before an in-process refresh starts (``execute_refresh``);
- again once a run holds the namespace's refresh lock (``PipelineResource``): a refresh that waited for the
  lock repairs the holder that was killed meanwhile (or a waiter killed before it);
- by the ``dead_run_repair`` sensor under ``dagster-daemon``, every 30 s, so a run the daemon queued never
  waits behind a dead one even when no further CLI refresh comes.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import dagster as dg

from kryten_pipeline.processes import start_time

OWNERS_DIR = ".run-owners"
_UNFINISHED = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.NOT_STARTED]


@dataclass(frozen=True, slots=True)
class RunOwner:
    run_id: str
    namespace: str
    host: str
    pid: int
    pid_start: str

    def alive(self) -> bool:
        now = start_time(self.pid)
        return now is not None and (not self.pid_start or not now or now == self.pid_start)


def _owner_path(data_dir: Path, run_id: str) -> Path:
    return data_dir / OWNERS_DIR / f"{run_id}.json"


def this_process(run_id: str, namespace: str) -> RunOwner:
    pid = os.getpid()
    return RunOwner(run_id, namespace, socket.gethostname(), pid, start_time(pid) or "")


@contextlib.contextmanager
def run_owner_record(data_dir: Path, run_id: str, namespace: str) -> Iterator[RunOwner]:
    """Record this process as the executor of ``run_id`` while the block runs."""
    owner = this_process(run_id, namespace)
    path = _owner_path(data_dir, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{owner.pid}.tmp")
    temp.write_text(json.dumps(asdict(owner)), encoding="utf-8")
    temp.replace(path)
    try:
        yield owner
    finally:
        with contextlib.suppress(FileNotFoundError):
            if read_owner(data_dir, run_id) == owner:  # a nested record of the same process removes it once
                path.unlink()


def read_owner(data_dir: Path, run_id: str) -> RunOwner | None:
    try:
        return RunOwner(**json.loads(_owner_path(data_dir, run_id).read_text(encoding="utf-8")))
    except (FileNotFoundError, ValueError, TypeError):
        return None


def fail_runs_of_dead_processes(instance: dg.DagsterInstance, data_dir: Path,
                                namespace: str | None = None) -> list[str]:
    """Mark unfinished runs of ``namespace`` (default: every namespace) executed by a dead process of this
    host failed; their ids.

    Records of runs this instance knows are removed once the run is finished or its process gone. A record of a
    run it does not know may belong to another instance sharing the data dir (the CLI's and ``dagster dev``'s):
    it is left to that one, and only dropped once its process is gone and it is a week old.
    """
    folder = data_dir / OWNERS_DIR
    if not folder.is_dir():
        return []
    host = socket.gethostname()
    owners = [owner for path in folder.glob("*.json") if (owner := read_owner(data_dir, path.stem)) is not None]
    owners = [o for o in owners if o.host == host and (namespace is None or o.namespace == namespace)]
    if not owners:
        return []
    known = {run.run_id: run for run in instance.get_runs(filters=dg.RunsFilter(run_ids=[o.run_id for o in owners]))}
    failed: list[str] = []
    for owner in owners:
        run = known.get(owner.run_id)
        path = _owner_path(data_dir, owner.run_id)
        if owner.alive():
            if run is not None and run.status not in _UNFINISHED:
                path.unlink(missing_ok=True)
            continue
        if run is None:
            with contextlib.suppress(FileNotFoundError):
                if time.time() - path.stat().st_mtime > UNKNOWN_RECORD_TTL_S:
                    path.unlink()
            continue
        if run.status in _UNFINISHED:
            instance.report_run_failed(
                run, f"the process that executed this run (pid {owner.pid} on {host}) is gone (killed or crashed); "
                     "the next refresh of the namespace repaired what it left half done"
            )
            failed.append(run.run_id)
        path.unlink(missing_ok=True)
    return failed


UNKNOWN_RECORD_TTL_S = 7 * 24 * 3600
