"""Fewer garbage-collector passes while a refresh builds large object graphs.

A refresh allocates hundreds of thousands of long-lived objects (parsed pages, rows, frames). With the
default thresholds CPython runs a collection every 700 allocations and, as those objects pile up, full
collections that walk every object in the process — the whole of Dagster included. Measured on a 100k-item
MediaCMS extraction, that is 15–20 % of its CPU time. Inside ``bulk_work()`` the objects that existed before
are frozen (left out of collections) and the first generation is collected less often; reference cycles are
still collected, and everything is back as it was on exit.

A CLI process also freezes what it has loaded once it is set up (``freeze_survivors``): Dagster, pandas and
the definitions are a few hundred thousand objects that live until exit, and every full collection walks them
all (≈0.3–0.5 s each on this project's reference machine). At exit the interpreter's last collections walk
them once more — 0.8–1.4 s of a sample refresh, measured — unless they are frozen then too.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

BULK_THRESHOLD0 = 50_000


@contextlib.contextmanager
def bulk_work(threshold0: int = BULK_THRESHOLD0) -> Iterator[None]:
    previous = gc.get_threshold()
    frozen = gc.get_freeze_count() == 0  # nested use: the outermost block freezes and unfreezes
    if frozen:
        gc.freeze()
    gc.set_threshold(max(previous[0], threshold0), *previous[1:])
    try:
        yield
    finally:
        gc.set_threshold(*previous)
        if frozen:
            gc.unfreeze()


def freeze_survivors() -> None:
    """Leave every object alive now out of all later collections (``gc.freeze``): modules, classes and
    definitions that live until the process exits. Cycles created afterwards are still collected."""
    gc.freeze()
