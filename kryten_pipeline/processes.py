"""Whether a process still runs, and whether a pid still names the process it named: the one liveness check of
the stale-file cleanup, the embedded nats-server and the dead-run repair (``/proc`` where there is one)."""

from __future__ import annotations

import os
from pathlib import Path


def start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), which tells a recycled pid apart; ``None`` if
    the process is gone — a zombie (killed, not yet reaped by its parent) too: it executes nothing any more;
    ``""`` where there is no ``/proc`` to tell (the pid exists, nothing more is known)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # another user's process: it exists
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return ""
    fields = stat.rpartition(")")[2].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def pid_alive(pid: int) -> bool:
    """The process ``pid`` exists and is not a zombie."""
    return pid == os.getpid() or start_time(pid) is not None
