"""What the Dagster UI shows, read through the webserver's GraphQL API of a real ``dagster dev`` (webserver plus
daemon) on a temporary instance, as a data engineer would see it in the browser.

Two namespaces are refreshed with the CLI on the same instance; then the drift schedule (a one-minute cron here)
ticks under the daemon, which launches one check run per namespace.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kryten_pipeline.kv.embedded_nats import RunningNatsServer
from kryten_pipeline_tests.test_code_server import (
    PROJECT_ROOT,
    ManagedProcess,
    clean_env,
    free_port,
    managed_process,
    run_cli,
    venv_script,
)

pytestmark = pytest.mark.slow

NAMESPACES = ("default", "beta")
READY_TIMEOUT_S = 180.0
TICK_TIMEOUT_S = 240.0
LOCATION = "kryten_pipeline"
REPOSITORY = "__repository__"


class GraphQL:
    def __init__(self, port: int, server: ManagedProcess) -> None:
        self.url = f"http://127.0.0.1:{port}/graphql"
        self.server = server
        self.env: dict[str, str] = {}  # the environment of `dagster dev`, for CLI commands on the same instance
        self.home = Path(".")

    def __call__(self, query: str, **variables: Any) -> dict[str, Any]:
        response = httpx.post(self.url, json={"query": query, "variables": variables}, timeout=60)
        response.raise_for_status()
        body = response.json()
        assert "errors" not in body, body["errors"]
        return body["data"]


@contextlib.contextmanager
def dagster_dev(home: Path, env: dict[str, str]) -> Iterator[GraphQL]:
    port = free_port()
    argv = [venv_script("dagster"), "dev", "-w", str(PROJECT_ROOT / "workspace.yaml"), "-h", "127.0.0.1",
            "-p", str(port)]
    with managed_process("dagster-dev", argv, env=env, cwd=home, log_dir=home) as server:
        graphql = GraphQL(port, server)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            assert server.alive(), f"dagster dev exited\n{server.log()}"
            assert time.monotonic() < deadline, f"the code location did not load\n{server.log()}"
            with contextlib.suppress(httpx.HTTPError, AssertionError, KeyError, TypeError):
                repos = graphql("{ repositoriesOrError { ... on RepositoryConnection { nodes { name } } } }")
                if repos["repositoriesOrError"]["nodes"]:
                    break
            time.sleep(0.5)
        yield graphql


TICKS = """
query($selector: ScheduleSelector!) { scheduleOrError(scheduleSelector: $selector) { __typename
  ... on Schedule { scheduleState { status ticks(limit: 10) { status runIds error { message } } } } } }
"""
RUNS = """
query($ids: [String!]) { runsOrError(filter: {runIds: $ids}) { ... on Runs { results {
  runId status jobName tags { key value } } } } }
"""
CHECK_EXECUTIONS = """
query($key: AssetKeyInput!, $check: String!, $partition: String) {
  assetCheckExecutions(assetKey: $key, checkName: $check, limit: 5, partition: $partition) {
    runId status partition evaluation { partition description success targetMaterialization { runId } } } }
"""
ASSET_NODES = """
{ assetNodes { assetKey { path } description
    internalFreshnessPolicy { __typename ... on CronFreshnessPolicy { deadlineCron lowerBoundDeltaSeconds } }
    metadataEntries { label __typename
      ... on TableSchemaMetadataEntry { schema { columns { name type description } } }
      ... on CodeReferencesMetadataEntry { codeReferences { __typename
        ... on LocalFileCodeReference { filePath lineNumber } } }
      ... on TextMetadataEntry { text } } } }
"""
RESOURCE = """
query($selector: ResourceSelector!) { topLevelResourceDetailsOrError(resourceSelector: $selector) {
  ... on ResourceDetails { configFields { name description configTypeKey } } } }
"""
BACKFILL = """
query($id: String!) { partitionBackfillOrError(backfillId: $id) { __typename
  ... on PartitionBackfill { status partitionNames runs { runId status tags { key value } } } } }
"""
SENSORS = """
query($selector: RepositorySelector!) { sensorsOrError(repositorySelector: $selector) {
  ... on Sensors { results { name description sensorState { status } } } } }
"""


def wait_for(description: str, probe: Any, graphql: GraphQL, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        assert graphql.server.alive(), graphql.server.log()
        assert time.monotonic() < deadline, f"{description} did not happen in {timeout:.0f} s\n{graphql.server.log()}"
        time.sleep(2)


@pytest.fixture
def ui(tmp_path: Path, nats_server: RunningNatsServer) -> Iterator[GraphQL]:
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    suffix = uuid.uuid4().hex[:8]
    env = clean_env(
        DAGSTER_HOME=str(home), KRYTEN_DATA_DIR=str(tmp_path / "data"), KRYTEN_SOURCE="fake", KRYTEN_FAKE_ITEMS="60",
        KRYTEN_NAMESPACES=",".join(NAMESPACES), NATS_URL=nats_server.url, KRYTEN_KV_BUCKET=f"ui_{suffix}",
        KRYTEN_OBJECT_BUCKET=f"ui_files_{suffix}", KRYTEN_DRIFT_CHECK_CRON="* * * * *",
    )
    for namespace in NAMESPACES:
        refresh = run_cli([venv_script("kryten-pipeline"), "refresh", "--namespace", namespace, "--quiet"],
                          env=env, cwd=home)
        assert refresh.returncode == 0, refresh.stdout + refresh.stderr
    with dagster_dev(home, env) as graphql:
        graphql.env, graphql.home = env, home
        yield graphql


def test_the_ui_shows_the_drift_schedule_running_checks_per_namespace_and_the_metadata(ui: GraphQL) -> None:
    selector = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY}

    # 1. A tick of the drift schedule under the daemon succeeds and launches one check run per namespace.
    def ticked() -> list[dict[str, Any]]:
        state = ui(TICKS, selector={**selector, "scheduleName": "drift_check_all_namespaces"})
        ticks = state["scheduleOrError"]["scheduleState"]["ticks"]
        assert not [t for t in ticks if t["status"] == "FAILURE"], ticks
        return [t for t in ticks if t["status"] == "SUCCESS"]

    tick = wait_for("a successful drift-schedule tick", ticked, ui, TICK_TIMEOUT_S)[0]
    assert len(tick["runIds"]) == len(NAMESPACES), tick

    def finished() -> list[dict[str, Any]] | None:
        runs = ui(RUNS, ids=tick["runIds"])["runsOrError"]["results"]
        return runs if all(r["status"] in ("SUCCESS", "FAILURE", "CANCELED") for r in runs) else None

    runs = wait_for("the drift runs", finished, ui, TICK_TIMEOUT_S)
    assert {r["status"] for r in runs} == {"SUCCESS"}, runs
    assert {r["jobName"] for r in runs} == {"check_kv_current_matches_sqlite"}
    partitions = {r["runId"]: {t["key"]: t["value"] for t in r["tags"]}["dagster/partition"] for r in runs}
    assert sorted(partitions.values()) == sorted(NAMESPACES)

    # 2. The drift check's history is per namespace, each result from its own scheduled run.
    for namespace in NAMESPACES:
        executions = ui(CHECK_EXECUTIONS, key={"path": ["kv_published"]}, check="kv_current_matches_sqlite",
                        partition=namespace)["assetCheckExecutions"]
        latest = executions[0]
        assert latest["status"] == "SUCCEEDED" and latest["partition"] == namespace, latest
        assert partitions[latest["runId"]] == namespace
        assert latest["evaluation"]["description"].startswith(f"{namespace}: consistent")

    # 3. Each in-asset check names its namespace and the run that produced the materialization it judged.
    for asset, check in (("validated_items", "schema_and_reject_ratio"), ("sqlite_snapshot", "sqlite_integrity"),
                         ("sqlite_snapshot", "removal_guard")):
        for namespace in NAMESPACES:
            (execution,) = ui(CHECK_EXECUTIONS, key={"path": [asset]}, check=check,
                              partition=namespace)["assetCheckExecutions"]
            evaluation = execution["evaluation"]
            assert evaluation["success"] and evaluation["partition"] == namespace, (check, execution)
            assert evaluation["targetMaterialization"]["runId"] == execution["runId"], (check, execution)

    # 4. Column schemas, code references, the freshness policy and the contracts on the asset pages.
    nodes = {"/".join(n["assetKey"]["path"]): n for n in ui(ASSET_NODES)["assetNodes"]}
    for asset in ("raw_catalog", "validated_items", "sqlite_snapshot", "kv_published"):
        entries = {e["label"]: e for e in nodes[asset]["metadataEntries"]}
        references = entries["dagster/code_references"]["codeReferences"]
        assert references[0]["filePath"].endswith("kryten_pipeline/dagster_defs/assets.py"), references
        assert "**Guarantees**" in nodes[asset]["description"]
    validated = {e["label"]: e for e in nodes["validated_items"]["metadataEntries"]}
    columns = {c["name"]: c for c in validated["dagster/column_schema"]["schema"]["columns"]}
    assert list(columns) == ["video_id", "title", "categories", "duration_seconds", "thumbnail_url", "manifest_url"]
    snapshot = {e["label"]: e for e in nodes["sqlite_snapshot"]["metadataEntries"]}
    assert snapshot["dagster/table_name"]["text"] == "catalog_item"
    sqlite_columns = [c["name"] for c in snapshot["dagster/column_schema"]["schema"]["columns"]]
    assert sqlite_columns[:3] == ["video_id", "title", "categories_json"] and "snapshot_id" in sqlite_columns
    policy = nodes["kv_published"]["internalFreshnessPolicy"]
    assert policy == {"__typename": "CronFreshnessPolicy", "deadlineCron": "0 3 * * *",
                      "lowerBoundDeltaSeconds": 86400}

    # 5. Typed, described resource fields; the Redis sensors stopped (no REDIS_URL) and saying why.
    fields = {f["name"]: f for f in ui(RESOURCE, selector={**selector, "resourceName": "pipeline"})[
        "topLevelResourceDetailsOrError"]["configFields"]}
    # Dagster's keys: "Noneable.IntSourceType" (an int, or an env var holding one), no longer a String.
    assert "Int" in fields["keep_snapshots"]["configTypeKey"], fields["keep_snapshots"]
    assert "Float" in fields["max_reject_ratio"]["configTypeKey"], fields["max_reject_ratio"]
    assert "Bool" in fields["require_https_thumbnails"]["configTypeKey"], fields["require_https_thumbnails"]
    assert fields["keep_snapshots"]["description"].startswith("KRYTEN_KEEP_SNAPSHOTS: ")
    sensors = {s["name"]: s for s in ui(SENSORS, selector=selector)["sensorsOrError"]["results"]}
    assert sensors["catalog_updated_events"]["sensorState"]["status"] == "STOPPED"
    assert "REDIS_URL was not set" in sensors["catalog_updated_events"]["description"]
    assert sensors["dead_run_repair"]["sensorState"]["status"] == "RUNNING"

    # 6. No per-process tags in the runs list.
    for run in runs:
        assert not [t for t in run["tags"] if t["key"].startswith(("kryten/host", "kryten/pid"))], run["tags"]

    # 7. `refresh --all-namespaces` while the daemon runs: the CLI submits a backfill (the UI's own mutation,
    #    through dagster-graphql) and returns; the daemon runs it, one successful refresh per namespace.
    submitted = run_cli([venv_script("kryten-pipeline"), "refresh", "--all-namespaces", "--json"], env=ui.env,
                        cwd=ui.home)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    backfill_id = json.loads(submitted.stdout)["backfill_id"]

    def backfilled() -> dict[str, Any] | None:
        # Its runs, once launched and finished (the daemon marks the backfill complete at a later iteration).
        backfill = ui(BACKFILL, id=backfill_id)["partitionBackfillOrError"]
        assert backfill["status"] not in ("FAILED", "FAILING", "COMPLETED_FAILED", "CANCELED"), backfill
        runs = backfill["runs"]
        done = len(runs) == len(NAMESPACES) and all(r["status"] in ("SUCCESS", "FAILURE", "CANCELED") for r in runs)
        return backfill if done else None

    backfill = wait_for("the backfill's runs", backfilled, ui, TICK_TIMEOUT_S)
    assert sorted(backfill["partitionNames"]) == sorted(NAMESPACES)
    tags = [{t["key"]: t["value"] for t in r["tags"]} for r in backfill["runs"]]
    assert {r["status"] for r in backfill["runs"]} == {"SUCCESS"}, backfill["runs"]
    assert sorted(t["dagster/partition"] for t in tags) == sorted(NAMESPACES)
    assert {t["kryten/trigger"] for t in tags} == {"cli"} and len({t["kryten/batch"] for t in tags}) == 1
