"""Security hygiene: secrets never leave the process in a log line, an event, metadata, a KV value or a file;
credentials in URLs are scrubbed from error messages; the data dir and the snapshot files are not world-readable.

A refresh runs through the CLI against a real MediaCMS-like server (which accepts only the configured token)
and a nats-server that requires a user and password, with every secret setting set to a distinctive value.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import nats
import pytest
from dagster._core.instance.ref import InstanceRef

from kryten_pipeline_tests import fake_mediacms
from kryten_pipeline_tests.cli_zygote import Zygote
from kryten_pipeline_tests.fake_mediacms import FakeMediaCMS, generate_catalog
from kryten_pipeline_tests.fault_helpers import NatsProcess, cli_environment, free_port, last_error_line

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SECRETS = {
    "MEDIACMS_TOKEN": "tokMEDIACMSq81zzSECRET",
    "MEDIACMS_PASSWORD": "pwMEDIACMSx42zzSECRET",
    "NATS_PASSWORD": "pwNATSb77zzSECRET",
    "SERVICE_AUTH_TOKEN": "tokSERVICEv19zzSECRET",
    "KRYTEN_ADMIN_TOKEN": "tokADMINd55zzSECRET",
    "MEDIACMS_DB_PASSWORD": "pwMEDIACMSDBb31zzSECRET",
}


def leaks(text: str | bytes, where: str) -> list[str]:
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    return [f"{name} in {where}" for name, value in SECRETS.items() if value.encode() in data]


@pytest.fixture
def zygote(tmp_path: Path) -> Iterator[Zygote]:
    runner = Zygote(tmp_path)
    yield runner
    runner.close()


@pytest.fixture
def mediacms(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeMediaCMS]:
    # An editor account whose token and password are the test's secrets (the server checks them).
    monkeypatch.setitem(fake_mediacms.USERS, "kryten", ("editor", SECRETS["MEDIACMS_PASSWORD"],
                                                         SECRETS["MEDIACMS_TOKEN"]))
    with FakeMediaCMS(generate_catalog(150, 5, seed=9)) as server:
        yield server


@pytest.fixture
def nats_auth(tmp_path: Path) -> Iterator[NatsProcess]:
    server = NatsProcess(tmp_path / "nats", "--user", "kryten", "--pass", SECRETS["NATS_PASSWORD"]).start()
    yield server
    server.stop()


def _kv_values(url: str, bucket: str) -> list[bytes]:
    async def read() -> list[bytes]:
        nc = await nats.connect(url, user="kryten", password=SECRETS["NATS_PASSWORD"])
        try:
            kv = await nc.jetstream().key_value(bucket)
            return [(await kv.get(key)).value or b"" for key in await kv.keys()]
        finally:
            await nc.close()

    return asyncio.run(read())


def _event_log_texts(home: Path) -> list[str]:
    """Every run's log messages and events (with their metadata), as the UI would show them."""
    instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
    texts = []
    try:
        for run in instance.get_runs():
            texts.append(json.dumps({"tags": run.tags, "config": run.run_config}, default=str))
            for record in instance.all_logs(run.run_id):
                texts.append(record.user_message or "")
                if record.dagster_event is not None:
                    texts.append(dg.serialize_value(record.dagster_event))
    finally:
        instance.dispose()
    assert any("raw_catalog" in t for t in texts)  # the log was read at all
    return texts


def test_a_refresh_leaks_no_secret_anywhere(tmp_path: Path, zygote: Zygote, mediacms: FakeMediaCMS,
                                            nats_auth: NatsProcess) -> None:
    data_dir = tmp_path / "data"
    bucket = "sec_" + uuid.uuid4().hex[:10]
    env = cli_environment(data_dir, KRYTEN_SOURCE="mediacms", MEDIACMS_URL=mediacms.url, MEDIACMS_USERNAME="kryten",
                          NATS_URL=nats_auth.url, NATS_USER="kryten", KRYTEN_KV_BUCKET=bucket,
                          MEDIACMS_DB_URL="postgresql://kryten@127.0.0.1:1/mediacms", **SECRETS)
    outputs: list[tuple[str, str]] = []
    for args in (("refresh",), ("status", "--json"), ("snapshots", "--json"), ("search", "amber")):
        result = zygote.run(tmp_path, *args, env=env)
        assert result.returncode == 0, result.stderr[-2000:]
        outputs.append((" ".join(args), result.stdout + result.stderr))
    assert "source: mediacms:" in outputs[0][1]  # the source really was MediaCMS
    assert any(r.authorization == "token" for r in mediacms.log)  # with the token

    found: list[str] = []
    for command, text in outputs:
        found += leaks(text, f"the output of `kryten-pipeline {command}`")
    for text in _event_log_texts(data_dir / ".dagster_home"):
        found += leaks(text, "the Dagster event log")
    for value in _kv_values(nats_auth.url, bucket):
        found += leaks(value, "a KV value")
    # Every file the refresh wrote: the snapshot files, rejects, the Dagster instance (runs, event logs, the
    # IO manager's pickles) — and the NATS server's own store.
    files = [p for p in data_dir.rglob("*") if p.is_file()] + [p for p in nats_auth.store.rglob("*") if p.is_file()]
    assert any(p.name == "catalog.sqlite3" for p in files)
    for path in files:
        found += leaks(path.read_bytes(), str(path.relative_to(tmp_path)))
    assert found == []


def test_data_dir_and_snapshot_files_are_not_world_accessible(tmp_path: Path, zygote: Zygote) -> None:
    data_dir = tmp_path / "fresh" / "data"  # neither exists yet: the CLI creates both
    old_umask = os.umask(0o022)  # the usual default: what mkdir and open would otherwise grant the world
    try:
        env = cli_environment(data_dir, KRYTEN_SOURCE="export")  # the sample: it has rejected rows
        result = zygote.run(tmp_path, "refresh", "--quiet", env=env)
    finally:
        os.umask(old_umask)
    assert result.returncode == 0, result.stderr[-2000:]
    ns_dir = data_dir / "default"
    checked = [data_dir, data_dir / ".dagster_home", ns_dir, ns_dir / "snapshots", ns_dir / "catalog.sqlite3",
               *ns_dir.glob("snapshots/*.sqlite3"), ns_dir / "rejects", *ns_dir.glob("rejects/*.jsonl")]
    assert len(checked) >= 8
    for path in checked:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o007 == 0, f"{path} is world-accessible ({oct(mode)})"


def test_credentials_in_urls_are_scrubbed_from_errors(tmp_path: Path, zygote: Zygote, mediacms: FakeMediaCMS,
                                                      nats_auth: NatsProcess) -> None:
    password = SECRETS["MEDIACMS_PASSWORD"]
    host = mediacms.url.removeprefix("http://")
    # Credentials written into MEDIACMS_URL are used (the server needs them) but never shown.
    env = cli_environment(tmp_path / "data", KRYTEN_SOURCE="mediacms", MEDIACMS_URL=f"http://kryten:{password}@{host}",
                          MEDIACMS_RETRIES="1", NATS_URL=nats_auth.url, NATS_USER="kryten",
                          NATS_PASSWORD=SECRETS["NATS_PASSWORD"])
    mediacms.inject("status", path="/api/", status=503, times=10_000)
    try:
        failed = zygote.run(tmp_path, "refresh", "--json", env=env)
    finally:
        with mediacms.lock:
            mediacms.faults.clear()
    assert failed.returncode == 1
    line = last_error_line(failed.stderr)
    assert f"http://{host}" in line and "MEDIACMS" in line, line
    summary: dict[str, Any] = json.loads(failed.stdout)
    assert leaks(failed.stdout + failed.stderr, "the output") == []
    assert leaks(json.dumps(summary), "the summary") == []
    for text in _event_log_texts(tmp_path / "data" / ".dagster_home"):
        assert leaks(text, "the Dagster event log") == []

    # The same for NATS: a URL with credentials, nobody listening.
    nats_url = f"nats://kryten:{SECRETS['NATS_PASSWORD']}@127.0.0.1:{free_port()}"
    down = zygote.run(tmp_path, "refresh", env={**env, "NATS_URL": nats_url, "KRYTEN_SOURCE": "fake"})
    assert down.returncode == 1
    line = last_error_line(down.stderr)
    assert "NATS_URL" in line and "nats://127.0.0.1:" in line, line
    assert leaks(down.stdout + down.stderr, "the output") == []
