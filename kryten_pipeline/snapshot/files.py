"""The SQLite snapshot: build a new file, verify it, swap it in atomically (seed 000 §4.3 option A).

Layout per namespace (``{data_dir}/{namespace}/``):
- ``catalog.sqlite3`` — the live file readers open read-only (reopen after a swap);
- ``snapshots/{snapshot_id}.sqlite3`` — kept snapshots, so a rollback is a swap, not a rebuild. Each is a
  copy of its own (another inode, never a hard link of the live file): a reader that writes to one file
  through some other mode bits or as root cannot change another;
- ``.catalog.{snapshot_id}.{pid}.tmp.sqlite3`` — a build in progress; stale ones are removed.
A file is never modified once built: published and kept files are read-only on disk (``PUBLISHED_FILE_MODE``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kryten_pipeline.errors import SnapshotBuildError, StaleSnapshotError
from kryten_pipeline.fault_points import fault_point
from kryten_pipeline.namespaces import validate_namespace
from kryten_pipeline.snapshot.diff import SnapshotDiff, diff_attached
from kryten_pipeline.snapshot.ids import is_snapshot_id
from kryten_pipeline.snapshot.readonly import open_readonly
from kryten_pipeline.snapshot.titles import readable_title

if TYPE_CHECKING:
    import pandas as pd  # only to name the frame type: `status`, `search` and `follow` never load pandas

SCHEMA_VERSION = 1
LIVE_DB_NAME = "catalog.sqlite3"
REQUIRED_META_KEYS = ("snapshot_id", "created_at", "item_count", "schema_version", "source", "namespace")
DIR_MODE = 0o750
FILE_MODE = 0o640  # files we still write: a build in progress, lock files
PUBLISHED_FILE_MODE = 0o440  # the live file and kept copies: nobody may write to them
_TMP_RE = re.compile(r"^\.catalog\.(?P<id>[^.]+)\.(?P<pid>\d+)\.tmp\.sqlite3(?:-journal)?$")
# Other half-written files a killed process can leave: a copy of a published file, a rejects file, a download.
_SUBDIR_TMP_RE = re.compile(r"^\..+\.(?P<pid>\d+)\.(?:copy|tmp|download)$")
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
# leaving 'optimize' to merge them all. Built with 64 MiB, 100k titles make one segment (the FTS step takes
# ~30 % less time); the default is put back for anyone who writes to the file later.
FTS_BUILD_HASHSIZE = 64 * 1024 * 1024
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


@dataclass(slots=True)
class BuiltSnapshot:
    path: Path
    snapshot_id: str
    namespace: str
    created_at: str
    source: str
    item_count: int
    category_count: int
    membership_count: int
    sha256: str
    size_bytes: int
    timings: dict[str, float] = field(default_factory=dict)
    diff: SnapshotDiff | None = None


@dataclass(slots=True)
class VerificationReport:
    path: Path
    integrity: str
    item_count: int
    fts_count: int
    meta: dict[str, str]
    problems: list[str]

    @property
    def passed(self) -> bool:
        return not self.problems


@dataclass(slots=True)
class InstalledSnapshot:
    live_path: Path
    snapshot_file: Path
    previous_snapshot_id: str | None
    pruned: list[str]


def namespace_dir(data_dir: Path, namespace: str) -> Path:
    return Path(data_dir) / validate_namespace(namespace)


def live_db_path(data_dir: Path, namespace: str) -> Path:
    return namespace_dir(data_dir, namespace) / LIVE_DB_NAME


def kept_snapshot_path(data_dir: Path, namespace: str, snapshot_id: str) -> Path:
    if not is_snapshot_id(snapshot_id):
        raise ValueError(f"not a snapshot id: {snapshot_id!r}")
    return namespace_dir(data_dir, namespace) / "snapshots" / f"{snapshot_id}.sqlite3"


def ensure_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents: the data dir itself) with ``DIR_MODE``: no world access.
    (``mkdir(parents=True)`` would give the parents the default 0o777 & ~umask.)"""
    path = Path(path)
    if not path.is_dir():
        if not path.parent.exists():
            ensure_dir(path.parent)
        path.mkdir(mode=DIR_MODE, exist_ok=True)
    return path


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
        _fsync_file(tmp)
        fault_point("build.after_fsync")
        sha256 = file_sha256(tmp)
    except SnapshotBuildError:
        _unlink_quietly(tmp)
        raise
    except (sqlite3.Error, OSError) as exc:
        _unlink_quietly(tmp)
        disk_full = (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "disk is full" in str(exc)
        hint = " (is the disk full?)" if disk_full else ""
        raise SnapshotBuildError(
            f"could not build the SQLite snapshot in {ns_dir}: {exc}{hint}", setting="KRYTEN_DATA_DIR"
        ) from exc
    except BaseException:
        _unlink_quietly(tmp)
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


def read_snapshot_meta(path: Path) -> dict[str, str] | None:
    """``snapshot_meta`` of a snapshot file, or ``None`` if there is no such file."""
    path = Path(path)
    if not path.exists():
        return None
    conn = open_readonly(path)
    try:
        return dict(conn.execute("SELECT key, value FROM snapshot_meta").fetchall())
    finally:
        conn.close()


def verify_snapshot_db(path: Path, *, expected_snapshot_id: str | None = None) -> VerificationReport:
    """The checks behind the ``sqlite_integrity`` asset check; read-only."""
    problems: list[str] = []
    conn = open_readonly(path)
    try:
        integrity = "; ".join(row[0] for row in conn.execute("PRAGMA integrity_check").fetchall())
        if integrity != "ok":
            problems.append(f"integrity_check: {integrity[:300]}")
        item_count = conn.execute("SELECT count(*) FROM catalog_item").fetchone()[0]
        fts_count = conn.execute("SELECT count(*) FROM catalog_fts").fetchone()[0]
        if fts_count != item_count:
            problems.append(f"FTS rows {fts_count} != items {item_count}")
        meta = dict(conn.execute("SELECT key, value FROM snapshot_meta").fetchall())
        missing = [key for key in REQUIRED_META_KEYS if key not in meta]
        if missing:
            problems.append(f"snapshot_meta lacks {', '.join(missing)}")
        if meta.get("item_count") is not None and meta.get("item_count") != str(item_count):
            problems.append(f"snapshot_meta item_count {meta.get('item_count')} != items {item_count}")
        snapshot_id = meta.get("snapshot_id")
        if expected_snapshot_id is not None and snapshot_id != expected_snapshot_id:
            problems.append(f"snapshot_meta snapshot_id {snapshot_id} != expected {expected_snapshot_id}")
        stray = conn.execute(
            "SELECT count(*) FROM catalog_item WHERE snapshot_id IS NOT ?", (snapshot_id,)
        ).fetchone()[0]
        if stray:
            problems.append(f"{stray} rows carry another snapshot_id than snapshot_meta's")
        orphans = conn.execute("PRAGMA foreign_key_check").fetchmany(3)
        if orphans:
            problems.append("catalog_item_category rows without their item or category (foreign_key_check): "
                            + ", ".join(f"{table} rowid {rowid} → {parent}" for table, rowid, parent, _ in orphans))
    except sqlite3.Error as exc:
        return VerificationReport(Path(path), "error", 0, 0, {}, [f"cannot read snapshot: {exc}"])
    finally:
        conn.close()
    return VerificationReport(Path(path), integrity, item_count, fts_count, meta, problems)


@contextlib.contextmanager
def namespace_lock(data_dir: Path, namespace: str, name: str = "install", *,
                   timeout: float | None = 600.0, on_wait: Any = None) -> Iterator[None]:
    """An exclusive per-namespace lock shared by every process using this data dir.

    ``name`` selects the lock: ``install`` guards the swap and rollback (held briefly); ``refresh``
    is held for a whole refresh run so two refreshes of one namespace never interleave.
    """
    lock_path = ensure_dir(namespace_dir(data_dir, namespace)) / f".{name}.lock"
    fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, FILE_MODE)
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not announced and on_wait is not None:
                    on_wait()
                    announced = True
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(
                        f"namespace {namespace!r} is locked by another {name} for more than {timeout:.0f} s"
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def install_snapshot(built: BuiltSnapshot, *, data_dir: Path, keep: int,
                     protect: Iterable[str] = ()) -> InstalledSnapshot:
    """Keep the built file under ``snapshots/`` and swap it onto ``catalog.sqlite3`` with ``os.replace``.

    Refuses to replace a live snapshot that is newer than ``built`` (``StaleSnapshotError``).
    """
    live = live_db_path(data_dir, built.namespace)
    kept = kept_snapshot_path(data_dir, built.namespace, built.snapshot_id)
    with namespace_lock(data_dir, built.namespace):
        fault_point("install.locked")
        live_meta = _safe_meta(live)
        previous = live_meta.get("snapshot_id") if live_meta else None
        if previous and previous > built.snapshot_id:
            _unlink_quietly(built.path)
            raise StaleSnapshotError(
                f"live snapshot {previous} is newer than {built.snapshot_id}; not swapped in"
            )
        ensure_dir(kept.parent)
        copy_published_file(built.path, kept)
        fault_point("install.after_link")
        os.replace(built.path, live)
        fault_point("install.after_replace")
        fsync_dir(live.parent)
        fault_point("install.after_dir_fsync")
        # The previous live snapshot is what KV current names until the publish moves it: its kept file
        # must outlive this swap (the live file may still have to go back to it, see recovery); retention
        # prunes it later.
        pruned = prune_kept_snapshots(data_dir, built.namespace, keep=keep,
                                      protect={built.snapshot_id, previous, *(p for p in protect if p)})
    return InstalledSnapshot(live_path=live, snapshot_file=kept, previous_snapshot_id=previous, pruned=pruned)


def install_kept_snapshot(data_dir: Path, namespace: str, snapshot_id: str) -> InstalledSnapshot:
    """Swap a kept snapshot back in as the live file (rollback). Verifies it first."""
    kept = kept_snapshot_path(data_dir, namespace, snapshot_id)
    if not kept.exists():
        raise SnapshotBuildError(f"snapshot {snapshot_id} is not kept in {kept.parent}")
    report = verify_snapshot_db(kept, expected_snapshot_id=snapshot_id)
    if not report.passed:
        raise SnapshotBuildError(f"kept snapshot {snapshot_id} failed verification: {'; '.join(report.problems)}")
    live = live_db_path(data_dir, namespace)
    with namespace_lock(data_dir, namespace):
        live_meta = _safe_meta(live)
        copy_published_file(kept, live)
    return InstalledSnapshot(live, kept, live_meta.get("snapshot_id") if live_meta else None, [])


def list_kept_snapshots(data_dir: Path, namespace: str) -> list[str]:
    """Snapshot ids with a kept file, oldest first."""
    folder = namespace_dir(data_dir, namespace) / "snapshots"
    if not folder.is_dir():
        return []
    ids = [p.name[: -len(".sqlite3")] for p in folder.glob("*.sqlite3")]
    return sorted(i for i in ids if is_snapshot_id(i))


def prune_kept_snapshots(data_dir: Path, namespace: str, *, keep: int, protect: Iterable[str] = ()) -> list[str]:
    """Delete kept files beyond the newest ``keep``; never the live one or any id in ``protect``."""
    protected = set(protect)
    live_meta = _safe_meta(live_db_path(data_dir, namespace))
    if live_meta and live_meta.get("snapshot_id"):
        protected.add(live_meta["snapshot_id"])
    kept = list_kept_snapshots(data_dir, namespace)
    removed: list[str] = []
    for snapshot_id in kept[: max(0, len(kept) - keep)]:
        if snapshot_id in protected:
            continue
        _unlink_quietly(kept_snapshot_path(data_dir, namespace, snapshot_id))
        fault_point("prune.file_deleted")
        removed.append(snapshot_id)
    return removed


def remove_stale_temp_files(data_dir: Path, namespace: str) -> list[str]:
    """Remove temp files left by builds whose process is gone (a crash or SIGKILL mid-build)."""
    folder = namespace_dir(data_dir, namespace)
    removed: list[str] = []
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        match = _TMP_RE.match(path.name) or _SUBDIR_TMP_RE.match(path.name)
        if match and not pid_alive(int(match["pid"])):
            _unlink_quietly(path)
            removed.append(path.name)
    for sub in ("snapshots", "rejects"):
        if not (folder / sub).is_dir():
            continue
        for path in (folder / sub).iterdir():
            match = _SUBDIR_TMP_RE.match(path.name)
            if match and not pid_alive(int(match["pid"])):
                _unlink_quietly(path)
                removed.append(f"{sub}/{path.name}")
    return removed


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _safe_meta(path: Path) -> dict[str, str] | None:
    try:
        return read_snapshot_meta(path)
    except sqlite3.Error:
        return None  # an unreadable live file is replaced, never trusted


def copy_published_file(src: Path, dst: Path) -> None:
    """Put a read-only copy of ``src`` at ``dst`` atomically: a new inode, never a hard link, so that a write
    to one (by root, or after a chmod) can never change the other."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.copy")
    try:
        shutil.copyfile(src, tmp)  # in-kernel copy (sendfile / copy_file_range) on Linux
        os.chmod(tmp, PUBLISHED_FILE_MODE)
        _fsync_file(tmp)
        os.replace(tmp, dst)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    fsync_dir(dst.parent)


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    for candidate in (path, Path(f"{path}-journal")):
        with contextlib.suppress(FileNotFoundError):
            candidate.unlink()
