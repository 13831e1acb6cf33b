"""Delivery to reader hosts: the Object Store copy of every snapshot, ``follow`` and ``pull``.

Two data dirs share nothing but a real nats-server, as two hosts: refreshes run on host A through the CLI
(forked from the zygote), the follower on host B is the installed ``kryten-pipeline`` command with only
``NATS_URL`` and the bucket names in its environment (its KRYTEN_DATA_DIR points nowhere and stays unused).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kryten_pipeline.delivery.follower import InstallTarget
from kryten_pipeline.kv.object_store import object_name
from kryten_pipeline.kv.store import snapshot_store
from kryten_pipeline.snapshot.files import file_sha256, kept_snapshot_path, live_db_path
from kryten_pipeline_tests.cli_zygote import Zygote
from kryten_pipeline_tests.fault_helpers import (
    NatsProcess,
    cli_environment,
    last_error_line,
    settings_for,
    status_of,
    temp_files,
)
from kryten_pipeline_tests.playlist_consumer import PlaylistConsumer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

KRYTEN = str(Path(sys.executable).with_name("kryten-pipeline"))


@pytest.fixture(scope="module")
def zygote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zygote]:
    runner = Zygote(tmp_path_factory.mktemp("zygote"))
    yield runner
    runner.close()


class PipelineHost:
    """Host A: a data dir refreshed through the CLI from the fake source."""

    def __init__(self, zygote: Zygote, root: Path, nats_url: str, **env: str) -> None:
        self.zygote = zygote
        self.root = root
        self.data_dir = root / "data"
        self.nats_url = nats_url
        self.kv_bucket = "kv_" + uuid.uuid4().hex[:10]
        self.object_bucket = "obj_" + uuid.uuid4().hex[:10]
        self.env = cli_environment(self.data_dir, NATS_URL=nats_url, KRYTEN_KV_BUCKET=self.kv_bucket,
                                   KRYTEN_OBJECT_BUCKET=self.object_bucket, KRYTEN_SOURCE="fake", **env)
        root.mkdir(parents=True, exist_ok=True)

    @property
    def settings(self) -> Any:
        return settings_for(self.data_dir, self.nats_url, self.kv_bucket, object_bucket=self.object_bucket)

    def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return self.zygote.run(self.root, *args, env={**self.env, **env})

    def refresh(self, items: int = 300, **env: str) -> dict[str, Any]:
        result = self.cli("refresh", "--quiet", "--json", "--allow-removals", KRYTEN_FAKE_ITEMS=str(items), **env)
        assert result.returncode == 0, result.stderr[-2000:]
        return json.loads(result.stdout)

    def current(self) -> dict[str, Any]:
        async def read() -> dict[str, Any]:
            async with snapshot_store(self.settings) as store:
                entry = await store.read_current("default")
                assert entry is not None
                return entry.value

        return asyncio.run(read())

    def objects(self) -> list[str]:
        async def read() -> list[str]:
            async with snapshot_store(self.settings) as store:
                return list(await store.objects.snapshot_objects("default"))

        return asyncio.run(read())

    def records(self) -> list[str]:
        async def read() -> list[str]:
            async with snapshot_store(self.settings) as store:
                return [r["snapshot_id"] for r in await store.list_snapshots("default")]

        return asyncio.run(read())

    def delete_object(self, snapshot_id: str) -> None:
        async def delete() -> None:
            async with snapshot_store(self.settings) as store:
                assert await store.objects.delete(object_name("default", snapshot_id))

        asyncio.run(delete())

    def replace_object(self, snapshot_id: str, path: Path) -> None:
        """Another file under the object's name: what a corrupted or tampered store looks like to a reader."""
        async def put() -> None:
            async with snapshot_store(self.settings) as store:
                await store.objects.put_file(object_name("default", snapshot_id), path, sha256=file_sha256(path))

        asyncio.run(put())


class ReaderHost:
    """Host B: only NATS and a target path; runs the installed ``kryten-pipeline follow``/``pull``."""

    def __init__(self, root: Path, pipeline: PipelineHost, nats_url: str | None = None, **env: str) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.path = root / "playlist" / "catalog.sqlite3"
        self.unused_data_dir = root / "no-data-dir"
        self.env = cli_environment(self.unused_data_dir, NATS_URL=nats_url or pipeline.nats_url,
                                   KRYTEN_KV_BUCKET=pipeline.kv_bucket, KRYTEN_OBJECT_BUCKET=pipeline.object_bucket,
                                   **env)
        self.log_path = root / "follow.log"
        self.proc: subprocess.Popen[str] | None = None

    def run(self, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([KRYTEN, *args], cwd=self.root, env={**self.env, **env}, capture_output=True,
                              text=True, timeout=timeout)

    def once(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return self.run("follow", "--once", "--to", str(self.path), *args, **env)

    def start(self, *args: str, **env: str) -> subprocess.Popen[str]:
        log = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115  (the child keeps it)
        self.proc = subprocess.Popen([KRYTEN, "follow", "--to", str(self.path), *args], cwd=self.root,
                                     env={**self.env, **env}, stdout=log, stderr=subprocess.STDOUT, text=True)
        log.close()
        return self.proc

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        self.proc = None
        return code

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8") if self.log_path.exists() else ""

    def installed(self) -> str | None:
        return InstallTarget(self.path).installed_snapshot_id()

    def wait_installed(self, snapshot_id: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.installed() != snapshot_id:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"the follower exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{snapshot_id} not installed after {timeout} s (installed: "
                                     f"{self.installed()}):\n{self.log()[-3000:]}")
            time.sleep(0.05)

    def wait_log(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not logged after {timeout} s:\n{self.log()[-3000:]}")
            time.sleep(0.05)

    def leftovers(self) -> list[str]:
        """Downloads, link temp files: anything a failed or killed install could leave."""
        found = []
        for folder in (self.path.parent, InstallTarget(self.path).versions_dir):
            if folder.is_dir():
                found += [p.name for p in folder.iterdir() if p.name.endswith((".download", ".link"))]
        return sorted(found)

    def check_installed(self, snapshot_id: str, item_count: int) -> None:
        """A fresh reader of PATH gets exactly this snapshot, complete."""
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            meta = dict(conn.execute("SELECT key, value FROM snapshot_meta").fetchall())
            assert meta["snapshot_id"] == snapshot_id
            assert conn.execute("SELECT count(*) FROM catalog_item").fetchone()[0] == item_count
            assert conn.execute("SELECT count(*) FROM catalog_fts").fetchone()[0] == item_count
        finally:
            conn.close()


def _pause_env(folder: Path, point: str, action: str = "pause") -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    return {"KRYTEN_FAULT_POINT": point, "KRYTEN_FAULT_ACTION": action, "KRYTEN_FAULT_PAUSE_DIR": str(folder)}


def _wait_file(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)


# -- the whole path --------------------------------------------------------------------------------------------


def test_refresh_on_one_host_follow_once_on_another(zygote: Zygote, nats_server: Any, tmp_path: Path) -> None:
    host_a = PipelineHost(zygote, tmp_path / "a", nats_server.url)
    summary = host_a.refresh(300)
    current = host_a.current()
    assert current["object_bucket"] == host_a.object_bucket
    assert current["object_name"] == f"ns/default/{summary['snapshot_id']}.sqlite3"
    live = live_db_path(host_a.data_dir, "default")
    assert current["size_bytes"] == live.stat().st_size and current["sqlite_sha256"] == file_sha256(live)

    host_b = ReaderHost(tmp_path / "b", host_a)
    result = host_b.once("--namespace", "default")
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert line.startswith(f"installed {summary['snapshot_id']} (300 items, {current['size_bytes']:,} bytes) at "
                           f"{host_b.path} in "), line
    assert host_b.path.read_bytes() == live.read_bytes()
    assert file_sha256(host_b.path) == current["sqlite_sha256"]
    host_b.check_installed(summary["snapshot_id"], 300)
    assert not host_b.unused_data_dir.exists(), "the follower must not need a data dir"

    status = status_of(host_a.settings)
    assert status["consistent"], status["problems"]
    assert status["object"]["present"] and status["object"]["size_bytes"] == current["size_bytes"]

    again = host_b.once("--json")
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["action"] == "already current" and report["snapshot_id"] == summary["snapshot_id"]

    # pull: one named snapshot, into another path.
    second = host_a.refresh(320)
    pulled = host_b.run("pull", "--to", str(host_b.root / "old.sqlite3"), "--snapshot", summary["snapshot_id"],
                        "--json")
    assert pulled.returncode == 0, pulled.stderr
    report = json.loads(pulled.stdout)
    assert report["action"] == "installed" and report["snapshot_id"] == summary["snapshot_id"]
    assert report["item_count"] == 300 and report["size_bytes"] == current["size_bytes"] and report["seconds"] > 0
    assert second["snapshot_id"] != summary["snapshot_id"]
    assert host_b.leftovers() == []


def test_a_running_follower_installs_every_refresh_and_a_rollback(
    zygote: Zygote, nats_server: Any, tmp_path: Path
) -> None:
    host_a = PipelineHost(zygote, tmp_path / "a", nats_server.url, KRYTEN_KEEP_SNAPSHOTS="6")
    host_b = ReaderHost(tmp_path / "b", host_a)
    hook_log = tmp_path / "hook.log"
    first = host_a.refresh(300)
    host_b.start("--profile", "kryten-playlist", "--exec",
                 f'echo "$KRYTEN_SNAPSHOT_ID $KRYTEN_SNAPSHOT_ITEMS $KRYTEN_SNAPSHOT_PATH" >> {hook_log}')
    try:
        host_b.wait_installed(first["snapshot_id"])
        # The playlist service as its code runs: read-write, WAL, its schema setup, one connection for life.
        consumer = PlaylistConsumer(host_b.path)
        assert consumer.snapshot_id() == first["snapshot_id"]
        some_id = consumer.conn.execute("SELECT video_id FROM catalog_item WHERE categories_json != '[]'").fetchone()
        assert consumer.get_item(some_id[0]) is not None and consumer.categories()
        assert consumer.enrich(40) == 40 and consumer.search("")  # enriched rows are searchable
        assert Path(f"{os.path.realpath(host_b.path)}-wal").exists(), "the consumer writes in WAL mode"
        # A plain reader holding the first snapshot open across all the installs below (in WAL mode, as the
        # consumer switched the file: its version stays on disk while the connection is open).
        old_reader = sqlite3.connect(f"file:{host_b.path}?mode=ro", uri=True)
        assert old_reader.execute("SELECT count(*) FROM catalog_item").fetchone()[0] == 300

        ids = [first["snapshot_id"]]
        for items in (310, 320, 330, 340, 350):
            summary = host_a.refresh(items)
            host_b.wait_installed(summary["snapshot_id"])
            host_b.check_installed(summary["snapshot_id"], items)
            ids.append(summary["snapshot_id"])
            if items == 310:
                # The consumer, still on the old file in WAL mode, writes and closes: the new file is untouched.
                assert consumer.enrich(60) == 60
                consumer.close()
                host_b.check_installed(summary["snapshot_id"], items)
        assert old_reader.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert old_reader.execute("SELECT count(*) FROM catalog_item").fetchone()[0] == 300
        assert old_reader.execute("SELECT value FROM snapshot_meta WHERE key='snapshot_id'").fetchone()[0] == ids[0]
        old_reader.close()

        # A rollback on host A: current goes back, and so does host B.
        rolled = host_a.cli("rollback", "--to", ids[2], "--json")
        assert rolled.returncode == 0, rolled.stderr
        host_b.wait_installed(ids[2])
        host_b.check_installed(ids[2], 320)
        # A fresh consumer starts on the installed file (profile columns present, its setup writes nothing wrong).
        fresh = PlaylistConsumer(host_b.path)
        assert fresh.snapshot_id() == ids[2] and fresh.get_item(some_id[0]) is not None
        fresh.close()
        host_b.wait_log(f"installed {ids[2]}")
    finally:
        assert host_b.stop() == 0
    hooks = hook_log.read_text().split("\n")
    assert [h.split()[0] for h in hooks if h] == [*ids, ids[2]]
    assert hooks[0].split()[1:] == ["300", str(host_b.path)]
    assert "follow: stopped" in host_b.log()
    assert host_b.leftovers() == []
    versions = [p.name for p in InstallTarget(host_b.path).versions_dir.glob("*.sqlite3")]
    assert len(versions) == 2, versions  # the installed one and the one before it


def test_follower_survives_a_nats_restart(zygote: Zygote, tmp_path: Path) -> None:
    nats = NatsProcess(tmp_path / "nats").start()
    try:
        host_a = PipelineHost(zygote, tmp_path / "a", nats.url)
        host_b = ReaderHost(tmp_path / "b", host_a)
        first = host_a.refresh(300)
        host_b.start()
        host_b.wait_installed(first["snapshot_id"])
        nats.stop()
        host_b.wait_log("NATS connection lost")
        time.sleep(1.5)
        nats.start()
        host_b.wait_log("re-established")
        second = host_a.refresh(310)
        host_b.wait_installed(second["snapshot_id"])
        host_b.check_installed(second["snapshot_id"], 310)
        assert host_b.stop() == 0
    finally:
        nats.stop()


# -- faults on the reader host ---------------------------------------------------------------------------------


def test_missing_and_corrupted_objects_leave_the_installed_file(
    zygote: Zygote, nats_server: Any, tmp_path: Path
) -> None:
    host_a = PipelineHost(zygote, tmp_path / "a", nats_server.url)
    host_b = ReaderHost(tmp_path / "b", host_a)
    first = host_a.refresh(300)
    assert host_b.once().returncode == 0
    installed_bytes = host_b.path.read_bytes()

    second = host_a.refresh(310)
    host_a.delete_object(second["snapshot_id"])
    result = host_b.once()
    assert result.returncode == 1
    line = last_error_line(result.stderr)
    assert "missing" in line and object_name("default", second["snapshot_id"]) in line, line
    assert host_b.path.read_bytes() == installed_bytes and host_b.leftovers() == []
    status = status_of(host_a.settings)
    assert not status["consistent"] and any("missing" in p for p in status["problems"])

    third = host_a.refresh(320)
    host_a.replace_object(third["snapshot_id"], kept_snapshot_path(host_a.data_dir, "default", first["snapshot_id"]))
    result = host_b.once()
    assert result.returncode == 1 and "digest mismatch" in last_error_line(result.stderr), result.stderr
    assert host_b.path.read_bytes() == installed_bytes and host_b.leftovers() == []

    # A running follower logs the failure once per attempt, retries with backoff, and takes the next snapshot.
    host_b.start()
    try:
        host_b.wait_log(f"{third['snapshot_id']} not installed")
        assert host_b.installed() == first["snapshot_id"]
        fourth = host_a.refresh(330)
        host_b.wait_installed(fourth["snapshot_id"])
        host_b.check_installed(fourth["snapshot_id"], 330)
    finally:
        assert host_b.stop() == 0
    assert host_b.leftovers() == []


def test_nats_restarted_mid_download(zygote: Zygote, tmp_path: Path) -> None:
    nats = NatsProcess(tmp_path / "nats").start()
    try:
        host_a = PipelineHost(zygote, tmp_path / "a", nats.url)
        host_b = ReaderHost(tmp_path / "b", host_a)
        first = host_a.refresh(300)
        assert host_b.once().returncode == 0
        second = host_a.refresh(3000)  # ~2.5 MB: several chunks
        pauses = tmp_path / "pauses"
        host_b.start("--stall-timeout", "3", **_pause_env(pauses, "object.fetch_chunk"))
        _wait_file(pauses / "object.fetch_chunk.reached")  # the first chunk is being written
        assert host_b.installed() == first["snapshot_id"]
        nats.stop()
        time.sleep(1.0)
        nats.start()
        (pauses / "object.fetch_chunk.resume").touch()
        host_b.wait_installed(second["snapshot_id"], timeout=90)
        host_b.check_installed(second["snapshot_id"], 3000)
        assert host_b.stop() == 0
        assert host_b.leftovers() == []
    finally:
        nats.stop()


def test_follower_killed_mid_download_then_restarted(zygote: Zygote, nats_server: Any, tmp_path: Path) -> None:
    host_a = PipelineHost(zygote, tmp_path / "a", nats_server.url)
    host_b = ReaderHost(tmp_path / "b", host_a)
    first = host_a.refresh(300)
    assert host_b.once().returncode == 0
    second = host_a.refresh(3000)
    killed = host_b.once(KRYTEN_FAULT_POINT="object.fetch_chunk", KRYTEN_FAULT_POINT_HIT="2")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert host_b.installed() == first["snapshot_id"]
    host_b.check_installed(first["snapshot_id"], 300)
    assert host_b.leftovers(), "a SIGKILL leaves its partial download"
    result = host_b.once()
    assert result.returncode == 0, result.stderr
    assert host_b.leftovers() == []
    host_b.check_installed(second["snapshot_id"], 3000)


def test_disk_full_on_the_reader_host(zygote: Zygote, nats_server: Any, tmp_path: Path) -> None:
    host_a = PipelineHost(zygote, tmp_path / "a", nats_server.url)
    host_b = ReaderHost(tmp_path / "b", host_a)
    target_dir = host_b.path.parent
    target_dir.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(target_dir)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here ({mounted.stderr.strip()})")
    try:
        first = host_a.refresh(300)  # ~0.25 MB
        assert host_b.once().returncode == 0
        installed_bytes = host_b.path.read_bytes()
        big = host_a.refresh(4000)  # ~3.3 MB: more than the filesystem holds
        result = host_b.once()
        assert result.returncode == 1
        line = last_error_line(result.stderr)
        assert "not enough disk space" in line and "--to" in line, line
        assert host_b.path.read_bytes() == installed_bytes and host_b.leftovers() == []
        # A full disk noticed only while writing (the check passed, then the space went).
        subprocess.run(["mount", "-o", "remount,size=16m", str(target_dir)], check=True)
        result = host_b.once(KRYTEN_FAULT_POINT="object.fetch_chunk", KRYTEN_FAULT_ACTION="enospc")
        assert result.returncode == 1 and "disk full" in last_error_line(result.stderr), result.stderr
        assert host_b.path.read_bytes() == installed_bytes and host_b.leftovers() == []
        assert host_b.installed() == first["snapshot_id"]
        result = host_b.once()
        assert result.returncode == 0, result.stderr
        host_b.check_installed(big["snapshot_id"], 4000)
    finally:
        subprocess.run(["umount", "-l", str(target_dir)], check=False)


def test_a_failing_hook_is_reported_not_retried(zygote: Zygote, nats_server: Any, tmp_path: Path) -> None:
    host_a = PipelineHost(zygote, tmp_path / "a", nats_server.url)
    host_b = ReaderHost(tmp_path / "b", host_a)
    first = host_a.refresh(300)
    counter = tmp_path / "calls"
    result = host_b.once("--exec", f"echo x >> {counter}; exit 3")
    assert result.returncode == 1
    assert "exited with status 3" in last_error_line(result.stderr) and "not retried" in result.stderr
    assert host_b.installed() == first["snapshot_id"]  # installed all the same
    assert counter.read_text() == "x\n"
    host_b.start("--exec", f"echo y >> {counter}; exit 4")
    try:
        second = host_a.refresh(310)
        host_b.wait_installed(second["snapshot_id"])
        host_b.wait_log("exited with status 4")
        time.sleep(2.0)
    finally:
        assert host_b.stop() == 0
    assert counter.read_text() == "x\ny\n"


def test_secrets_never_appear_in_follower_output(zygote: Zygote, tmp_path: Path) -> None:
    secret = "s3cr3t-" + uuid.uuid4().hex
    nats = NatsProcess(tmp_path / "nats", "--auth", secret).start()
    try:
        url = f"nats://127.0.0.1:{nats.port}"
        host_a = PipelineHost(zygote, tmp_path / "a", url, NATS_TOKEN=secret)
        host_a.refresh(300)
        env_dump = tmp_path / "hook-env"
        host_b = ReaderHost(tmp_path / "b", host_a, nats_url=f"nats://{secret}@127.0.0.1:{nats.port}")
        ok = host_b.once("--exec", f"env > {env_dump}")
        assert ok.returncode == 0, ok.stderr
        wrong = ReaderHost(tmp_path / "c", host_a, nats_url=f"nats://wrong-{secret}@127.0.0.1:{nats.port}")
        denied = wrong.once()
        assert denied.returncode == 1 and "authorization" in last_error_line(denied.stderr), denied.stderr
        token_env = host_b.once(NATS_URL=url, NATS_TOKEN=secret, KRYTEN_NAMESPACES="other")
        assert token_env.returncode == 1 and "no current snapshot" in last_error_line(token_env.stderr)
        for result in (ok, denied, token_env):
            assert secret not in result.stdout + result.stderr
        assert secret not in env_dump.read_text()
    finally:
        nats.stop()


# -- the pipeline side -----------------------------------------------------------------------------------------


def test_retention_removes_objects_with_their_records(zygote: Zygote, nats_server: Any, tmp_path: Path) -> None:
    host_a = PipelineHost(zygote, tmp_path / "a", nats_server.url, KRYTEN_KEEP_SNAPSHOTS="2")
    ids = [host_a.refresh(items)["snapshot_id"] for items in (300, 310, 320, 330)]
    assert host_a.records() == ids[-2:]
    assert host_a.objects() == ids[-2:]


def test_a_bucket_that_cannot_hold_the_file_fails_before_current_moves(
    zygote: Zygote, nats_server: Any, tmp_path: Path
) -> None:
    host_a = PipelineHost(zygote, tmp_path / "a", nats_server.url)
    first = host_a.refresh(300)
    before = (live_db_path(host_a.data_dir, "default").read_bytes(), host_a.current())

    async def small_bucket(name: str, max_bytes: int) -> None:
        import nats
        from nats.js.api import ObjectStoreConfig

        nc = await nats.connect(nats_server.url)
        await nc.jetstream().create_object_store(name, config=ObjectStoreConfig(max_bytes=max_bytes))
        await nc.close()

    tiny = "obj_tiny_" + uuid.uuid4().hex[:8]
    asyncio.run(small_bucket(tiny, 64 * 1024))
    result = host_a.cli("refresh", "--quiet", KRYTEN_FAKE_ITEMS="310", KRYTEN_OBJECT_BUCKET=tiny)
    assert result.returncode == 1
    line = last_error_line(result.stderr)
    assert "KRYTEN_OBJECT_BUCKET" in line and "max bytes" in line and "current was not changed" in line, line
    assert (live_db_path(host_a.data_dir, "default").read_bytes(), host_a.current()) == before
    assert temp_files(host_a.data_dir) == []

    full = "obj_full_" + uuid.uuid4().hex[:8]
    asyncio.run(small_bucket(full, 400 * 1024))  # holds one ~260 KB file, not two
    assert host_a.refresh(300, KRYTEN_OBJECT_BUCKET=full)["success"]
    before = (live_db_path(host_a.data_dir, "default").read_bytes(), host_a.current())
    result = host_a.cli("refresh", "--quiet", KRYTEN_FAKE_ITEMS="320", KRYTEN_OBJECT_BUCKET=full)
    assert result.returncode == 1
    line = last_error_line(result.stderr)
    assert "is full" in line and "KRYTEN_OBJECT_BUCKET" in line, line
    assert (live_db_path(host_a.data_dir, "default").read_bytes(), host_a.current()) == before
    assert first["snapshot_id"] < before[1]["snapshot_id"]


def test_a_kill_after_the_object_put_converges(zygote: Zygote, nats_server: Any, tmp_path: Path) -> None:
    host_a = PipelineHost(zygote, tmp_path / "a", nats_server.url, KRYTEN_KEEP_SNAPSHOTS="2")
    first = host_a.refresh(300)
    killed = host_a.cli("refresh", "--quiet", KRYTEN_FAKE_ITEMS="310", KRYTEN_FAULT_POINT="object.after_put")
    assert killed.returncode == -signal.SIGKILL
    assert host_a.current()["snapshot_id"] == first["snapshot_id"]
    orphans = [i for i in host_a.objects() if i not in host_a.records()]
    assert len(orphans) == 1, "the killed run's object is stored but named by no record"
    ids = [host_a.refresh(items)["snapshot_id"] for items in (320, 330)]
    status = status_of(host_a.settings)
    assert status["consistent"], status["problems"]
    assert host_a.objects() == host_a.records() == ids, "retention swept the orphan object"


def test_rollback_and_recovery_work_from_kv_and_the_object_alone(
    zygote: Zygote, nats_server: Any, tmp_path: Path
) -> None:
    host_a = PipelineHost(zygote, tmp_path / "a", nats_server.url)
    first = host_a.refresh(300)
    host_a.refresh(310)
    kept = kept_snapshot_path(host_a.data_dir, "default", first["snapshot_id"])
    kept.unlink()
    rolled = host_a.cli("rollback", "--to", first["snapshot_id"], "--json")
    assert rolled.returncode == 0, rolled.stderr
    assert json.loads(rolled.stdout)["restored_from"].startswith("object ")
    status = status_of(host_a.settings)
    assert status["consistent"], status["problems"]
    assert file_sha256(kept) == host_a.current()["sqlite_sha256"]

    # A pipeline host that lost its data dir gets current's file back before its next refresh.
    fresh = PipelineHost(zygote, tmp_path / "a2", nats_server.url)
    fresh.kv_bucket, fresh.object_bucket = host_a.kv_bucket, host_a.object_bucket
    fresh.env.update(KRYTEN_KV_BUCKET=host_a.kv_bucket, KRYTEN_OBJECT_BUCKET=host_a.object_bucket)
    summary = fresh.refresh(300)
    assert summary["success"] and summary["snapshot_id"] > first["snapshot_id"]
    assert kept_snapshot_path(fresh.data_dir, "default", first["snapshot_id"]).exists()


def test_published_files_are_read_only_and_independent(zygote: Zygote, nats_server: Any, tmp_path: Path) -> None:
    host_a = PipelineHost(zygote, tmp_path / "a", nats_server.url)
    first = host_a.refresh(300)
    second = host_a.refresh(310)
    live = live_db_path(host_a.data_dir, "default")
    kept = kept_snapshot_path(host_a.data_dir, "default", second["snapshot_id"])
    for path in (live, kept, kept_snapshot_path(host_a.data_dir, "default", first["snapshot_id"])):
        assert path.stat().st_mode & 0o777 == 0o440, oct(path.stat().st_mode)
        assert path.stat().st_nlink == 1
    assert live.stat().st_ino != kept.stat().st_ino
    kept_digest = file_sha256(kept)

    # Root can write anyway: a write through the live file must not reach the kept copy, and status notices it.
    conn = sqlite3.connect(live)
    conn.execute("UPDATE catalog_item SET title = 'tampered' WHERE rowid = 1")
    conn.commit()
    conn.close()
    assert file_sha256(kept) == kept_digest
    status = status_of(host_a.settings)
    assert not status["consistent"] and any("sha256" in p for p in status["problems"]), status["problems"]

    # A changed kept copy is not trusted by a rollback: its verified object copy is installed instead.
    first_kept = kept_snapshot_path(host_a.data_dir, "default", first["snapshot_id"])
    conn = sqlite3.connect(first_kept)
    conn.execute("UPDATE catalog_item SET title = 'tampered' WHERE rowid = 1")
    conn.commit()
    conn.close()
    rolled = host_a.cli("rollback", "--to", first["snapshot_id"], "--json")
    assert rolled.returncode == 0, rolled.stderr
    assert "was changed" in json.loads(rolled.stdout)["restored_from"]
    status = status_of(host_a.settings)
    assert status["consistent"], status["problems"]
    assert hashlib.sha256(live.read_bytes()).hexdigest() == host_a.current()["sqlite_sha256"]


def test_small_message_limits_are_met_with_smaller_chunks(zygote: Zygote, tmp_path: Path) -> None:
    """A server with a 64 KiB max_payload, a bucket whose stream allows 32 KiB messages: the file still goes
    in (in smaller chunks) and comes out byte for byte."""
    conf = tmp_path / "nats.conf"
    conf.write_text("max_payload: 65536\n")
    nats_proc = NatsProcess(tmp_path / "nats", "-c", str(conf)).start()
    try:
        host_a = PipelineHost(zygote, tmp_path / "a", nats_proc.url)
        first = host_a.refresh(300)
        host_b = ReaderHost(tmp_path / "b", host_a)
        assert host_b.once().returncode == 0
        assert host_b.path.read_bytes() == live_db_path(host_a.data_dir, "default").read_bytes()

        async def limit_messages(bucket: str) -> None:
            import nats

            nc = await nats.connect(nats_proc.url)
            js = nc.jetstream()
            await js.create_object_store(bucket)
            config = (await js.stream_info(f"OBJ_{bucket}")).config
            config.max_msg_size = 32 * 1024
            await js.update_stream(config)
            await nc.close()

        narrow = "obj_narrow_" + uuid.uuid4().hex[:8]
        asyncio.run(limit_messages(narrow))
        second = host_a.refresh(310, KRYTEN_OBJECT_BUCKET=narrow)
        assert second["snapshot_id"] > first["snapshot_id"]
        host_a.object_bucket = narrow
        stored = asyncio.run(_stat(host_a, second["snapshot_id"]))
        assert stored.chunks > live_db_path(host_a.data_dir, "default").stat().st_size // (32 * 1024)
        result = host_b.once(KRYTEN_OBJECT_BUCKET=narrow)
        assert result.returncode == 0, result.stderr
        assert host_b.path.read_bytes() == live_db_path(host_a.data_dir, "default").read_bytes()
    finally:
        nats_proc.stop()


async def _stat(host: PipelineHost, snapshot_id: str) -> Any:
    async with snapshot_store(host.settings) as store:
        return await store.objects.stat(object_name("default", snapshot_id))


def test_a_rollback_made_elsewhere_is_not_rolled_forward(zygote: Zygote, nats_server: Any, tmp_path: Path) -> None:
    """Host A's live file is ahead of current because current was rolled back from another data dir: that
    was a decision, not an interrupted publish, so A's next refresh installs current's file instead."""
    host_a = PipelineHost(zygote, tmp_path / "a", nats_server.url)
    first = host_a.refresh(300)
    second = host_a.refresh(310)
    other = PipelineHost(zygote, tmp_path / "other", nats_server.url)
    other.kv_bucket, other.object_bucket = host_a.kv_bucket, host_a.object_bucket
    other.env.update(KRYTEN_KV_BUCKET=host_a.kv_bucket, KRYTEN_OBJECT_BUCKET=host_a.object_bucket)
    rolled = other.cli("rollback", "--to", first["snapshot_id"])
    assert rolled.returncode == 0, rolled.stderr
    third = host_a.refresh(320)
    recovery = third["steps"]["raw_catalog"]["metadata"]["recovery"]
    assert "moved back from it (a rollback)" in recovery and f"restored {first['snapshot_id']}" in recovery, recovery

    async def history() -> list[str]:
        async with snapshot_store(host_a.settings) as store:
            return await store.current_history("default")

    assert asyncio.run(history()) == [first["snapshot_id"], second["snapshot_id"], first["snapshot_id"],
                                      third["snapshot_id"]]
