"""The container's entrypoint, verified without Docker: the Dockerfile's own command starts the gRPC code
server on a loopback port, and ``deploy/workspace.yaml`` loads the code location from it.

The helpers here (clean environment, managed subprocesses, starting the code server) are shared with
``test_deploy_postgres_instance.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sysconfig
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEPLOY_DIR = PROJECT_ROOT / "deploy"
DEPLOY_WORKSPACE = DEPLOY_DIR / "workspace.yaml"
DOCKERFILE = PROJECT_ROOT / "Dockerfile"
CODE_SERVER_READY = "Started Dagster code proxy server"
CODE_SERVER_START_TIMEOUT_S = 120.0
CLI_TIMEOUT_S = 180.0
# Variables of the project, of Dagster and of the connectors: a test process gets only the ones it sets.
SCRUBBED_PREFIXES = ("KRYTEN_", "NATS_", "DAGSTER_", "MEDIACMS_", "CONTENT_SERVICE_", "SERVICE_AUTH_TOKEN")

REFRESH_ASSETS = ("raw_catalog", "validated_items", "sqlite_snapshot", "kv_published")


def venv_script(name: str) -> str:
    """A console script of this interpreter's environment (``.venv/bin/dagster``), else from PATH."""
    candidate = Path(sysconfig.get_path("scripts")) / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed in this environment")
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**values: str) -> dict[str, str]:
    """This process's environment without any project/Dagster/NATS variables, plus ``values``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(SCRUBBED_PREFIXES)}
    env.update(values)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return f"--- last lines of {path.name} ---\n" + "\n".join(text.splitlines()[-lines:])


@dataclass
class ManagedProcess:
    """A subprocess in its own process group (so its children — code servers, run workers — stop with it)."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return log_tail(self.log_path)

    def terminate(self) -> None:
        """Ask the whole group to stop (SIGTERM) without waiting; ``stop`` waits and escalates."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)

    def stop(self, timeout: float = 15.0) -> None:
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)  # the group this process leads (start_new_session)
            try:
                self.proc.wait(timeout=wait)
                # The leader is gone; make sure no child of its group outlives it.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                return
            except subprocess.TimeoutExpired:
                continue


@contextlib.contextmanager
def managed_process(
    name: str, argv: Sequence[str], *, env: Mapping[str, str], cwd: Path, log_dir: Path
) -> Iterator[ManagedProcess]:
    log_path = log_dir / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            list(argv), env=dict(env), cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    managed = ManagedProcess(name, proc, log_path)
    try:
        yield managed
    finally:
        managed.stop()


def entrypoint_argv(host: str, port: int) -> list[str]:
    """The image's command (the Dockerfile's CMD), with its listen address replaced by ``host``/``port``."""
    match = re.search(r"^CMD\s+(\[.*\])\s*$", DOCKERFILE.read_text(), re.MULTILINE)
    assert match, "the Dockerfile has no exec-form CMD [...]"
    argv = json.loads(match.group(1))
    assert argv[:5] == ["dagster", "code-server", "start", "-m", "kryten_pipeline.definitions"], argv
    for flag, value in (("-h", host), ("-p", str(port))):
        assert flag in argv, f"the entrypoint sets no {flag}"
        argv[argv.index(flag) + 1] = value
    argv[0] = venv_script("dagster")
    return argv


@contextlib.contextmanager
def running_code_server(*, port: int, env: Mapping[str, str], cwd: Path, log_dir: Path) -> Iterator[ManagedProcess]:
    """The container entrypoint on 127.0.0.1:``port``; yields once the code location has loaded."""
    argv = entrypoint_argv("127.0.0.1", port)
    with managed_process("code-server", argv, env=env, cwd=cwd, log_dir=log_dir) as server:
        deadline = time.monotonic() + CODE_SERVER_START_TIMEOUT_S
        while True:
            if CODE_SERVER_READY in server.log_path.read_text(errors="replace"):
                break
            if not server.alive():
                pytest.fail(f"the code server exited ({server.proc.returncode}) before serving\n{server.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"the code server did not finish loading in {CODE_SERVER_START_TIMEOUT_S:.0f} s\n"
                            f"{server.log()}")
            time.sleep(0.2)
        yield server


def run_cli(argv: Sequence[str], *, env: Mapping[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)


REPOSITORY_QUERY = """
{ repositoriesOrError { __typename
    ... on RepositoryConnection { nodes { name location { name } jobs { name } assetNodes { assetKey { path } } } }
    ... on PythonError { message } } }
"""


@pytest.mark.slow
def test_code_server_entrypoint_serves_the_code_location(tmp_path: Path) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    port = free_port()
    env = clean_env(
        DAGSTER_HOME=str(home),
        KRYTEN_DATA_DIR=str(tmp_path / "data"),
        KRYTEN_SOURCE="fake",
        KRYTEN_CODE_SERVER_HOST="127.0.0.1",
        KRYTEN_CODE_SERVER_PORT=str(port),
    )
    with running_code_server(port=port, env=env, cwd=tmp_path, log_dir=tmp_path) as server:
        # Two clients side by side: the image's HEALTHCHECK command, and a GraphQL query that loads the
        # location through deploy/workspace.yaml (gRPC), as the webserver and the daemon do.
        health = subprocess.Popen(
            [venv_script("dagster"), "api", "grpc-health-check", "-h", "127.0.0.1", "-p", str(port)],
            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        try:
            listing = run_cli(
                [venv_script("dagster-graphql"), "-w", str(DEPLOY_WORKSPACE), "-t", REPOSITORY_QUERY],
                env=env, cwd=tmp_path,
            )
            health_out, _ = health.communicate(timeout=CLI_TIMEOUT_S)
        finally:
            if health.poll() is None:
                health.kill()
                health.wait()
        assert server.alive(), server.log()

    assert health.returncode == 0, health_out
    assert listing.returncode == 0, listing.stdout + listing.stderr
    result = json.loads(listing.stdout)
    repositories = result["data"]["repositoriesOrError"]
    assert repositories["__typename"] == "RepositoryConnection", repositories
    (repo,) = repositories["nodes"]
    assert repo["location"]["name"] == "kryten_pipeline"
    jobs = {job["name"] for job in repo["jobs"]}
    assert {"refresh_catalog", "check_kv_current_matches_sqlite"} <= jobs
    assets = {"/".join(node["assetKey"]["path"]) for node in repo["assetNodes"]}
    assert set(REFRESH_ASSETS) <= assets


def test_dockerfile_builds_from_what_dockerignore_lets_in() -> None:
    """Static checks of the image recipe (Docker itself cannot run here)."""
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM \$\{PYTHON_IMAGE\}$", text, re.MULTILINE)
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in text
    assert re.search(r"^USER kryten$", text, re.MULTILINE), "the image must not run as root"
    allowed = [line[1:] for line in (PROJECT_ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")]
    for match in re.finditer(r"^COPY (?!--from)(?:--\S+ )*(.+) (\S+)$", text, re.MULTILINE):
        for source in match.group(1).split():
            assert source in allowed, f"COPY {source} is excluded by .dockerignore"
            assert (PROJECT_ROOT / source).exists(), source
