"""What ``kryten-pipeline status --json`` and the admin endpoint's ``GET /status`` report for a namespace."""

from __future__ import annotations

from typing import Any

from kryten_pipeline.errors import ConfigurationError
from kryten_pipeline.kv.store import SnapshotStore, snapshot_store
from kryten_pipeline.settings import Settings
from kryten_pipeline.snapshot.consistency import compare_current_with_sqlite


async def read_snapshot_status(settings: Settings, namespace: str) -> dict[str, Any]:
    """KV ``current`` vs the live SQLite file and vs its Object Store copy: ``consistent`` true only when all
    three name the same snapshot (same id and item count; same size and sha256 where recorded)."""
    async with snapshot_store(settings) as store:
        entry = await store.read_current(namespace)
        delivery = await _object_status(store, entry.value if entry else None)
    report = compare_current_with_sqlite(
        namespace, settings.data_dir, entry.value if entry else None, entry.revision if entry else None
    )
    problems = [*report.problems, *delivery.pop("problems")]
    return {
        "namespace": namespace,
        "consistent": not problems,
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
        "object": delivery,
        "problems": problems,
    }


async def _object_status(store: SnapshotStore, current: dict[str, Any] | None) -> dict[str, Any]:
    """Is the file KV current names in the Object Store, with the recorded size and sha256?"""
    status: dict[str, Any] = {"bucket": None, "name": None, "present": None, "size_bytes": None, "problems": []}
    if current is None:
        return status
    bucket, name = current.get("object_bucket"), current.get("object_name")
    if not bucket or not name:
        status["problems"].append(
            f"KV current ({current.get('snapshot_id')}) names no Object Store file: followers cannot install it "
            "(it was published before file delivery; a refresh publishes one)")
        return status
    objects = store.objects_in(str(bucket))
    status.update(bucket=bucket, name=name)
    try:
        info = await objects.stat(str(name))
    except ConfigurationError:  # the bucket KV names does not exist (any more)
        info = None
    status["present"] = info is not None
    if info is None:
        status["problems"].append(f"object {name} that KV current names is missing from bucket {bucket!r}: "
                                  "followers cannot install current")
        return status
    status["size_bytes"] = info.size
    if info.size != current.get("size_bytes") or (info.sha256 and info.sha256 != current.get("sqlite_sha256")):
        status["problems"].append(f"object {name} holds {info.size} bytes / sha256 {info.sha256}, KV current "
                                  f"recorded {current.get('size_bytes')} bytes / {current.get('sqlite_sha256')}")
    return status
