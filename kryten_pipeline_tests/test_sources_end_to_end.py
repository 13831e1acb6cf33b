"""Every source through the whole refresh (Dagster job → SQLite → KV) to a consistent snapshot."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kryten_pipeline.kv.embedded_nats import RunningNatsServer
from kryten_pipeline.snapshot.files import live_db_path
from kryten_pipeline_tests.pg_fixtures import fill_mediacms_catalog, running_postgres, skip_without_postgres
from kryten_pipeline_tests.pipeline_helpers import PipelineEnv, check_results, failure_descriptions
from kryten_pipeline_tests.test_content_service_connector import (
    CDN,
    TOKEN,
    FakeContentService,
    big_catalog,
    expected_ids,
    serving,
)


def live_rows(env: PipelineEnv) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(live_db_path(env.data_dir, "default"))
    try:
        return conn.execute("SELECT video_id, title, categories_json, manifest_url FROM catalog_item").fetchall()
    finally:
        conn.close()


def assert_consistent(env: PipelineEnv, result: Any, expected_items: int) -> None:
    assert result.success, failure_descriptions(result)
    assert all(check_results(result).values())
    current = env.current()
    assert current is not None and current.value["item_count"] == expected_items
    assert len(live_rows(env)) == expected_items


@pytest.fixture(scope="module")
def postgres() -> Iterator[Any]:
    skip_without_postgres()
    with running_postgres() as server:
        yield server


def test_mediacms_db_source(tmp_path: Path, nats_server: RunningNatsServer, postgres: Any) -> None:
    dbname = postgres.create_database("mediacms_e2e")
    with postgres.connect(dbname) as conn:
        playable = fill_mediacms_catalog(conn, media=600, categories=8)
    env = PipelineEnv(tmp_path / "data", nats_server.url, source="mediacms-db",
                      mediacms_db_url=postgres.url(dbname), mediacms_url="http://media.example.org")
    result = env.refresh()
    assert_consistent(env, result, playable)
    rows = live_rows(env)
    assert all(manifest.startswith("https://media.example.org/api/v1/media/cytube/") for *_, manifest in rows)
    assert any(len(categories) > 20 for _, _, categories, _ in rows)  # several categories kept
    assert env.current().value["source"].startswith("mediacms-db:")


class _ServerThread:
    """The in-process gRPC fake on its own event loop, so the refresh's asyncio.run can call it."""

    def __init__(self, service: FakeContentService) -> None:
        self.service = service
        self.address: str | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        async with serving(self.service) as address:
            self.address = address
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> str:
        self._thread.start()
        assert self._ready.wait(10), "gRPC test server did not start"
        assert self.address
        return self.address

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def test_content_service_source(tmp_path: Path, nats_server: RunningNatsServer) -> None:
    feed = big_catalog(n_series=3, seasons=2, episodes=4, assets=10)
    expected = len(expected_ids(feed))
    with _ServerThread(FakeContentService(feed)) as address:
        env = PipelineEnv(tmp_path / "data", nats_server.url, source="content-service",
                          content_service_addr=address, service_auth_token=TOKEN,
                          content_service_plaintext="true", content_service_cdn_host=CDN)
        result = env.refresh()
    assert_consistent(env, result, expected)
    titles = [title for _, title, _, _ in live_rows(env)]
    assert any(" — S01E02 — " in title for title in titles)


def test_content_service_bad_token_fails_cleanly(tmp_path: Path, nats_server: RunningNatsServer) -> None:
    with _ServerThread(FakeContentService(big_catalog(1, 1, 2, 2))) as address:
        env = PipelineEnv(tmp_path / "data", nats_server.url, source="content-service",
                          content_service_addr=address, service_auth_token="wrong-token",
                          content_service_plaintext="true", content_service_cdn_host=CDN)
        result = env.refresh()
    assert not result.success
    message = " ".join(failure_descriptions(result))
    assert "SERVICE_AUTH_TOKEN" in message and "wrong-token" not in message
    assert env.current() is None and not live_db_path(env.data_dir, "default").exists()
