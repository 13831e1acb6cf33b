"""The one liveness check: a live process, a zombie (exited, not yet reaped) and a reaped pid."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from kryten_pipeline.processes import pid_alive, start_time


def test_a_running_process_is_alive_with_a_stable_start_time() -> None:
    assert pid_alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        first = start_time(child.pid)
        assert first and first == start_time(child.pid) and pid_alive(child.pid)
    finally:
        child.kill()
        child.wait()


def test_a_zombie_and_a_reaped_pid_are_gone() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    # Exited but not reaped: kill(pid, 0) still succeeds, yet it runs nothing any more.
    while start_time(child.pid) is not None:
        assert time.monotonic() < deadline, "the child never exited"
        time.sleep(0.02)
    os.kill(child.pid, 0)  # the zombie is still there
    assert not pid_alive(child.pid)
    child.wait()
    assert start_time(child.pid) is None and not pid_alive(child.pid)
