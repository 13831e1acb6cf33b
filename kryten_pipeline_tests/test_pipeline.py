"""The refresh through Dagster, end to end, with a real nats-server and real SQLite files (seed 000 AC-001..3)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import dagster as dg
import pytest

from kryten_pipeline.dagster_defs.checks import kv_current_matches_sqlite
from kryten_pipeline.dagster_defs.partitions import register_namespaces
from kryten_pipeline.kv.embedded_nats import RunningNatsServer
from kryten_pipeline.kv.store import current_key, snapshot_store
from kryten_pipeline.snapshot.files import live_db_path, read_snapshot_meta
from kryten_pipeline_tests.pipeline_helpers import (
    QUIET,
    PipelineEnv,
    check_results,
    executed_steps,
    failure_descriptions,
)


@pytest.fixture
def env(tmp_path: Path, nats_server: RunningNatsServer) -> PipelineEnv:
    return PipelineEnv(tmp_path / "data", nats_server.url)


def live_ids(env: PipelineEnv) -> list[str]:
    conn = sqlite3.connect(live_db_path(env.data_dir, "default"))
    try:
        return [row[0] for row in conn.execute("SELECT video_id FROM catalog_item ORDER BY video_id")]
    finally:
        conn.close()


def test_definitions_load_and_validate() -> None:
    from kryten_pipeline.definitions import defs

    dg.Definitions.validate_loadable(defs)
    job = defs.resolve_job_def("refresh_catalog")
    assert {node.name for node in job.graph.node_defs} >= {"raw_catalog", "validated_items", "sqlite_snapshot",
                                                           "kv_published"}
    assert defs.resolve_job_def("check_kv_current_matches_sqlite") is not None


def test_ac001_ac002_refresh_publishes_a_consistent_snapshot(env: PipelineEnv) -> None:
    result = env.refresh()
    assert result.success
    assert check_results(result) == {
        "schema_and_reject_ratio": True, "sqlite_integrity": True, "removal_guard": True,
        "kv_current_matches_sqlite": True,
    }
    # AC-001: SQLite holds the new snapshot's items (the fake source's 40).
    assert len(live_ids(env)) == 40
    meta = read_snapshot_meta(live_db_path(env.data_dir, "default"))
    # AC-002: KV current matches the SQLite snapshot id.
    current = env.current()
    assert current is not None and current.value["snapshot_id"] == meta["snapshot_id"]
    value = current.value
    assert {"snapshot_id", "source", "created_at", "item_count", "notes", "schema_version"} <= set(value)
    assert value["schema_version"] == 1 and value["item_count"] == 40 and value["namespace"] == "default"
    assert value["sqlite_sha256"] and value["run_id"] == result.run_id
    # snapshots/{id} is recorded too, with the same value.
    records = env.snapshot_records()
    assert [r["snapshot_id"] for r in records] == [meta["snapshot_id"]]
    materialization = result.asset_materializations_for_node("sqlite_snapshot")[0]
    assert materialization.metadata["snapshot_id"].value == meta["snapshot_id"]
    assert materialization.metadata["dagster/row_count"].value == 40


def test_second_refresh_moves_current_forward(env: PipelineEnv) -> None:
    first = env.refresh()
    second = env.refresh(fake_items="45")
    assert first.success and second.success
    assert len(live_ids(env)) == 45
    records = env.snapshot_records()
    assert len(records) == 2 and records[0]["snapshot_id"] < records[1]["snapshot_id"]
    assert env.current().value["snapshot_id"] == records[1]["snapshot_id"]


def test_ac003_source_failure_leaves_current_and_sqlite_unchanged(env: PipelineEnv) -> None:
    assert env.refresh().success
    live = live_db_path(env.data_dir, "default")
    before_bytes = live.read_bytes()
    before_current = env.current()
    result = env.refresh(fake_items="60", fake_fail_after="30")
    assert not result.success
    assert any("stopped after 30" in d and "KRYTEN_FAKE_FAIL_AFTER" in d for d in failure_descriptions(result))
    # One line, one stack trace: the core error the message explains is not chained behind it.
    failure = next(e.step_failure_data for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert failure.error.cause is None and failure.error.context is None
    assert live.read_bytes() == before_bytes
    after = env.current()
    assert after.revision == before_current.revision and after.value == before_current.value


def test_blocking_reject_check_stops_the_publish(env: PipelineEnv, tmp_path: Path) -> None:
    assert env.refresh().success
    before_current = env.current()
    before_bytes = live_db_path(env.data_dir, "default").read_bytes()
    bad = tmp_path / "bad.jsonl"
    lines = [json.dumps({"video_id": f"ok{i}", "title": f"t{i}"}) for i in range(40)]
    lines += [json.dumps({"video_id": f"bad id {i}", "title": "x"}) for i in range(10)]
    bad.write_text("\n".join(lines), encoding="utf-8")
    result = env.refresh(source="export", export_path=str(bad))
    assert not result.success
    assert check_results(result)["schema_and_reject_ratio"] is False
    # The run's own failure message carries the check's reason (not just "a blocking check failed"), with one
    # stack trace: no chained cause.
    run_failure = next(e for e in result.all_events if e.event_type_value == "PIPELINE_FAILURE")
    error = run_failure.event_specific_data.error
    assert "schema_and_reject_ratio failed" in error.message and "KRYTEN_MAX_REJECT_RATIO" in error.message
    assert error.cause is None and error.context is None
    assert "sqlite_snapshot" not in executed_steps(result) and "kv_published" not in executed_steps(result)
    assert env.current().revision == before_current.revision
    assert live_db_path(env.data_dir, "default").read_bytes() == before_bytes


def test_collapsed_count_is_not_published(env: PipelineEnv) -> None:
    assert env.refresh(fake_items="100").success
    before = env.current()
    result = env.refresh(fake_items="30")  # a source that quietly lost 70 % of its items
    assert not result.success
    assert check_results(result)["schema_and_reject_ratio"] is False
    assert env.current().revision == before.revision
    assert len(live_ids(env)) == 100


def test_nats_unreachable_leaves_the_previous_live_file(env: PipelineEnv, tmp_path: Path) -> None:
    assert env.refresh().success
    before_current = env.current()
    previous_id = before_current.value["snapshot_id"]
    env.nats_url = "nats://127.0.0.1:1"  # NATS unreachable only for the publish step
    result = env.refresh(fake_items="42")
    assert not result.success
    assert any("cannot connect to NATS" in d and "NATS_URL" in d for d in failure_descriptions(result))
    assert read_snapshot_meta(live_db_path(env.data_dir, "default"))["snapshot_id"] == previous_id


def test_drift_check_fails_when_current_is_changed_behind_its_back(env: PipelineEnv) -> None:
    assert env.refresh().success
    assert check_results(env.drift_check()) == {"kv_current_matches_sqlite": True}

    async def tamper() -> None:
        async with snapshot_store(env.settings) as store:
            kv = await store.ensure_bucket()
            entry = await kv.get(current_key("default"))
            value = json.loads(entry.value)
            value["item_count"] = 1
            await kv.put(current_key("default"), json.dumps(value).encode())

    asyncio.run(tamper())
    drift = env.drift_check()
    assert check_results(drift) == {"kv_current_matches_sqlite": False}
    evaluation = next(e for e in drift.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION")
    assert "item_count" in evaluation.event_specific_data.description


def test_the_drift_check_launched_without_a_partition_reports_and_says_how_to_record(env: PipelineEnv) -> None:
    # An unpartitioned launch (the implicit asset job with no partition) must not end in Dagster's bare
    # "Cannot access partition_key for a non-partitioned run": it compares every namespace, and fails with one
    # line giving the findings and how to record them per namespace.
    register_namespaces(env.instance, ["beta"])
    assert env.refresh().success and env.refresh("beta").success

    async def tamper() -> None:
        async with snapshot_store(env.settings) as store:
            kv = await store.ensure_bucket()
            value = json.loads((await kv.get(current_key("beta"))).value)
            value["item_count"] = 1
            await kv.put(current_key("beta"), json.dumps(value).encode())

    asyncio.run(tamper())
    job = env.definitions().resolve_implicit_global_asset_job_def()
    result = job.get_subset(asset_check_selection={kv_current_matches_sqlite.check_key}, asset_selection=set())\
        .execute_in_process(instance=env.instance, raise_on_error=False, run_config=QUIET)
    assert not result.success
    [description] = failure_descriptions(result)
    assert "needs a namespace partition" in description and "check_kv_current_matches_sqlite" in description
    assert "drift in beta: " in description and "item_count" in description and "default:" not in description
    assert "Cannot access partition_key" not in description


def test_removal_guard_blocks_a_shrinking_catalog_unless_the_run_allows_it(env: PipelineEnv) -> None:
    assert env.refresh(fake_items="100").success
    before = env.current()
    shrunk = env.refresh(fake_items="70")  # 30 % removed: passes the count check (≥ 50 %), not the guard (20 %)
    assert not shrunk.success
    assert check_results(shrunk)["removal_guard"] is False
    assert any("--allow-removals" in d and "KRYTEN_MAX_REMOVED_RATIO" in d for d in failure_descriptions(shrunk))
    assert env.current().revision == before.revision and len(live_ids(env)) == 100
    assert not [p for p in (env.data_dir / "default").iterdir() if ".tmp." in p.name]

    # The launchpad's way: the config of sqlite_snapshot (a checkbox-like bool, no tag to type by hand).
    job = env.definitions().resolve_job_def("refresh_catalog")
    by_config = job.execute_in_process(
        instance=env.instance, partition_key="default", raise_on_error=False,
        run_config={**QUIET, "ops": {"sqlite_snapshot": {"config": {"allow_removals": True}}}})
    assert by_config.success and len(live_ids(env)) == 70
    guard = next(e.event_specific_data for e in by_config.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"
                 and e.event_specific_data.check_name == "removal_guard")
    assert guard.passed and "allowed by this run (config allow_removals)" in guard.description
    assert env.refresh(fake_items="100").success  # back to 100 for the tag's turn

    allowed = job.execute_in_process(instance=env.instance, partition_key="default", raise_on_error=False,
                                     tags={"kryten/allow-removals": "true"}, run_config=QUIET)
    assert allowed.success and len(live_ids(env)) == 70
    guard = next(e.event_specific_data for e in allowed.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"
                 and e.event_specific_data.check_name == "removal_guard")
    assert guard.passed and "allowed by this run (tag kryten/allow-removals)" in guard.description
    value = env.current().value
    assert value["diff"] == {"added": 0, "removed": 30, "retitled": 0, "recategorised": 0, "retimed": 0}
    assert "−30 items" in value["notes"]
    meta = read_snapshot_meta(live_db_path(env.data_dir, "default"))
    assert json.loads(meta["diff_json"])["counts"]["removed"] == 30


def test_intermediates_are_stored_as_files_and_handed_over_in_memory_within_a_run(
    env: PipelineEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """raw_catalog and validated_items are pickled to the instance storage (Dagster's layout: retries from a
    failed step and single-asset materialisations read them), but the run's next step gets the object itself."""
    from kryten_pipeline.dagster_defs.assets import kv_published, raw_catalog, sqlite_snapshot, validated_items
    from kryten_pipeline.dagster_defs.io_manager import CatalogIOManager

    disk_reads: list[str] = []
    original = CatalogIOManager.read_file

    def counting_read(self: CatalogIOManager, path: Path) -> object:
        disk_reads.append(str(path))
        return original(self, path)

    monkeypatch.setattr(CatalogIOManager, "read_file", counting_read)
    result = env.refresh()
    assert result.success
    assert disk_reads == []  # raw_catalog → validated_items → sqlite_snapshot: no pickle read back
    storage = Path(env.instance.storage_directory())
    for asset in ("raw_catalog", "validated_items"):
        assert (storage / asset / "default").is_file(), asset
    paths = {
        event.asset_key.path[-1]: event.step_materialization_data.materialization.metadata.get("path")
        for event in result.get_asset_materialization_events()
    }
    assert paths["validated_items"] is not None  # the file is shown in the UI as before
    assert Path(paths["validated_items"].value) == (storage / "validated_items" / "default").absolute()
    # No per-file debug chatter in the event log (each event is a write of the instance's storage).
    debug = [r.user_message for r in env.instance.all_logs(result.run_id) if r.dagster_event is None
             and (r.user_message or "").startswith(("Writing file", "Loading"))]
    assert debug == []

    # A later run that materialises sqlite_snapshot alone reads validated_items from that file.
    definitions = env.definitions()
    rebuilt = dg.materialize(
        [raw_catalog, validated_items, sqlite_snapshot, kv_published], selection=[sqlite_snapshot],
        partition_key="default", instance=env.instance, resources=definitions.resources, run_config=QUIET,
    )
    assert rebuilt.success
    assert [Path(p).parts[-2:] for p in disk_reads] == [("validated_items", "default")]
    assert len(live_ids(env)) == 40

    # The items themselves travel in batches, in staging files the materializations name.
    metadata = {event.asset_key.path[-1]: event.step_materialization_data.materialization.metadata
                for event in result.get_asset_materialization_events()}
    staged_raw = Path(metadata["raw_catalog"]["staged_items"].value)
    staged_valid = Path(metadata["validated_items"]["staged_rows"].value)
    assert staged_raw == (storage / "staging" / "raw_catalog" / "default.batches").absolute()
    assert staged_valid == (storage / "staging" / "validated_items" / "default.batches").absolute()
    assert metadata["raw_catalog"]["staged_batches"].value == 1 and staged_raw.is_file() and staged_valid.is_file()
    assert not list(staged_valid.parent.glob(".*.tmp"))  # written under a temporary name, renamed when complete

    # Staged rows gone (removed by hand, another DAGSTER_HOME): the step fails naming what to do, nothing is swapped.
    staged_valid.unlink()
    before = live_ids(env)
    missing = dg.materialize(
        [raw_catalog, validated_items, sqlite_snapshot, kv_published], selection=[sqlite_snapshot],
        partition_key="default", instance=env.instance, resources=definitions.resources, run_config=QUIET,
        raise_on_error=False,
    )
    assert not missing.success
    message = " ".join(failure_descriptions(missing))
    assert "staged items" in message and "are gone" in message and "DAGSTER_HOME" in message, message
    assert live_ids(env) == before


def test_every_check_records_its_namespace_and_the_materialization_it_judged(env: PipelineEnv) -> None:
    register_namespaces(env.instance, ["beta"])
    for namespace in ("default", "beta", "default"):
        result = env.refresh(namespace)
        assert result.success
        evaluations = [e.event_specific_data for e in result.all_events
                       if e.event_type_value == "ASSET_CHECK_EVALUATION"]
        assert {e.check_name for e in evaluations} == {"schema_and_reject_ratio", "sqlite_integrity",
                                                        "removal_guard", "kv_current_matches_sqlite"}
        for evaluation in evaluations:
            assert evaluation.partition == namespace, evaluation.check_name
            target = evaluation.target_materialization_data
            assert target is not None and target.run_id == result.run_id, evaluation.check_name
