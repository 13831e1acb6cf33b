"""Rollback: swap a kept snapshot file (or its Object Store copy) back in and move KV ``current`` to it by
compare-and-set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kryten_pipeline.delivery.fetch import restore_kept_file
from kryten_pipeline.errors import KrytenError, PublishError, SnapshotBuildError
from kryten_pipeline.kv.store import snapshot_store
from kryten_pipeline.settings import Settings
from kryten_pipeline.snapshot.files import (
    file_sha256,
    install_kept_snapshot,
    kept_snapshot_path,
    live_db_path,
    namespace_lock,
    read_snapshot_meta,
)


async def rollback_to(settings: Settings, namespace: str, snapshot_id: str) -> dict[str, Any]:
    """Make ``snapshot_id`` live again. Holds the namespace's refresh lock, so no refresh interleaves.

    The kept file is used when it is there and matches its KV record's sha256; else (pruned, lost, changed by
    someone) the file is fetched back from the Object Store and verified, so KV and the object suffice.
    """
    kept = kept_snapshot_path(settings.data_dir, namespace, snapshot_id)
    with namespace_lock(settings.data_dir, namespace, "refresh", timeout=600):
        async with snapshot_store(settings) as store:
            record = await store.get_snapshot(namespace, snapshot_id)
            if record is None:
                raise PublishError(
                    f"KV has no record ns/{namespace}/snapshots/{snapshot_id}; cannot roll back (the snapshots "
                    "that can be restored are listed by `kryten-pipeline snapshots`)", setting="KRYTEN_KEEP_SNAPSHOTS",
                )
            source = "kept file"
            problem = _kept_file_problem(kept, record)
            if problem is not None:
                if not record.get("object_name"):
                    raise SnapshotBuildError(f"{problem}, and its KV record names no object to fetch it from",
                                             setting="KRYTEN_KEEP_SNAPSHOTS")
                await restore_kept_file(store, settings.data_dir, namespace, record)
                source = f"object {record['object_name']} ({problem})"
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
        "restored_from": source,
    }


def _kept_file_problem(kept: Path, record: dict[str, Any]) -> str | None:
    if not kept.exists():
        return f"snapshot {record.get('snapshot_id')} has no kept file in {kept.parent}"
    expected = record.get("sqlite_sha256")
    if expected and file_sha256(kept) != expected:
        return f"the kept file of {record.get('snapshot_id')} was changed (its sha256 differs from the KV record's)"
    return None
