"""The admin endpoint's HTTP behaviour: Starlette's test client for the routes, a real uvicorn server on a loopback
port for what only a socket shows (TLS, malformed HTTP, huge and slow bodies, stopping with a request in flight).

The refresh itself through the endpoint is tested in ``test_refresh_triggers.py``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import httpx
import pytest
from starlette.testclient import TestClient

from kryten_pipeline.errors import ConfigurationError
from kryten_pipeline.settings import Settings
from kryten_pipeline.triggers.admin_app import MAX_BODY_BYTES, AdminServer, build_admin_app
from kryten_pipeline.triggers.refresh import RefreshLauncher
from kryten_pipeline_tests.tls_helpers import make_pki

TOKEN = "admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def admin_settings(tmp_path: Path, **values: str) -> Settings:
    # NATS on a port nothing listens on: /status must answer 503, not hang.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    return Settings.from_mapping({"data_dir": str(tmp_path / "data"), "namespaces": "default", "admin_port": "0",
                                  "admin_token": TOKEN, "nats_url": f"nats://127.0.0.1:{dead_port}", **values})


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[RefreshLauncher]:
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        launcher = RefreshLauncher(instance, admin_settings(tmp_path))
        yield launcher
        launcher.shutdown()
        assert not instance.get_runs()  # none of these requests may launch a refresh


def test_routes_auth_and_errors_are_json(tmp_path: Path, launcher: RefreshLauncher) -> None:
    client = TestClient(build_admin_app(admin_settings(tmp_path), launcher))
    assert client.get("/healthz").json() == {"ok": True}
    missing = client.post("/refresh")
    assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Bearer")
    assert "bearer token" in missing.json()["error"]
    assert client.post("/refresh", headers={"Authorization": "Bearer wrong-token-0123456789"}).status_code == 403
    assert client.get("/status", headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
    unknown = client.post("/refresh", params={"namespace": "nope"}, headers=AUTH)
    assert unknown.status_code == 400 and "nope" in unknown.json()["error"]
    assert client.post("/refresh", params={"namespace": "../x"}, headers=AUTH).status_code == 400
    assert client.get("/runs/no-such-run", headers=AUTH).json() == {"error": "no run no-such-run"}
    nowhere = client.get("/nowhere", headers=AUTH)
    assert nowhere.status_code == 404 and "POST /refresh" in nowhere.json()["error"]
    wrong_method = client.get("/refresh", headers=AUTH)
    assert wrong_method.status_code == 405 and wrong_method.json() == {"error": "GET is not allowed on /refresh"}
    assert client.post("/status", headers=AUTH).status_code == 405
    down = client.get("/status", headers=AUTH)
    assert down.status_code == 503 and "NATS" in down.json()["error"]
    big = client.post("/refresh", headers=AUTH, content=b"x" * (MAX_BODY_BYTES + 1))
    assert big.status_code == 413 and "body" in big.json()["error"]
    for response in (missing, unknown, nowhere, wrong_method, big):
        assert response.headers["content-type"].startswith("application/json")
        assert response.headers["cache-control"] == "no-store"
        assert TOKEN not in response.text


def raw_exchange(server: AdminServer, payload: bytes, *, wait_s: float = 10.0) -> bytes:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=wait_s) as conn:
        # The server may answer and close before taking it all (a head over the limit): then read the answer.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            conn.sendall(payload)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks) and b"connection: close" in b"".join(chunks).lower():
                break
        return b"".join(chunks)


def test_a_real_server_answers_malformed_huge_and_slow_requests(tmp_path: Path, launcher: RefreshLauncher) -> None:
    settings = admin_settings(tmp_path)
    with AdminServer(settings, launcher, body_timeout_s=0.5) as server:
        assert server.url.startswith("http://127.0.0.1:") and not server.exposed
        # Not HTTP at all: uvicorn's parser answers 400 and closes.
        assert raw_exchange(server, b"THIS IS NOT HTTP\r\n\r\n").startswith(b"HTTP/1.1 400")
        # A request head far past the parser's limit (it arrives in several reads, so it is seen incomplete).
        huge_header = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n"
        assert raw_exchange(server, huge_header).startswith(b"HTTP/1.1 4")
        # A declared body over the limit is refused before it is read.
        declared = (f"POST /refresh HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                    f"Content-Length: {10 * MAX_BODY_BYTES}\r\n\r\n").encode()
        assert raw_exchange(server, declared).startswith(b"HTTP/1.1 413")
        # A body that stops arriving: 408 after the body timeout, not a held worker.
        started = time.monotonic()
        slow = (f"POST /refresh HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                "Content-Length: 100\r\n\r\n0123456789").encode()
        answer = raw_exchange(server, slow)
        assert answer.startswith(b"HTTP/1.1 408") and time.monotonic() - started < 8
        # The server still answers normally afterwards.
        with httpx.Client(base_url=server.url, timeout=10) as http:
            assert http.get("/healthz").json() == {"ok": True}
            assert "server" not in http.get("/healthz").headers  # no version banner


def test_stop_answers_the_request_in_flight_then_refuses_connections(tmp_path: Path,
                                                                   launcher: RefreshLauncher) -> None:
    server = AdminServer(admin_settings(tmp_path), launcher, body_timeout_s=1.5).start()
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    conn = socket.create_connection((host, int(port)), timeout=10)
    conn.sendall((f"POST /refresh HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                  "Content-Length: 10\r\n\r\n01234").encode())  # in flight: half its body sent
    time.sleep(0.3)
    stopper = threading.Thread(target=server.stop)
    stopper.start()
    answer = conn.recv(65536)
    conn.close()
    stopper.join(timeout=20)
    assert not stopper.is_alive()
    assert answer.startswith(b"HTTP/1.1 408")  # answered, not cut off
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=2).close()


def test_https_with_the_configured_certificate(tmp_path: Path, launcher: RefreshLauncher) -> None:
    pki = make_pki(tmp_path)
    settings = admin_settings(tmp_path, admin_tls_cert=str(pki["server.crt"]), admin_tls_key=str(pki["server.key"]))
    with AdminServer(settings, launcher) as server:
        assert server.url.startswith("https://127.0.0.1:")
        with httpx.Client(base_url=server.url, verify=str(pki["ca.crt"]), timeout=10) as http:
            assert http.get("/healthz").json() == {"ok": True}
            assert http.get("/runs/x", headers=AUTH).status_code == 404
        with pytest.raises(httpx.ConnectError), httpx.Client(base_url=server.url, timeout=10) as untrusting:
            untrusting.get("/healthz")  # the throw-away CA is not in the system store


def test_bad_tls_and_port_settings_stop_the_start_naming_the_setting(tmp_path: Path,
                                                                    launcher: RefreshLauncher) -> None:
    pki = make_pki(tmp_path)
    with pytest.raises(ConfigurationError) as half:
        AdminServer(admin_settings(tmp_path, admin_tls_cert=str(pki["server.crt"])), launcher)
    assert half.value.setting == "KRYTEN_ADMIN_TLS_KEY"
    with pytest.raises(ConfigurationError) as wrong_key:
        AdminServer(admin_settings(tmp_path, admin_tls_cert=str(pki["server.crt"]),
                                   admin_tls_key=str(pki["client.key"])), launcher)
    assert wrong_key.value.setting == "KRYTEN_ADMIN_TLS_CERT"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigurationError) as busy:
            AdminServer(admin_settings(tmp_path, admin_port=str(port)), launcher)
    assert busy.value.setting == "KRYTEN_ADMIN_PORT" and str(port) in str(busy.value)


def test_the_serve_admin_command_answers_then_stops_on_sigterm(tmp_path: Path) -> None:
    """The user's path: the installed ``kryten-pipeline serve-admin``, on a free port, stopped with SIGTERM."""
    import os
    import re
    import shutil
    import signal
    import subprocess
    import sys

    command = shutil.which("kryten-pipeline", path=str(Path(sys.executable).parent))
    assert command, "the kryten-pipeline command is installed with the project"
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("KRYTEN_", "NATS_", "MEDIACMS_"))}
    environ.pop("DAGSTER_HOME", None)
    environ.update({"KRYTEN_DATA_DIR": str(tmp_path / "data"), "KRYTEN_ADMIN_TOKEN": TOKEN, "KRYTEN_ADMIN_PORT": "0"})
    proc = subprocess.Popen([command, "serve-admin"], cwd=tmp_path, env=environ, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        found = re.search(r"admin endpoint on (http://127\.0\.0\.1:\d+)", line)
        assert found, line
        with httpx.Client(base_url=found.group(1), timeout=10) as http:
            assert http.get("/healthz").json() == {"ok": True}
            assert http.get("/runs/none", headers=AUTH).status_code == 404
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert "stopping: waiting for running refreshes to finish" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
