"""Concurrent refreshes of one namespace: they serialize on the namespace's refresh lock, ``current`` never goes
backwards, and no kept file is overwritten — through Dagster (two runs in threads against one instance) and
through two CLI processes started together; plus racing publishers below the lock."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from kryten_pipeline.dagster_defs.partitions import register_namespaces
from kryten_pipeline.errors import StaleSnapshotError
from kryten_pipeline.kv.embedded_nats import RunningNatsServer
from kryten_pipeline.kv.store import current_key, snapshot_store
from kryten_pipeline.settings import Settings
from kryten_pipeline.snapshot.files import file_sha256, kept_snapshot_path, list_kept_snapshots, read_snapshot_meta
from kryten_pipeline_tests.fault_helpers import (
    cli_environment,
    kept_files_violations,
    settings_for,
    start_cli,
    status_of,
    unfinished_runs,
)
from kryten_pipeline_tests.pipeline_helpers import QUIET, PipelineEnv


def current_history(settings: Settings, namespace: str = "default") -> list[str]:
    """Every snapshot id ``current`` has named, oldest first (the bucket keeps 10 revisions)."""

    async def read() -> list[str]:
        async with snapshot_store(settings) as store:
            kv = await store.ensure_bucket()
            entries = await kv.history(current_key(namespace))
        return [json.loads(e.value)["snapshot_id"] for e in entries if e.value]

    return asyncio.run(read())


def kept_files_match_their_records(settings: Settings, namespace: str = "default") -> list[str]:
    async def records() -> list[dict[str, Any]]:
        async with snapshot_store(settings) as store:
            return await store.list_snapshots(namespace)

    problems = []
    for record in asyncio.run(records()):
        path = kept_snapshot_path(settings.data_dir, namespace, record["snapshot_id"])
        if path.exists() and file_sha256(path) != record["sqlite_sha256"]:
            problems.append(f"kept file {path.name} does not hold the bytes its KV record names")
    return problems


def run_window(instance: dg.DagsterInstance, run_id: str) -> tuple[float, float]:
    """(first step start, last step end) of a run, from its event log."""
    times = [r.timestamp for r in instance.all_logs(run_id)
             if r.dagster_event is not None and r.dagster_event.event_type_value in ("STEP_START", "STEP_SUCCESS",
                                                                                     "STEP_FAILURE")]
    return min(times), max(times)


@pytest.mark.slow
def test_two_dagster_runs_of_one_namespace_serialize(tmp_path: Path, nats_server: RunningNatsServer) -> None:
    env = PipelineEnv(tmp_path / "data", nats_server.url)
    # An instance on disk, as deployed (the ephemeral one is an in-memory SQLite database, not meant for this).
    (tmp_path / "dagster_home").mkdir()
    env.instance = dg.DagsterInstance.local_temp(str(tmp_path / "dagster_home"))
    register_namespaces(env.instance, ["default"])
    assert env.refresh(fake_items="200").success
    first_id = env.current().value["snapshot_id"]
    env.source_fields["fake_items"] = "220"
    job = env.definitions().resolve_job_def("refresh_catalog")
    results: list[dg.ExecuteInProcessResult] = []
    barrier = threading.Barrier(2)

    errors: list[BaseException] = []

    def launch() -> None:
        barrier.wait()
        try:
            results.append(job.execute_in_process(instance=env.instance, partition_key="default",
                                                  raise_on_error=False, run_config=QUIET))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=launch) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    assert errors == [] and len(results) == 2 and all(r.success for r in results)
    # One ran after the other: the refresh lock is held from the first step to the last.
    (_, a_end), (b_start, _) = sorted(run_window(env.instance, r.run_id) for r in results)
    assert a_end <= b_start
    ids = [r.asset_materializations_for_node("sqlite_snapshot")[0].metadata["snapshot_id"].value for r in results]
    assert len(set(ids)) == 2 and min(ids) > first_id
    history = current_history(env.settings)
    assert history == sorted(history) and history[-1] == max(ids)  # never backwards
    assert kept_files_violations(env.data_dir) == [] and kept_files_match_their_records(env.settings) == []
    assert status_of(env.settings)["consistent"]


class CliRun:
    """A CLI process whose stderr is collected line by line as it runs."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.proc = start_cli(workdir, "refresh", "--json", env=env)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert self.proc.poll() is None or self.reader.is_alive(), "".join(self.lines)[-2000:]
            assert time.monotonic() < deadline, f"never printed {text!r}: " + "".join(self.lines)[-2000:]
            time.sleep(0.05)

    def finish(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        out = self.proc.stdout.read()
        self.proc.wait(timeout=240)
        self.reader.join(timeout=10)
        assert self.proc.returncode == 0, "".join(self.lines)[-2000:]
        return json.loads(out)


@pytest.mark.slow
def test_two_cli_refreshes_at_once_serialize(tmp_path: Path, nats_server: RunningNatsServer) -> None:
    bucket = "conc_" + uuid.uuid4().hex[:10]
    env = cli_environment(tmp_path / "data", NATS_URL=nats_server.url, KRYTEN_KV_BUCKET=bucket,
                          KRYTEN_SOURCE="fake")
    settings = settings_for(tmp_path / "data", nats_server.url, bucket)
    pause_dir = tmp_path / "pause"
    pause_dir.mkdir()
    # Both start on a new data dir (the first publish of a namespace is the most racy one). The first is held
    # inside its run (with the refresh lock) until the second has started and is waiting for it: the overlap
    # does not depend on which process the scheduler happens to favour.
    first = CliRun(tmp_path, {**env, "KRYTEN_FAKE_ITEMS": "300", "KRYTEN_FAULT_POINT": "step.validated_items.start",
                              "KRYTEN_FAULT_ACTION": "pause", "KRYTEN_FAULT_PAUSE_DIR": str(pause_dir)})
    deadline = time.monotonic() + 120
    while not (pause_dir / "step.validated_items.start.reached").exists():
        assert first.proc.poll() is None and time.monotonic() < deadline, "".join(first.lines)[-2000:]
        time.sleep(0.05)
    second = CliRun(tmp_path, {**env, "KRYTEN_FAKE_ITEMS": "310"})
    second.wait_for("waiting for another refresh of namespace 'default' to finish")
    (pause_dir / "step.validated_items.start.resume").touch()
    a, b = first.finish(), second.finish()
    assert a["snapshot_id"] < b["snapshot_id"]  # the second built after the first had published
    history = current_history(settings)
    assert history == [a["snapshot_id"], b["snapshot_id"]]  # current moved once per refresh, forwards
    assert list_kept_snapshots(settings.data_dir, "default") == history
    assert kept_files_violations(settings.data_dir) == [] and kept_files_match_their_records(settings) == []
    status = status_of(settings)
    assert status["consistent"] and status["sqlite"]["snapshot_id"] == b["snapshot_id"]
    later = read_snapshot_meta(kept_snapshot_path(settings.data_dir, "default", b["snapshot_id"]))
    assert json.loads(later["diff_json"])["from_snapshot_id"] == a["snapshot_id"]


def test_racing_publishers_never_move_current_backwards(nats_server: RunningNatsServer, tmp_path: Path) -> None:
    """Below the lock: many publishers of increasing ids at once; whatever the interleaving, current ends at the
    newest id, every move of current was forwards, and the losers are told (StaleSnapshotError), not ignored."""
    settings = settings_for(tmp_path, nats_server.url, "race_" + uuid.uuid4().hex[:10])
    ids = [f"20260101T0000{n:02d}Z-{n:06x}" for n in range(12)]

    async def race() -> list[BaseException | Any]:
        async with snapshot_store(settings) as store:
            async def publish(snapshot_id: str) -> Any:
                return await store.publish_snapshot("default", {"snapshot_id": snapshot_id, "item_count": 1,
                                                                "source": "race"})

            # Newest first, so that most older ones find a newer current.
            return await asyncio.gather(*(publish(i) for i in reversed(ids)), return_exceptions=True)

    outcomes = asyncio.run(race())
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert all(isinstance(e, StaleSnapshotError) for e in errors), errors
    history = current_history(settings)
    assert history[-1] == ids[-1] and history == sorted(history)



@pytest.mark.slow
def test_a_refresh_that_waited_repairs_the_killed_holders_run(tmp_path: Path, nats_server: RunningNatsServer) -> None:
    """Refresh A holds the lock, B waits for it, A is SIGKILLed after its swap: B marks A's run failed as soon as
    it holds the lock (not at some later refresh), rolls A's file forward, and leaves no run "started"."""
    bucket = "dead_" + uuid.uuid4().hex[:10]
    env = cli_environment(tmp_path / "data", NATS_URL=nats_server.url, KRYTEN_KV_BUCKET=bucket,
                          KRYTEN_SOURCE="fake")
    pause_dir = tmp_path / "pause"
    pause_dir.mkdir()
    holder = CliRun(tmp_path, {**env, "KRYTEN_FAKE_ITEMS": "300", "KRYTEN_FAULT_POINT": "step.sqlite_snapshot.swapped",
                               "KRYTEN_FAULT_ACTION": "pause", "KRYTEN_FAULT_PAUSE_DIR": str(pause_dir)})
    deadline = time.monotonic() + 120
    while not (pause_dir / "step.sqlite_snapshot.swapped.reached").exists():
        assert holder.proc.poll() is None and time.monotonic() < deadline, "".join(holder.lines)[-2000:]
        time.sleep(0.05)
    waiter = CliRun(tmp_path, {**env, "KRYTEN_FAKE_ITEMS": "310"})
    waiter.wait_for("waiting for another refresh of namespace 'default' to finish")
    holder.proc.kill()
    # Not reaped until the waiter is done: the killed holder stays a zombie meanwhile (as a refresh whose parent
    # has not waited for it yet), which must count as gone.
    summary = waiter.finish()
    holder.proc.wait(timeout=30)
    assert unfinished_runs(tmp_path / "data") == []
    recovery = summary["steps"]["raw_catalog"]["metadata"]["recovery"]
    assert "moved current forward" in recovery, recovery  # the killed holder's swapped file, rolled forward
    assert status_of(settings_for(tmp_path / "data", nats_server.url, bucket))["consistent"]


def test_the_dead_run_sensor_fails_runs_of_gone_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under dagster-daemon: a tick of ``dead_run_repair``, evaluated by Dagster with the repository as the
    daemon does, marks a run whose process is gone failed, and leaves a live process's run alone. The owner of a
    run is recorded beside the data, not as run tags."""
    import dataclasses
    import subprocess
    import sys

    from kryten_pipeline.dagster_defs.run_liveness import read_owner, run_owner_record
    from kryten_pipeline.definitions import build_definitions

    data_dir = tmp_path / "data"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KRYTEN_DATA_DIR", str(data_dir))
    defs = build_definitions()
    # Killed but not reaped yet (as a forked refresh is until its parent waits): a zombie executes nothing.
    gone = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    gone.kill()
    stat = Path(f"/proc/{gone.pid}/stat")
    deadline = time.monotonic() + 10
    while stat.read_text().rpartition(")")[2].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    instance = dg.DagsterInstance.ephemeral()
    job = defs.resolve_job_def("refresh_catalog")
    dead = instance.create_run_for_job(job, status=dg.DagsterRunStatus.STARTED, tags={"dagster/partition": "default"})
    alive = instance.create_run_for_job(job, status=dg.DagsterRunStatus.STARTED, tags={"dagster/partition": "default"})
    with run_owner_record(data_dir, alive.run_id, "default"), run_owner_record(data_dir, dead.run_id, "default") as me:
        # The dead run's record names a process that has exited.
        record = data_dir / ".run-owners" / f"{dead.run_id}.json"
        record.write_text(json.dumps(dataclasses.asdict(dataclasses.replace(me, pid=gone.pid, pid_start=""))))
        assert not any(key.startswith(("kryten/host", "kryten/pid")) for key in alive.tags)
        sensor = defs.get_sensor_def("dead_run_repair")
        assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
        # As the daemon does: the repository's resources (the pipeline's KRYTEN_DATA_DIR) go with the context.
        with dg.build_sensor_context(instance=instance, repository_def=defs.get_repository_def(),
                                     resources=defs.resources) as context:
            result = sensor.evaluate_tick(context)
        assert dead.run_id in (result.skip_message or "")
        assert instance.get_run_by_id(dead.run_id).status == dg.DagsterRunStatus.FAILURE
        assert instance.get_run_by_id(alive.run_id).status == dg.DagsterRunStatus.STARTED
        assert not record.exists() and read_owner(data_dir, alive.run_id) is not None
    assert read_owner(data_dir, alive.run_id) is None  # removed when its block ends
    gone.wait()
