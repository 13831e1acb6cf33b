"""A real ``redis-server`` on a random loopback port for the event-stream tests (skipped only if not installed)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

START_TIMEOUT_S = 10.0


def find_redis_server() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    return "/usr/bin/redis-server" if Path("/usr/bin/redis-server").is_file() else None


@dataclass
class RunningRedis:
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis_server(workdir: Path) -> RunningRedis:
    binary = find_redis_server()
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    last_error = ""
    for _attempt in range(5):  # a port picked free may be taken before redis binds it: try another
        port = _free_port()
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(redis.exceptions.RedisError):
                if redis.Redis(host="127.0.0.1", port=port, socket_timeout=1).ping():
                    return RunningRedis(port, process)
            time.sleep(0.02)
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        last_error = (process.stderr.read() if process.stderr else b"").decode("utf-8", "replace")[-500:]
    raise RuntimeError(f"redis-server did not start: {last_error}")


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRedis]:
    server = start_redis_server(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def stream_key() -> str:
    """A fresh stream per test, so tests sharing one server stay independent."""
    return f"catalog:events:{uuid.uuid4().hex[:10]}"
