"""What a refresh changed: items added, removed, retitled, recategorised and re-timed between two snapshots."""

from __future__ import annotations

import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kryten_pipeline.snapshot.readonly import open_readonly

KINDS = ("added", "removed", "retitled", "recategorised", "retimed")
SAMPLE_SIZE = 5

# Category lists are compared as sets: a source that reorders categories did not recategorise anything.
# The costly set comparison runs only for the few rows whose JSON text differs (CASE evaluates lazily).
_SORTED_CATS = (
    "(SELECT coalesce(group_concat(value, char(31)), '') FROM (SELECT value FROM json_each({col}) ORDER BY value))"
)
_RECATEGORISED = (
    "CASE WHEN n.categories_json IS o.categories_json THEN 0 "
    f"ELSE {_SORTED_CATS.format(col='n.categories_json')} IS NOT {_SORTED_CATS.format(col='o.categories_json')} END"
)
_CHANGED = {
    "retitled": "n.title IS NOT o.title",
    "recategorised": _RECATEGORISED,
    "retimed": "n.duration_seconds IS NOT o.duration_seconds",
}
# One pass over the new items joined to the old ones counts everything (removed = old − matched);
# samples are read only for kinds that occurred.
_COUNTS = (
    "SELECT count(*), count(o.video_id), "
    + ", ".join(f"coalesce(sum(CASE WHEN o.video_id IS NULL THEN 0 ELSE ({expr}) END), 0)"
                for expr in _CHANGED.values())
    + " FROM main.catalog_item n LEFT JOIN old.catalog_item o ON o.video_id = n.video_id"
)
_SAMPLES = {
    "added": ("FROM main.catalog_item n LEFT JOIN old.catalog_item o ON o.video_id = n.video_id "
              "WHERE o.video_id IS NULL", "n.video_id, n.title, NULL, NULL"),
    "removed": ("FROM old.catalog_item o LEFT JOIN main.catalog_item n ON n.video_id = o.video_id "
                "WHERE n.video_id IS NULL", "o.video_id, o.title, NULL, NULL"),
    "retitled": ("FROM main.catalog_item n JOIN old.catalog_item o ON o.video_id = n.video_id "
                 f"WHERE {_CHANGED['retitled']}", "n.video_id, n.title, o.title, n.title"),
    "recategorised": ("FROM main.catalog_item n JOIN old.catalog_item o ON o.video_id = n.video_id "
                      f"WHERE {_RECATEGORISED}", "n.video_id, n.title, o.categories_json, n.categories_json"),
    "retimed": ("FROM main.catalog_item n JOIN old.catalog_item o ON o.video_id = n.video_id "
                f"WHERE {_CHANGED['retimed']}", "n.video_id, n.title, o.duration_seconds, n.duration_seconds"),
}


@dataclass(slots=True)
class SnapshotDiff:
    from_snapshot_id: str | None
    to_snapshot_id: str | None
    from_count: int
    to_count: int
    counts: dict[str, int] = field(default_factory=dict)
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def removed_ratio(self) -> float:
        return self.counts.get("removed", 0) / self.from_count if self.from_count else 0.0

    def summary(self) -> str:
        """One line for people: ``+12 −3 items; 4 retitled, 1 recategorised, 0 re-timed (308 → 317)``."""
        c = self.counts
        if self.from_snapshot_id is None:
            return f"first snapshot: {self.to_count} items"
        return (f"+{c.get('added', 0)} −{c.get('removed', 0)} items; {c.get('retitled', 0)} retitled, "
                f"{c.get('recategorised', 0)} recategorised, {c.get('retimed', 0)} re-timed "
                f"({self.from_count} → {self.to_count})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def diff_attached(conn: sqlite3.Connection, *, from_id: str | None, to_id: str | None) -> SnapshotDiff:
    """Diff ``main`` (new) against the database attached as ``old`` on ``conn``."""
    from_count = conn.execute("SELECT count(*) FROM old.catalog_item").fetchone()[0]
    to_count = conn.execute("SELECT count(*) FROM main.catalog_item").fetchone()[0]
    result = SnapshotDiff(from_id, to_id, from_count, to_count)
    new_count, matched, retitled, recategorised, retimed = conn.execute(_COUNTS).fetchone()
    result.counts = {"added": new_count - matched, "removed": from_count - matched, "retitled": retitled,
                     "recategorised": recategorised, "retimed": retimed}
    for kind, (body, columns) in _SAMPLES.items():
        rows = conn.execute(f"SELECT {columns} {body} ORDER BY 1 LIMIT {SAMPLE_SIZE}").fetchall() \
            if result.counts[kind] else []
        result.samples[kind] = [_sample(kind, row) for row in rows]
    return result


def _sample(kind: str, row: tuple[Any, ...]) -> dict[str, Any]:
    video_id, title, before, after = row
    sample: dict[str, Any] = {"video_id": video_id, "title": title}
    if kind in ("retitled", "recategorised", "retimed"):
        sample["before"], sample["after"] = before, after
    return sample


def diff_snapshot_files(old_path: Path | None, new_path: Path) -> SnapshotDiff:
    """Diff two snapshot files (both opened read-only); ``old_path`` None means "no previous snapshot"."""
    conn = open_readonly(Path(new_path))
    try:
        to_id = _snapshot_id(conn, "main")
        if old_path is None or not Path(old_path).exists():
            count = conn.execute("SELECT count(*) FROM catalog_item").fetchone()[0]
            return SnapshotDiff(None, to_id, 0, count, dict.fromkeys(KINDS, 0) | {"added": count}, {})
        conn.execute("ATTACH DATABASE ? AS old", (f"file:{Path(old_path).resolve()}?mode=ro",))
        return diff_attached(conn, from_id=_snapshot_id(conn, "old"), to_id=to_id)
    finally:
        conn.close()


def _snapshot_id(conn: sqlite3.Connection, schema: str) -> str | None:
    row = conn.execute(f"SELECT value FROM {schema}.snapshot_meta WHERE key = 'snapshot_id'").fetchone()
    return row[0] if row else None
