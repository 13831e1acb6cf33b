"""Screenshots of the Dagster UI for the README: the asset pages and the checks tab, in headless Chromium.

    apt-get install chromium          # Debian's package: /usr/bin/chromium
    .venv/bin/python scripts/ui_screenshots.py [--out docs/ui] [--url http://127.0.0.1:3000]

Without ``--url`` it builds a demo on a temporary instance first: two namespaces refreshed with the CLI (the
shipped sample as ``default``, the fake source as ``beta``), ``dagster dev`` (webserver + daemon) on a free
loopback port, and a drift-check run per namespace launched through GraphQL, so each page has something to show.
With ``--url`` it photographs a UI that is already running (and marks its "join the community" dialog as seen,
through the GraphQL mutation the dialog's own "Skip" button sends).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
]
# (file name, page path): the pages a data engineer opens first.
PAGES = [
    ("asset-validated-items.png", "/assets/validated_items?partition=default"),
    ("asset-sqlite-snapshot.png", "/assets/sqlite_snapshot?partition=default"),
    ("asset-kv-published-checks.png", "/assets/kv_published?view=checks"),
    ("asset-graph.png", "/asset-groups/catalog~kryten_pipeline@__repository__"),
]
LAUNCH = """
mutation($params: ExecutionParams!) { launchRun(executionParams: $params) { __typename
  ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }
"""
RUN_STATUS = "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def graphql(url: str, query: str, **variables: Any) -> dict[str, Any]:
    body = httpx.post(f"{url}/graphql", json={"query": query, "variables": variables}, timeout=60).json()
    if "errors" in body:
        raise SystemExit(f"GraphQL error: {body['errors']}")
    return body["data"]


def wait_until_loaded(url: str, proc: subprocess.Popen[bytes], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("dagster dev exited before serving")
        with contextlib.suppress(httpx.HTTPError, KeyError, TypeError, SystemExit):
            repos = graphql(url, "{ repositoriesOrError { ... on RepositoryConnection { nodes { name } } } }")
            if repos["repositoriesOrError"]["nodes"]:
                return
        time.sleep(0.5)
    raise SystemExit(f"the code location did not load in {timeout:.0f} s")


@contextlib.contextmanager
def demo_ui(workdir: Path) -> Iterator[str]:
    """A temporary instance with two refreshed namespaces and their drift checks, served by dagster dev."""
    home = workdir / "home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KRYTEN_", "NATS_", "DAGSTER_", "REDIS_"))}
    env.update(DAGSTER_HOME=str(home), KRYTEN_DATA_DIR=str(workdir / "data"), KRYTEN_NAMESPACES="default,beta")
    for namespace, source in (("default", "export"), ("beta", "fake")):
        print(f"refreshing {namespace} ({source})", flush=True)
        subprocess.run([str(BIN / "kryten-pipeline"), "refresh", "--namespace", namespace, "--source", source,
                        "--quiet"], env=env, cwd=home, check=True, stdout=subprocess.DEVNULL)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(workdir / "dagster-dev.log", "wb")  # noqa: SIM115 - closed below, after the process
    proc = subprocess.Popen([str(BIN / "dagster"), "dev", "-w", str(PROJECT_ROOT / "workspace.yaml"),
                             "-h", "127.0.0.1", "-p", str(port)], env=env, cwd=home, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_loaded(url, proc)
        run_ids = [launch_drift_check(url, namespace) for namespace in ("default", "beta")]
        for run_id in run_ids:
            wait_for_run(url, run_id)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def launch_drift_check(url: str, namespace: str) -> str:
    params = {
        "selector": {"repositoryLocationName": "kryten_pipeline", "repositoryName": "__repository__",
                     "jobName": "check_kv_current_matches_sqlite"},
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": namespace}]},
        "runConfigData": {},
    }
    result = graphql(url, LAUNCH, params=params)["launchRun"]
    if result["__typename"] != "LaunchRunSuccess":
        raise SystemExit(f"could not launch the drift check of {namespace}: {result}")
    return str(result["run"]["runId"])


def wait_for_run(url: str, run_id: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = graphql(url, RUN_STATUS, id=run_id)["runOrError"].get("status")
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            return
        time.sleep(1)
    raise SystemExit(f"run {run_id} did not finish in {timeout:.0f} s")


def screenshot(chromium: str, url: str, out: Path, *, width: int, height: int, budget_ms: int) -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
                        f"--virtual-time-budget={budget_ms}", f"--screenshot={out}", url],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
    print(f"{out} ({out.stat().st_size / 1024:.0f} KiB) ← {url}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "docs" / "ui", help="folder for the PNG files")
    parser.add_argument("--url", help="a running Dagster UI (default: start a demo instance)")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--size", default="1600x1000", help="window size WxH")
    parser.add_argument("--budget-ms", type=int, default=20000, help="virtual time the page gets to load")
    args = parser.parse_args(argv)
    if not Path(args.chromium).exists():
        raise SystemExit(f"{args.chromium} not found: install Debian's chromium (apt-get install chromium)")
    width, height = (int(part) for part in args.size.split("x"))
    args.out.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        url = args.url.rstrip("/") if args.url else stack.enter_context(
            demo_ui(Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kryten-ui-")))))
        # The UI greets a loopback origin with a newsletter dialog until the instance records it as seen.
        graphql(url, "mutation { setNuxSeen }")
        for name, path in PAGES:
            screenshot(args.chromium, url + path, args.out / name, width=width, height=height,
                       budget_ms=args.budget_ms)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
