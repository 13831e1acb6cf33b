"""What ``kryten-pipeline status --json`` and the admin endpoint's ``GET /status`` report for a namespace."""

from __future__ import annotations

from typing import Any

from kryten_pipeline.consistency import compare_current_with_sqlite
from kryten_pipeline.kv_store import snapshot_store
from kryten_pipeline.settings import Settings


async def read_snapshot_status(settings: Settings, namespace: str) -> dict[str, Any]:
    """KV ``current`` vs the live SQLite file: ``consistent`` true only when they name the same snapshot."""
    async with snapshot_store(settings) as store:
        entry = await store.read_current(namespace)
    report = compare_current_with_sqlite(
        namespace, settings.data_dir, entry.value if entry else None, entry.revision if entry else None
    )
    return {
        "namespace": namespace,
        "consistent": report.consistent,
        "kv": {
            "bucket": settings.kv_bucket,
            "current": report.kv_current,
            "revision": report.kv_revision,
        },
        "sqlite": {
            "path": report.sqlite_path,
            "snapshot_id": report.sqlite_snapshot_id,
            "item_count": report.sqlite_item_count,
        },
        "problems": report.problems,
    }
