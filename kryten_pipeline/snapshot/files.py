"""The SQLite snapshot files: verify one, swap it in atomically (seed 000 §4.3 option A), keep and prune copies.

``build.py`` writes a new file; this module owns where files live and how they change hands.

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
import fcntl
import hashlib
import os
import re
import shutil
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kryten_pipeline.errors import SnapshotBuildError, StaleSnapshotError
from kryten_pipeline.fault_points import fault_point
from kryten_pipeline.namespaces import validate_namespace
from kryten_pipeline.processes import pid_alive
from kryten_pipeline.snapshot.diff import SnapshotDiff
from kryten_pipeline.snapshot.ids import is_snapshot_id
from kryten_pipeline.snapshot.readonly import open_readonly

if TYPE_CHECKING:
    pass  # only to name the frame type: `status`, `search` and `follow` never load pandas

SCHEMA_VERSION = 1
LIVE_DB_NAME = "catalog.sqlite3"
REQUIRED_META_KEYS = ("snapshot_id", "created_at", "item_count", "schema_version", "source", "namespace")
DIR_MODE = 0o750
FILE_MODE = 0o640  # files we still write: a build in progress, lock files
PUBLISHED_FILE_MODE = 0o440  # the live file and kept copies: nobody may write to them
_TMP_RE = re.compile(r"^\.catalog\.(?P<id>[^.]+)\.(?P<pid>\d+)\.tmp\.sqlite3(?:-journal)?$")
# Other half-written files a killed process can leave: a copy of a published file, a rejects file, a download.
_SUBDIR_TMP_RE = re.compile(r"^\..+\.(?P<pid>\d+)\.(?:copy|tmp|download)$")
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
            unlink_quietly(built.path)
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
        unlink_quietly(kept_snapshot_path(data_dir, namespace, snapshot_id))
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
            unlink_quietly(path)
            removed.append(path.name)
    for sub in ("snapshots", "rejects"):
        if not (folder / sub).is_dir():
            continue
        for path in (folder / sub).iterdir():
            match = _SUBDIR_TMP_RE.match(path.name)
            if match and not pid_alive(int(match["pid"])):
                unlink_quietly(path)
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
        fsync_file(tmp)
        os.replace(tmp, dst)
    except BaseException:
        unlink_quietly(tmp)
        raise
    fsync_dir(dst.parent)


def fsync_file(path: Path) -> None:
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


def unlink_quietly(path: Path) -> None:
    for candidate in (path, Path(f"{path}-journal")):
        with contextlib.suppress(FileNotFoundError):
            candidate.unlink()
