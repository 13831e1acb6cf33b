"""How ``kryten-pipeline refresh`` shows a run's progress on stderr.

On a terminal, a live ``rich`` display: one line per step with a spinner and its elapsed time while it runs, then
its outcome; checks and the steps' own messages are printed above it. Elsewhere (a pipe, a log file, CI) the same
facts as plain lines, one per event, which is what ``RunProgress`` reports.
"""

from __future__ import annotations

import re
import sys
from types import TracebackType
from typing import Any, TextIO

# The step lines of ``refresh_runs.RunProgress``: "  ▶ step", "  ✔ step (0.12 s)", "  ✘ step failed",
# "  ↷ step skipped (…)".
_STEP_LINE = re.compile(r"^  (?P<mark>[▶✔✘↷]) (?P<step>\S+)(?P<rest>.*)$")


class PlainLines:
    """Each progress line as it comes (not a terminal, or ``rich`` is not wanted)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr

    def __call__(self, line: str, label: str = "") -> None:
        print(f"{label}{line}", file=self.stream, flush=True)

    def __enter__(self) -> PlainLines:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class LiveSteps:
    """A live display of the run's steps (``rich.progress``), for a terminal."""

    def __init__(self, stream: TextIO | None = None) -> None:
        from rich.console import Console
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            SpinnerColumn(finished_text=" "), TextColumn("{task.description}"), TimeElapsedColumn(),
            console=Console(file=stream or sys.stderr), transient=False,
        )
        self._tasks: dict[str, Any] = {}

    def __call__(self, line: str, label: str = "") -> None:
        """``label`` (e.g. "[ns] ") goes before the line: several namespaces refreshed one after another."""
        found = _STEP_LINE.match(line)
        if found is None:
            self._progress.console.print(f"{label}{line}", markup=False, highlight=False)
            return
        mark, step, rest = found["mark"], found["step"], found["rest"]
        key = f"{label}{step}"
        if mark == "▶":
            self._tasks[key] = self._progress.add_task(f"{label}  {step}", total=1)
            return
        task = self._tasks.pop(key, None)
        if task is None:
            task = self._progress.add_task("", total=1)
        self._progress.update(task, completed=1, description=f"{label}{mark} {step}{rest}")
        self._progress.stop_task(task)

    def __enter__(self) -> LiveSteps:
        self._progress.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._progress.stop()


def progress_display(*, quiet: bool, stream: TextIO | None = None) -> PlainLines | LiveSteps | None:
    """The display for a refresh: none with ``--quiet``, live on a terminal, plain lines otherwise."""
    if quiet:
        return None
    target = stream or sys.stderr
    return LiveSteps(target) if target.isatty() else PlainLines(target)
