"""KRYTEN_SOURCE=mediacms through the whole refresh job, against the fake MediaCMS server.

A run the connector must fail (truncated listing, login redirect, bad token, server down) leaves KV
``current`` and the live ``catalog.sqlite3`` exactly as they were.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kryten_pipeline.kv.embedded_nats import RunningNatsServer
from kryten_pipeline.snapshot.files import live_db_path
from kryten_pipeline_tests.fake_mediacms import FakeCatalog, FakeMediaCMS, generate_catalog
from kryten_pipeline_tests.pipeline_helpers import PipelineEnv, failure_descriptions

CATALOG = generate_catalog(1_400, 8, seed=40)


@pytest.fixture
def server() -> Iterator[FakeMediaCMS]:
    with FakeMediaCMS(generate_catalog(1_400, 8, seed=40), public_base="http://mediacms.internal:8000") as fake:
        yield fake


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_refresh_from_mediacms_publishes_every_playable_item_with_all_categories(
        tmp_path: Path, nats_server: RunningNatsServer, server: FakeMediaCMS) -> None:
    env = PipelineEnv(tmp_path / "data", nats_server.url, source="mediacms", mediacms_url=server.url,
                      mediacms_token=FakeMediaCMS.EDITOR_TOKEN)
    result = env.refresh()
    assert result.success, failure_descriptions(result)
    expected = server.catalog.expected_playable()
    current = env.current()
    assert current is not None and current.value["item_count"] == len(expected)
    assert current.value["source"] == f"mediacms:{server.url}"
    conn = sqlite3.connect(live_db_path(env.data_dir, "default"))
    try:
        rows = dict(conn.execute("SELECT video_id, categories_json FROM catalog_item").fetchall())
    finally:
        conn.close()
    assert set(rows) == set(expected)
    for token, media in expected.items():
        # (validation trims whitespace around category names)
        assert sorted(json.loads(rows[token])) == sorted(c.strip() for c in media.categories)
    assert FakeMediaCMS.EDITOR_TOKEN not in json.dumps(current.value)


def _anonymous_capped(server: FakeMediaCMS) -> dict[str, str]:
    return {"mediacms_token": ""}


def _login_required(server: FakeMediaCMS) -> dict[str, str]:
    server.login_required = True
    return {}


def _revoked_token(server: FakeMediaCMS) -> dict[str, str]:
    return {"mediacms_token": "revoked-0123456789"}


def _server_down(server: FakeMediaCMS) -> dict[str, str]:
    server.inject("status", path="/api/v1/manage_media", times=1000, status=503)
    return {"mediacms_retries": "1"}


@pytest.mark.parametrize(("break_it", "setting"), [
    (_anonymous_capped, "MEDIACMS_TOKEN"),
    (_login_required, "GLOBAL_LOGIN_REQUIRED"),
    (_revoked_token, "MEDIACMS_TOKEN"),
    (_server_down, "MEDIACMS_RETRIES"),
])
def test_a_failed_mediacms_refresh_leaves_the_published_snapshot_untouched(
        tmp_path: Path, nats_server: RunningNatsServer, server: FakeMediaCMS,
        break_it: Callable[[FakeMediaCMS], dict[str, str]], setting: str) -> None:
    env = PipelineEnv(tmp_path / "data", nats_server.url, source="mediacms", mediacms_url=server.url,
                      mediacms_token=FakeMediaCMS.EDITOR_TOKEN)
    assert env.refresh().success
    before = env.current()
    live = live_db_path(env.data_dir, "default")
    digest = file_digest(live)

    overrides = break_it(server)
    result = env.refresh(**overrides)
    assert not result.success
    assert any(setting in text for text in failure_descriptions(result)), failure_descriptions(result)
    after = env.current()
    assert after is not None and before is not None
    assert after.value == before.value and after.revision == before.revision
    assert file_digest(live) == digest


def test_catalog_fixture_is_capped_for_anonymous_callers() -> None:
    # The anonymous case above only fails because the listing hits the cap: keep the fixture big enough.
    def listable(catalog: FakeCatalog) -> int:
        return sum(1 for m in catalog.items if m.listable)

    assert listable(CATALOG) > 1000
