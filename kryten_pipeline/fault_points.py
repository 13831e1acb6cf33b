"""Named fault points: places where a test can kill, pause or fail a refresh to prove crash consistency.

``fault_point(name)`` does nothing unless the environment variable ``KRYTEN_FAULT_POINT`` equals ``name``
(read once per process, so a call costs one string comparison). Then, on the ``KRYTEN_FAULT_POINT_HIT``-th
hit (default 1), it performs ``KRYTEN_FAULT_ACTION``:

- ``kill`` (default): ``SIGKILL`` this process — no ``finally``, no ``atexit``, no flush, like a power cut
  for the process (the kernel still releases its file locks);
- ``pause``: write ``{KRYTEN_FAULT_PAUSE_DIR}/{name}.reached`` (holding the pid) and wait until
  ``{name}.resume`` appears there (at most ``KRYTEN_FAULT_PAUSE_TIMEOUT`` seconds, default 120), then go on —
  lets a test restart a dependency at an exact moment;
- ``enospc``: raise ``OSError(ENOSPC)``, as a full disk would.

The suite that drives them is ``kryten_pipeline_tests/test_crash_consistency.py``; the README's
"Reliability" section lists the points. Nothing here is reachable without setting the variable.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from pathlib import Path

__all__ = ["FAULT_POINT_ENV", "fault_point", "reload_fault_points"]

FAULT_POINT_ENV = "KRYTEN_FAULT_POINT"

_target: str | None = None
_hit_at = 1
_hits = 0


def reload_fault_points() -> None:
    """(Re)read the environment; called once at import. Tests that change it in-process call it again."""
    global _target, _hit_at, _hits
    _target = os.environ.get(FAULT_POINT_ENV) or None
    try:
        _hit_at = max(1, int(os.environ.get("KRYTEN_FAULT_POINT_HIT", "1")))
    except ValueError:
        _hit_at = 1
    _hits = 0


def fault_point(name: str) -> None:
    """A named place where a fault can be injected; a no-op unless ``KRYTEN_FAULT_POINT`` names it."""
    if _target is not None and _target == name:
        _trigger(name)


def _trigger(name: str) -> None:
    global _hits
    _hits += 1
    if _hits != _hit_at:
        return
    action = os.environ.get("KRYTEN_FAULT_ACTION", "kill")
    if action == "pause":
        _pause(name)
    elif action == "enospc":
        raise OSError(errno.ENOSPC, f"No space left on device (injected at fault point {name})")
    else:
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(10)  # SIGKILL is delivered at once; never run past the point meanwhile


def _pause(name: str) -> None:
    folder = Path(os.environ.get("KRYTEN_FAULT_PAUSE_DIR", "."))
    reached = folder / f"{name}.reached"
    reached.write_text(str(os.getpid()), encoding="utf-8")
    resume = folder / f"{name}.resume"
    deadline = time.monotonic() + float(os.environ.get("KRYTEN_FAULT_PAUSE_TIMEOUT", "120"))
    while not resume.exists() and time.monotonic() < deadline:
        time.sleep(0.02)


reload_fault_points()
