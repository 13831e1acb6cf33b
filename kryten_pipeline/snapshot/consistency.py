"""Does KV ``current`` name the SQLite file readers actually get? Used by the asset check and ``status``."""

from __future__ import annotations

import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kryten_pipeline.snapshot.files import file_sha256, live_db_path, open_readonly, read_snapshot_meta


@dataclass(slots=True)
class ConsistencyReport:
    namespace: str
    consistent: bool
    kv_current: dict[str, Any] | None
    kv_revision: int | None
    sqlite_path: str
    sqlite_snapshot_id: str | None
    sqlite_item_count: int | None
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_current_with_sqlite(
    namespace: str, data_dir: Path, kv_current: dict[str, Any] | None, kv_revision: int | None = None,
    *, check_sha256: bool = True,
) -> ConsistencyReport:
    """Compare KV ``current`` (already read) with the live SQLite file's ``snapshot_meta`` and rows."""
    path = live_db_path(data_dir, namespace)
    problems: list[str] = []
    sqlite_id: str | None = None
    sqlite_count: int | None = None
    try:
        meta = read_snapshot_meta(path)
        if meta is not None:
            sqlite_id = meta.get("snapshot_id")

            conn = open_readonly(path)
            try:
                sqlite_count = conn.execute("SELECT count(*) FROM catalog_item").fetchone()[0]
            finally:
                conn.close()
    except sqlite3.Error as exc:
        problems.append(f"live SQLite file unreadable: {exc}")
    if kv_current is None and sqlite_id is None:
        problems.append("no snapshot yet: KV current is absent and there is no live SQLite file")
    elif kv_current is None:
        problems.append(f"KV current is absent but the live SQLite file holds {sqlite_id}")
    elif sqlite_id is None and not problems:
        problems.append(f"KV current names {kv_current.get('snapshot_id')} but there is no live SQLite file at {path}")
    else:
        if kv_current.get("snapshot_id") != sqlite_id:
            problems.append(f"KV current snapshot_id {kv_current.get('snapshot_id')} != SQLite {sqlite_id}")
            if str(sqlite_id) > str(kv_current.get("snapshot_id")):
                problems.append(
                    "the live file is newer than KV current: a publish was interrupted between the swap and the "
                    "compare-and-set of current; the next refresh records the live file and moves current "
                    "forward to it (readers never go back)"
                )
        if kv_current.get("item_count") != sqlite_count:
            problems.append(f"KV current item_count {kv_current.get('item_count')} != SQLite rows {sqlite_count}")
        expected_sha = kv_current.get("sqlite_sha256")
        if check_sha256 and expected_sha and path.exists() and file_sha256(path) != expected_sha:
            problems.append("live SQLite file's sha256 differs from KV current's sqlite_sha256")
    return ConsistencyReport(
        namespace=namespace, consistent=not problems, kv_current=kv_current, kv_revision=kv_revision,
        sqlite_path=str(path.resolve()), sqlite_snapshot_id=sqlite_id, sqlite_item_count=sqlite_count,
        problems=problems,
    )
