"""Benchmark: readers' query latency before, during and after a refresh that swaps in a new snapshot.

    .venv/bin/python bench/readers_during_refresh.py [--items 100000] [--readers 20] [--think-ms 10]

A live snapshot of ``--items`` fake items is installed, then ``--readers`` threads query it continuously as
the kryten-playlist service would (read-only, ``count(*)`` plus a bm25-ranked FTS5 top 10 for two words,
reopening the file every 5 queries, ``--think-ms`` between queries). After ``--phase-s`` seconds a real refresh starts
(``python -m kryten_pipeline.cli refresh``, embedded nats-server, ``--items`` + 1,000 items); once every
reader has read the new snapshot they go on for another ``--phase-s`` seconds. Prints, per phase, the
queries run and their median / p99 latency, and every problem a reader saw (errors, an empty or partial
catalog) — there should be none. Figures only: the machine is shared, compare phases with each other.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kryten_pipeline.snapshot.files import live_db_path  # noqa: E402
from kryten_pipeline_tests.snapshot_readers import ReaderPool, latency_ms  # noqa: E402
from kryten_pipeline_tests.test_readers_under_swap import install_fake_snapshot  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--readers", type=int, default=20)
    parser.add_argument("--think-ms", type=float, default=100.0, help="pause of each reader between queries")
    parser.add_argument("--phase-s", type=float, default=5.0, help="seconds of reading before and after")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="kryten-readers-") as folder:
        work = Path(folder)
        data_dir = work / "data"
        started = time.perf_counter()
        old_id = install_fake_snapshot(data_dir, args.items)
        print(f"live snapshot {old_id}: {args.items} items, built in {time.perf_counter() - started:.1f} s",
              flush=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KRYTEN_", "NATS_", "DAGSTER_HOME"))}
        env.update(KRYTEN_DATA_DIR=str(data_dir), KRYTEN_SOURCE="fake", KRYTEN_FAKE_ITEMS=str(args.items + 1000))
        with ReaderPool(live_db_path(data_dir, "default"), args.readers, pause_s=args.think_ms / 1000) as readers:
            time.sleep(args.phase_s)
            refresh_start = time.monotonic()
            result = subprocess.run([sys.executable, "-m", "kryten_pipeline.cli", "refresh", "--quiet", "--json"],
                                    cwd=work, env=env, capture_output=True, text=True)
            refresh_end = time.monotonic()
            if result.returncode != 0:
                sys.exit(f"refresh failed:\n{result.stderr[-3000:]}")
            new_id = json.loads(result.stdout)["snapshot_id"]
            readers.wait_until_all_read(new_id)
            after_start = time.monotonic()
            time.sleep(args.phase_s)
        samples = readers.samples
        swap_seen = min((s.at for s in samples if s.snapshot_id == new_id), default=float("nan"))
        phases = {
            "before": [s for s in samples if s.at < refresh_start],
            "during": [s for s in samples if refresh_start <= s.at < refresh_end],
            "after": [s for s in samples if s.at >= after_start],
        }
        figures = {
            "items": args.items, "readers": args.readers, "think_ms": args.think_ms,
            "refresh_s": round(refresh_end - refresh_start, 2),
            "swap_seen_after_s": round(swap_seen - refresh_start, 2),
            "snapshots_read": sorted(readers.snapshot_ids),
            "reader_problems": readers.problems,
            "phases": {name: latency_ms(phase) for name, phase in phases.items()},
        }
    print(f"refresh {figures['refresh_s']} s (readers saw the new snapshot {figures['swap_seen_after_s']} s in); "
          f"{args.readers} readers, {args.think_ms:g} ms think time")
    print(f"{'phase':<8} {'queries':>8} {'median ms':>10} {'p99 ms':>8}")
    for name, stats in figures["phases"].items():
        print(f"{name:<8} {stats['queries']:>8} {stats['median_ms']:>10.2f} {stats['p99_ms']:>8.2f}")
    print(f"reader problems: {len(figures['reader_problems'])}"
          + (f" — {figures['reader_problems'][:5]}" if figures["reader_problems"] else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
