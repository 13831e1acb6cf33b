"""Put back what a killed refresh or rollback left half done, before the next one starts.

A publish swaps the new file onto ``catalog.sqlite3`` (``os.replace``) and *then* moves KV ``current`` by
compare-and-set; a rollback does the same with a kept file. The two systems cannot change together, so a
process killed between the two steps (SIGKILL, OOM, power loss) leaves the live file one snapshot ahead
of (or, for a rollback, behind) KV ``current``. ``status`` reports that as inconsistent.

The compare-and-set on ``current`` is the commit point: a publish that did not move ``current`` did not
happen. So whoever next holds the namespace's refresh lock — then no refresh or rollback of it can be
running, in any process using this data dir — makes the live file the one ``current`` names again, from its
kept copy under ``snapshots/`` (the swap protects that copy from pruning until ``current`` has moved). The
kept file must match ``current``'s record (snapshot id, item count, sha256) or nothing is touched.
Nothing is repaired either when there is no ``current`` (the very first publish was interrupted: the
refresh that follows publishes its own snapshot). When ``current``'s file is not kept in this data dir (a
lost disk, a restored backup), it is fetched back from the Object Store and verified against the KV record;
only if that fails too is it reported, and the following publish converges.

Half-written temp files of dead processes are removed here too, so a run that fails before its build
still cleans up after the crash.
"""

from __future__ import annotations

import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kryten_pipeline.delivery import restore_kept_file
from kryten_pipeline.errors import KrytenError
from kryten_pipeline.fault_points import fault_point
from kryten_pipeline.kv_store import SnapshotStore
from kryten_pipeline.snapshot_db import (
    file_sha256,
    install_kept_snapshot,
    kept_snapshot_path,
    live_db_path,
    read_snapshot_meta,
    remove_stale_temp_files,
    verify_snapshot_db,
)

NONE, RESTORED, UNREPAIRABLE = "none", "restored", "unrepairable"


@dataclass
class Reconciliation:
    namespace: str
    action: str  # none | restored | unrepairable
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
    if entry is None or current_id is None or live_id == current_id:
        if entry is None and live_id is not None:
            result.detail = f"no KV current yet; the live file holds {live_id} (its publish did not finish)"
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
        result.detail = (f"the live file holds {live_id or 'nothing readable'} but KV current names {current_id}, "
                         f"which cannot be restored here: {'; '.join(problems)}")
        return result
    install_kept_snapshot(data_dir, namespace, current_id)
    fault_point("recover.restored")
    result.action = RESTORED
    result.detail = (f"the live file held {live_id or 'nothing readable'} but KV current names {current_id} "
                     f"(a publish or rollback was interrupted): restored {current_id} from its kept file{fetched}")
    return result
