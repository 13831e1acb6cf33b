"""Rollback: swap a kept snapshot file back in and move KV ``current`` to it by compare-and-set."""

from __future__ import annotations

from typing import Any

from kryten_pipeline.errors import KrytenError, PublishError, SnapshotBuildError
from kryten_pipeline.kv_store import snapshot_store
from kryten_pipeline.settings import Settings
from kryten_pipeline.snapshot_db import (
    file_sha256,
    install_kept_snapshot,
    kept_snapshot_path,
    live_db_path,
    namespace_lock,
    read_snapshot_meta,
)


async def rollback_to(settings: Settings, namespace: str, snapshot_id: str) -> dict[str, Any]:
    """Make ``snapshot_id`` live again. Holds the namespace's refresh lock, so no refresh interleaves."""
    kept = kept_snapshot_path(settings.data_dir, namespace, snapshot_id)
    if not kept.exists():
        raise SnapshotBuildError(
            f"snapshot {snapshot_id} has no kept file in {kept.parent}; kept snapshots are listed by "
            "`kryten-pipeline snapshots`", setting="KRYTEN_KEEP_SNAPSHOTS",
        )
    with namespace_lock(settings.data_dir, namespace, "refresh", timeout=600):
        async with snapshot_store(settings) as store:
            record = await store.get_snapshot(namespace, snapshot_id)
            if record is None:
                raise PublishError(f"KV has no record ns/{namespace}/snapshots/{snapshot_id}; cannot roll back")
            if record.get("sqlite_sha256") and record["sqlite_sha256"] != file_sha256(kept):
                raise SnapshotBuildError(f"kept file of {snapshot_id} does not match its KV record's sha256")
            current = await store.read_current(namespace)
            previous_live = (read_snapshot_meta(live_db_path(settings.data_dir, namespace)) or {}).get("snapshot_id")
            install_kept_snapshot(settings.data_dir, namespace, snapshot_id)
            value = dict(record)
            value["notes"] = f"rollback to {snapshot_id} (was {current.snapshot_id if current else 'none'})"
            value["sqlite_path"] = str(live_db_path(settings.data_dir, namespace).resolve())
            try:
                revision = await store.set_current(
                    namespace, value, expected_revision=current.revision if current else None
                )
            except KrytenError:
                if previous_live and kept_snapshot_path(settings.data_dir, namespace, previous_live).exists():
                    install_kept_snapshot(settings.data_dir, namespace, previous_live)
                raise
    return {
        "namespace": namespace,
        "snapshot_id": snapshot_id,
        "previous_current": current.snapshot_id if current else None,
        "current_revision": revision,
    }
