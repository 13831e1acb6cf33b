"""Benchmark: search latency over a 100k-item snapshot (issue 7 target: p99 ≤ 20 ms on this machine).

    .venv/bin/python bench/search_latency.py [--items 100000] [--rounds 20]

Two catalogs, both deterministic:
- ``zipf``: titles of 2–7 words drawn from a 6,000-word vocabulary with Zipf-like frequencies (like real
  titles: a few very common words, a long tail); the query mix uses words of ranks 30–3000.
- ``worst``: the fake source's 30-word vocabulary, where every word matches ~10 % of the catalog.
Each runs a fixed query mix (single words, phrases, prefixes, category-filtered, no-match) through
``search_catalog`` — a fresh read-only connection per query, as a reader does — and prints median and p99
per kind and overall.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kryten_pipeline.connectors.fake import FakeConnector
from kryten_pipeline.snapshot.build import build_snapshot_db, rows_from_frame
from kryten_pipeline.snapshot.files import install_snapshot
from kryten_pipeline.snapshot.search import search_catalog
from kryten_pipeline.validation import append_item, empty_columns, validate_items

WORST_QUERIES: dict[str, list[tuple[str, list[str]]]] = {
    "word": [("amber", []), ("glacier", []), ("café", []), ("東京", []), ("zephyr", [])],
    "phrase": [('"amber river"', []), ('"nebula orchid"', []), ("willow summit", [])],
    "prefix": [("gla", []), ("neb", []), ("harbor qu", []), ("ky", [])],
    "category": [("amber", ["Music"]), ("river", ["Anime", "Live"]), ("", ["Documentary"]), ("del", ["Kids"])],
    "no-match": [("qwertyuiop", []), ('"river amber glacier nebula"', []), ("zzz", ["Music"])],
}


SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "be", "da", "fu", "go", "hi", "jo", "ku",
             "ma", "no", "pe", "ri", "su", "ta", "ve", "wa", "ya", "zo", "an", "el", "in", "or", "us"]
CATEGORIES = ["Music", "Anime", "Documentary", "Comedy", "Science", "Gaming", "Sports", "News", "Kids", "Drama"]


def zipf_vocabulary(size: int = 6000) -> tuple[list[str], list[float]]:
    rng = random.Random(3)
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < size:
        word = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4)))
        if word not in seen:
            seen.add(word)
            words.append(word)
    weights = [1.0 / (rank ** 1.07) for rank in range(1, size + 1)]
    return words, weights


def zipf_columns(items: int) -> dict:
    words, weights = zipf_vocabulary()
    rng = random.Random(17)
    columns = empty_columns()
    for index in range(items):
        title = " ".join(rng.choices(words, weights, k=rng.randint(2, 7))).title()
        cats = rng.sample(CATEGORIES, rng.choice((0, 1, 1, 2, 3)))
        columns["video_id"].append(f"z{index:07d}")
        columns["title"].append(f"{title} #{index}")
        columns["categories"].append(cats)
        columns["duration_seconds"].append(rng.randint(30, 7200))
        columns["thumbnail_url"].append(None)
    return columns


def zipf_queries() -> dict[str, list[tuple[str, list[str]]]]:
    words, _ = zipf_vocabulary()
    rng = random.Random(5)
    mid = words[30:3000]
    titles = zipf_columns(2000)["title"]
    pairs = [tuple(rng.choice(titles).lower().split()[:2]) for _ in range(4)]
    return {
        "word": [(rng.choice(mid), []) for _ in range(8)],
        # Adjacent words of real titles: as a quoted phrase and as two plain words.
        "phrase": [(f'"{" ".join(pair)}"', []) for pair in pairs] + [(" ".join(pair), []) for pair in pairs],
        "prefix": [(rng.choice(mid)[:3], []) for _ in range(4)] + [(f"{rng.choice(mid)} {rng.choice(mid)[:2]}", [])
                                                                   for _ in range(4)],
        "category": [(rng.choice(mid), [rng.choice(CATEGORIES)]) for _ in range(6)] + [("", ["Kids"])],
        "no-match": [("qwertyuiop", []), (f'"{words[0]} qwerty"', []), ("zzz", ["Music"])],
    }


def fake_columns(items: int) -> dict:
    async def collect() -> dict:
        columns = empty_columns()
        async for item in FakeConnector(items, seed=13).iter_catalog_items():
            append_item(columns, item)
        return columns

    return asyncio.run(collect())


def build(tmp: Path, columns: dict) -> Path:
    frame = validate_items(columns, manifest_base="https://m.example").frame
    built = build_snapshot_db(rows_from_frame(frame), data_dir=tmp, namespace="default",
                              snapshot_id="20251218T000000Z-aaaaaa", created_at="2025-12-18T00:00:00Z",
                              source="bench")
    return install_snapshot(built, data_dir=tmp, keep=1).live_path


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def measure(live: Path, queries: dict[str, list[tuple[str, list[str]]]], rounds: int) -> None:
    for query, categories in [q for qs in queries.values() for q in qs]:  # warm the page cache once
        search_catalog(live, query, categories=categories, limit=20)
    all_ms: list[float] = []
    for kind, mix in queries.items():
        timings: list[float] = []
        hits = 0
        for _ in range(rounds):
            for query, categories in mix:
                start = time.perf_counter()
                hits += len(search_catalog(live, query, categories=categories, limit=20))
                timings.append((time.perf_counter() - start) * 1000)
        all_ms += timings
        print(f"  {kind:<9} n={len(timings):>4}  median {statistics.median(timings):6.2f} ms  "
              f"p99 {percentile(timings, 0.99):6.2f} ms  max {max(timings):6.2f} ms  hits/query "
              f"{hits / len(timings):.1f}")
    print(f"  {'all':<9} n={len(all_ms):>4}  median {statistics.median(all_ms):6.2f} ms  "
          f"p99 {percentile(all_ms, 0.99):6.2f} ms  (target p99 ≤ 20 ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    for name, columns, queries in (("zipf", zipf_columns, zipf_queries()), ("worst", fake_columns, WORST_QUERIES)):
        with tempfile.TemporaryDirectory(prefix="kryten-search-") as tmp:
            t0 = time.perf_counter()
            live = build(Path(tmp), columns(args.items))
            print(f"{name}: snapshot of {args.items} items built in {time.perf_counter() - t0:.1f} s "
                  f"({live.stat().st_size / 1e6:.0f} MB)")
            measure(live, queries, args.rounds)


if __name__ == "__main__":
    main()
