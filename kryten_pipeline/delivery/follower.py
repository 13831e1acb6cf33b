"""``kryten-pipeline follow`` and ``pull``: install published snapshots on a host that has only NATS.

What a follower leaves at its target ``PATH`` (the file the playlist service opens):

- ``PATH`` — a symbolic link to the installed version, e.g. ``catalog.sqlite3.versions/20251218T123456Z-
  7f3a9c.1a2b3c.sqlite3`` (relative, so the directory can be mounted elsewhere);
- ``PATH.versions/`` — the installed version and the one before it, downloads in progress (removed when
  they fail, or by the next start after a kill), and the follower's lock.

Why a link and versioned names: SQLite names a database's journal files (``-wal``, ``-shm``, ``-journal``)
after the path it opened *with symbolic links resolved*. A consumer that switched the old file to WAL keeps
its journal files beside that old version; the new version has another name, so nothing ever applies those
journal files to it. Installing is one ``rename`` of the link: atomic. A reader that has the old file open
keeps reading a complete old snapshot; a fresh open gets the new one.

Every install is verified first (size and sha256 against the KV record, ``PRAGMA integrity_check``,
``snapshot_meta.snapshot_id``, see :mod:`kryten_pipeline.delivery.fetch`); until then nothing at ``PATH`` changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import re
import secrets
import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats.errors
from nats.js.kv import KV_DEL, KV_PURGE

from kryten_pipeline.delivery.fetch import FetchedSnapshot, fetch_snapshot_file, remove_stale_downloads
from kryten_pipeline.delivery.playlist_profile import apply_profile
from kryten_pipeline.errors import ConfigurationError, DeliveryError, KrytenError, NatsUnavailableError
from kryten_pipeline.kv.connection import nats_connection, redact_url
from kryten_pipeline.kv.nats_errors import NATS_FAILURES, describe_nats_error
from kryten_pipeline.kv.store import SnapshotStore, current_key
from kryten_pipeline.settings import SETTINGS, Settings
from kryten_pipeline.snapshot.files import fsync_dir, open_readonly
from kryten_pipeline.snapshot.ids import SNAPSHOT_ID_PATTERN, is_snapshot_id

__all__ = ["Follower", "InstallReport", "InstallTarget", "pull_snapshot"]

DEFAULT_FILE_MODE = 0o644  # the consumer must be able to write (it switches the file to WAL); run as its user
VERSIONS_KEPT = 2  # the installed version and the one before it (a consumer may still be reopening it)
RESYNC_INTERVAL_S = 60.0  # besides the KV watch, read current this often (a missed update cannot persist)
MAX_BACKOFF_S = 60.0
HOOK_TIMEOUT_S = 600.0
_VERSION_RE = re.compile(rf"^(?P<id>{SNAPSHOT_ID_PATTERN[1:-1]})\.[0-9a-f]{{6}}\.sqlite3$")
_SECRET_ENVS = {spec.env for spec in SETTINGS if spec.secret}


# -- the target: a link to versioned files ----------------------------------------------------------------


@dataclass(frozen=True)
class InstallTarget:
    path: Path
    file_mode: int = DEFAULT_FILE_MODE

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(os.path.abspath(Path(self.path).expanduser())))

    @property
    def versions_dir(self) -> Path:
        return self.path.with_name(self.path.name + ".versions")

    def installed_snapshot_id(self) -> str | None:
        """The snapshot id installed at ``path``: from the link's version name, or (a plain file someone put
        there) from its ``snapshot_meta``; None when nothing readable is installed."""
        if self.path.is_symlink():
            match = _VERSION_RE.match(Path(os.readlink(self.path)).name)
            return match["id"] if match and self.path.exists() else None
        if not self.path.is_file():
            return None
        try:
            conn = open_readonly(self.path)
            try:
                row = conn.execute("SELECT value FROM snapshot_meta WHERE key = 'snapshot_id'").fetchone()
            finally:
                conn.close()
        except sqlite3.Error:
            return None
        return row[0] if row and is_snapshot_id(row[0]) else None

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """One installer per target: a second follow/pull of the same PATH is refused, not interleaved."""
        if self.path.is_dir() and not self.path.is_symlink():
            raise ConfigurationError(f"--to {self.path} is a directory; name the database file to install",
                                     setting="--to")
        try:
            self.versions_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigurationError(f"cannot create {self.versions_dir}: {exc}", setting="--to") from None
        lock_path = self.versions_dir / ".follow.lock"
        fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o640)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = Path(lock_path).read_text(encoding="utf-8", errors="replace").strip() or "another process"
                raise ConfigurationError(
                    f"{self.path} is being installed into by {holder} (another follow or pull); one at a time",
                    setting="--to",
                ) from None
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()}".encode())
            # Holding the lock, every download left in the versions dir belongs to a dead process.
            remove_stale_downloads(self.versions_dir)
            yield
        finally:
            os.close(fd)

    def install(self, fetched: FetchedSnapshot) -> Path:
        """Make the verified download the file at ``path``: a new version file, then the link renamed onto
        ``path`` (atomic). Returns the version file."""
        version = self.versions_dir / f"{fetched.snapshot_id}.{secrets.token_hex(3)}.sqlite3"
        os.chmod(fetched.path, self.file_mode)
        os.replace(fetched.path, version)
        fsync_dir(self.versions_dir)
        link_tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.link")
        with contextlib.suppress(FileNotFoundError):
            link_tmp.unlink()
        os.symlink(os.path.relpath(version, self.path.parent), link_tmp)
        os.replace(link_tmp, self.path)
        fsync_dir(self.path.parent)
        self._prune(keep={version.name})
        return version

    def _prune(self, keep: set[str]) -> None:
        """Delete old versions: all but the installed one and the one before it, and none that a WAL-mode
        connection still has open (it needs its -wal/-shm files; a rollback-mode reader needs only its open
        file descriptor, which outlives the unlink). A version spared now goes at a later install."""
        versions = sorted((p for p in self.versions_dir.glob("*.sqlite3") if _VERSION_RE.match(p.name)),
                          key=lambda p: p.stat().st_mtime_ns, reverse=True)
        kept = set(keep) | {p.name for p in versions[:VERSIONS_KEPT]}
        for path in versions:
            if path.name in kept or _open_in_wal_mode(path):
                continue
            for leftover in (path, *(path.with_name(path.name + s) for s in ("-wal", "-shm", "-journal"))):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()


def _open_in_wal_mode(path: Path) -> bool:
    """Does some process hold a WAL connection to ``path``? Such a connection keeps a POSIX lock on the
    ``-shm`` file for as long as it is open, so an exclusive lock attempt on it fails."""
    shm = path.with_name(path.name + "-shm")
    try:
        fd = os.open(shm, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.lockf(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


# -- one install --------------------------------------------------------------------------------------------


@dataclass
class HookResult:
    command: str
    returncode: int | None
    seconds: float
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.error is None


@dataclass
class InstallReport:
    action: str  # installed | already current
    namespace: str
    snapshot_id: str
    item_count: int | None
    size_bytes: int | None
    path: str
    seconds: float
    download_s: float | None = None
    file: str | None = None
    previous_snapshot_id: str | None = None
    profile: str | None = None
    hook: HookResult | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        if self.action != "installed":
            return f"{self.snapshot_id} is already installed at {self.path} ({self.item_count} items)"
        size = f"{self.size_bytes:,} bytes" if self.size_bytes is not None else "? bytes"
        return (f"installed {self.snapshot_id} ({self.item_count} items, {size}) at {self.path} in "
                f"{self.seconds:.2f} s (download {self.download_s:.2f} s; previous: "
                f"{self.previous_snapshot_id or 'none'})")


async def install_record(
    store: SnapshotStore, record: dict[str, Any], target: InstallTarget, *, namespace: str,
    profile: str | None = None, progress: ProgressFactory | None = None, stall_timeout: float = 30.0,
) -> InstallReport:
    """Download, verify, (profile,) install the snapshot of KV ``record`` at ``target``."""
    started = time.monotonic()
    previous = target.installed_snapshot_id()
    bar = progress(str(record.get("snapshot_id"))) if progress is not None else None
    try:
        fetched = await fetch_snapshot_file(
            store, record, target.versions_dir, stall_timeout=stall_timeout, setting="--to",
            progress=bar.advance if bar else None, on_size=bar.start if bar else None,
        )
    finally:
        if bar is not None:
            bar.close()
    try:
        if profile:
            await asyncio.to_thread(apply_profile, fetched.path, profile)
        version = target.install(fetched)
    except BaseException:
        fetched.path.unlink(missing_ok=True)
        raise
    return InstallReport(
        action="installed", namespace=namespace, snapshot_id=fetched.snapshot_id, item_count=fetched.item_count,
        size_bytes=fetched.size_bytes, path=str(target.path), seconds=round(time.monotonic() - started, 3),
        download_s=fetched.seconds, file=str(version), previous_snapshot_id=previous, profile=profile,
    )


async def run_hook(command: str, report: InstallReport, *, timeout: float = HOOK_TIMEOUT_S) -> HookResult:
    """Run ``--exec`` once after an install, with the snapshot in its environment; never retried."""
    # The hook gets no secret: secret settings are dropped, credentials in NATS_URL are cut out.
    env = {k: v for k, v in os.environ.items() if k not in _SECRET_ENVS}
    if env.get("NATS_URL"):
        env["NATS_URL"] = redact_url(env["NATS_URL"])
    env.update({
        "KRYTEN_SNAPSHOT_ID": report.snapshot_id,
        "KRYTEN_SNAPSHOT_PATH": report.path,
        "KRYTEN_SNAPSHOT_NAMESPACE": report.namespace,
        "KRYTEN_SNAPSHOT_ITEMS": str(report.item_count if report.item_count is not None else ""),
        "KRYTEN_SNAPSHOT_PREVIOUS_ID": report.previous_snapshot_id or "",
    })
    started = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_shell(command, env=env, stdin=asyncio.subprocess.DEVNULL,
                                                     start_new_session=True)
    except OSError as exc:
        return HookResult(command, None, 0.0, error=f"cannot start: {exc}")
    try:
        code = await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        return HookResult(command, None, round(time.monotonic() - started, 3),
                          error=f"timed out after {timeout:.0f} s (killed)")
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        raise
    return HookResult(command, code, round(time.monotonic() - started, 3))


# -- progress on a terminal -----------------------------------------------------------------------------------


class ProgressBar:
    """A download bar (rich) for one snapshot; only on a terminal."""

    def __init__(self, label: str) -> None:
        from rich.console import Console
        from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

        self._progress = Progress(*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn(),
                                  console=Console(stderr=True), transient=True)
        self._task = self._progress.add_task(f"download {label}", total=None)
        self._progress.start()

    def start(self, total: int) -> None:
        self._progress.update(self._task, total=total)

    def advance(self, count: int) -> None:
        self._progress.advance(self._task, count)

    def close(self) -> None:
        self._progress.stop()


ProgressFactory = Callable[[str], ProgressBar]


def terminal_progress() -> ProgressFactory | None:
    return ProgressBar if sys.stderr.isatty() else None


def log_line(text: str) -> None:
    print(f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ} {text}", file=sys.stderr, flush=True)


# -- pull: one snapshot ---------------------------------------------------------------------------------------


def _reader_store(nc: Any, settings: Settings) -> SnapshotStore:
    # A reader never creates buckets: a missing one means nothing was published to this NATS (yet).
    return SnapshotStore(nc.jetstream(), settings.kv_bucket, create=False, object_bucket=settings.object_bucket)


async def pull_snapshot(
    settings: Settings, namespace: str, target: InstallTarget, *, snapshot_id: str | None = None,
    profile: str | None = None, progress: ProgressFactory | None = None, stall_timeout: float = 30.0,
) -> InstallReport:
    """Install ``snapshot_id`` (default: what ``current`` names) at ``target`` unless it is installed."""
    started = time.monotonic()
    with target.lock():
        async with nats_connection(settings) as nc:
            store = _reader_store(nc, settings)
            if snapshot_id is None:
                entry = await store.read_current(namespace)
                if entry is None:
                    raise DeliveryError(f"namespace {namespace!r} has no current snapshot yet (nothing published "
                                        f"to {current_key(namespace)})", setting="KRYTEN_NAMESPACES")
                record = entry.value
            else:
                found = await store.get_snapshot(namespace, snapshot_id)
                if found is None:
                    raise DeliveryError(f"namespace {namespace!r} has no snapshot {snapshot_id} in KV (retention "
                                        "keeps the newest KRYTEN_KEEP_SNAPSHOTS)", setting="--snapshot")
                record = found
            wanted = str(record.get("snapshot_id"))
            if target.installed_snapshot_id() == wanted:
                return InstallReport(action="already current", namespace=namespace, snapshot_id=wanted,
                                     item_count=record.get("item_count"), size_bytes=record.get("size_bytes"),
                                     path=str(target.path), seconds=round(time.monotonic() - started, 3))
            return await install_record(store, record, target, namespace=namespace, profile=profile,
                                        progress=progress, stall_timeout=stall_timeout)


# -- follow: every snapshot -----------------------------------------------------------------------------------


@dataclass
class Follower:
    """Watch ``ns/{ns}/current`` and install every snapshot it names, until stopped.

    The KV watch is re-created after each reconnect and backed by a read of ``current`` every
    ``RESYNC_INTERVAL_S``; the connection waits for NATS forever. A failed install (missing object, digest
    mismatch, full disk, NATS gone mid-download) leaves the installed file as it was, says so in one line
    and is retried with backoff — sooner if ``current`` moves meanwhile.
    """

    settings: Settings
    namespace: str
    target: InstallTarget
    exec_command: str | None = None
    profile: str | None = None
    progress: ProgressFactory | None = None
    log: Callable[[str], None] = log_line
    stall_timeout: float = 30.0
    max_backoff: float = MAX_BACKOFF_S
    installs: int = 0
    _desired: dict[str, Any] | None = field(default=None, repr=False)
    _wake: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _rewatch: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _stopping: bool = field(default=False, repr=False)

    async def run(self) -> None:
        with self.target.lock():
            self.log(f"follow: namespace {self.namespace!r} → {self.target.path} (installed: "
                     f"{self.target.installed_snapshot_id() or 'nothing'}); NATS {self._nats_label()}")
            backoff = 1.0
            while True:
                try:
                    async with nats_connection(self.settings, reconnect_forever=True,
                                               on_reconnected=self._on_reconnected,
                                               on_disconnected=self._on_disconnected) as nc:
                        backoff = 1.0
                        try:
                            await self._session(_reader_store(nc, self.settings))
                        except asyncio.CancelledError:
                            self._stopping = True  # the drain on the way out is no lost connection
                            raise
                except (NatsUnavailableError, ConfigurationError) as exc:
                    if isinstance(exc, ConfigurationError) and exc.setting not in ("KRYTEN_KV_BUCKET",
                                                                                   "KRYTEN_OBJECT_BUCKET"):
                        raise
                    self.log(f"follow: {exc}; retrying in {backoff:.0f} s")
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self.max_backoff)

    def _nats_label(self) -> str:
        return redact_url(self.settings.nats_url) if self.settings.nats_url else "embedded (KRYTEN_DATA_DIR)"

    async def _on_reconnected(self) -> None:
        self.log("follow: NATS connection re-established; re-reading current")
        self._rewatch.set()

    async def _on_disconnected(self) -> None:
        if not self._stopping:
            self.log("follow: NATS connection lost; waiting for it to come back")

    async def _session(self, store: SnapshotStore) -> None:
        kv = await store.ensure_bucket()
        await self._resync(store)
        watch = asyncio.create_task(self._watch(store, kv))
        try:
            await self._install_loop(store, watch)
        finally:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)

    async def _resync(self, store: SnapshotStore) -> None:
        entry = await store.read_current(self.namespace)
        if entry is not None:
            self._offer(entry.value)

    def _offer(self, value: dict[str, Any]) -> None:
        if not is_snapshot_id(value.get("snapshot_id")):
            self.log(f"follow: {current_key(self.namespace)} holds no valid snapshot_id; ignored")
            return
        self._desired = value
        self._wake.set()

    async def _watch(self, store: SnapshotStore, kv: Any) -> None:
        key = current_key(self.namespace)
        while True:
            self._rewatch.clear()
            try:
                watcher = await kv.watch(key)
            except NATS_FAILURES as exc:
                self.log(f"follow: cannot watch {key}: {describe_nats_error(exc)}; retrying")
                await asyncio.sleep(2.0)
                continue
            last_sync = time.monotonic()
            try:
                while not self._rewatch.is_set():
                    try:
                        entry = await watcher.updates(timeout=2.0)
                    except nats.errors.TimeoutError:
                        entry = None
                    if entry is not None and entry.operation not in (KV_DEL, KV_PURGE) and entry.value:
                        try:
                            self._offer(json.loads(entry.value))
                        except ValueError:
                            self.log(f"follow: {key} does not hold JSON; ignored")
                    if time.monotonic() - last_sync > RESYNC_INTERVAL_S:
                        last_sync = time.monotonic()
                        with contextlib.suppress(KrytenError):
                            await self._resync(store)
            finally:
                with contextlib.suppress(Exception):
                    await watcher.stop()
            with contextlib.suppress(KrytenError):
                await self._resync(store)

    async def _install_loop(self, store: SnapshotStore, watch: asyncio.Task[None]) -> None:
        backoff = 1.0
        failed_id: str | None = None
        while True:
            await self._wake.wait()
            self._wake.clear()
            if watch.done():
                watch.result()  # the watcher died: surface why
            desired = self._desired
            if desired is None:
                continue
            wanted = str(desired["snapshot_id"])
            if wanted == self.target.installed_snapshot_id():
                continue
            if wanted != failed_id:
                backoff = 1.0
            try:
                report = await install_record(store, desired, self.target, namespace=self.namespace,
                                              profile=self.profile, progress=self.progress,
                                              stall_timeout=self.stall_timeout)
            except (DeliveryError, NatsUnavailableError) as exc:
                failed_id = wanted
                self.log(f"follow: {wanted} not installed: {exc}; the installed file stays "
                         f"{self.target.installed_snapshot_id() or 'absent'}; retrying in {backoff:.0f} s")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), backoff)
                self._wake.set()
                backoff = min(backoff * 2, self.max_backoff)
                continue
            failed_id = None
            self.installs += 1
            self.log(f"follow: {report.line()}")
            if self.exec_command:
                report.hook = await run_hook(self.exec_command, report)
                self.log(f"follow: {describe_hook(report.hook)}")


def describe_hook(hook: HookResult) -> str:
    if hook.ok:
        return f"hook `{hook.command}` done in {hook.seconds:.2f} s"
    reason = hook.error or f"exited with status {hook.returncode}"
    return f"hook `{hook.command}` failed: {reason} (not retried; the snapshot stays installed)"
