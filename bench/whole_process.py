"""Benchmark: ``kryten-pipeline refresh`` as a user runs it — whole processes, exec to exit — against the
sequential floor (issue 17).

Each measurement is a fresh process; its wall time runs from ``exec`` to exit and its peak RSS is the kernel's
``ru_maxrss`` of that process and the children it waited for, as GNU ``/usr/bin/time`` reports it (see
``measure``: measured directly, it would include this process's own peak). Cases:

- **sample**: ``kryten-pipeline refresh`` on the embedded defaults (shipped sample, embedded nats-server), as
  ``make run`` does; also ``python -c "import kryten_pipeline.definitions"`` alone. The fixed cost is the whole
  process minus the run's own wall time (the ``wall_time_s`` its ``--json`` reports).
- **Dagster floor**: a process that imports Dagster, opens a SQLite-backed instance like the project's and
  materialises one empty asset in process — the least any refresh run through Dagster pays on this machine.
- **fake MediaCMS** with N items, anonymous (public listing), at 0 ms and at ``--latency`` per page (a real
  MediaCMS answers in 20–500 ms): the pipeline (``KRYTEN_SOURCE=mediacms``, a real nats-server), and the
  **sequential floor** — what a data engineer would write by hand: one ``httpx.Client`` requesting the same
  listing and category pages one after another (replayed from the server's log of the pipeline's run), one
  ``executemany`` into ``catalog_item``, an FTS5 build.

An untimed pipeline run goes first for each case (the previous snapshot a scheduled refresh meets, warm caches).
Then ``--rounds`` rounds run pipeline and floor in turn — interleaved, so a shared machine's noise hits both —
and the fastest of each counts. Printed: wall, peak RSS, ratios. Nothing here asserts a figure.

    .venv/bin/python bench/whole_process.py                        # sample, 10k and 100k, 0 and 30 ms
    .venv/bin/python bench/whole_process.py --sizes 300 --rounds 1 # quick
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent
SCRUBBED = ("KRYTEN_", "NATS_", "MEDIACMS_", "DAGSTER_", "REDIS_")


GNU_TIME = Path("/usr/bin/time")  # Debian package `time`


def measure(argv: list[str], *, env: dict[str, str], cwd: Path) -> dict[str, Any]:
    """Run ``argv`` to completion; wall time (exec → exit), peak RSS (MB) and its stdout.

    The peak RSS is GNU time's ``%M``: ``/usr/bin/time`` forks the command from its own small process. A process
    this benchmark started directly would report at least this process's own peak, fake server and its catalog
    included (Linux carries the parent's high-water mark into a child's ``ru_maxrss`` through fork and exec):
    until 2026-12-01 the 100k figures here were that — 352-376 MB for the pipeline and the floor alike.
    """
    if not GNU_TIME.is_file():
        raise SystemExit("bench/whole_process.py needs GNU time for peak RSS: apt-get install time")
    with tempfile.TemporaryFile() as out, tempfile.NamedTemporaryFile("r") as report:
        started = time.perf_counter()
        proc = subprocess.Popen([str(GNU_TIME), "-f", "%M %U %S", "-o", report.name, *argv], env=env, cwd=cwd,
                                stdout=out, stderr=subprocess.DEVNULL)
        proc.wait()
        wall = time.perf_counter() - started
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
        figures = report.read().split()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:3])} … exited {proc.returncode}:\n{text[-3000:]}")
    max_rss_kib, user_s, system_s = int(figures[-3]), float(figures[-2]), float(figures[-1])
    # CPU time (user + system) varies far less than wall time on a shared machine: printed next to it.
    return {"wall_s": round(wall, 3), "cpu_s": round(user_s + system_s, 3),
            "peak_rss_mb": round(max_rss_kib / 1024, 1), "stdout": text}


def clean_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(SCRUBBED)}
    env.update(values)
    env.setdefault("PYTHONHASHSEED", "0")
    return env


class Best:
    def __init__(self) -> None:
        self.runs: list[dict[str, Any]] = []

    def add(self, run: dict[str, Any]) -> None:
        self.runs.append(run)

    @property
    def best(self) -> dict[str, Any]:
        return min(self.runs, key=lambda r: r["wall_s"])

    def summary(self) -> dict[str, Any]:
        best = self.best
        return {**{k: v for k, v in best.items() if k != "stdout"},
                "runs_wall_s": [r["wall_s"] for r in self.runs],
                "min_cpu_s": min(r["cpu_s"] for r in self.runs),
                "peak_rss_mb": max(r["peak_rss_mb"] for r in self.runs)}


def refresh_run(env: dict[str, str], cwd: Path) -> dict[str, Any]:
    run = measure([str(BIN / "kryten-pipeline"), "refresh", "--json", "--quiet"], env=env, cwd=cwd)
    summary = json.loads(run["stdout"])
    if not summary.get("success"):
        raise SystemExit(f"the refresh failed: {summary.get('error')}")
    run["in_run_s"] = summary["wall_time_s"]
    run["fixed_s"] = round(run["wall_s"] - summary["wall_time_s"], 3)
    run["items"] = summary["counts"]["valid"]
    run["steps_s"] = {name: step.get("seconds") for name, step in summary["steps"].items()}
    return run


# ------------------------------------------------------------------------------------------------ sample


def bench_sample(rounds: int, before: Path | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="kryten-bench-sample-") as tmp:
        cwd = Path(tmp)
        env = clean_env(KRYTEN_DATA_DIR=str(cwd / "data"))
        old_env = before_env(env, before, cwd / "data-before")
        for e in (env, old_env):
            if e is not None:
                refresh_run(e, cwd)  # untimed: the embedded NATS store, the previous snapshot
        refresh, imports, old_refresh, old_imports, floor = Best(), Best(), Best(), Best(), Best()
        home = cwd / "dagster-floor"
        for _ in range(rounds):
            refresh.add(refresh_run(env, cwd))
            imports.add(measure([sys.executable, "-c", "import kryten_pipeline.definitions"], env=env, cwd=cwd))
            floor.add(measure([sys.executable, str(Path(__file__).resolve()), "_dagster_floor", str(home)],
                              env=clean_env(), cwd=cwd))
            if old_env is not None:
                old_refresh.add(refresh_run(old_env, cwd))
                old_imports.add(measure([sys.executable, "-c", "import kryten_pipeline.definitions"], env=old_env,
                                        cwd=cwd))
    result = {"refresh": refresh.summary(), "import_definitions": imports.summary(), "dagster_floor": floor.summary()}
    if old_env is not None:
        result["before"] = {"refresh": old_refresh.summary(), "import_definitions": old_imports.summary()}
    return result


def dagster_floor_main(home: str) -> None:
    """One empty asset materialised in process on a SQLite instance (runs, event log, schedules) in ``home``."""
    import gc

    os.makedirs(home, exist_ok=True)
    config = Path(home) / "dagster.yaml"
    if not config.exists():
        config.write_text(f"telemetry:\n  enabled: false\nstorage:\n  sqlite:\n    base_dir: {home}/storage\n")
    os.environ["DAGSTER_HOME"] = home
    import dagster as dg

    @dg.asset
    def empty() -> None:
        return None

    result = dg.materialize([empty], instance=dg.DagsterInstance.get())
    assert result.success
    gc.freeze()  # as the CLI does before exit


def before_env(env: dict[str, str], before: Path | None, data_dir: Path) -> dict[str, str] | None:
    """The same environment running the code of ``before`` (a checkout of an earlier commit): PYTHONPATH wins
    over this checkout's editable install, so ``kryten-pipeline`` imports that code."""
    if before is None:
        return None
    return {**env, "PYTHONPATH": str(before.resolve()), "KRYTEN_DATA_DIR": str(data_dir)}


# ---------------------------------------------------------------------------------------------- MediaCMS


def floor_main(url: str, urls_file: str, db_path: str) -> None:
    """The sequential floor, in its own process: the same pages one after another, one executemany, FTS5."""
    import httpx

    paths = [line for line in Path(urls_file).read_text(encoding="utf-8").splitlines() if line.strip()]
    items: dict[str, tuple[Any, ...]] = {}
    categories: dict[str, list[str]] = {}
    with httpx.Client(headers={"Accept": "application/json"}, timeout=60) as client:
        for path in paths:
            body = client.get(url + path).json()
            if not isinstance(body, dict) or "results" not in body:
                continue
            category = _query_value(path, "category")
            for media in body["results"]:
                token = media.get("friendly_token")
                if not token:
                    continue
                if category is not None:
                    categories.setdefault(token, []).append(category)
                else:
                    items[token] = (token, media.get("title") or "", media.get("duration"),
                                    media.get("thumbnail_url"))
    conn = sqlite3.connect(db_path)
    conn.execute("CREATE TABLE catalog_item(video_id TEXT PRIMARY KEY, title TEXT NOT NULL, categories_json TEXT "
                 "NOT NULL, duration_seconds INTEGER, thumbnail_url TEXT)")
    with conn:
        conn.executemany("INSERT INTO catalog_item VALUES (?, ?, ?, ?, ?)",
                         ((t, title, json.dumps(categories.get(t, []), ensure_ascii=False), d, th)
                          for t, title, d, th in items.values()))
        conn.execute("CREATE VIRTUAL TABLE catalog_fts USING fts5(video_id UNINDEXED, title, categories)")
        conn.execute("INSERT INTO catalog_fts(rowid, video_id, title, categories) SELECT rowid, video_id, title, "
                     "categories_json FROM catalog_item")
    conn.close()
    print(json.dumps({"items": len(items)}))


def _query_value(path: str, name: str) -> str | None:
    from urllib.parse import parse_qs, urlsplit

    values = parse_qs(urlsplit(path).query).get(name)
    return values[0] if values else None


def bench_mediacms(n_items: int, latency: float, rounds: int, nats_url: str, before: Path | None) -> dict[str, Any]:
    from urllib.parse import quote

    from kryten_pipeline_tests.fake_mediacms import FakeMediaCMS, generate_catalog

    catalog = generate_catalog(n_items, 20, seed=42)
    # Anonymous listing of a server without the 1,000-row cap of MediaCMS 7.2+ (with it, anonymous access to a
    # larger catalog is refused as truncated, rightly).
    with FakeMediaCMS(catalog, capped=False, public_base="http://mediacms.internal:8000", latency=latency) as server, \
            tempfile.TemporaryDirectory(prefix="kryten-bench-mc-") as tmp:
        server.warm()
        cwd = Path(tmp)
        env = clean_env(KRYTEN_SOURCE="mediacms", MEDIACMS_URL=server.url, NATS_URL=nats_url,
                        KRYTEN_DATA_DIR=str(cwd / "data"), KRYTEN_KV_BUCKET=f"bench_{n_items}_{int(latency * 1000)}",
                        KRYTEN_OBJECT_BUCKET=f"bench_files_{n_items}_{int(latency * 1000)}")
        old_env = before_env(env, before, cwd / "data-before")
        if old_env is not None:
            old_env["KRYTEN_KV_BUCKET"] += "_before"
            old_env["KRYTEN_OBJECT_BUCKET"] += "_before"
            refresh_run(old_env, cwd)  # untimed
        server.reset_counts()
        warm = refresh_run(env, cwd)  # untimed
        gets = [r for r in server.log if r.method == "GET" and r.path.startswith("/api/")]
        urls = [r.path + ("?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in r.query.items()) if r.query else "")
                for r in gets]
        urls_file = cwd / "urls.txt"
        urls_file.write_text("\n".join(urls) + "\n", encoding="utf-8")
        pipeline, floor, old = Best(), Best(), Best()
        for _ in range(rounds):
            pipeline.add(refresh_run(env, cwd))
            if old_env is not None:
                old.add(refresh_run(old_env, cwd))
            db = cwd / "floor.sqlite3"
            db.unlink(missing_ok=True)
            floor.add(measure([sys.executable, str(Path(__file__).resolve()), "_floor", server.url, str(urls_file),
                               str(db)], env=clean_env(), cwd=cwd))
    p, f = pipeline.summary(), floor.summary()
    result = {"items": n_items, "latency_ms": round(latency * 1000), "requests": len(urls), "warmup_wall_s":
              warm["wall_s"], "pipeline": p, "floor": f, "ratio": round(p["wall_s"] / f["wall_s"], 2)}
    if old_env is not None:
        b = result["before"] = old.summary()
        result["ratio_before"] = round(b["wall_s"] / f["wall_s"], 2)
    return result


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_floor"]:
        floor_main(*argv[1:])
        return
    if argv[:1] == ["_dagster_floor"]:
        dagster_floor_main(*argv[1:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--latency", type=float, default=0.03,
                        help="seconds per page of the slow profile (0: only the fast one)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-sample", dest="sample", action="store_false")
    parser.add_argument("--before", type=Path, help="a checkout of an earlier commit (git worktree add DIR REV): "
                        "its refresh runs interleaved with this one's, and both are printed")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    if args.sample:
        sample = results["sample"] = bench_sample(args.rounds, args.before)
        for label, part in (("now", sample), ("before", sample.get("before"))):
            if part is None:
                continue
            r, i = part["refresh"], part["import_definitions"]
            print(f"[{label}] sample refresh (make run): {r['wall_s']:.2f} s wall (runs {r['runs_wall_s']}), of "
                  f"which the run {r['in_run_s']:.2f} s and fixed cost {r['fixed_s']:.2f} s; "
                  f"CPU {r['min_cpu_s']:.2f} s (least of the rounds); peak RSS {r['peak_rss_mb']:.0f} MB; "
                  f"steps {r['steps_s']}")
            print(f"[{label}] import kryten_pipeline.definitions alone: {i['wall_s']:.2f} s "
                  f"(CPU {i['min_cpu_s']:.2f} s), {i['peak_rss_mb']:.0f} MB")
        d = sample["dagster_floor"]
        print(f"Dagster floor (import, SQLite instance, one empty asset materialised in process): {d['wall_s']:.2f} s "
              f"(CPU {d['min_cpu_s']:.2f} s), {d['peak_rss_mb']:.0f} MB; the sample refresh is "
              f"{sample['refresh']['wall_s'] / d['wall_s']:.2f}x that")
    if args.sizes:
        from kryten_pipeline.kv.embedded_nats import start_nats_server

        with tempfile.TemporaryDirectory(prefix="kryten-bench-nats-") as nats_dir:
            nats = start_nats_server(Path(nats_dir))
            try:
                print(f"{'fake MediaCMS, anonymous':<30}{'pipeline s':>11}{'MB':>7}{'floor s':>9}{'MB':>7}"
                      f"{'ratio':>7}{'fixed s':>9}{'requests':>10}")
                for size in args.sizes:
                    for latency in dict.fromkeys((0.0, args.latency)):  # --latency 0: the fast profile only
                        case = bench_mediacms(size, latency, args.rounds, nats.url, args.before)
                        results.setdefault("mediacms", []).append(case)
                        p, f = case["pipeline"], case["floor"]
                        label = f"{size:,} items, {case['latency_ms']} ms/page"
                        print(f"{label:<30}{p['wall_s']:>11.2f}"
                              f"{p['peak_rss_mb']:>7.0f}{f['wall_s']:>9.2f}{f['peak_rss_mb']:>7.0f}"
                              f"{case['ratio']:>7.2f}{p['fixed_s']:>9.2f}{case['requests']:>10}", flush=True)
                        if "before" in case:
                            b = case["before"]
                            print(f"{'  before':<30}{b['wall_s']:>11.2f}{b['peak_rss_mb']:>7.0f}{'':>16}"
                                  f"{case['ratio_before']:>7.2f}{b['fixed_s']:>9.2f}", flush=True)
            finally:
                nats.stop()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")


if __name__ == "__main__":
    main()
