"""Load: 20 readers query the live SQLite file continuously while a refresh of a 20k-item catalog swaps a new
snapshot in. No reader ever sees an error, an empty or partial catalog, or a file changing under it; readers
that reopen see the new snapshot. (``bench/readers_during_refresh.py`` does the same at 100k items and reports
the readers' latency before, during and after the refresh.)"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from kryten_pipeline.connectors.fake import FakeConnector
from kryten_pipeline.kv.embedded_nats import RunningNatsServer
from kryten_pipeline.snapshot.build import build_snapshot_db, rows_from_frame
from kryten_pipeline.snapshot.files import install_snapshot, live_db_path
from kryten_pipeline.snapshot.ids import new_snapshot_id
from kryten_pipeline.validation import items_to_columns, validate_items
from kryten_pipeline_tests.fault_helpers import cli_environment, run_cli, settings_for, status_of
from kryten_pipeline_tests.snapshot_readers import ReaderPool

ITEMS = 20_000


def install_fake_snapshot(data_dir: Path, items: int) -> str:
    """A live snapshot built by the core directly (quicker than a first refresh; the refresh then publishes)."""
    fake = FakeConnector(items)
    result = validate_items(items_to_columns(fake.item(i) for i in range(items)), manifest_base="https://m.example")
    built = build_snapshot_db(rows_from_frame(result.frame), data_dir=data_dir, namespace="default",
                              snapshot_id=new_snapshot_id(), created_at="2026-01-01T00:00:00Z", source="fake")
    install_snapshot(built, data_dir=data_dir, keep=3)
    return built.snapshot_id


@pytest.mark.slow
def test_readers_never_see_an_error_or_an_empty_catalog_across_the_swap(
    tmp_path: Path, nats_server: RunningNatsServer
) -> None:
    data_dir = tmp_path / "data"
    old_id = install_fake_snapshot(data_dir, ITEMS)
    bucket = "swap_" + uuid.uuid4().hex[:10]
    env = cli_environment(data_dir, NATS_URL=nats_server.url, KRYTEN_KV_BUCKET=bucket, KRYTEN_SOURCE="fake",
                          KRYTEN_FAKE_ITEMS=str(ITEMS + 500))
    with ReaderPool(live_db_path(data_dir, "default"), readers=20, pause_s=0.01, ranked=False) as readers:
        result = run_cli(tmp_path, "refresh", "--quiet", "--json", env=env)
        assert result.returncode == 0, result.stderr[-2000:]
        new_id = json.loads(result.stdout)["snapshot_id"]
        assert readers.wait_until_all_read(new_id)  # each reader reopened the file after the swap
    assert readers.problems == []
    assert {old_id, new_id} <= readers.snapshot_ids  # they read across the swap
    assert len(readers.samples) > 100 and all(r.connections > 1 for r in readers.stats)
    status = status_of(settings_for(data_dir, nats_server.url, bucket))
    assert status["consistent"] and status["sqlite"]["item_count"] == ITEMS + 500
