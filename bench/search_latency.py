"""Benchmark: search latency over a 100k-item snapshot (issue 7 target: p99 ≤ 20 ms on this machine).

    .venv/bin/python bench/search_latency.py [--items 100000] [--rounds 20]

Builds a snapshot from the deterministic fake source, then runs a fixed query mix (single words, phrases,
prefixes, category-filtered, no-match) through ``search_catalog`` — a fresh read-only connection per query,
as a reader does — and prints median and p99 per kind and overall.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kryten_pipeline.connectors.fake import FakeConnector
from kryten_pipeline.search import search_catalog
from kryten_pipeline.snapshot_db import build_snapshot_db, install_snapshot, rows_from_frame
from kryten_pipeline.validation import append_item, empty_columns, validate_items

QUERIES: dict[str, list[tuple[str, list[str]]]] = {
    "word": [("amber", []), ("glacier", []), ("café", []), ("東京", []), ("zephyr", [])],
    "phrase": [('"amber river"', []), ('"nebula orchid"', []), ("willow summit", [])],
    "prefix": [("gla", []), ("neb", []), ("harbor qu", []), ("ky", [])],
    "category": [("amber", ["Music"]), ("river", ["Anime", "Live"]), ("", ["Documentary"]), ("del", ["Kids"])],
    "no-match": [("qwertyuiop", []), ('"river amber glacier nebula"', []), ("zzz", ["Music"])],
}


def build(tmp: Path, items: int) -> Path:
    async def collect() -> dict:
        columns = empty_columns()
        async for item in FakeConnector(items, seed=13).iter_catalog_items():
            append_item(columns, item)
        return columns

    frame = validate_items(asyncio.run(collect()), manifest_base="https://m.example").frame
    built = build_snapshot_db(rows_from_frame(frame), data_dir=tmp, namespace="default",
                              snapshot_id="20251218T000000Z-aaaaaa", created_at="2025-12-18T00:00:00Z",
                              source="bench")
    return install_snapshot(built, data_dir=tmp, keep=1).live_path


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kryten-search-") as tmp:
        t0 = time.perf_counter()
        live = build(Path(tmp), args.items)
        print(f"snapshot of {args.items} items built in {time.perf_counter() - t0:.1f} s "
              f"({live.stat().st_size / 1e6:.0f} MB)")
        for query, categories in [q for qs in QUERIES.values() for q in qs]:  # warm the page cache once
            search_catalog(live, query, categories=categories, limit=20)
        all_ms: list[float] = []
        for kind, queries in QUERIES.items():
            timings: list[float] = []
            hits = 0
            for _ in range(args.rounds):
                for query, categories in queries:
                    start = time.perf_counter()
                    hits += len(search_catalog(live, query, categories=categories, limit=20))
                    timings.append((time.perf_counter() - start) * 1000)
            all_ms += timings
            print(f"{kind:<9} n={len(timings):>4}  median {statistics.median(timings):6.2f} ms  "
                  f"p99 {percentile(timings, 0.99):6.2f} ms  max {max(timings):6.2f} ms  hits/query "
                  f"{hits / len(timings):.1f}")
        print(f"{'all':<9} n={len(all_ms):>4}  median {statistics.median(all_ms):6.2f} ms  "
              f"p99 {percentile(all_ms, 0.99):6.2f} ms  (target p99 ≤ 20 ms)")


if __name__ == "__main__":
    main()
