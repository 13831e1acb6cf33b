"""Several namespaces at once (`refresh --all-namespaces`) and one namespace twice at once (never interleaved)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster._core.instance.ref import InstanceRef
from dagster._daemon.types import DaemonHeartbeat

from kryten_pipeline.dagster_defs.backfills import BATCH_TAG, BackfillSubmitError, submit_refresh_backfill
from kryten_pipeline.dagster_defs.instance import resolve_dagster_home
from kryten_pipeline.dagster_defs.partitions import register_namespaces
from kryten_pipeline.kv.embedded_nats import RunningNatsServer
from kryten_pipeline.settings import Settings
from kryten_pipeline.snapshot.files import kept_snapshot_path, namespace_lock, verify_snapshot_db
from kryten_pipeline.snapshot.status import read_snapshot_status
from kryten_pipeline.triggers.refresh import RefreshLauncher
from kryten_pipeline_tests.pipeline_helpers import PipelineEnv
from kryten_pipeline_tests.test_cli import cli

BUCKET = "kv_backfill_test"


def home_instance(workdir: Path) -> dg.DagsterInstance:
    """The instance the CLI used (no DAGSTER_HOME, no project root: a home under the data dir)."""
    return dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(workdir / "data" / ".dagster_home")))


@pytest.mark.slow
def test_all_namespaces_without_a_daemon_refreshes_each_namespace_here(
    tmp_path: Path, nats_server: RunningNatsServer
) -> None:
    env = {"KRYTEN_NAMESPACES": "default,music", "KRYTEN_SOURCE": "fake", "KRYTEN_FAKE_ITEMS": "30",
           "NATS_URL": nats_server.url, "KRYTEN_KV_BUCKET": BUCKET}
    result = cli(tmp_path, "refresh", "--all-namespaces", **env)
    assert result.returncode == 0, result.stderr
    assert "no Dagster daemon" in result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:]}
    assert set(rows) == {"default", "music"} and all(row[1] == "ok" for row in rows.values())

    settings = Settings.from_env({**env, "KRYTEN_DATA_DIR": str(tmp_path / "data")})
    for namespace in ("default", "music"):
        status = asyncio.run(read_snapshot_status(settings, namespace))
        assert status["consistent"] is True, status["problems"]
        assert status["sqlite"]["snapshot_id"] == rows[namespace][2] and status["sqlite"]["item_count"] == 30
    # Both runs are in the instance the UI shows, tagged with one batch id.
    instance = home_instance(tmp_path)
    runs = instance.get_runs(filters=dg.RunsFilter(job_name="refresh_catalog"))
    assert sorted(r.tags["dagster/partition"] for r in runs) == ["default", "music"]
    assert len({r.tags[BATCH_TAG] for r in runs}) == 1


def test_all_namespaces_with_a_daemon_submits_a_backfill(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"KRYTEN_NAMESPACES": "default,music"}
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    resolve_dagster_home(tmp_path / "data")  # the home the CLI will use, created the same way
    instance = home_instance(tmp_path)
    register_namespaces(instance, ["kids"])  # as `kryten-pipeline namespaces add kids` does
    # What a running `dagster-daemon` (or `dagster dev`) writes every few seconds.
    for daemon in ("BACKFILL", "QUEUED_RUN_COORDINATOR"):
        instance.add_daemon_heartbeat(DaemonHeartbeat(time.time(), daemon, "test-daemon", []))
    result = cli(tmp_path, "refresh", "--all-namespaces", "--json", **env)
    assert result.returncode == 0, result.stderr
    submitted = json.loads(result.stdout)
    backfill = instance.get_backfill(submitted["backfill_id"])
    assert backfill is not None and backfill.tags["kryten/trigger"] == "cli" and BATCH_TAG in backfill.tags
    assert {key.path[-1] for key in backfill.asset_selection} == {
        "raw_catalog", "validated_items", "sqlite_snapshot", "kv_published"}
    target = backfill.asset_backfill_data.target_subset
    assert sorted(target.get_partitions_subset(dg.AssetKey("raw_catalog")).get_partition_keys()) == [
        "default", "kids", "music"]
    assert not instance.get_runs()  # the daemon launches the runs, not the CLI


def test_a_backfill_dagster_refuses_fails_with_its_reason(tmp_path: Path) -> None:
    home = resolve_dagster_home(tmp_path / "data")
    with pytest.raises(BackfillSubmitError, match=r"Dagster refused the backfill: .*nowhere"):
        submit_refresh_backfill(["nowhere"], tags={}, dagster_home=home)  # not a registered namespace


# -- one namespace, two refreshes at once ------------------------------------------------------------------


@pytest.fixture
def disk_instance(tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        register_namespaces(instance, ["default"])
        yield instance


def _events(instance: dg.DagsterInstance, run_id: str) -> list[Any]:
    return [r for r in instance.all_logs(run_id) if r.dagster_event is not None]


def _wait_for(condition: Any, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.slow
def test_two_refreshes_of_one_namespace_never_interleave(
    tmp_path: Path, nats_server: RunningNatsServer, disk_instance: dg.DagsterInstance
) -> None:
    env = PipelineEnv(tmp_path / "data", nats_server.url)
    settings = Settings.from_mapping({"data_dir": str(env.data_dir), "nats_url": env.nats_url, "kv_bucket": env.bucket})
    # Two refresh processes, as the admin endpoint or the NATS command would start them.
    launcher = RefreshLauncher(disk_instance, settings, environ={
        "KRYTEN_DATA_DIR": str(env.data_dir), "NATS_URL": env.nats_url, "KRYTEN_KV_BUCKET": env.bucket,
        "KRYTEN_SOURCE": "fake", "KRYTEN_FAKE_ITEMS": "40", "KRYTEN_NAMESPACES": "default"})
    try:
        # Hold the namespace's install lock (as a rollback would) so refresh A stops inside its run, holding
        # the refresh lock, until B has shown that it waits.
        with namespace_lock(env.data_dir, "default"):
            run_a, done_a = launcher.submit("default", tags={"kryten/trigger": "test"})
            _wait_for(lambda: any(e.dagster_event.step_key == "sqlite_snapshot" and e.dagster_event.event_type_value
                                  == "STEP_START" for e in _events(disk_instance, run_a)), "refresh A to build")
            run_b, done_b = launcher.submit("default", tags={"kryten/trigger": "test"})
            _wait_for(lambda: any("waiting for another refresh" in (r.user_message or "")
                                  for r in disk_instance.all_logs(run_b)), "refresh B to wait for A")
            assert not any(e.dagster_event.event_type_value == "STEP_START" for e in _events(disk_instance, run_b))
        summary_a, summary_b = done_a.result(timeout=180), done_b.result(timeout=180)
    finally:
        launcher.shutdown()
    assert summary_a["success"] and summary_b["success"], (summary_a.get("error"), summary_b.get("error"))

    a_done = max(e.timestamp for e in _events(disk_instance, run_a) if e.dagster_event.event_type_value
                 == "STEP_SUCCESS")
    b_started = min(e.timestamp for e in _events(disk_instance, run_b) if e.dagster_event.event_type_value
                    == "STEP_START")
    assert b_started >= a_done  # B's steps all came after A's
    id_a, id_b = summary_a["snapshot_id"], summary_b["snapshot_id"]
    assert id_b > id_a  # current only moves forward
    assert [r["snapshot_id"] for r in env.snapshot_records()] == [id_a, id_b]
    assert env.current().value["snapshot_id"] == id_b
    for snapshot_id in (id_a, id_b):
        report = verify_snapshot_db(kept_snapshot_path(env.data_dir, "default", snapshot_id),
                                    expected_snapshot_id=snapshot_id)
        assert report.passed, report.problems
    assert not [p for p in os.listdir(env.data_dir / "default") if ".tmp." in p]
