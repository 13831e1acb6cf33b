"""Benchmark: extract a large MediaCMS catalog straight from PostgreSQL (source ``mediacms-db``).

Starts a throw-away PostgreSQL (the same way the tests do, from the Debian ``postgresql`` package), fills
MediaCMS's tables with N media and C categories, then runs ``MediaCMSDatabaseConnector`` in a subprocess so
its peak RSS is the extraction's own. Prints one JSON document (and writes it with ``--json-out``).

    .venv/bin/python bench/mediacms_db_bench.py                 # 100k media, 20 categories
    .venv/bin/python bench/mediacms_db_bench.py --media 20000 --repeat 1 --json-out bench/out/mediacms_db.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# Run as a plain script: make the repository root importable (for kryten_pipeline_tests.pg_fixtures).
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MEDIACMS_URL = "https://media.example.org"


def run_benchmark(*, media: int = 100_000, categories: int = 20, batch_size: int = 2000,
                  repeat: int = 3) -> dict[str, Any]:
    """Fill a fresh PostgreSQL and time ``repeat`` full extractions; returns the figures."""
    from kryten_pipeline_tests.pg_fixtures import fill_mediacms_catalog, running_postgres

    with running_postgres() as pg:
        pg.create_database("mediacms")
        fill_started = time.perf_counter()
        with pg.connect("mediacms") as conn:
            playable = fill_mediacms_catalog(conn, media=media, categories=categories)
            links = conn.execute("SELECT count(*) FROM files_media_category").fetchone()
        fill_s = time.perf_counter() - fill_started
        runs = [_extract_in_subprocess(pg.url("mediacms", with_password=False), pg.password, batch_size)
                for _ in range(repeat)]
    for run in runs:
        if run["rows"] != playable:
            raise SystemExit(f"extraction returned {run['rows']} rows, expected {playable}")
    best = max(runs, key=lambda run: run["rows_per_s"])
    return {
        "source": "mediacms-db",
        "media": media,
        "categories": categories,
        "category_links": links[0] if links else None,
        "playable_rows": playable,
        "batch_size": batch_size,
        "fill_s": round(fill_s, 2),
        "runs": runs,
        "best_rows_per_s": best["rows_per_s"],
        "best_wall_time_s": best["wall_time_s"],
        "max_peak_rss_mb": max(run["peak_rss_mb"] for run in runs),
    }


def _extract_in_subprocess(url: str, password: str, batch_size: int) -> dict[str, Any]:
    # The password travels in the environment, not argv (which any local user can read in ps).
    env = {**os.environ, "PGPASSWORD": password}
    result = subprocess.run(
        [sys.executable, __file__, "--child", url, "--batch-size", str(batch_size)],
        env=env, capture_output=True, text=True, check=False, timeout=1800,
    )
    if result.returncode != 0:
        raise SystemExit(f"extraction subprocess failed ({result.returncode}):\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _child(url: str, batch_size: int) -> None:
    """Runs in the subprocess: one full extraction, items counted and dropped (as a streaming consumer would)."""
    from kryten_pipeline.connectors.mediacms_db import MediaCMSDatabaseConnector

    rss_before_kb = _peak_rss_kb()
    connector = MediaCMSDatabaseConnector(url, mediacms_url=MEDIACMS_URL, batch_size=batch_size)

    async def walk() -> tuple[int, int]:
        rows = categories = 0
        async for item in connector.iter_catalog_items():
            rows += 1
            categories += len(item.categories)
        return rows, categories

    started = time.perf_counter()
    rows, categories = asyncio.run(walk())
    elapsed = time.perf_counter() - started
    peak_kb = _peak_rss_kb()
    print(json.dumps({
        "rows": rows,
        "category_assignments": categories,
        "batches": connector.stats["batches"],
        "excluded_total": connector.stats["excluded_total"],
        "wall_time_s": round(elapsed, 3),
        "rows_per_s": round(rows / elapsed, 1) if elapsed else 0.0,
        "rss_after_imports_mb": round(rss_before_kb / 1024, 1),
        "peak_rss_mb": round(peak_kb / 1024, 1),
    }))


def _peak_rss_kb() -> int:
    """This process's peak RSS in KiB. VmHWM, because Linux carries ``ru_maxrss`` over from the parent
    across fork+exec, which would report the parent's (the catalog filler's) memory."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--media", type=int, default=100_000)
    parser.add_argument("--categories", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--child", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child, args.batch_size)
        return 0
    figures = run_benchmark(media=args.media, categories=args.categories, batch_size=args.batch_size,
                            repeat=args.repeat)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
