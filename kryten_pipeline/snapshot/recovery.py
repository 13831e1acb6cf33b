"""Finish or undo what a killed (or failed) refresh or rollback left half done, before the next one starts.

A publish swaps the new file onto ``catalog.sqlite3`` (``os.replace``) and *then* moves KV ``current`` by
compare-and-set; a rollback does the same with a kept file. The two systems cannot change together, so a
process killed between the two steps (SIGKILL, OOM, power loss), or a publish that failed there (NATS gone),
leaves the live file one snapshot ahead of (or, for a rollback, behind) KV ``current``. ``status`` reports
that as inconsistent. Whoever next holds the namespace's refresh lock — then no refresh or rollback of it
can be running, in any process using this data dir — makes the two agree again:

- **a live file ahead of current is rolled forward**: readers already have it, so going back to current's
  file would show them snapshot ids going backwards. It passed every blocking check before its swap; if it
  still verifies, its KV record is written (or the one the interrupted publish wrote is used, if it names
  these bytes), its object stored if missing, and ``current`` moved to it by compare-and-set;
- **otherwise** (a live file behind current — an interrupted rollback —, unreadable, or one that no longer
  verifies) the live file becomes the one ``current`` names, from its kept copy under ``snapshots/``, or
  from its Object Store copy when the kept one is gone or changed; either must match ``current``'s record
  (snapshot id, item count, sha256) or nothing is touched and the problem is reported.

Half-written temp files of dead processes are removed here too, so a run that fails before its build
still cleans up after the crash.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kryten_pipeline.delivery.fetch import restore_kept_file
from kryten_pipeline.errors import KrytenError, StaleSnapshotError
from kryten_pipeline.fault_points import fault_point
from kryten_pipeline.kv.object_store import object_name
from kryten_pipeline.kv.store import SnapshotStore, snapshot_value
from kryten_pipeline.snapshot.files import (
    copy_published_file,
    file_sha256,
    install_kept_snapshot,
    kept_snapshot_path,
    live_db_path,
    read_snapshot_meta,
    remove_stale_temp_files,
    verify_snapshot_db,
)

NONE, RESTORED, ROLLED_FORWARD, UNREPAIRABLE = "none", "restored", "rolled_forward", "unrepairable"


@dataclass
class Reconciliation:
    namespace: str
    action: str  # none | rolled_forward | restored | unrepairable
    live_snapshot_id: str | None  # before any repair
    current_snapshot_id: str | None
    detail: str = ""
    removed_temp_files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _live_snapshot_id(path: Path) -> str | None:
    try:
        meta = read_snapshot_meta(path)
    except sqlite3.Error:
        return None  # unreadable: replaced below if current's file is kept
    return meta.get("snapshot_id") if meta else None


def kept_file_problems(data_dir: Path, namespace: str, record: dict[str, Any]) -> list[str]:
    """Why the kept file of the snapshot ``record`` (a KV value) cannot stand for it; [] when it can."""
    snapshot_id = record.get("snapshot_id")
    try:
        kept = kept_snapshot_path(data_dir, namespace, str(snapshot_id))
    except ValueError as exc:
        return [str(exc)]
    if not kept.exists():
        return [f"no kept file {kept}"]
    report = verify_snapshot_db(kept, expected_snapshot_id=str(snapshot_id))
    problems = list(report.problems)
    if record.get("item_count") != report.item_count:
        problems.append(f"kept file has {report.item_count} items, KV record says {record.get('item_count')}")
    expected_sha = record.get("sqlite_sha256")
    if expected_sha and file_sha256(kept) != expected_sha:
        problems.append("kept file's sha256 differs from the KV record's sqlite_sha256")
    return problems


async def reconcile_live_with_current(store: SnapshotStore, data_dir: Path, namespace: str) -> Reconciliation:
    """Make the live file the one KV ``current`` names, if an interrupted publish or rollback left another.

    The caller must hold the namespace's refresh lock (a refresh run does, from its first step).
    Raises ``NatsUnavailableError`` if KV cannot be read: a refresh must not start blind.
    """
    removed = remove_stale_temp_files(data_dir, namespace)
    entry = await store.read_current(namespace)
    current_id = entry.snapshot_id if entry else None
    live_id = _live_snapshot_id(live_db_path(data_dir, namespace))
    result = Reconciliation(namespace, NONE, live_id, current_id, removed_temp_files=removed)
    if live_id == current_id:
        return result
    if live_id is not None and (current_id is None or live_id > current_id):
        # A publish died or failed after its swap. Readers already have this file: going back to current's
        # would show them ids going backwards, so a file that verifies is recorded and current moves to it.
        reason = await _roll_forward(store, data_dir, namespace, live_id)
        if reason is None:
            result.action = ROLLED_FORWARD
            result.detail = (f"the live file held {live_id}, newer than KV current ({current_id or 'none'}): its "
                             f"publish had been interrupted after the swap; recorded it and moved current forward")
            return result
        result.detail = f"the live file {live_id} cannot be rolled forward ({reason}); "
    if entry is None or current_id is None:
        result.detail += "no KV current yet: the refresh publishes its own snapshot"
        return result
    problems = kept_file_problems(data_dir, namespace, entry.value)
    fetched = ""
    if problems and entry.value.get("object_name"):
        # The kept copy is gone or changed: current's file comes back from the Object Store, verified.
        try:
            await restore_kept_file(store, data_dir, namespace, entry.value)
        except KrytenError as exc:
            problems.append(f"fetching it from the Object Store failed too: {exc}")
        else:
            fetched = f" (fetched from object {entry.value['object_name']}: {'; '.join(problems)})"
            problems = kept_file_problems(data_dir, namespace, entry.value)
    if problems:
        result.action = UNREPAIRABLE
        result.detail += (f"the live file holds {live_id or 'nothing readable'} but KV current names {current_id}, "
                         f"which cannot be restored here: {'; '.join(problems)}")
        return result
    install_kept_snapshot(data_dir, namespace, current_id)
    fault_point("recover.restored")
    result.action = RESTORED
    result.detail += (f"the live file held {live_id or 'nothing readable'} but KV current names {current_id} "
                     f"(a publish or rollback was interrupted): restored {current_id} from its kept file{fetched}")
    return result


async def _roll_forward(store: SnapshotStore, data_dir: Path, namespace: str, live_id: str) -> str | None:
    """Publish the live file (newer than ``current``) as it is; None on success, else why it cannot be.

    It got there through ``install_snapshot``, so it passed every blocking check before its swap; it must
    still verify now. Its KV record, if the interrupted publish wrote one, is used as it is (it must match the
    file's sha256); else one is made from the file's ``snapshot_meta``. Its object is stored if missing.
    """
    live = live_db_path(data_dir, namespace)
    if live_id in await store.current_history(namespace):
        # It was current once and current was moved away from it on purpose (a rollback, maybe from another
        # data dir): that decision stands.
        return "current named it before and was moved back from it (a rollback)"
    report = verify_snapshot_db(live, expected_snapshot_id=live_id)
    if not report.passed:
        return "; ".join(report.problems)
    sha256 = file_sha256(live)
    record = await store.get_snapshot(namespace, live_id)
    if record is not None and record.get("sqlite_sha256") != sha256:
        return f"its KV record ns/{namespace}/snapshots/{live_id} names other bytes (sha256)"
    name = str(record.get("object_name")) if record and record.get("object_name") else object_name(namespace, live_id)
    value = record or _value_from_file(live, report.meta, namespace, sha256, store.objects.bucket, name)
    stored = await store.objects.stat(name)
    if stored is None or stored.sha256 != sha256:
        await store.objects.put_file(name, live, sha256=sha256, kv_bucket=store.bucket,
                                     description=f"kryten snapshot {namespace}/{live_id} (rolled forward)")
    kept = kept_snapshot_path(data_dir, namespace, live_id)
    if not kept.exists():
        copy_published_file(live, kept)
    fault_point("recover.before_roll_forward")
    try:
        await store.publish_snapshot(namespace, value)
    except StaleSnapshotError as exc:
        return str(exc)
    return None


def _value_from_file(live: Path, meta: dict[str, str], namespace: str, sha256: str, bucket: str,
                     name: str) -> dict[str, Any]:
    diff = json.loads(meta["diff_json"]) if meta.get("diff_json") else None
    return snapshot_value({
        "snapshot_id": meta["snapshot_id"], "source": meta.get("source", "unknown"),
        "created_at": meta.get("created_at"), "item_count": int(meta["item_count"]), "namespace": namespace,
        "sqlite_path": str(live.resolve()), "sqlite_sha256": sha256, "size_bytes": live.stat().st_size,
        "object_bucket": bucket, "object_name": name, "category_count": int(meta.get("category_count") or 0),
        "rejected_count": int(meta.get("rejected_count") or 0),
        "diff": diff.get("counts") if diff else None, "diff_summary": diff.get("summary") if diff else None,
    }, run_id=meta.get("run_id", ""))
