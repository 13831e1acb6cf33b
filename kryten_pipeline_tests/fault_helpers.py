"""Shared by the fault-injection tests: run the real CLI, read KV and the live file, check the invariants.

The invariants (README "Reliability"):
- ``catalog.sqlite3`` opens read-only and passes ``integrity_check``; it is wholly one snapshot (every row
  carries ``snapshot_meta.snapshot_id``, the row and FTS counts equal ``snapshot_meta.item_count``);
- KV ``current`` is the old value, or names a snapshot whose kept file exists and matches it (id, item
  count, sha256); it never moves to an older snapshot id;
- every kept file under ``snapshots/`` is a complete, verified snapshot;
- after the next successful refresh: ``status`` is consistent and no temp file is left.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from kryten_pipeline.connectors.fake import FakeConnector
from kryten_pipeline.kv.embedded_nats import find_nats_server_binary, nats_url_answers
from kryten_pipeline.kv.store import snapshot_store
from kryten_pipeline.settings import Settings
from kryten_pipeline.snapshot.files import (
    list_kept_snapshots,
    live_db_path,
    namespace_dir,
    verify_snapshot_db,
)
from kryten_pipeline.snapshot.recovery import kept_file_problems
from kryten_pipeline.snapshot.status import read_snapshot_status

CLI_TIMEOUT_S = 240
TEMP_FILE = re.compile(r"\.tmp\b|\.tmp\.|\.copy$|\.download$|-journal$")


def cli_environment(data_dir: Path, **env: str | None) -> dict[str, str]:
    """The test process's environment without any kryten/NATS/MediaCMS setting, plus ``env`` (None: unset)."""
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith(("KRYTEN_", "NATS_", "MEDIACMS_", "SERVICE_AUTH", "CONTENT_SERVICE_"))}
    environ.pop("DAGSTER_HOME", None)
    environ["KRYTEN_DATA_DIR"] = str(data_dir)
    for key, value in env.items():
        if value is None:
            environ.pop(key, None)
        else:
            environ[key] = value
    return environ


def run_cli(workdir: Path, *args: str, env: dict[str, str], timeout: float = CLI_TIMEOUT_S,
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kryten_pipeline.cli", *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=timeout)


def start_cli(workdir: Path, *args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "kryten_pipeline.cli", *args], cwd=workdir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def settings_for(data_dir: Path, nats_url: str | None, bucket: str | None = None, **extra: str) -> Settings:
    values: dict[str, Any] = {"data_dir": str(data_dir), "nats_url": nats_url, **extra}
    if bucket:
        values["kv_bucket"] = bucket
    return Settings.from_mapping(values)


def read_kv(settings: Settings, namespace: str = "default") -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """KV current's value (or None) and every snapshot record of the namespace."""

    async def read() -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        async with snapshot_store(settings) as store:
            entry = await store.read_current(namespace)
            records = await store.list_snapshots(namespace)
        return (entry.value if entry else None), records

    return asyncio.run(read())


def status_of(settings: Settings, namespace: str = "default") -> dict[str, Any]:
    """What ``kryten-pipeline status --json`` prints (the same function), without a process start."""
    return asyncio.run(read_snapshot_status(settings, namespace))


def inspect_live(data_dir: Path, namespace: str = "default") -> tuple[str | None, int | None, list[str]]:
    """(snapshot id, item count, violations) of the live file, opened read-only as readers do."""
    path = live_db_path(data_dir, namespace)
    if not path.exists():
        return None, None, [f"no live file at {path}"]
    problems: list[str] = []
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
            if integrity != "ok":
                problems.append(f"integrity_check: {integrity}")
            meta = dict(conn.execute("SELECT key, value FROM snapshot_meta").fetchall())
            snapshot_id = meta.get("snapshot_id")
            count = conn.execute("SELECT count(*) FROM catalog_item").fetchone()[0]
            fts = conn.execute("SELECT count(*) FROM catalog_fts").fetchone()[0]
            foreign = conn.execute("SELECT count(*) FROM catalog_item WHERE snapshot_id IS NOT ?",
                                   (snapshot_id,)).fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return None, None, [f"live file unreadable: {exc}"]
    if foreign:
        problems.append(f"{foreign} rows carry another snapshot_id than snapshot_meta's {snapshot_id} (a mix)")
    if str(count) != meta.get("item_count"):
        problems.append(f"{count} rows but snapshot_meta.item_count {meta.get('item_count')}")
    if fts != count:
        problems.append(f"{fts} FTS rows but {count} items")
    return snapshot_id, count, problems


def kept_files_violations(data_dir: Path, namespace: str = "default") -> list[str]:
    """Every kept file must be a complete snapshot (kept files are links to verified builds, never partial)."""
    problems: list[str] = []
    for snapshot_id in list_kept_snapshots(data_dir, namespace):
        path = namespace_dir(data_dir, namespace) / "snapshots" / f"{snapshot_id}.sqlite3"
        report = verify_snapshot_db(path, expected_snapshot_id=snapshot_id)
        problems += [f"kept {snapshot_id}: {p}" for p in report.problems]
    return problems


def current_violations(data_dir: Path, current: dict[str, Any] | None, old: dict[str, Any] | None,
                       namespace: str = "default") -> list[str]:
    """KV current is the old value, or names a newer snapshot whose kept file matches it."""
    if current == old:
        return []
    if current is None:
        return ["KV current disappeared"]
    problems = [f"KV current names {current.get('snapshot_id')}: {p}"
                for p in kept_file_problems(data_dir, namespace, current)]
    if old is not None and str(current.get("snapshot_id")) < str(old.get("snapshot_id")):
        problems.append(f"KV current went backwards: {old.get('snapshot_id')} → {current.get('snapshot_id')}")
    return problems


def temp_files(data_dir: Path, namespace: str = "default") -> list[str]:
    """Half-written files: build temp files, kept-file copies, rejects temp files, SQLite journals."""
    folder = namespace_dir(data_dir, namespace)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.rglob("*"):
        if path.is_file() and TEMP_FILE.search(path.name):
            found.append(str(path.relative_to(folder)))
    return sorted(found)


def write_fake_export(path: Path, count: int, *, bad: int = 0) -> Path:
    """The fake source's first ``count`` items as JSON Lines (same ids), plus ``bad`` rows validation rejects."""
    fake = FakeConnector(count)
    with path.open("w", encoding="utf-8") as handle:
        for index in range(count):
            item = fake.item(index)
            handle.write(json.dumps({"video_id": item.video_id, "title": item.title,
                                     "categories": item.categories, "duration_seconds": item.duration_seconds,
                                     "thumbnail_url": item.thumbnail_url}, ensure_ascii=False) + "\n")
        for index in range(bad):
            handle.write(json.dumps({"video_id": f"bad id {index}", "title": "rejected"}) + "\n")
    return path


async def copy_bucket(url: str, source: str, target: str, rewrite: tuple[str, str] | None = None) -> None:
    """Copy every key of one KV bucket into a new one (snapshot records first, then ``current``)."""
    async with snapshot_store(settings_for(Path("."), url, source)) as src:
        kv = await src.ensure_bucket()
        keys = sorted(await kv.keys(), key=lambda k: (k.endswith("/current"), k))
        values = [(key, (await kv.get(key)).value) for key in keys]
    async with snapshot_store(settings_for(Path("."), url, target)) as dst:
        kv = await dst.ensure_bucket()
        for key, value in values:
            if rewrite is not None:
                value = value.replace(rewrite[0].encode(), rewrite[1].encode())
            await kv.put(key, value)


def unfinished_runs(data_dir: Path) -> list[tuple[str, str]]:
    """(run_id, status) of runs the CLI's instance (``{data_dir}/.dagster_home``) still shows as not finished."""
    runs_db = data_dir / ".dagster_home" / ".dagster" / "history" / "runs.db"
    conn = sqlite3.connect(f"file:{runs_db}?mode=ro", uri=True)
    try:
        return conn.execute(
            "SELECT run_id, status FROM runs WHERE status IN ('STARTED', 'STARTING', 'NOT_STARTED')"
        ).fetchall()
    finally:
        conn.close()


def read_current_entry(settings: Settings, namespace: str = "default") -> tuple[dict[str, Any] | None, int | None]:
    """KV current's value and revision (None, None when there is none)."""

    async def read() -> tuple[dict[str, Any] | None, int | None]:
        async with snapshot_store(settings) as store:
            entry = await store.read_current(namespace)
        return (entry.value, entry.revision) if entry else (None, None)

    return asyncio.run(read())


def last_error_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.startswith("error: ")]
    return lines[-1] if lines else stderr.strip()[-500:]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class NatsProcess:
    """A nats-server with JetStream on a fixed loopback port and store, which a test can stop and start again."""

    def __init__(self, store: Path, *extra_args: str) -> None:
        self.store = store
        self.port = free_port()
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsProcess:
        self.store.mkdir(parents=True, exist_ok=True)
        log = open(self.store / "nats-server.log", "ab")  # noqa: SIM115  (the child keeps it)
        self.proc = subprocess.Popen(
            [find_nats_server_binary(), "-js", "-sd", str(self.store), "-a", "127.0.0.1", "-p", str(self.port),
             *self.extra_args], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 15
        while not nats_url_answers(self.url):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nats-server did not start on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
