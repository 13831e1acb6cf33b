"""Opening a snapshot file the way readers must: read-only, never creating it (shared by the build and the diff)."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def open_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection to an existing SQLite file (``mode=ro``: a missing file is an error, not created)."""
    return sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True, isolation_level=None)
