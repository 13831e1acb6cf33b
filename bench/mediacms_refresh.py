"""Benchmark: MediaCMS API refresh vs. a minimal reference extraction (issue 3 §7).

Against the fake MediaCMS server (``kryten_pipeline_tests/fake_mediacms.py``) with generated catalogs, it runs

1. **pipeline** — the refresh exactly as ``kryten-pipeline refresh`` runs it (the Dagster job in this
   process: ``raw_catalog`` through the connector, ``validated_items`` with pandera, ``sqlite_snapshot`` with
   the diff against the previous snapshot, verification and the swap, ``kv_published`` to a real
   nats-server, the asset checks, the event log); only interpreter start and imports are left out (also the
   modules the refresh imports lazily: the untimed warm-up run records them, each timed run imports them
   before its clock starts);
2. **connector + validation + build** — the same without Dagster: ``MediaCMSConnector`` → ``build_snapshot_db``
   with ``validate_items`` (``--no-validate`` leaves it out), see ``run_full_refresh``; it is the refresh's
   own work, and the difference to part 1 is what the orchestration (Dagster, event log, KV) adds;
3. **reference fetch** — plain synchronous ``httpx``, one request after the other, over *the same pages*
   the refresh requested (replayed from the server's request log), each parsed with ``json.loads``;
   also a listing-only variant (the smallest possible extraction: no categories at all);
4. **bare insert** — the refresh's rows into a fresh SQLite file with one ``executemany``.

Each part runs in its own interpreter (peak RSS is per part). One untimed pipeline run goes first: it
leaves the previous snapshot a scheduled refresh finds, and fills the fake server's caches, so every timed
part meets the same warm server. Then ``--repeat`` rounds run the parts in turn (noise on a shared machine
hits all parts alike) and the fastest run of each part counts. Printed: wall time, requests, peak RSS and
``ratio = pipeline / (reference fetch + bare insert)``. Targets (issue 3): ratio ≤ 1.5 at 100k items,
peak RSS ≤ 500 MB.

    .venv/bin/python bench/mediacms_refresh.py                  # 10k and 100k items, 20 categories
    .venv/bin/python bench/mediacms_refresh.py --sizes 2000     # a quick run
    git worktree add /tmp/before REV && .venv/bin/python bench/mediacms_refresh.py --before /tmp/before
                                                                # side by side with an earlier commit
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM belongs to the memory map, which exec() replaces; ru_maxrss would also
    count the parent's RSS at fork time (here: the fake server's whole catalog)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


# --------------------------------------------------------------------------------------------- part 1


def run_full_refresh(url: str, token: str | None, data_dir: Path, *, concurrency: int,
                     validate: bool = True) -> tuple[list[tuple[Any, ...]], dict[str, Any]]:
    """THE HOOK: one full refresh up to a verified SQLite file; returns (rows, connector stats).

    It runs the project's own pieces — the connector, ``validate_items`` (unless ``validate=False``),
    ``build_snapshot_db`` (load, indexes, FTS5, verification) — but not the Dagster job or the KV publish;
    ``part_pipeline`` times those too.
    """
    from kryten_pipeline.connectors.mediacms import MediaCMSConnector
    from kryten_pipeline.gc_tuning import bulk_work
    from kryten_pipeline.manifest import manifest_base_from
    from kryten_pipeline.snapshot.build import build_snapshot_db, rows_from_frame
    from kryten_pipeline.snapshot.ids import new_snapshot_id
    from kryten_pipeline.validation import validate_items

    connector = MediaCMSConnector(url, token=token, concurrency=concurrency)

    async def extract() -> list[Any]:
        return [item async for item in connector.iter_catalog_items()]

    with bulk_work():  # as the pipeline's assets do
        t0 = time.perf_counter()
        items = asyncio.run(extract())
        t1 = time.perf_counter()
        manifest_base = manifest_base_from(url, None)
        if validate:
            result = validate_items(items, manifest_base=manifest_base, source_rejects=connector.source_rejects)
            rows = list(rows_from_frame(result.frame))
        else:
            from kryten_pipeline.manifest import build_manifest_url

            rows = [(i.video_id, i.title, i.categories, i.duration_seconds, i.thumbnail_url,
                     build_manifest_url(i.video_id, manifest_base)) for i in items]
        t2 = time.perf_counter()
        snapshot_id = new_snapshot_id()
        built = build_snapshot_db(rows, data_dir=data_dir, namespace="bench", snapshot_id=snapshot_id,
                                  created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                  source=connector.label)
        t3 = time.perf_counter()
    stats = dict(connector.stats)
    stats["sqlite_timings"] = built.timings
    stats["part_timings"] = {"extract_s": round(t1 - t0, 3), "validate_s": round(t2 - t1, 3),
                             "sqlite_s": round(t3 - t2, 3)}
    return rows, stats


def part_refresh(args: argparse.Namespace) -> dict[str, Any]:
    # Imports first: interpreter and library start-up is not part of a refresh's cost.
    import kryten_pipeline.connectors.mediacms
    import kryten_pipeline.snapshot.files
    import kryten_pipeline.validation  # noqa: F401

    data_dir = Path(args.data_dir)
    started = time.perf_counter()
    rows, stats = run_full_refresh(args.url, args.token, data_dir, concurrency=args.concurrency,
                                   validate=args.validate)
    wall = time.perf_counter() - started
    with open(args.rows_out, "w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    return {"wall_s": round(wall, 3), "items": len(rows), "peak_rss_mb": peak_rss_mb(), "stats": stats}


def part_pipeline(args: argparse.Namespace) -> dict[str, Any]:
    """``kryten-pipeline refresh --json`` in this process, timed after the imports."""
    import contextlib
    import importlib
    import io

    os.environ.update({
        "KRYTEN_SOURCE": "mediacms", "MEDIACMS_URL": args.url, "MEDIACMS_TOKEN": args.token or "",
        "KRYTEN_DATA_DIR": str(Path(args.data_dir) / "pipeline"), "NATS_URL": args.nats_url,
        "KRYTEN_NAMESPACES": "bench", "MEDIACMS_CONCURRENCY": str(args.concurrency),
    })
    from kryten_pipeline import (
        cli,
        definitions,  # noqa: F401
    )
    from kryten_pipeline.dagster_defs import refresh_runs  # noqa: F401

    # Modules the refresh imports lazily (instance storage, SQLAlchemy/alembic, the connector's httpx, pandera's
    # extras): the untimed warm-up run records them, the timed runs import them before the clock starts.
    imports_file = Path(args.data_dir) / "pipeline-imports.txt"
    if imports_file.exists():
        for name in imports_file.read_text(encoding="utf-8").split():
            with contextlib.suppress(Exception):
                importlib.import_module(name)
    before = set(sys.modules)
    out = io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(out):
        code = cli.main(["refresh", "--json", "--quiet"])
    wall = time.perf_counter() - started
    if not imports_file.exists():
        imports_file.write_text("\n".join(sorted(set(sys.modules) - before)) + "\n", encoding="utf-8")
    summary = json.loads(out.getvalue())
    if code != 0:
        raise SystemExit(f"pipeline refresh failed ({code}): {summary.get('error')}")
    steps = {name: step.get("seconds") for name, step in summary["steps"].items()}
    build = summary["steps"].get("sqlite_snapshot", {}).get("metadata", {})
    timings = {k.removeprefix("timing."): v for k, v in build.items() if k.startswith("timing.")}
    return {"wall_s": round(wall, 3), "items": summary["counts"]["valid"], "peak_rss_mb": peak_rss_mb(),
            "steps_s": steps, "sqlite_timings": timings, "snapshot_id": summary["snapshot_id"]}


# --------------------------------------------------------------------------------------------- part 2


def part_reference(args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    with open(args.urls_file, encoding="utf-8") as listing:
        paths = [line.rstrip("\n") for line in listing if line.strip()]
    headers = {"Accept": "application/json"}
    if args.token:
        headers["Authorization"] = f"Token {args.token}"
    rows: list[tuple[Any, ...]] = []
    started = time.perf_counter()
    with httpx.Client(headers=headers, timeout=60) as client:
        for path in paths:
            body = client.get(args.url + path).json()
            if path.startswith(("/api/v1/manage_media?page=", "/api/v1/media?page=")) or path in (
                    "/api/v1/manage_media", "/api/v1/media"):
                rows.extend((r["friendly_token"], r["title"], r["duration"], r["thumbnail_url"])
                            for r in body["results"])
    wall = time.perf_counter() - started
    return {"wall_s": round(wall, 3), "requests": len(paths), "rows": len(rows), "peak_rss_mb": peak_rss_mb()}


# --------------------------------------------------------------------------------------------- part 3


def part_insert(args: argparse.Namespace) -> dict[str, Any]:
    rows = []
    with open(args.rows_in, encoding="utf-8") as source:
        for line in source:
            video_id, title, categories, duration, thumbnail, manifest = json.loads(line)
            rows.append((video_id, title, json.dumps(categories, ensure_ascii=False), manifest, duration, thumbnail))
    path = Path(args.data_dir) / "bare.sqlite3"
    path.unlink(missing_ok=True)
    started = time.perf_counter()
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE catalog_item(video_id TEXT PRIMARY KEY, title TEXT NOT NULL, categories_json TEXT "
                 "NOT NULL, manifest_url TEXT NOT NULL, duration_seconds INTEGER, thumbnail_url TEXT)")
    with conn:
        conn.executemany("INSERT INTO catalog_item VALUES (?, ?, ?, ?, ?, ?)", rows)
    conn.close()
    wall = time.perf_counter() - started
    return {"wall_s": round(wall, 3), "rows": len(rows), "peak_rss_mb": peak_rss_mb()}


# --------------------------------------------------------------------------------------------- driver


def run_part(name: str, *extra: str, before: Path | None = None) -> dict[str, Any]:
    """Run one part once, in a fresh interpreter; return what it printed (JSON). With ``before`` (a checkout of
    an earlier commit), that checkout's own bench script runs the part with its own code, on KV and Object Store
    buckets of its own."""
    script = (before.resolve() / "bench" / Path(__file__).name) if before else Path(__file__).resolve()
    env = None if before is None else {**os.environ, "KRYTEN_KV_BUCKET": "kryten_bench_before",
                                       "KRYTEN_OBJECT_BUCKET": "kryten_bench_before_files"}
    command = [sys.executable, str(script), f"_{name}", *extra]
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise SystemExit(f"part {name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


class Best:
    """The fastest run of a part (a shared machine's noise only ever adds time), every run's wall time and
    the highest peak RSS."""

    def __init__(self) -> None:
        self.best: dict[str, Any] | None = None
        self.walls: list[float] = []
        self.peak = 0.0

    def add(self, result: dict[str, Any]) -> dict[str, Any]:
        self.walls.append(result["wall_s"])
        self.peak = max(self.peak, result["peak_rss_mb"])
        if self.best is None or result["wall_s"] < self.best["wall_s"]:
            self.best = result
        return result

    def result(self) -> dict[str, Any]:
        assert self.best is not None
        return {**self.best, "runs_wall_s": self.walls, "peak_rss_mb": self.peak}


def bench_size(n_items: int, n_categories: int, *, concurrency: int, capped: bool, validate: bool,
               repeat: int, titles: str, latency: float, nats_url: str, before: Path | None = None) -> dict[str, Any]:
    from kryten_pipeline_tests.fake_mediacms import (
        CATEGORY_TITLES,
        PLAIN_CATEGORY_TITLES,
        FakeMediaCMS,
        generate_catalog,
    )

    catalog = generate_catalog(n_items, n_categories, seed=42,
                               titles=CATEGORY_TITLES if titles == "traps" else PLAIN_CATEGORY_TITLES)
    token = FakeMediaCMS.EDITOR_TOKEN
    with FakeMediaCMS(catalog, capped=capped, public_base="http://mediacms.internal:8000",
                      latency=latency) as server, \
            tempfile.TemporaryDirectory(prefix="kryten-bench-") as tmp:
        server.warm()  # time the clients, not the server's first rendering of each item
        tmpdir = Path(tmp)
        rows_file, urls_file, listing_file = tmpdir / "rows.jsonl", tmpdir / "urls.txt", tmpdir / "listing.txt"
        common = ["--url", server.url, "--token", token, "--data-dir", str(tmpdir)]
        pipeline_args = [*common, "--nats-url", nats_url, "--concurrency", str(concurrency)]

        # The earlier checkout's parts: the same server, data directories of their own.
        old_common = ["--url", server.url, "--token", token, "--data-dir", str(tmpdir / "before")]
        old_pipeline_args = [*old_common, "--nats-url", nats_url, "--concurrency", str(concurrency)]
        (tmpdir / "before").mkdir()

        # Untimed: the previous snapshot of a steady-state refresh, and the server's caches of every list.
        warmup = run_part("pipeline", *pipeline_args)
        if before is not None:
            run_part("pipeline", *old_pipeline_args, before=before)
        server.reset_counts()
        parts = {name: Best() for name in ("pipeline", "refresh", "reference", "listing", "insert",
                                           "pipeline_before", "refresh_before")}
        refresh_requests: dict[str, Any] = {}
        for round_no in range(repeat):
            server.reset_counts()
            parts["refresh"].add(run_part("refresh", *common, "--rows-out", str(rows_file), "--concurrency",
                                          str(concurrency), *(["--validate"] if validate else [])))
            if round_no == 0:
                refresh_requests = {"requests": server.total_requests, "requests_by_endpoint": dict(server.counts)}
                # The same pages, in the order the refresh asked for them (GETs only: the reference has a token).
                gets = [r for r in server.log if r.method == "GET"]
                urls = [r.path + ("?" + "&".join(f"{k}={_q(v)}" for k, v in r.query.items()) if r.query else "")
                        for r in gets]
                urls_file.write_text("\n".join(urls) + "\n", encoding="utf-8")
                endpoint = parts["refresh"].best["stats"]["endpoint"]  # type: ignore[index]
                listing_file.write_text("\n".join(u for u in urls if u.split("?")[0] == f"/api/v1/{endpoint}"
                                                  and "category=" not in u and "state=" not in u) + "\n",
                                        encoding="utf-8")
            server.reset_counts()
            pipeline = parts["pipeline"].add(run_part("pipeline", *pipeline_args))
            pipeline["requests"] = server.total_requests
            parts["reference"].add(run_part("reference", *common, "--urls-file", str(urls_file)))
            parts["listing"].add(run_part("reference", *common, "--urls-file", str(listing_file)))
            parts["insert"].add(run_part("insert", *common, "--rows-in", str(rows_file)))
            if before is not None:
                parts["pipeline_before"].add(run_part("pipeline", *old_pipeline_args, before=before))
                parts["refresh_before"].add(run_part(
                    "refresh", *old_common, "--rows-out", str(tmpdir / "before" / "rows.jsonl"), "--concurrency",
                    str(concurrency), *(["--validate"] if validate else []), before=before))
    results = {name: best.result() for name, best in parts.items() if best.best is not None}
    results["refresh"].update(refresh_requests)
    floor = results["reference"]["wall_s"] + results["insert"]["wall_s"]
    strict_floor = results["listing"]["wall_s"] + results["insert"]["wall_s"]
    return {
        "items": n_items, "categories": n_categories, "titles": titles, "capped": capped,
        "concurrency": concurrency, "validate": validate, "latency_s": latency,
        "warmup_pipeline_wall_s": warmup["wall_s"],
        "pipeline": results["pipeline"], "refresh": results["refresh"], "reference_fetch": results["reference"],
        "reference_listing_only": results["listing"], "bare_insert": results["insert"],
        "ratio": round(results["pipeline"]["wall_s"] / floor, 2) if floor else None,
        "ratio_connector_and_build": round(results["refresh"]["wall_s"] / floor, 2) if floor else None,
        "ratio_vs_listing_only": round(results["pipeline"]["wall_s"] / strict_floor, 2) if strict_floor else None,
        **({"before": {"checkout": str(before), "pipeline": results["pipeline_before"],
                       "refresh": results["refresh_before"]}} if before is not None else {}),
    }


def _q(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")


def print_report(result: dict[str, Any]) -> None:
    p, r, f = result["pipeline"], result["refresh"], result["reference_fetch"]
    lo, i = result["reference_listing_only"], result["bare_insert"]
    s = r["stats"]
    cap = "on" if result["capped"] else "off"
    print(f"\n== {result['items']:,} items, {result['categories']} categories ({result['titles']} titles), cap {cap}, "
          f"concurrency {result['concurrency']}, server latency {result['latency_s'] * 1000:.0f} ms ==")
    print(f"{'part':<34}{'wall s':>9}{'requests':>10}{'peak RSS MB':>13}")
    print(f"{'pipeline (kryten-pipeline refresh)':<34}{p['wall_s']:>9.2f}{p['requests']:>10}{p['peak_rss_mb']:>13.1f}")
    label = "connector + validation + build" if result["validate"] else "connector + build (no validation)"
    print(f"{label:<34}{r['wall_s']:>9.2f}{r['requests']:>10}"
          f"{r['peak_rss_mb']:>13.1f}")
    print(f"{'reference fetch (same pages)':<34}{f['wall_s']:>9.2f}{f['requests']:>10}{f['peak_rss_mb']:>13.1f}")
    print(f"{'reference fetch (listing only)':<34}{lo['wall_s']:>9.2f}{lo['requests']:>10}{lo['peak_rss_mb']:>13.1f}")
    print(f"{'bare sqlite3 insert':<34}{i['wall_s']:>9.2f}{'-':>10}{i['peak_rss_mb']:>13.1f}")
    print(f"ratio pipeline / (reference fetch + bare insert) = {result['ratio']}   (connector + build: "
          f"{result['ratio_connector_and_build']}; pipeline vs listing-only reference: "
          f"{result['ratio_vs_listing_only']})")
    if "before" in result:
        b = result["before"]
        for label, now, old in (("pipeline before", p, b["pipeline"]), ("connector + build before", r, b["refresh"])):
            print(f"{label:<34}{old['wall_s']:>9.2f}{'':>10}{old['peak_rss_mb']:>13.1f}   "
                  f"now/before: wall {now['wall_s'] / old['wall_s']:.3f}, peak RSS "
                  f"{now['peak_rss_mb'] / old['peak_rss_mb']:.3f}   (runs before: {old['runs_wall_s']})")
    print(f"pipeline steps (s): {p['steps_s']}; sqlite: {p['sqlite_timings']}")
    print(f"connector: {r['items']:,} items, endpoint {s['endpoint']}, pages {s['pages']}, category pages "
          f"{s['category_pages']} (capped categories {s['capped_categories']}, windows {s['window_pages']}), "
          f"detail calls {s['detail_calls']}, retries {s['retries']}, {s['bytes'] / 1e6:.0f} MB, "
          f"{s['items_per_s']:.0f} items/s while extracting")
    print(f"connector + build parts: {s['part_timings']}; sqlite build: {s['sqlite_timings']}")
    print(f"requests by endpoint: {r['requests_by_endpoint']}")
    print(f"runs (s): pipeline {p['runs_wall_s']} (untimed first run {result['warmup_pipeline_wall_s']}), "
          f"connector + build {r['runs_wall_s']}, reference {f['runs_wall_s']}, insert {i['runs_wall_s']}")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0].startswith("_"):
        part = argv[0][1:]
        parser = argparse.ArgumentParser()
        parser.add_argument("--url", required=True)
        parser.add_argument("--token")
        parser.add_argument("--data-dir", required=True)
        parser.add_argument("--rows-out")
        parser.add_argument("--rows-in")
        parser.add_argument("--urls-file")
        parser.add_argument("--concurrency", type=int, default=4)
        parser.add_argument("--validate", action="store_true")
        parser.add_argument("--nats-url")
        args = parser.parse_args(argv[1:])
        result = {"pipeline": part_pipeline, "refresh": part_refresh, "reference": part_reference,
                  "insert": part_insert}[part](args)
        print(json.dumps(result, default=str))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--categories", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--uncapped", action="store_true", help="pre-7.2 server (no 1,000-row cap)")
    parser.add_argument("--no-validate", dest="validate", action="store_false",
                        help="leave validate_items out of the connector + build part (the pipeline always validates)")
    parser.add_argument("--titles", choices=("traps", "plain"), default="traps",
                        help="category titles: 'traps' makes the two largest categories 'Art' and 'Martial Arts' "
                             "(a substring pair: the worst case for capped searches); 'plain' has no nesting")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (one run of each part each); the fastest "
                        "run of a part counts")
    parser.add_argument("--latency", type=float, default=0.0,
                        help="seconds the fake server takes per answer (0: as fast as it can; a real MediaCMS "
                             "takes tens of ms per page)")
    parser.add_argument("--before", type=Path, help="a checkout of an earlier commit (git worktree add DIR REV): its "
                        "pipeline and connector parts run in the same rounds, against the same server, for a "
                        "side-by-side comparison")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--with-db", action="store_true",
                        help="also run the mediacms-db source at the largest size (bench/mediacms_db_bench.py): "
                             "the same catalog size read straight from PostgreSQL")
    args = parser.parse_args(argv)
    os.environ.setdefault("PYTHONHASHSEED", "0")
    from kryten_pipeline.kv.embedded_nats import start_nats_server

    results = []
    with tempfile.TemporaryDirectory(prefix="kryten-bench-nats-") as nats_dir:
        nats = start_nats_server(Path(nats_dir))
        try:
            for size in args.sizes:
                result = bench_size(size, args.categories, concurrency=args.concurrency, capped=not args.uncapped,
                                    validate=args.validate, repeat=args.repeat, titles=args.titles,
                                    latency=args.latency, nats_url=nats.url, before=args.before)
                print_report(result)
                results.append(result)
        finally:
            nats.stop()
    if args.with_db:
        db = subprocess.run([sys.executable, str(Path(__file__).with_name("mediacms_db_bench.py")),
                             "--media", str(max(args.sizes)), "--repeat", "1"],
                            capture_output=True, text=True, check=False)
        print(f"mediacms-db at {max(args.sizes)} media:", db.stdout.strip() or db.stderr.strip()[-500:])
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")


if __name__ == "__main__":
    main()
