"""Refresh triggers: the NATS catalog_refresh command against a real nats-server, and the admin HTTP endpoint."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import nats
import pytest

from kryten_pipeline.errors import ConfigurationError
from kryten_pipeline.kv.embedded_nats import RunningNatsServer
from kryten_pipeline.settings import Settings
from kryten_pipeline.triggers.admin_app import AdminServer
from kryten_pipeline.triggers.refresh import RefreshLauncher, command_subject, run_command_responder
from kryten_pipeline_tests.pipeline_helpers import PipelineEnv
from kryten_pipeline_tests.test_cli import cli

TOKEN = "test-token-0123456789abcdef"


@pytest.fixture
def env(tmp_path: Path, nats_server: RunningNatsServer) -> PipelineEnv:
    return PipelineEnv(tmp_path / "data", nats_server.url)


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as test_instance:
        yield test_instance


def trigger_settings(env: PipelineEnv, **values: str) -> Settings:
    return Settings.from_mapping({
        "data_dir": str(env.data_dir), "nats_url": env.nats_url, "kv_bucket": env.bucket, "namespaces": "default",
        "admin_port": "0", **values,
    })


def child_environ(env: PipelineEnv, **extra: str) -> dict[str, str]:
    """The environment the refresh processes build their definitions from (fake source, test NATS bucket)."""
    return {"KRYTEN_DATA_DIR": str(env.data_dir), "NATS_URL": env.nats_url, "KRYTEN_KV_BUCKET": env.bucket,
            "KRYTEN_SOURCE": "fake", "KRYTEN_FAKE_ITEMS": "40", "KRYTEN_NAMESPACES": "default", **extra}


def wait_for_run(instance: dg.DagsterInstance, run_id: str, timeout: float = 120.0) -> dg.DagsterRun:
    deadline = time.monotonic() + timeout
    while True:
        run = instance.get_run_by_id(run_id)
        if run is not None and run.is_finished:
            return run
        assert time.monotonic() < deadline, f"run {run_id} did not finish"
        time.sleep(0.1)


# -- NATS request/reply ------------------------------------------------------------------------------------


async def _command_round_trips(env: PipelineEnv, instance: dg.DagsterInstance) -> dict[str, Any]:
    settings = trigger_settings(env, nats_subject_prefix="kryten")
    good = RefreshLauncher(instance, settings, environ=child_environ(env))
    broken = RefreshLauncher(instance, trigger_settings(env, nats_subject_prefix="broken"),
                             environ=child_environ(env, KRYTEN_FAKE_FAIL_AFTER="3"))
    stop = asyncio.Event()
    ready: list[str] = []
    servers = [
        asyncio.create_task(run_command_responder(settings, good, stop, on_ready=lambda _u, s: ready.append(s))),
        asyncio.create_task(run_command_responder(
            trigger_settings(env, nats_subject_prefix="broken"), broken, stop, on_ready=lambda _u, s: ready.append(s))),
    ]
    deadline = time.monotonic() + 20
    while len(ready) < 2:
        assert time.monotonic() < deadline and not any(t.done() for t in servers), "responders did not start"
        await asyncio.sleep(0.02)
    nc = await nats.connect(env.nats_url)

    async def ask(subject: str, body: Any) -> dict[str, Any]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return json.loads((await nc.request(subject, data, timeout=120)).data)

    subject = command_subject("kryten")
    replies = {
        "ok": await ask(subject, {"correlation_id": "c-1", "namespace": "default", "requested_by": "playlist-ui"}),
        "unknown": await ask(subject, {"correlation_id": "c-2", "namespace": "nope"}),
        "garbage": await ask(subject, b"{not json"),
        "failed": await ask(command_subject("broken"), {"correlation_id": "c-3", "namespace": "default"}),
        "accepted": await ask(subject, {"correlation_id": "c-4", "wait": False}),
    }
    await nc.close()
    stop.set()  # the responders answer what they accepted, then stop
    await asyncio.gather(*servers)
    good.shutdown()
    broken.shutdown()
    return replies


@pytest.mark.slow
def test_nats_refresh_command_round_trip(env: PipelineEnv, instance: dg.DagsterInstance) -> None:
    replies = asyncio.run(_command_round_trips(env, instance))
    ok = replies["ok"]
    assert ok["correlation_id"] == "c-1" and ok["status"] == "ok" and ok["error"] is None
    run = instance.get_run_by_id(ok["run_id"])
    assert run is not None and run.is_success
    assert run.tags["kryten/trigger"] == "nats" and run.tags["kryten/requested_by"] == "playlist-ui"
    assert run.tags["dagster/partition"] == "default"

    unknown = replies["unknown"]
    assert unknown["status"] == "error" and unknown["correlation_id"] == "c-2" and unknown["run_id"] is None
    assert "namespaces add nope" in unknown["error"]
    assert replies["garbage"]["status"] == "error" and "not UTF-8 JSON" in replies["garbage"]["error"]

    failed = replies["failed"]
    assert failed["status"] == "error" and failed["snapshot_id"] is None and "fake source stopped" in failed["error"]
    assert instance.get_run_by_id(failed["run_id"]).status == dg.DagsterRunStatus.FAILURE

    accepted = replies["accepted"]
    assert accepted["status"] == "accepted" and accepted["correlation_id"] == "c-4" and accepted["run_id"]
    assert wait_for_run(instance, accepted["run_id"]).is_success
    # The last successful run is what KV current names.
    assert env.current().value["snapshot_id"] > ok["snapshot_id"]


# -- admin HTTP endpoint -----------------------------------------------------------------------------------


def test_admin_endpoint_refuses_to_start_without_a_token(env: PipelineEnv, instance: dg.DagsterInstance,
                                                         tmp_path: Path) -> None:
    launcher = RefreshLauncher(instance, trigger_settings(env), environ=child_environ(env))
    with pytest.raises(ConfigurationError) as info:
        AdminServer(trigger_settings(env), launcher)
    assert "KRYTEN_ADMIN_TOKEN" in str(info.value)
    with pytest.raises(ConfigurationError, match="too short"):
        AdminServer(trigger_settings(env, admin_token="short"), launcher)
    launcher.shutdown()
    result = cli(tmp_path, "serve-admin")
    assert result.returncode == 2 and "refuses to start" in result.stderr and "KRYTEN_ADMIN_TOKEN" in result.stderr


@pytest.mark.slow
def test_admin_endpoint_auth_refresh_and_status(env: PipelineEnv, instance: dg.DagsterInstance) -> None:
    settings = trigger_settings(env, admin_token=TOKEN)
    launcher = RefreshLauncher(instance, settings, environ=child_environ(env))
    with AdminServer(settings, launcher) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        assert server.url.startswith("http://127.0.0.1:")  # loopback by default
        missing = http.post("/refresh", params={"namespace": "default"})
        assert missing.status_code == 401 and missing.headers["WWW-Authenticate"].startswith("Bearer")
        wrong = http.post("/refresh", params={"namespace": "default"}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 403
        assert http.get("/status", headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
        assert not instance.get_runs()  # nothing was launched by the refused requests

        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert http.post("/refresh", params={"namespace": "nope"}, headers=auth).status_code == 400
        accepted = http.post("/refresh", params={"namespace": "default"}, headers=auth)
        assert accepted.status_code == 202 and accepted.json()["status"] == "accepted"
        run_id = accepted.json()["run_id"]
        run = wait_for_run(instance, run_id)
        assert run.is_success and run.tags["kryten/trigger"] == "admin-http"
        described = http.get(f"/runs/{run_id}", headers=auth).json()
        assert described["status"] == "SUCCESS" and described["snapshot_id"] == env.current().value["snapshot_id"]

        status = http.get("/status", params={"namespace": "default"}, headers=auth)
        assert status.status_code == 200
        body = status.json()
        assert set(body) == {"namespace", "consistent", "kv", "sqlite", "object", "problems"}
        assert body["consistent"] is True and body["kv"]["current"]["snapshot_id"] == described["snapshot_id"]
        assert body["sqlite"]["snapshot_id"] == described["snapshot_id"]

        waited = http.post("/refresh", params={"namespace": "default", "wait": "true"}, headers=auth)
        assert waited.status_code == 200 and waited.json()["status"] == "ok"
        assert waited.json()["snapshot_id"] > described["snapshot_id"]
        assert http.get("/healthz").json() == {"ok": True}
    launcher.shutdown()
