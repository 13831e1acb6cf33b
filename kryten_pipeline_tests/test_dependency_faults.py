"""Dependency faults: NATS down or restarted, a KV bucket configured otherwise, a full disk, a failing source.

Each fault ends the refresh (``kryten-pipeline refresh``, in a subprocess) with a one-line error naming the
setting to look at, loses nothing (the live file is byte-identical, KV ``current`` keeps its value and
revision, no temp file is left), and the next refresh, once the fault is gone, converges (``status``
consistent). The CLI processes are forked from a pre-imported interpreter (``cli_zygote``) to save Dagster's
import time.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest

from kryten_pipeline.snapshot.files import live_db_path
from kryten_pipeline_tests.cli_zygote import Zygote
from kryten_pipeline_tests.fake_mediacms import FakeMediaCMS, generate_catalog
from kryten_pipeline_tests.fault_helpers import (
    NatsProcess,
    cli_environment,
    inspect_live,
    last_error_line,
    read_current_entry,
    read_kv,
    settings_for,
    status_of,
    temp_files,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def zygote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zygote]:
    runner = Zygote(tmp_path_factory.mktemp("zygote"))
    yield runner
    runner.close()


@pytest.fixture
def nats_proc(tmp_path: Path) -> Iterator[NatsProcess]:
    server = NatsProcess(tmp_path / "nats").start()
    yield server
    server.stop()


class Site:
    """One data dir + bucket, refreshed through the CLI."""

    def __init__(self, zygote: Zygote, work: Path, nats_url: str | None, **env: str) -> None:
        self.zygote = zygote
        self.work = work
        self.data_dir = work / "data"
        self.nats_url = nats_url
        self.bucket = "dep_" + uuid.uuid4().hex[:10]
        self.env = cli_environment(self.data_dir, NATS_URL=nats_url, KRYTEN_KV_BUCKET=self.bucket, **env)

    @property
    def settings(self) -> Any:
        return settings_for(self.data_dir, self.nats_url, self.bucket)

    def refresh(self, items: int = 300, **env: str) -> subprocess.CompletedProcess[str]:
        return self.zygote.run(self.work, "refresh", "--quiet", "--json",
                               env={**self.env, "KRYTEN_FAKE_ITEMS": str(items), **env})

    def ok(self, items: int = 300, **env: str) -> dict[str, Any]:
        result = self.refresh(items, **env)
        assert result.returncode == 0, result.stderr[-2000:]
        return json.loads(result.stdout)

    def state(self) -> tuple[bytes | None, tuple[dict[str, Any] | None, int | None]]:
        live = live_db_path(self.data_dir, "default")
        return (live.read_bytes() if live.exists() else None), read_current_entry(self.settings)

    def assert_failed_cleanly(self, result: subprocess.CompletedProcess[str], before: Any, *settings: str,
                              code: int = 1) -> str:
        """Exit ``code`` (2: a configuration error), an ``error:`` line naming one of ``settings``, and nothing
        changed or left behind."""
        assert result.returncode == code, result.stderr[-2000:]
        line = last_error_line(result.stderr)
        assert line.startswith("error: ") and any(s in line for s in settings), line
        assert self.state() == before, "the live file or KV current changed"
        assert temp_files(self.data_dir) == []
        return line

    def assert_converges(self, items: int = 300, **env: str) -> dict[str, Any]:
        summary = self.ok(items, **env)
        status = status_of(self.settings)
        assert status["consistent"], status["problems"]
        assert status["kv"]["current"]["snapshot_id"] == summary["snapshot_id"]
        assert temp_files(self.data_dir) == []
        return summary


def test_nats_down_at_start_fails_before_building_anything(zygote: Zygote, nats_proc: NatsProcess,
                                                           tmp_path: Path) -> None:
    site = Site(zygote, tmp_path, nats_proc.url, KRYTEN_SOURCE="fake")
    site.ok(300)
    nats_proc.stop()
    result = site.refresh(320)
    nats_proc.start()
    before_bytes = live_db_path(site.data_dir, "default").read_bytes()
    site.assert_failed_cleanly(result, (before_bytes, read_current_entry(site.settings)), "NATS_URL")
    assert "cannot connect to NATS" in result.stderr
    steps = json.loads(result.stdout)["steps"]
    # It fails in the first step, so readers never see a file that could not be published.
    assert steps["raw_catalog"]["status"] == "failed" and steps.get("sqlite_snapshot", {}).get("status") != "ok"
    site.assert_converges(320)


class PausedRefresh:
    """A refresh (a forked CLI process, run from a thread) paused at a fault point until ``resume()``."""

    def __init__(self, site: Site, point: str) -> None:
        self.pause_dir = site.work / "pause"
        self.pause_dir.mkdir(exist_ok=True)
        self.point = point
        env = {**site.env, "KRYTEN_FAKE_ITEMS": "320", "KRYTEN_FAULT_POINT": point, "KRYTEN_FAULT_ACTION": "pause",
               "KRYTEN_FAULT_PAUSE_DIR": str(self.pause_dir)}
        self.result: subprocess.CompletedProcess[str] | None = None
        self.thread = threading.Thread(target=self._run, args=(site, env), daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 120
        while not (self.pause_dir / f"{point}.reached").exists():
            assert self.thread.is_alive(), self.result
            assert time.monotonic() < deadline, "the refresh never reached the fault point"
            time.sleep(0.05)

    def _run(self, site: Site, env: dict[str, str]) -> None:
        self.result = site.zygote.run(site.work, "refresh", "--quiet", "--json", env=env)

    def resume(self) -> subprocess.CompletedProcess[str]:
        (self.pause_dir / f"{self.point}.resume").touch()
        self.thread.join(timeout=180)
        assert self.result is not None
        return self.result


def test_nats_restarted_between_the_snapshot_record_and_current(zygote: Zygote, nats_proc: NatsProcess,
                                                                tmp_path: Path) -> None:
    site = Site(zygote, tmp_path, nats_proc.url, KRYTEN_SOURCE="fake")
    old_id = site.ok(300)["snapshot_id"]
    paused = PausedRefresh(site, "kv.after_snapshot_record")
    nats_proc.stop()
    nats_proc.start()  # same port, same JetStream store: the bucket and its records survive
    result = paused.resume()
    # The client reconnects, and the lost read of current is retried: the publish completes.
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    status = status_of(site.settings)
    assert status["consistent"] and status["kv"]["current"]["snapshot_id"] == summary["snapshot_id"] > old_id
    assert status["sqlite"]["item_count"] == 320
    site.assert_converges(330)


def test_nats_down_between_the_snapshot_record_and_current(zygote: Zygote, nats_proc: NatsProcess,
                                                           tmp_path: Path) -> None:
    site = Site(zygote, tmp_path, nats_proc.url, KRYTEN_SOURCE="fake")
    site.ok(300)
    before = site.state()
    paused = PausedRefresh(site, "kv.after_snapshot_record")
    nats_proc.stop()
    result = paused.resume()  # NATS stays down: the compare-and-set of current cannot happen
    nats_proc.start()
    # The publish fails; the new file stays live (readers already have it: they never go back to the old one)
    # and current is untouched. The next refresh records it and moves current forward before anything else.
    assert result.returncode == 1, result.stderr[-2000:]
    line = last_error_line(result.stderr)
    assert "NATS_URL" in line and "the next refresh records it" in line, line
    summary = json.loads(result.stdout)
    assert summary["steps"]["kv_published"]["status"] == "failed"
    assert read_current_entry(site.settings) == before[1]
    live_id, live_count, problems = inspect_live(site.data_dir)
    assert problems == [] and live_count == 320 and live_id > before[1][0]["snapshot_id"]
    assert temp_files(site.data_dir) == []
    converged = site.assert_converges(330)
    recovery = converged["steps"]["raw_catalog"]["metadata"]["recovery"]
    assert f"the live file held {live_id}" in recovery and "moved current forward" in recovery
    records = [r["snapshot_id"] for r in read_kv(site.settings)[1]]
    assert live_id in records and converged["snapshot_id"] in records


async def _create_bucket(url: str, bucket: str, **config: Any) -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        with __import__("contextlib").suppress(Exception):
            await js.delete_key_value(bucket)
        if config:
            await js.create_key_value(bucket=bucket, **config)
    finally:
        await nc.close()


def test_kv_bucket_with_history_1_works(zygote: Zygote, nats_proc: NatsProcess, tmp_path: Path) -> None:
    site = Site(zygote, tmp_path, nats_proc.url, KRYTEN_SOURCE="fake")
    asyncio.run(_create_bucket(nats_proc.url, site.bucket, history=1))
    first = site.assert_converges(300)
    second = site.assert_converges(320)  # compare-and-set needs only the last revision
    assert second["snapshot_id"] > first["snapshot_id"]


def test_kv_bucket_with_a_small_value_limit_fails_clearly(zygote: Zygote, nats_proc: NatsProcess,
                                                          tmp_path: Path) -> None:
    site = Site(zygote, tmp_path, nats_proc.url, KRYTEN_SOURCE="fake")
    asyncio.run(_create_bucket(nats_proc.url, site.bucket, max_value_size=200))
    result = site.refresh(300)
    # The value does not fit the bucket: refused before the swap, so there is still no live file.
    line = site.assert_failed_cleanly(result, (None, (None, None)), "KRYTEN_KV_BUCKET")
    assert "accepts at most 200" in line
    asyncio.run(_create_bucket(nats_proc.url, site.bucket))  # the operator drops it; the next run creates it
    site.assert_converges(300)


def test_kv_bucket_with_a_ttl_is_refused_before_anything_is_built(zygote: Zygote, nats_proc: NatsProcess,
                                                                  tmp_path: Path) -> None:
    site = Site(zygote, tmp_path, nats_proc.url, KRYTEN_SOURCE="fake")
    asyncio.run(_create_bucket(nats_proc.url, site.bucket, ttl=3600))  # current would expire after an hour
    result = site.refresh(300)
    assert result.returncode == 2, result.stderr[-2000:]  # a configuration error, refused before any build
    line = last_error_line(result.stderr)
    assert "KRYTEN_KV_BUCKET" in line and "expires values" in line, line
    assert not live_db_path(site.data_dir, "default").exists() and temp_files(site.data_dir) == []
    asyncio.run(_create_bucket(nats_proc.url, site.bucket))  # the operator drops it; the next run creates it
    site.assert_converges(300)


def test_disk_full_while_building_on_a_small_filesystem(zygote: Zygote, nats_server: Any, tmp_path: Path) -> None:
    site = Site(zygote, tmp_path, nats_server.url, KRYTEN_SOURCE="fake")
    ns_dir = site.data_dir / "default"
    ns_dir.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0750", "tmpfs", str(ns_dir)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here ({mounted.stderr.strip()}); "
                    "test_disk_full_while_building_injected covers ENOSPC")
    try:
        site.ok(300)  # ~0.25 MB: fits in 1 MB
        before = site.state()
        result = site.refresh(3000)  # ~2.4 MB: does not
        line = site.assert_failed_cleanly(result, before, "KRYTEN_DATA_DIR")
        assert "disk is full" in line or "No space left" in line
        subprocess.run(["mount", "-o", "remount,size=32m", str(ns_dir)], check=True)  # space freed
        site.assert_converges(3000)
    finally:
        subprocess.run(["umount", "-l", str(ns_dir)], check=False)


def test_disk_full_while_building_injected(zygote: Zygote, nats_server: Any, tmp_path: Path) -> None:
    site = Site(zygote, tmp_path, nats_server.url, KRYTEN_SOURCE="fake")
    site.ok(300)
    before = site.state()
    result = site.refresh(320, KRYTEN_FAULT_POINT="build.load_batch", KRYTEN_FAULT_ACTION="enospc")
    line = site.assert_failed_cleanly(result, before, "KRYTEN_DATA_DIR")
    assert "No space left on device" in line and "is the disk full?" in line
    site.assert_converges(320)


# --------------------------------------------------------------------------------------------- the source


@pytest.fixture(scope="module")
def mediacms() -> Iterator[FakeMediaCMS]:
    with FakeMediaCMS(generate_catalog(240, 6, seed=6)) as server:
        yield server


@pytest.fixture(scope="module")
def mediacms_site(zygote: Zygote, nats_server: Any, mediacms: FakeMediaCMS,
                  tmp_path_factory: pytest.TempPathFactory) -> Site:
    site = Site(zygote, tmp_path_factory.mktemp("mediacms"), nats_server.url, KRYTEN_SOURCE="mediacms",
                MEDIACMS_URL=mediacms.url, MEDIACMS_TOKEN=FakeMediaCMS.EDITOR_TOKEN, MEDIACMS_RETRIES="1",
                MEDIACMS_TIMEOUT="1")
    site.ok()
    return site


SOURCE_FAULTS = {
    # A 5xx storm longer than the retries.
    "5xx_storm": ({"kind": "status", "status": 503, "times": 10_000}, ("MEDIACMS_RETRIES", "MEDIACMS_URL")),
    # Every answer slower than MEDIACMS_TIMEOUT.
    "timeout": ({"kind": "slow", "delay": 2.5, "times": 10_000}, ("MEDIACMS_TIMEOUT",)),
    # A portal (or a login page) answering HTML instead of the API: MEDIACMS_URL is wrong (exit 2).
    "html": ({"kind": "html", "times": 10_000}, ("MEDIACMS_URL",)),
}
SOURCE_FAULT_CODES = {"html": 2}


@pytest.mark.parametrize("fault", list(SOURCE_FAULTS))
def test_source_faults_fail_cleanly_and_converge(fault: str, mediacms: FakeMediaCMS, mediacms_site: Site) -> None:
    site = mediacms_site
    injected, settings = SOURCE_FAULTS[fault]
    before = site.state()
    mediacms.inject(path="/api/", **injected)
    try:
        result = site.refresh()
    finally:
        with mediacms.lock:
            mediacms.faults.clear()
    site.assert_failed_cleanly(result, before, *settings, code=SOURCE_FAULT_CODES.get(fault, 1))
    assert json.loads(result.stdout)["steps"]["raw_catalog"]["status"] == "failed"
    site.assert_converges()
