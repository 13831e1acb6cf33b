"""The production setup of README "Deploying", run for real on loopback: a PostgreSQL-backed instance
(``deploy/dagster.yaml``, copied verbatim into a temp ``DAGSTER_HOME``), the code location served by the
image's command, ``dagster-daemon run`` dequeuing runs through the QueuedRunCoordinator, and two refreshes
(namespaces ``alpha`` and ``beta``) submitted with ``dagster job launch``.

Checked afterwards: both runs succeeded and went through the queue, runs and asset-check evaluations are
in PostgreSQL (through the instance and in the tables themselves), and each namespace's live SQLite
snapshot matches its NATS KV ``current`` (``kryten-pipeline status --json``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from dagster import AssetKey, DagsterEventType, DagsterInstance, DagsterRunStatus
from dagster._cli import cli as dagster_cli  # the click group behind the `dagster` console script

from kryten_pipeline import cli
from kryten_pipeline.dagster_defs.jobs import REFRESH_JOB_NAME
from kryten_pipeline.kv.embedded_nats import start_nats_server
from kryten_pipeline_tests.pg_fixtures import PostgresServer, running_postgres, skip_without_postgres
from kryten_pipeline_tests.test_code_server import (
    DEPLOY_DIR,
    DEPLOY_WORKSPACE,
    REFRESH_ASSETS,
    SCRUBBED_PREFIXES,
    ManagedProcess,
    clean_env,
    free_port,
    managed_process,
    running_code_server,
    venv_script,
)

NAMESPACES = ("alpha", "beta")
FAKE_ITEMS = 120
RUNS_TIMEOUT_S = 240.0
DAGSTER_DB = "dagster"
TERMINAL = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
EXPECTED_CHECKS = {"schema_and_reject_ratio", "sqlite_integrity", "kv_current_matches_sqlite"}
RUN_LIFECYCLE = tuple(
    kind.value
    for kind in (DagsterEventType.RUN_ENQUEUED, DagsterEventType.RUN_STARTING, DagsterEventType.RUN_START,
                 DagsterEventType.RUN_SUCCESS)
)


def deployment_env(tmp_path: Path, pg: PostgresServer, nats_url: str, code_server_port: int) -> dict[str, str]:
    """What every process of the deployment gets (README "Deploying" lists the same variables)."""
    return {
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "DAGSTER_PG_USERNAME": pg.superuser,
        "DAGSTER_PG_PASSWORD": pg.password,
        "DAGSTER_PG_HOST": pg.host,
        "DAGSTER_PG_PORT": str(pg.port),
        "DAGSTER_PG_DB": DAGSTER_DB,
        "KRYTEN_CODE_SERVER_HOST": "127.0.0.1",
        "KRYTEN_CODE_SERVER_PORT": str(code_server_port),
        "KRYTEN_DATA_DIR": str(tmp_path / "data"),
        "KRYTEN_NAMESPACES": ",".join(NAMESPACES),
        "KRYTEN_SOURCE": "fake",
        "KRYTEN_FAKE_ITEMS": str(FAKE_ITEMS),
        "NATS_URL": nats_url,
    }


def wait_for_runs(
    instance: DagsterInstance, run_ids: dict[str, str], watched: list[ManagedProcess]
) -> dict[str, DagsterRunStatus]:
    deadline = time.monotonic() + RUNS_TIMEOUT_S
    while True:
        statuses = {}
        for namespace, run_id in run_ids.items():
            run = instance.get_run_by_id(run_id)
            statuses[namespace] = run.status if run else None
        if all(status in TERMINAL for status in statuses.values()):
            return statuses  # type: ignore[return-value]
        for process in watched:
            if not process.alive():
                pytest.fail(f"{process.name} exited ({process.proc.returncode}) with runs {statuses}\n{process.log()}")
        if time.monotonic() > deadline:
            logs = "\n".join(process.log() for process in watched)
            pytest.fail(f"runs not finished after {RUNS_TIMEOUT_S:.0f} s: {statuses}\n{logs}")
        time.sleep(0.5)


def event_types(instance: DagsterInstance, run_id: str) -> list[str]:
    return [record.dagster_event.event_type_value for record in instance.all_logs(run_id) if record.dagster_event]


@contextlib.contextmanager
def production_instance(home: Path) -> Iterator[DagsterInstance]:
    instance = DagsterInstance.from_config(str(home))
    try:
        yield instance
    finally:
        instance.dispose()


@pytest.mark.slow
def test_two_namespaces_refresh_on_the_postgres_instance_through_the_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    skip_without_postgres()
    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(running_postgres())
        pg.create_database(DAGSTER_DB)
        nats = start_nats_server(tmp_path / "nats")
        stack.callback(nats.stop)
        env = deployment_env(tmp_path, pg, nats.url, free_port())
        home = Path(env["DAGSTER_HOME"])
        home.mkdir()
        shutil.copy(DEPLOY_DIR / "dagster.yaml", home / "dagster.yaml")
        for name in list(os.environ):
            if name.startswith(SCRUBBED_PREFIXES):
                monkeypatch.delenv(name)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.chdir(tmp_path)  # no project .env, no project dagster.yaml
        process_env = clean_env(**env)

        # Opening the instance creates Dagster's tables in the empty database.
        instance = stack.enter_context(production_instance(home))
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        queue = instance.get_concurrency_config().run_queue_config
        assert queue is not None
        assert [(limit["key"], limit["limit"]) for limit in queue.tag_concurrency_limits] == [("dagster/partition", 1)]
        # Namespaces are dynamic partitions: a run of one can only be launched once it is registered.
        assert cli.main(["namespaces", "add", *NAMESPACES]) == cli.EXIT_OK
        assert set(NAMESPACES) <= set(instance.get_dynamic_partitions("namespace"))

        code_server = stack.enter_context(
            running_code_server(port=int(env["KRYTEN_CODE_SERVER_PORT"]), env=process_env, cwd=tmp_path,
                                log_dir=tmp_path)
        )
        daemon = stack.enter_context(
            managed_process("daemon", [venv_script("dagster-daemon"), "run", "-w", str(DEPLOY_WORKSPACE)],
                            env=process_env, cwd=tmp_path, log_dir=tmp_path)
        )
        # Teardown: both shut down gracefully at the same time (each then waits and escalates to SIGKILL).
        stack.callback(lambda: [process.terminate() for process in (daemon, code_server)])

        # Submit both refreshes to the queue (the instance's run coordinator) with the `dagster job launch`
        # command of README "Deploying" — invoked in this process, which has the same environment, to spare
        # two interpreter starts on a 2-core CI machine.
        run_ids = {namespace: str(uuid.uuid4()) for namespace in NAMESPACES}
        for namespace, run_id in run_ids.items():
            launched = CliRunner().invoke(
                dagster_cli,
                ["job", "launch", "-w", str(DEPLOY_WORKSPACE), "-j", REFRESH_JOB_NAME,
                 "--tags", json.dumps({"dagster/partition": namespace}), "--run-id", run_id],
            )
            assert launched.exit_code == 0, f"launching {namespace} failed:\n{launched.output}\n{launched.exception!r}"

        statuses = wait_for_runs(instance, run_ids, [code_server, daemon])
        if any(status != DagsterRunStatus.SUCCESS for status in statuses.values()):
            errors = {
                ns: [r.user_message for r in instance.all_logs(run_ids[ns], of_type=DagsterEventType.STEP_FAILURE)]
                for ns in NAMESPACES
            }
            pytest.fail(f"runs did not succeed: {statuses}; errors: {errors}\n{code_server.log()}\n{daemon.log()}")

        # --- the runs went through the queue and the daemon --------------------------------------------------
        for namespace, run_id in run_ids.items():
            run = instance.get_run_by_id(run_id)
            assert run is not None
            assert run.job_name == REFRESH_JOB_NAME
            assert run.tags["dagster/partition"] == namespace
            assert run.remote_job_origin is not None
            assert run.remote_job_origin.location_name == "kryten_pipeline"
            # Enqueued by `dagster job launch`, then started by the daemon's run-queue loop.
            lifecycle = [kind for kind in event_types(instance, run_id) if kind in RUN_LIFECYCLE]
            assert lifecycle == list(RUN_LIFECYCLE), (namespace, lifecycle)

        # --- recorded in PostgreSQL: through the instance ... -------------------------------------------------
        for asset in REFRESH_ASSETS:
            assert instance.get_materialized_partitions(AssetKey(asset)) == set(NAMESPACES), asset

        # ... and in the tables themselves.
        ids = list(run_ids.values())
        with pg.connect(DAGSTER_DB) as conn:
            runs = dict(conn.execute("SELECT run_id, status FROM runs WHERE run_id = ANY(%s)", (ids,)).fetchall())
            assert runs == {run_id: "SUCCESS" for run_id in ids}
            partitions = dict(conn.execute(
                "SELECT run_id, value FROM run_tags WHERE key = 'dagster/partition' AND run_id = ANY(%s)", (ids,)
            ).fetchall())
            assert partitions == {run_id: ns for ns, run_id in run_ids.items()}
            checks = conn.execute(
                "SELECT run_id, check_name, execution_status FROM asset_check_executions WHERE run_id = ANY(%s)",
                (ids,),
            ).fetchall()
            materializations = dict(conn.execute(
                "SELECT run_id, count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION' "
                "AND run_id = ANY(%s) GROUP BY run_id", (ids,)
            ).fetchall())
        for run_id in ids:
            evaluated = {name: status for rid, name, status in checks if rid == run_id}
            assert set(evaluated) >= EXPECTED_CHECKS, evaluated
            assert set(evaluated.values()) == {"SUCCEEDED"}, evaluated
        assert materializations == dict.fromkeys(ids, len(REFRESH_ASSETS))

        # --- each namespace's live SQLite snapshot is the one KV `current` names ------------------------------
        for namespace, run_id in run_ids.items():
            capsys.readouterr()
            assert cli.main(["status", "--json", "--namespace", namespace]) == cli.EXIT_OK
            status: dict[str, Any] = json.loads(capsys.readouterr().out)
            assert status["consistent"] is True, status
            current = status["kv"]["current"]
            assert current["run_id"] == run_id
            assert current["namespace"] == namespace
            assert current["item_count"] == status["sqlite"]["item_count"] == FAKE_ITEMS
            assert current["snapshot_id"] == status["sqlite"]["snapshot_id"]
            assert Path(status["sqlite"]["path"]) == Path(env["KRYTEN_DATA_DIR"]) / namespace / "catalog.sqlite3"
