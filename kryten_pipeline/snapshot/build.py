"""Writing a new snapshot file: the schema, the bulk load, the indexes and the FTS5 index, the diff against the
live file, verification; the result is a complete read-only file next to the live one, not yet installed
(``files.install_snapshot`` swaps it in)."""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kryten_pipeline.errors import SnapshotBuildError
from kryten_pipeline.fault_points import fault_point
from kryten_pipeline.snapshot.diff import SnapshotDiff, diff_attached
from kryten_pipeline.snapshot.files import (
    FILE_MODE,
    PUBLISHED_FILE_MODE,
    SCHEMA_VERSION,
    BuiltSnapshot,
    ensure_dir,
    file_sha256,
    fsync_file,
    namespace_dir,
    remove_stale_temp_files,
    unlink_quietly,
    verify_snapshot_db,
)
from kryten_pipeline.snapshot.titles import readable_title

if TYPE_CHECKING:
    import pandas as pd  # only to name the frame type: `status`, `search` and `follow` never load pandas

_BATCH_SIZE = 5000
BUILD_CACHE_KIB = 8192

# The tables as SQL, not with sqlite-utils' ``Table.create``: the foreign keys carry ON DELETE CASCADE as in the
# kryten-playlist service's own schema, and the membership table is WITHOUT ROWID (smaller, one B-tree), neither of
# which ``create`` writes.
_DDL = """
CREATE TABLE catalog_item(
    video_id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    categories_json TEXT NOT NULL,
    manifest_url TEXT NOT NULL,
    duration_seconds INTEGER,
    thumbnail_url TEXT,
    snapshot_id TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE catalog_category(category TEXT PRIMARY KEY);
CREATE TABLE catalog_item_category(
    video_id TEXT NOT NULL REFERENCES catalog_item(video_id) ON DELETE CASCADE,
    category TEXT NOT NULL REFERENCES catalog_category(category) ON DELETE CASCADE,
    PRIMARY KEY(video_id, category)
) WITHOUT ROWID;
CREATE TABLE snapshot_meta(key TEXT PRIMARY KEY, value TEXT);
"""

def catalog_item_ddl() -> str:
    """The tables of a snapshot file (without the indexes and the FTS5 table built after the load)."""
    return _DDL


# The FTS5 tokenizer of catalog_fts; search.py tokenizes query words with the very same one.
FTS_TOKENIZER = "unicode61 remove_diacritics 2"
# FTS5 keeps pending terms in memory and writes a segment whenever they pass 'hashsize' (1 MiB by default),
# leaving 'optimize' to merge them all. Built with 4 MiB: at 100k items the build's peak memory is 30 MB above
# its start instead of 46 MB with 64 MiB (one segment), in the same time within noise (index step 1.9-2.3 s
# both, 1 MiB was ~30 % slower); the default is put back for anyone who writes to the file later.
FTS_BUILD_HASHSIZE = 4 * 1024 * 1024
FTS_DEFAULT_HASHSIZE = 1024 * 1024
# Indexes and the FTS5 index are built once, after the bulk load: much faster than per-row upkeep.
# (index name, table, columns); the first two names are the kryten spec's.
_INDEXES = (
    ("idx_catalog_title", "catalog_item", ("title",)),
    ("idx_catalog_snapshot", "catalog_item", ("snapshot_id",)),
    ("idx_catalog_item_category_category", "catalog_item_category", ("category", "video_id")),
)
# The FTS5 table is written by hand, not with sqlite-utils' enable_fts: two of its columns are computed while it
# is filled (title_alt by a Python function, categories from the JSON list), it has prefix indexes, and it
# holds its own copy of the text (enable_fts makes an external-content table over the columns of one table).
_POST_LOAD = f"""
CREATE VIRTUAL TABLE catalog_fts USING fts5(
    video_id UNINDEXED, title, title_alt, categories,
    tokenize = '{FTS_TOKENIZER}', prefix = '2 3'
);
INSERT INTO catalog_fts(catalog_fts, rank) VALUES('hashsize', {FTS_BUILD_HASHSIZE});
INSERT INTO catalog_fts(rowid, video_id, title, title_alt, categories)
    SELECT rowid, video_id, title, kryten_readable_title(title),
           (SELECT coalesce(group_concat(value, ' '), '') FROM json_each(catalog_item.categories_json))
    FROM catalog_item ORDER BY rowid;
INSERT INTO catalog_fts(catalog_fts) VALUES('optimize');
INSERT INTO catalog_fts(catalog_fts, rank) VALUES('hashsize', {FTS_DEFAULT_HASHSIZE});
INSERT INTO catalog_fts(catalog_fts, rank) VALUES('rank', 'bm25(0.0, 10.0, 6.0, 2.0)');
"""


def rows_from_frame(frame: pd.DataFrame) -> Iterator[tuple[Any, ...]]:
    """Rows of a validated frame as plain tuples (``pd.NA`` → ``None``), in ``validation.COLUMNS`` order."""
    column = frame["duration_seconds"].array  # Int64: vectorised, not one pd.isna per row
    missing = column.isna().tolist()
    values = column.to_numpy(dtype="int64", na_value=0).tolist()
    durations = [None if gone else value for value, gone in zip(values, missing, strict=True)]
    thumbs = [None if v is None or (isinstance(v, float) and v != v) else v for v in frame["thumbnail_url"]]
    yield from zip(frame["video_id"], frame["title"], frame["categories"], durations, thumbs,
                   frame["manifest_url"], strict=True)


def build_snapshot_db(
    rows: Iterable[tuple[Any, ...]],
    *,
    data_dir: Path,
    namespace: str,
    snapshot_id: str,
    created_at: str,
    source: str,
    extra_meta: Mapping[str, Any] | None = None,
    compare_with: Path | None = None,
) -> BuiltSnapshot:
    """Write a complete snapshot file next to the live one; return it verified but not yet installed.

    ``rows`` are ``(video_id, title, categories, duration_seconds, thumbnail_url, manifest_url)`` tuples of
    validated items. Streams them in batches. With ``compare_with`` (the live file), the difference to it
    is computed and stored in ``snapshot_meta.diff_json``. On any failure the temp file is removed and
    ``SnapshotBuildError`` raised; the live file is never touched here.
    """
    ns_dir = ensure_dir(namespace_dir(data_dir, namespace))
    remove_stale_temp_files(data_dir, namespace)
    tmp = ns_dir / f".catalog.{snapshot_id}.{os.getpid()}.tmp.sqlite3"
    timings: dict[str, float] = {}
    started = time.perf_counter()
    try:
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE)
        os.close(fd)
        fault_point("build.tmp_created")
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            counts = _load(conn, rows, snapshot_id=snapshot_id, created_at=created_at, timings=timings)
            item_count, category_count, membership_count = counts
            diff = _diff_against(conn, compare_with, snapshot_id, timings)
            fault_point("build.after_diff")
            meta = {
                "snapshot_id": snapshot_id,
                "created_at": created_at,
                "item_count": item_count,
                "category_count": category_count,
                "schema_version": SCHEMA_VERSION,
                "source": source,
                "namespace": namespace,
                **(extra_meta or {}),
            }
            if diff is not None:
                meta["diff_json"] = json.dumps(diff.to_dict() | {"summary": diff.summary()}, ensure_ascii=False)
            conn.executemany(
                "INSERT INTO snapshot_meta(key, value) VALUES (?, ?)",
                [(key, _meta_text(value)) for key, value in meta.items()],
            )
            conn.execute("PRAGMA journal_mode=DELETE")
            fault_point("build.after_meta")
        finally:
            conn.close()
        t0 = time.perf_counter()
        report = verify_snapshot_db(tmp, expected_snapshot_id=snapshot_id)
        timings["verify_s"] = round(time.perf_counter() - t0, 3)
        if not report.passed:
            raise SnapshotBuildError("snapshot failed verification: " + "; ".join(report.problems))
        fault_point("build.after_verify")
        os.chmod(tmp, PUBLISHED_FILE_MODE)  # complete: from here on nobody writes to it
        fsync_file(tmp)
        fault_point("build.after_fsync")
        sha256 = file_sha256(tmp)
    except SnapshotBuildError:
        unlink_quietly(tmp)
        raise
    except (sqlite3.Error, OSError) as exc:
        unlink_quietly(tmp)
        disk_full = (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "disk is full" in str(exc)
        hint = " (is the disk full?)" if disk_full else ""
        raise SnapshotBuildError(
            f"could not build the SQLite snapshot in {ns_dir}: {exc}{hint}", setting="KRYTEN_DATA_DIR"
        ) from exc
    except BaseException:
        unlink_quietly(tmp)
        raise
    timings["total_s"] = round(time.perf_counter() - started, 3)
    return BuiltSnapshot(
        path=tmp, snapshot_id=snapshot_id, namespace=namespace, created_at=created_at, source=source,
        item_count=item_count, category_count=category_count, membership_count=membership_count,
        sha256=sha256, size_bytes=tmp.stat().st_size, timings=timings, diff=diff,
    )


def _diff_against(conn: sqlite3.Connection, previous: Path | None, snapshot_id: str,
                  timings: dict[str, float]) -> SnapshotDiff | None:
    if previous is None:
        return None
    t0 = time.perf_counter()
    if not Path(previous).exists():
        count = conn.execute("SELECT count(*) FROM catalog_item").fetchone()[0]
        return SnapshotDiff(None, snapshot_id, 0, count, {"added": count, "removed": 0, "retitled": 0,
                                                          "recategorised": 0, "retimed": 0}, {})
    try:
        conn.execute("ATTACH DATABASE ? AS old", (f"file:{Path(previous).resolve()}?mode=ro",))
        old_id = conn.execute("SELECT value FROM old.snapshot_meta WHERE key = 'snapshot_id'").fetchone()
        diff = diff_attached(conn, from_id=old_id[0] if old_id else None, to_id=snapshot_id)
        conn.execute("DETACH DATABASE old")
    except sqlite3.DatabaseError:
        return None  # an unreadable previous file is not a reason to keep it live; nothing to compare
    timings["diff_s"] = round(time.perf_counter() - t0, 3)
    return diff


def _load(conn: sqlite3.Connection, rows: Iterable[tuple[Any, ...]], *, snapshot_id: str, created_at: str,
          timings: dict[str, float]) -> tuple[int, int, int]:
    # The file is a throw-away until verified and swapped in: no journal, no fsync per statement.
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA temp_store=MEMORY")
    # 8 MiB of page cache. Building 100k items grows the process by 42 MB with it and by 99 MB with 64 MiB, in
    # the same time within noise (bench of build_snapshot_db alone: 3.3-3.5 s both): the index and FTS builds
    # sort in the temp store, and the rows are written once, so a larger cache mostly holds pages already written.
    conn.execute(f"PRAGMA cache_size=-{BUILD_CACHE_KIB}")
    conn.create_function("kryten_readable_title", 1, readable_title, deterministic=True)
    conn.executescript(_DDL)
    fault_point("build.after_ddl")
    t0 = time.perf_counter()
    categories: set[str] = set()
    item_count = membership_count = 0
    conn.execute("BEGIN")
    batch: list[tuple[Any, ...]] = []
    links: list[tuple[str, str]] = []
    # A catalog has few distinct category lists: each is encoded once.
    encoded: dict[tuple[str, ...], str] = {}
    for video_id, title, cats, duration, thumbnail, manifest in rows:
        cats = tuple(cats)
        cats_json = encoded.get(cats)
        if cats_json is None:
            cats_json = encoded[cats] = json.dumps(cats, ensure_ascii=False)
        batch.append((video_id, title, cats_json, manifest, duration, thumbnail, snapshot_id, created_at))
        for category in cats:
            links.append((video_id, category))
            categories.add(category)
        if len(batch) >= _BATCH_SIZE:
            item_count, membership_count = _flush(conn, batch, links, item_count, membership_count)
    item_count, membership_count = _flush(conn, batch, links, item_count, membership_count)
    conn.executemany("INSERT INTO catalog_category(category) VALUES (?)", ((c,) for c in sorted(categories)))
    conn.execute("COMMIT")
    fault_point("build.after_load_commit")
    timings["load_s"] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    _create_indexes(conn)
    conn.executescript(_POST_LOAD)
    fault_point("build.after_fts")
    timings["index_s"] = round(time.perf_counter() - t0, 3)
    return item_count, len(categories), membership_count


def _create_indexes(conn: sqlite3.Connection) -> None:
    # sqlite-utils over the same connection. Imported here, on the refresh's path only: importing it loads
    # pandas and numpy when they are installed (0.9 s), which `status`, `search` and `follow` never pay.
    import sqlite_utils

    db = sqlite_utils.Database(conn)
    for name, table, columns in _INDEXES:
        db.table(table).create_index(list(columns), index_name=name)


def _flush(conn: sqlite3.Connection, batch: list[tuple[Any, ...]], links: list[tuple[str, str]],
           item_count: int, membership_count: int) -> tuple[int, int]:
    conn.executemany("INSERT INTO catalog_item VALUES (?, ?, ?, ?, ?, ?, ?, ?)", batch)
    conn.executemany("INSERT INTO catalog_item_category(video_id, category) VALUES (?, ?)", links)
    fault_point("build.load_batch")  # rows inserted, transaction still open
    item_count += len(batch)
    membership_count += len(links)
    batch.clear()
    links.clear()
    return item_count, membership_count


def _meta_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


