"""``follow --profile kryten-playlist``: the columns the kryten-playlist service's code reads.

The published schema is the contract of DESIGN §2. The kryten-playlist code (not its spec) also selects and
filters on columns of its own — ``mediacms_category`` and the enrichment fields its LLM tooling fills — and
fails on a file without them. This profile adds them to the follower's private copy before it is installed:
``mediacms_category`` holds the item's first category (NULL without one), the others are NULL. The
published file and the Object Store copy are never changed.

Note: the playlist's search shows only enriched rows (``llm_enriched_at IS NOT NULL``), so until its own
enrichment has filled them its search finds nothing in a fresh snapshot; lookups by ``video_id`` work.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from kryten_pipeline.errors import DeliveryError

PROFILES = ("kryten-playlist",)

# (column, type) in the order the playlist's enrichment adds them.
PLAYLIST_COLUMNS: tuple[tuple[str, str], ...] = (
    ("mediacms_category", "TEXT"),
    ("llm_enriched_at", "TEXT"),
    ("genre", "TEXT"),
    ("mood", "TEXT"),
    ("era", "TEXT"),
    ("year", "INTEGER"),
    ("synopsis", "TEXT"),
    ("title_base", "TEXT"),
    ("sanitized_title", "TEXT"),
    ("cast_list", "TEXT"),
    ("director", "TEXT"),
    ("llm_notes", "TEXT"),
    ("is_tv", "INTEGER"),
)
PLAYLIST_INDEXES = (
    "CREATE INDEX IF NOT EXISTS idx_catalog_mediacms_category ON catalog_item(mediacms_category)",
    "CREATE INDEX IF NOT EXISTS idx_catalog_sanitized_title ON catalog_item(sanitized_title)",
)


def apply_profile(path: Path, profile: str) -> None:
    """Add ``profile``'s columns and indexes to the (not yet installed) snapshot file at ``path``."""
    if profile != "kryten-playlist":
        raise DeliveryError(f"unknown profile {profile!r} (known: {', '.join(PROFILES)})")
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        # A private temp copy: if this fails it is thrown away, so no journal is needed.
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        existing = {row[1] for row in conn.execute("PRAGMA table_info(catalog_item)")}
        conn.execute("BEGIN")
        for column, sql_type in PLAYLIST_COLUMNS:
            if column not in existing:
                conn.execute(f"ALTER TABLE catalog_item ADD COLUMN {column} {sql_type} NULL")
        conn.execute("UPDATE catalog_item SET mediacms_category = json_extract(categories_json, '$[0]')")
        for statement in PLAYLIST_INDEXES:
            conn.execute(statement)
        conn.execute("INSERT OR REPLACE INTO snapshot_meta(key, value) VALUES ('follow_profile', ?)", (profile,))
        conn.execute("COMMIT")
        check = conn.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.Error as exc:
        raise DeliveryError(f"applying profile {profile} to {path.name} failed: {exc}") from exc
    finally:
        conn.close()
    if check != "ok":
        raise DeliveryError(f"after applying profile {profile}, quick_check says: {check}")
