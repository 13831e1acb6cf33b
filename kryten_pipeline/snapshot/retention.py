"""Retention: keep the newest N snapshots of a namespace — kept SQLite files, KV ``snapshots/`` records and
Object Store objects alike — and never the one ``current`` names (nor the live file's).

Applied after each successful publish and by the ``prune_snapshots`` job. The same set of ids is kept on
every side, so every KV record that survives has a file to roll back to and an object to install, and the
other way round. A record goes before its object, so KV never names an object that is gone. Objects that no
record names (an upload whose publish was interrupted) go too, once a newer snapshot is kept — only those
this pipeline's KV bucket published (the object's ``Kryten-Kv-Bucket`` header).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from kryten_pipeline.fault_points import fault_point
from kryten_pipeline.kv.object_store import object_name
from kryten_pipeline.kv.store import SnapshotStore, snapshot_store
from kryten_pipeline.settings import Settings
from kryten_pipeline.snapshot.files import (
    list_kept_snapshots,
    live_db_path,
    namespace_lock,
    prune_kept_snapshots,
    read_snapshot_meta,
)


@dataclass
class RetentionResult:
    namespace: str
    keep: int
    kept: list[str] = field(default_factory=list)  # newest first
    deleted_files: list[str] = field(default_factory=list)
    deleted_records: list[str] = field(default_factory=list)
    deleted_objects: list[str] = field(default_factory=list)
    current: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def snapshots_to_keep(candidates: set[str], keep: int, protected: list[str | None]) -> list[str]:
    """The protected ids, then the newest others, up to ``keep`` ids in all (more only if more are protected)."""
    kept = list(dict.fromkeys(p for p in protected if p))
    for snapshot_id in sorted(candidates, reverse=True):
        if len(kept) >= keep:
            break
        if snapshot_id not in kept:
            kept.append(snapshot_id)
    return sorted(kept, reverse=True)


async def prune_snapshots(store: SnapshotStore, settings: Settings, namespace: str,
                          *, keep: int | None = None) -> RetentionResult:
    """Delete kept files and KV records beyond the newest ``keep`` (default ``KRYTEN_KEEP_SNAPSHOTS``).

    The caller should hold the namespace's refresh lock (a refresh run does) so no publish interleaves;
    even so, the ids ``current`` and the live file name are never deleted.
    """
    keep = settings.keep_snapshots if keep is None else keep
    if keep < 1:
        raise ValueError("keep must be at least 1")
    current = await store.read_current(namespace)
    records = {r["snapshot_id"] for r in await store.list_snapshots(namespace)}
    live = (read_snapshot_meta(live_db_path(settings.data_dir, namespace)) or {}).get("snapshot_id")
    files = set(list_kept_snapshots(settings.data_dir, namespace))
    current_id = current.snapshot_id if current else None
    kept = snapshots_to_keep(records | files, keep, [current_id, live])
    result = RetentionResult(namespace=namespace, keep=keep, kept=kept, current=current_id)
    # The install lock keeps a concurrent swap or rollback from linking a file while we delete.
    with namespace_lock(settings.data_dir, namespace):
        result.deleted_files = prune_kept_snapshots(settings.data_dir, namespace, keep=0, protect=kept)
    fault_point("retention.files_pruned")
    for snapshot_id in sorted(records - set(kept)):
        if await store.delete_snapshot_record(namespace, snapshot_id):
            result.deleted_records.append(snapshot_id)
            fault_point("retention.record_deleted")
    newest_kept = max(kept) if kept else ""
    for snapshot_id, stored in (await store.objects.snapshot_objects(namespace)).items():
        if snapshot_id in kept or stored.kv_bucket != store.bucket:
            continue  # kept, or another pipeline's (a bucket may be shared by several KV buckets)
        if snapshot_id > newest_kept:
            continue  # newer than anything kept and named by no record: a publish that may still be under way
        if await store.objects.delete(object_name(namespace, snapshot_id)):
            result.deleted_objects.append(snapshot_id)
            fault_point("retention.object_deleted")
    return result


async def apply_retention(settings: Settings, namespace: str, *, keep: int | None = None) -> RetentionResult:
    """``prune_snapshots`` on a store opened from the settings."""
    async with snapshot_store(settings) as store:
        return await prune_snapshots(store, settings, namespace, keep=keep)
