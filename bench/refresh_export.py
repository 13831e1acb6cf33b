"""Benchmark: a full refresh (CLI → Dagster → SQLite → KV) of a large export vs a bare load of the same file.

    .venv/bin/python bench/refresh_export.py [--items 100000]

Prints wall time, items/s and peak RSS of each part, and the ratio refresh / bare load. Each part runs
in its own process so its peak RSS is its own. Figures only: the machine is shared, compare ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

BARE_LOAD = r"""
import json, sqlite3, sys, time
src, db = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
conn = sqlite3.connect(db, isolation_level=None)
conn.execute("PRAGMA journal_mode=OFF"); conn.execute("PRAGMA synchronous=OFF")
conn.execute("CREATE TABLE item(video_id TEXT PRIMARY KEY, title TEXT, categories_json TEXT, duration INTEGER, "
             "thumb TEXT)")
conn.execute("BEGIN")
with open(src, "rb") as f:
    rows = ((r["video_id"], r["title"], json.dumps(r.get("categories") or []), r.get("duration_seconds"),
             r.get("thumbnail_url")) for r in map(json.loads, f))
    conn.executemany("INSERT INTO item VALUES (?,?,?,?,?)", rows)
conn.execute("COMMIT")
conn.execute("CREATE VIRTUAL TABLE fts USING fts5(title, categories_json)")
conn.execute("INSERT INTO fts(rowid, title, categories_json) SELECT rowid, title, categories_json FROM item")
conn.close()
# VmHWM: the peak of this process's own memory map (ru_maxrss would include the benchmark's, see run_refresh)
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"seconds": time.perf_counter() - t0, "peak_rss_mb": hwm / 1024}))
"""


def make_export(path: Path, items: int) -> None:
    sys.path.insert(0, str(ROOT))
    from kryten_pipeline.connectors.fake import FakeConnector

    async def write() -> None:
        with path.open("w", encoding="utf-8") as handle:
            async for item in FakeConnector(items, seed=11).iter_catalog_items():
                handle.write(json.dumps(item.to_dict(), ensure_ascii=False) + "\n")

    asyncio.run(write())


def run_refresh(workdir: Path, export: Path | None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KRYTEN_", "NATS_", "DAGSTER_HOME"))}
    env["KRYTEN_DATA_DIR"] = str(workdir / "data")
    if export is not None:
        env["KRYTEN_EXPORT_PATH"] = str(export)
    # Peak RSS from GNU time, which forks the refresh from its own small process: a child of this process would
    # report at least this process's peak (Linux carries it into the child's ru_maxrss through fork and exec).
    report = workdir / "time.txt"
    t0 = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", str(report), sys.executable, "-m", "kryten_pipeline.cli",
                           "refresh", "--json", "--quiet"], cwd=workdir, env=env, capture_output=True, text=True,
                          check=False)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"refresh failed: {done.stderr.strip()[-500:]}")
    summary = json.loads(done.stdout)
    return {"seconds": seconds, "summary": summary, "peak_rss_mb": int(report.read_text().split()[-1]) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kryten-bench-") as tmp:
        work = Path(tmp)
        (work / "sample").mkdir()
        sample = run_refresh(work / "sample", None)
        export = work / "export.jsonl"
        make_export(export, args.items)
        bare = json.loads(subprocess.run([sys.executable, "-c", BARE_LOAD, str(export), str(work / "bare.sqlite3")],
                                         capture_output=True, text=True, check=True).stdout)
        (work / "big").mkdir()
        big = run_refresh(work / "big", export)
    steps = big["summary"]["steps"]
    step_seconds = {k: v.get("seconds") for k, v in steps.items()}
    items = big["summary"]["counts"]["valid"]
    print(f"sample refresh (shipped export, {sample['summary']['counts']['valid']} items): "
          f"{sample['seconds']:.2f} s wall (incl. process start and Dagster import), "
          f"run {sample['summary']['wall_time_s']:.2f} s")
    print(f"refresh of {items} items: {big['seconds']:.2f} s wall, {items / big['seconds']:.0f} items/s, "
          f"peak RSS {big['peak_rss_mb']:.0f} MB")
    print("  steps: " + ", ".join(f"{k} {v:.2f} s" for k, v in step_seconds.items() if v is not None))
    print(f"bare load (json.loads + sqlite insert + FTS5, no validation/Dagster/KV): {bare['seconds']:.2f} s, "
          f"{args.items / bare['seconds']:.0f} items/s, peak RSS {bare['peak_rss_mb']:.0f} MB")
    print(f"ratio refresh / bare load: {big['seconds'] / bare['seconds']:.2f}")


if __name__ == "__main__":
    main()
