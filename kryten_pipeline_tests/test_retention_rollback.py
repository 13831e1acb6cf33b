"""Retention (last N snapshots: kept files and KV records, never current's) and the rollback job."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

from kryten_pipeline import cli
from kryten_pipeline.dagster_defs.maintenance import (
    PRUNE_JOB_NAME,
    ROLLBACK_JOB_NAME,
    prune_snapshots_job,
    rollback_job,
)
from kryten_pipeline.dagster_defs.resources import NatsResource, PipelineResource
from kryten_pipeline.kv.embedded_nats import RunningNatsServer
from kryten_pipeline.snapshot.files import list_kept_snapshots
from kryten_pipeline.snapshot.retention import snapshots_to_keep
from kryten_pipeline_tests.pipeline_helpers import QUIET, PipelineEnv


@pytest.fixture
def env(tmp_path: Path, nats_server: RunningNatsServer) -> PipelineEnv:
    environment = PipelineEnv(tmp_path / "data", nats_server.url)
    environment.pipeline_fields["keep_snapshots"] = "2"
    return environment


def maintenance(env: PipelineEnv) -> dg.Definitions:
    return dg.Definitions(
        jobs=[prune_snapshots_job, rollback_job],
        resources={"pipeline": PipelineResource(**env.pipeline_fields),
                   "nats": NatsResource(nats_url=env.nats_url, kv_bucket=env.bucket)},
        executor=dg.in_process_executor,
    )


def run_op(env: PipelineEnv, job_name: str, op: str, **config: object) -> dg.ExecuteInProcessResult:
    job = maintenance(env).resolve_job_def(job_name)
    return job.execute_in_process(instance=env.instance, raise_on_error=False,
                                  run_config={**QUIET, "ops": {op: {"config": config}}})


def refreshed_ids(env: PipelineEnv, times: int) -> list[str]:
    ids = []
    for _ in range(times):
        result = env.refresh()
        assert result.success
        ids.append(result.asset_materializations_for_node("sqlite_snapshot")[0].metadata["snapshot_id"].value)
    return ids


def test_keep_set_protects_current_and_live_then_fills_with_the_newest() -> None:
    ids = {"20250101T000000Z-aaaaaa", "20250102T000000Z-bbbbbb", "20250103T000000Z-cccccc"}
    assert snapshots_to_keep(ids, 2, [None]) == ["20250103T000000Z-cccccc", "20250102T000000Z-bbbbbb"]
    assert snapshots_to_keep(ids, 2, ["20250101T000000Z-aaaaaa"]) == [
        "20250103T000000Z-cccccc", "20250101T000000Z-aaaaaa"]


@pytest.mark.slow
def test_retention_keeps_exactly_n_files_and_kv_records(env: PipelineEnv) -> None:
    ids = refreshed_ids(env, 3)
    # Applied after each successful publish: the newest KRYTEN_KEEP_SNAPSHOTS=2, files and KV records alike.
    assert list_kept_snapshots(env.data_dir, "default") == ids[1:]
    assert [r["snapshot_id"] for r in env.snapshot_records()] == ids[1:]
    assert env.current().value["snapshot_id"] == ids[2]

    # Roll back to the older one, then prune to 1: current's snapshot stays even though it is not the newest.
    assert run_op(env, ROLLBACK_JOB_NAME, "rollback_namespace", namespace="default", snapshot_id=ids[1]).success
    pruned = run_op(env, PRUNE_JOB_NAME, "prune_namespace_snapshots", namespace="default", keep=1)
    assert pruned.success
    assert list_kept_snapshots(env.data_dir, "default") == [ids[1]]
    assert [r["snapshot_id"] for r in env.snapshot_records()] == [ids[1]]
    assert env.current().value["snapshot_id"] == ids[1]


@pytest.mark.slow
def test_rollback_job_then_status_json_is_consistent(
    env: PipelineEnv, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = refreshed_ids(env, 2)
    result = run_op(env, ROLLBACK_JOB_NAME, "rollback_namespace", namespace="default", snapshot_id=first)
    assert result.success
    # The rollback shows on the asset's timeline in the UI.
    event = env.instance.get_latest_materialization_event(dg.AssetKey("kv_published"))
    assert event is not None and event.asset_materialization.description == f"rollback to {first}"
    assert event.asset_materialization.partition == "default"

    for name, value in (("KRYTEN_DATA_DIR", str(env.data_dir)), ("NATS_URL", env.nats_url),
                        ("KRYTEN_KV_BUCKET", env.bucket)):
        monkeypatch.setenv(name, value)
    capsys.readouterr()
    assert cli.main(["status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["consistent"] is True
    assert status["kv"]["current"]["snapshot_id"] == first == status["sqlite"]["snapshot_id"]
    assert second in list_kept_snapshots(env.data_dir, "default")  # a roll-forward stays possible

    unknown = run_op(env, ROLLBACK_JOB_NAME, "rollback_namespace", namespace="default",
                     snapshot_id="20200101T000000Z-000000")
    assert not unknown.success
    assert env.current().value["snapshot_id"] == first  # a failed rollback changes nothing
