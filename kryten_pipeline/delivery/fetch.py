"""Fetch a published snapshot file from the Object Store and prove it is the one KV recorded.

Used wherever a file must come back from NATS: ``follow`` and ``pull`` on a reader host, and a rollback or
a start-of-run recovery on a pipeline host whose kept copy is missing or changed. The KV record is the
trust anchor: the download must have its ``size_bytes`` and ``sqlite_sha256``, pass ``PRAGMA
integrity_check`` and name its ``snapshot_id`` in ``snapshot_meta``. Until all of that holds the file is a
temp file that nothing opens; on any failure it is removed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kryten_pipeline.errors import DeliveryError
from kryten_pipeline.fault_points import fault_point
from kryten_pipeline.kv.object_store import STALL_TIMEOUT_S
from kryten_pipeline.kv.store import SnapshotStore
from kryten_pipeline.snapshot.files import (
    FILE_MODE,
    PUBLISHED_FILE_MODE,
    ensure_dir,
    fsync_dir,
    kept_snapshot_path,
    verify_snapshot_db,
)
from kryten_pipeline.snapshot.ids import is_snapshot_id

__all__ = ["DOWNLOAD_SUFFIX", "FetchedSnapshot", "fetch_snapshot_file", "remove_stale_downloads",
           "restore_kept_file"]

DOWNLOAD_SUFFIX = ".download"
_DOWNLOAD_RE = re.compile(r"^\..+\.(?P<pid>\d+)\.download$")


def _space_margin(size: int) -> int:
    """Room to leave free beside a download on top of the file itself (a profile's ALTER, the filesystem)."""
    return 1024 * 1024 + size // 20


@dataclass(frozen=True, slots=True)
class FetchedSnapshot:
    """A verified download: ``path`` is a temp file beside its destination, not yet installed."""

    path: Path
    snapshot_id: str
    namespace: str
    item_count: int
    size_bytes: int
    sha256: str
    seconds: float
    record: dict[str, Any]


def object_of(record: dict[str, Any]) -> tuple[str, str]:
    """(bucket, object name) a KV snapshot record names; DeliveryError for a record without them."""
    snapshot_id = record.get("snapshot_id")
    bucket, name = record.get("object_bucket"), record.get("object_name")
    if not isinstance(bucket, str) or not isinstance(name, str) or not bucket or not name:
        raise DeliveryError(
            f"snapshot {snapshot_id} names no file in the Object Store (its KV record has no object_bucket/"
            f"object_name: it was published by a version before file delivery); run a refresh to publish one"
        )
    return bucket, name


async def fetch_snapshot_file(
    store: SnapshotStore, record: dict[str, Any], directory: Path, *,
    progress: Callable[[int], None] | None = None, on_size: Callable[[int], None] | None = None,
    stall_timeout: float = STALL_TIMEOUT_S, setting: str = "KRYTEN_DATA_DIR",
) -> FetchedSnapshot:
    """Download the file of the KV snapshot ``record`` into a temp file in ``directory`` and verify it.

    ``setting`` is what a full or unwritable ``directory`` is reported against. Raises DeliveryError (or
    NatsUnavailableError) and leaves no temp file behind on failure.
    """
    snapshot_id = record.get("snapshot_id")
    if not is_snapshot_id(snapshot_id):
        raise DeliveryError(f"KV record holds no valid snapshot_id: {snapshot_id!r}")
    bucket, name = object_of(record)
    expected_size, expected_sha = record.get("size_bytes"), record.get("sqlite_sha256")
    if not isinstance(expected_size, int) or not isinstance(expected_sha, str):
        raise DeliveryError(f"the KV record of {snapshot_id} lacks size_bytes or sqlite_sha256: cannot verify a "
                            f"download against it")
    objects = store.objects_in(bucket)
    info = await objects.stat(name)
    if info is None:
        raise DeliveryError(f"object {name} of bucket {bucket!r}, which KV names for {snapshot_id}, is missing "
                            f"(deleted behind the pipeline's back?); a refresh publishes a new one",
                            setting="KRYTEN_OBJECT_BUCKET")
    if info.size != expected_size or (info.sha256 and info.sha256 != expected_sha):
        raise DeliveryError(f"object {name} holds {info.size} bytes / sha256 {info.sha256} but KV recorded "
                            f"{expected_size} bytes / {expected_sha} for {snapshot_id} (digest mismatch): not the "
                            f"published file", setting="KRYTEN_OBJECT_BUCKET")
    ensure_dir(directory)
    free = shutil.disk_usage(directory).free
    if free < expected_size + _space_margin(expected_size):
        raise DeliveryError(f"not enough disk space in {directory}: snapshot {snapshot_id} needs {expected_size} "
                            f"bytes, {free} are free", setting=setting)
    if on_size is not None:
        on_size(expected_size)
    tmp = Path(directory) / f".{snapshot_id}.{os.getpid()}{DOWNLOAD_SUFFIX}"
    started = time.monotonic()
    try:
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            fetched = await objects.fetch_into(name, handle, progress=progress, stall_timeout=stall_timeout)
            handle.flush()
            os.fsync(handle.fileno())
        fault_point("delivery.downloaded")
        if fetched.size != expected_size or fetched.sha256 != expected_sha:
            raise DeliveryError(f"download of {snapshot_id} has {fetched.size} bytes / sha256 {fetched.sha256}; KV "
                                f"recorded {expected_size} bytes / {expected_sha} (digest mismatch): not installed")
        report = verify_snapshot_db(tmp, expected_snapshot_id=snapshot_id)
        if not report.passed:
            raise DeliveryError(f"download of {snapshot_id} failed verification: {'; '.join(report.problems)}")
        if record.get("item_count") is not None and record.get("item_count") != report.item_count:
            raise DeliveryError(f"download of {snapshot_id} has {report.item_count} items, KV recorded "
                                f"{record.get('item_count')}")
    except OSError as exc:
        _unlink(tmp)
        if exc.errno == errno.ENOSPC:
            raise DeliveryError(f"disk full in {directory} while downloading {snapshot_id} ({expected_size} "
                                f"bytes): nothing installed", setting=setting) from None
        raise DeliveryError(f"cannot write the download of {snapshot_id} in {directory}: {exc}",
                            setting=setting) from None
    except BaseException:
        _unlink(tmp)
        raise
    return FetchedSnapshot(path=tmp, snapshot_id=str(snapshot_id), namespace=str(record.get("namespace") or ""),
                           item_count=report.item_count, size_bytes=fetched.size, sha256=fetched.sha256,
                           seconds=round(time.monotonic() - started, 3), record=record)


async def restore_kept_file(store: SnapshotStore, data_dir: Path, namespace: str, record: dict[str, Any]) -> Path:
    """Put the kept copy of ``record``'s snapshot back from the Object Store (it was missing or changed),
    so a rollback or a recovery works from KV and the object alone. Returns the kept path."""
    kept = kept_snapshot_path(data_dir, namespace, str(record.get("snapshot_id")))
    fetched = await fetch_snapshot_file(store, record, kept.parent)
    try:
        os.chmod(fetched.path, PUBLISHED_FILE_MODE)
        os.replace(fetched.path, kept)  # a changed copy is replaced by the verified download (a new inode)
    except OSError:
        _unlink(fetched.path)
        raise
    fsync_dir(kept.parent)
    return kept


def remove_stale_downloads(directory: Path) -> list[str]:
    """Remove every download left in ``directory`` (by a killed process); the caller holds the lock that
    makes it the only installer there."""
    removed: list[str] = []
    if not Path(directory).is_dir():
        return removed
    for path in Path(directory).iterdir():
        if _DOWNLOAD_RE.match(path.name):
            _unlink(path)
            removed.append(path.name)
    return removed


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        Path(path).unlink()
