"""Readers of the live snapshot file, as the kryten-playlist service reads it — for the swap test and its bench.

Each reader thread opens ``catalog.sqlite3`` read-only, runs a count and a ranked FTS5 query, and reopens the
file every few queries (a reader sees a new snapshot when it reopens). It records every query's latency and
the snapshot id it read, and every problem: an error, an empty catalog, a row count that differs from the
file's ``snapshot_meta.item_count``, or a count that changes while one connection is open (a file modified
in place). The sqlite3 module releases the GIL while SQLite works, so threads read in parallel.
"""

from __future__ import annotations

import sqlite3
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

SEARCH_WORDS = ("amber", "river", "summit", "nebula", "harbor", "willow", "東京", "cafe")


@dataclass
class Sample:
    at: float  # time.monotonic() when the query started
    seconds: float
    snapshot_id: str


@dataclass
class ReaderStats:
    samples: list[Sample] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    connections: int = 0


class ReaderPool:
    def __init__(self, live: Path, readers: int = 20, *, queries_per_connection: int = 5,
                 pause_s: float = 0.0, ranked: bool = True) -> None:
        """``ranked``: the FTS5 query orders by bm25 (as the playlist service's search does); else it takes the
        first ten matches (cheap: for tests that need readers, not load)."""
        self.live = Path(live)
        self.fts_sql = ("SELECT rowid FROM catalog_fts WHERE catalog_fts MATCH ?"
                        + (" ORDER BY rank LIMIT 10" if ranked else " LIMIT 10"))
        self.stats = [ReaderStats() for _ in range(readers)]
        self.queries_per_connection = queries_per_connection
        self.pause_s = pause_s
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._read, args=(s, i), daemon=True)
                         for i, s in enumerate(self.stats)]

    def __enter__(self) -> ReaderPool:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _read(self, stats: ReaderStats, number: int) -> None:
        uri = f"file:{self.live.resolve()}?mode=ro"
        query = 0
        while not self._stop.is_set():
            try:
                conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            except sqlite3.Error as exc:
                stats.problems.append(f"open: {exc}")
                continue
            stats.connections += 1
            try:
                meta = dict(conn.execute("SELECT key, value FROM snapshot_meta WHERE key IN "
                                         "('snapshot_id', 'item_count')").fetchall())
                snapshot_id, expected = meta.get("snapshot_id", "?"), int(meta.get("item_count", -1))
                first_count = None
                for _ in range(self.queries_per_connection):
                    word = SEARCH_WORDS[(number + query) % len(SEARCH_WORDS)]
                    query += 1
                    started = time.monotonic()
                    count = conn.execute("SELECT count(*) FROM catalog_item").fetchone()[0]
                    hits = conn.execute(self.fts_sql, (f'"{word}"',)).fetchall()
                    stats.samples.append(Sample(started, time.monotonic() - started, snapshot_id))
                    if count == 0 or not hits:
                        stats.problems.append(f"empty result in {snapshot_id}: {count} items, {len(hits)} hits")
                    if count != expected:
                        stats.problems.append(f"{snapshot_id}: {count} rows but item_count {expected}")
                    if first_count is not None and count != first_count:
                        stats.problems.append(f"{snapshot_id} changed under an open connection")
                    first_count = count
                    if self.pause_s:
                        time.sleep(self.pause_s)
            except sqlite3.Error as exc:
                stats.problems.append(f"query: {type(exc).__name__}: {exc}")
            finally:
                conn.close()

    def wait_until_all_read(self, snapshot_id: str, timeout: float = 60) -> bool:
        """Wait until every reader has run a query on ``snapshot_id`` (they reopen every few queries)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(any(s.snapshot_id == snapshot_id for s in stats.samples[-20:]) for stats in self.stats):
                return True
            time.sleep(0.05)
        return False

    # -- results -------------------------------------------------------------------------------------

    @property
    def samples(self) -> list[Sample]:
        return [s for stats in self.stats for s in stats.samples]

    @property
    def problems(self) -> list[str]:
        return [p for stats in self.stats for p in stats.problems]

    @property
    def snapshot_ids(self) -> set[str]:
        return {s.snapshot_id for s in self.samples}


def latency_ms(samples: list[Sample]) -> dict[str, float]:
    """Median and 99th percentile, in milliseconds."""
    if not samples:
        return {"queries": 0, "median_ms": float("nan"), "p99_ms": float("nan")}
    values = sorted(s.seconds * 1000 for s in samples)
    p99 = values[min(len(values) - 1, round(0.99 * (len(values) - 1)))]
    return {"queries": len(values), "median_ms": round(statistics.median(values), 3), "p99_ms": round(p99, 3)}
