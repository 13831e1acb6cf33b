"""Runs whose process died: mark them failed, so they do not stay "started" forever.

A refresh executed in-process (CLI, admin endpoint, NATS command) records its run in the instance. If the
process is killed (SIGKILL, OOM, a power cut of the container), nothing reports the end of the run: the UI
would show it as running forever, and the instance's queue limit of one run per namespace partition would
keep every queued run of that namespace waiting behind it. Each such run is tagged with the host, pid and
process start time that execute it; runs of this host whose process is gone are marked failed:

- before an in-process refresh starts (``execute_refresh``);
- again once a run holds the namespace's refresh lock (``PipelineResource``): a refresh that waited for the
  lock repairs the holder that was killed meanwhile (or a waiter killed before it);
- by the ``dead_run_repair`` sensor under ``dagster-daemon``, every 30 s, so a run the daemon queued never
  waits behind a dead one even when no further CLI refresh comes.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import dagster as dg

HOST_TAG = "kryten/host"
PID_TAG = "kryten/pid"
PID_START_TAG = "kryten/pid_start"
PARTITION_TAG = "dagster/partition"
_UNFINISHED = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.NOT_STARTED]


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), telling a recycled pid apart; None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return ""  # no /proc: only the pid can be checked
    return stat.rpartition(")")[2].split()[19]


def process_tags() -> dict[str, str]:
    """Tags naming the process that executes a run here."""
    pid = os.getpid()
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(pid), PID_START_TAG: _start_time(pid) or ""}


def _alive(pid: int, start: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    now = _start_time(pid)
    return now is not None and (not start or not now or now == start)


def fail_runs_of_dead_processes(instance: dg.DagsterInstance, namespace: str | None = None) -> list[str]:
    """Mark unfinished runs of ``namespace`` (default: every namespace) executed by a dead process of this
    host failed; their ids."""
    host = socket.gethostname()
    tags = {HOST_TAG: host, **({PARTITION_TAG: namespace} if namespace is not None else {})}
    runs = instance.get_runs(filters=dg.RunsFilter(statuses=_UNFINISHED, tags=tags))
    failed: list[str] = []
    for run in runs:
        pid_text = run.tags.get(PID_TAG, "")
        if not pid_text.isdigit() or _alive(int(pid_text), run.tags.get(PID_START_TAG, "")):
            continue
        instance.report_run_failed(
            run, f"the process that executed this run (pid {pid_text} on {host}) is gone (killed or crashed); "
                 "the next refresh of the namespace repaired what it left half done"
        )
        failed.append(run.run_id)
    return failed
