"""A stand-in for the kryten-playlist service's catalog reader, for tests (its own code cannot run here).

It does to the file what that service's code does (storage/sqlite.py, storage/schema.py and
storage/catalog_repo.py of its public repository, read for the facts): open the path read-write with one
connection held for its whole life, ``PRAGMA journal_mode=WAL`` and ``foreign_keys=ON``, its schema setup
(guarded ALTER TABLE / CREATE INDEX IF NOT EXISTS), then item queries that select its enrichment columns and
filter on ``mediacms_category``. ``enrich`` writes as its enrichment tooling would.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

ITEM_COLUMNS = "video_id, title, duration_seconds, thumbnail_url, snapshot_id, genre, mood, era, year, synopsis"


class PlaylistConsumer:
    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(str(path), isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        self._init_schema()

    def _columns(self) -> set[str]:
        return {row[1] for row in self.conn.execute("PRAGMA table_info(catalog_item)")}

    def _init_schema(self) -> None:
        exists = self.conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name='catalog_item'").fetchone()
        if exists:
            if "sanitized_title" in self._columns():
                self.conn.execute("CREATE INDEX IF NOT EXISTS idx_catalog_sanitized_title "
                                  "ON catalog_item(sanitized_title)")
            else:
                self.conn.execute("CREATE INDEX IF NOT EXISTS idx_catalog_title ON catalog_item(title)")
        if "mediacms_category" not in self._columns():
            self.conn.execute("ALTER TABLE catalog_item ADD COLUMN mediacms_category TEXT NULL")
            self.conn.execute("CREATE INDEX IF NOT EXISTS idx_catalog_mediacms_category "
                              "ON catalog_item(mediacms_category)")
        self.conn.execute("CREATE INDEX IF NOT EXISTS idx_catalog_snapshot ON catalog_item(snapshot_id)")
        self.conn.execute("CREATE TABLE IF NOT EXISTS catalog_category (category TEXT PRIMARY KEY)")
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS catalog_item_category (video_id TEXT NOT NULL, category TEXT NOT NULL, "
            "PRIMARY KEY (video_id, category), "
            "FOREIGN KEY (video_id) REFERENCES catalog_item(video_id) ON DELETE CASCADE, "
            "FOREIGN KEY (category) REFERENCES catalog_category(category) ON DELETE CASCADE)")

    def get_item(self, video_id: str) -> tuple[Any, ...] | None:
        return self.conn.execute(f"SELECT {ITEM_COLUMNS} FROM catalog_item "
                                 "WHERE video_id = ? AND mediacms_category IS NOT NULL", (video_id,)).fetchone()

    def categories(self) -> list[str]:
        return [row[0] for row in self.conn.execute("SELECT category FROM catalog_category ORDER BY category ASC")]

    def search(self, text: str, limit: int = 20) -> list[tuple[Any, ...]]:
        where = ("title LIKE ? AND mediacms_category IS NOT NULL AND mediacms_category != 'Uncategorized' "
                 "AND llm_enriched_at IS NOT NULL")
        return self.conn.execute(f"SELECT {ITEM_COLUMNS} FROM catalog_item WHERE {where} ORDER BY title ASC "
                                 "LIMIT ?", (f"%{text}%", limit)).fetchall()

    def enrich(self, limit: int = 50) -> int:
        """What its LLM enrichment does: fill columns of some rows (a write into the file it holds)."""
        cursor = self.conn.execute(
            "UPDATE catalog_item SET llm_enriched_at = '2026-01-01T00:00:00Z', genre = 'drama', "
            "synopsis = 'written by the consumer' WHERE rowid IN (SELECT rowid FROM catalog_item LIMIT ?)", (limit,))
        return cursor.rowcount

    def snapshot_id(self) -> str:
        return self.conn.execute("SELECT value FROM snapshot_meta WHERE key = 'snapshot_id'").fetchone()[0]

    def close(self) -> None:
        self.conn.close()
