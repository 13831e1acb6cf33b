"""Shared fixtures: a real nats-server with JetStream on loopback (no mocks)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kryten_pipeline.kv.embedded_nats import RunningNatsServer, start_nats_server
from kryten_pipeline.settings import Settings
from kryten_pipeline_tests.redis_fixtures import redis_server, stream_key  # noqa: F401  (shared fixtures)


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNatsServer]:
    server = start_nats_server(tmp_path_factory.mktemp("nats"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nats_settings(nats_server: RunningNatsServer, tmp_path: Path) -> Settings:
    # A fresh bucket per test keeps tests independent while sharing one server per module.
    return Settings(nats_url=nats_server.url, data_dir=tmp_path, kv_bucket="kv_" + uuid.uuid4().hex)
