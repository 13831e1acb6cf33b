"""Benchmark: delivering a snapshot file through NATS (Object Store put, then a follower installing it).

    .venv/bin/python bench/delivery.py [--items 100000] [--rounds 3] [--also 10000]

For each catalog size: builds a real snapshot file (the pipeline's own builder, fake items), starts a real
nats-server, then measures, as whole processes:

- **put**: a process that connects and stores the file in the Object Store (what ``sqlite_snapshot`` does
  before the swap): wall time from exec to exit, the put itself, MB/s, peak RSS (VmHWM);
- **follow**: a running ``kryten-pipeline follow`` on another path; the latency from ``current`` moving (the
  compare-and-set returning) to the new file installed at the follower's path, and the follower's peak RSS;
- the baseline: a plain copy of the same bytes (``cp``, whole process) and an in-process ``shutil.copyfile``.

Prints the figures and the ratios put / copy and follow latency / copy. Figures only: the machine is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kryten_pipeline.connectors.fake import FakeConnector  # noqa: E402
from kryten_pipeline.delivery.follower import InstallTarget  # noqa: E402
from kryten_pipeline.kv.embedded_nats import start_nats_server  # noqa: E402
from kryten_pipeline.kv.object_store import object_name  # noqa: E402
from kryten_pipeline.kv.store import snapshot_store  # noqa: E402
from kryten_pipeline.manifest import build_manifest_url  # noqa: E402
from kryten_pipeline.settings import Settings  # noqa: E402
from kryten_pipeline.snapshot.build import build_snapshot_db  # noqa: E402
from kryten_pipeline.snapshot.files import install_snapshot  # noqa: E402
from kryten_pipeline.snapshot.ids import iso_utc, new_snapshot_id  # noqa: E402

KRYTEN = str(Path(sys.executable).with_name("kryten-pipeline"))

PUT_CHILD = r"""
import asyncio, json, sys, time
from pathlib import Path
from kryten_pipeline.kv.store import snapshot_store
from kryten_pipeline.settings import Settings
from kryten_pipeline.snapshot.files import file_sha256

url, kv, bucket, name, path = sys.argv[1:6]
settings = Settings.from_mapping({"nats_url": url, "kv_bucket": kv, "object_bucket": bucket})
sha = file_sha256(Path(path))

async def main():
    async with snapshot_store(settings) as store:
        t0 = time.perf_counter()
        stored = await store.objects.put_file(name, Path(path), sha256=sha)
        return time.perf_counter() - t0, stored.chunks

seconds, chunks = asyncio.run(main())
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"put_s": seconds, "chunks": chunks, "peak_rss_mb": hwm / 1024}))
"""


def build_file(data_dir: Path, items: int, settings: Settings) -> dict[str, Any]:
    """A snapshot of ``items`` fake items, installed in ``data_dir``; returns its KV value (without publishing)."""
    fake = FakeConnector(items, seed=23)
    rows = ((i.video_id, i.title, i.categories, i.duration_seconds, i.thumbnail_url,
             build_manifest_url(i.video_id, "https://media.example.org")) for i in map(fake.item, range(items)))
    snapshot_id = new_snapshot_id()
    time.sleep(1.0)  # ids of successive builds must differ in their second as well as their suffix
    built = build_snapshot_db(rows, data_dir=data_dir, namespace="default", snapshot_id=snapshot_id,
                              created_at=iso_utc(datetime.now(UTC)), source=f"fake:{items}")
    install_snapshot(built, data_dir=data_dir, keep=50)
    return {"snapshot_id": snapshot_id, "source": built.source, "created_at": built.created_at,
            "item_count": built.item_count, "notes": "bench", "schema_version": 1, "namespace": "default",
            "sqlite_sha256": built.sha256, "size_bytes": built.size_bytes, "object_bucket": settings.object_bucket,
            "object_name": object_name("default", snapshot_id),
            "path": str(data_dir / "default" / "snapshots" / f"{snapshot_id}.sqlite3")}


def timed_put(settings: Settings, value: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", PUT_CHILD, str(settings.nats_url), settings.kv_bucket,
                          settings.object_bucket, value["object_name"], value["path"]],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    figures = json.loads(out.stdout)
    figures["wall_s"] = time.perf_counter() - started
    return figures


def publish(settings: Settings, value: dict[str, Any]) -> float:
    """Move current to ``value`` (object already stored); returns the moment the compare-and-set returned."""
    record = {k: v for k, v in value.items() if k != "path"}

    async def main() -> float:
        async with snapshot_store(settings) as store:
            await store.publish_snapshot("default", record)
            return time.monotonic()

    return asyncio.run(main())


def copy_baseline(path: Path, work: Path) -> tuple[float, float]:
    target = work / "copy.sqlite3"
    started = time.perf_counter()
    subprocess.run(["cp", str(path), str(target)], check=True)
    cp_wall = time.perf_counter() - started
    target.unlink()
    started = time.perf_counter()
    shutil.copyfile(path, target)
    copyfile = time.perf_counter() - started
    target.unlink()
    return cp_wall, copyfile


def vm_hwm_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024


def run_size(items: int, rounds: int, server: Any, work: Path) -> dict[str, Any]:
    settings = Settings.from_mapping({"nats_url": server.url, "kv_bucket": f"bench_kv_{items}",
                                      "object_bucket": f"bench_obj_{items}", "data_dir": str(work / "data")})
    values = [build_file(settings.data_dir, items, settings) for _ in range(rounds + 1)]
    size = values[0]["size_bytes"]
    puts = [timed_put(settings, v) for v in values]
    publish(settings, {k: v for k, v in values[0].items()})
    target = work / f"reader-{items}" / "catalog.sqlite3"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KRYTEN_", "NATS_"))}
    env.update(NATS_URL=server.url, KRYTEN_KV_BUCKET=settings.kv_bucket, KRYTEN_OBJECT_BUCKET=settings.object_bucket,
               KRYTEN_DATA_DIR=str(work / "unused"))
    follower = subprocess.Popen([KRYTEN, "follow", "--to", str(target)], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    latencies = []
    try:
        _wait_installed(target, values[0]["snapshot_id"], follower)
        for value in values[1:]:
            moved = publish(settings, value)
            _wait_installed(target, value["snapshot_id"], follower)
            latencies.append(time.monotonic() - moved)
        follower_rss = vm_hwm_mb(follower.pid)
    finally:
        follower.send_signal(signal.SIGTERM)
        follower.wait(timeout=30)
    copies = [copy_baseline(Path(values[0]["path"]), work) for _ in range(rounds)]
    cp_wall = min(c[0] for c in copies)
    copyfile = min(c[1] for c in copies)
    best_put = min(puts, key=lambda p: p["put_s"])
    return {
        "items": items, "size_mb": size / 1e6, "chunks": best_put["chunks"],
        "put_s": best_put["put_s"], "put_wall_s": min(p["wall_s"] for p in puts),
        "put_mb_s": size / 1e6 / best_put["put_s"], "put_rss_mb": max(p["peak_rss_mb"] for p in puts),
        "follow_latency_s": min(latencies), "follow_latency_max_s": max(latencies),
        "follow_mb_s": size / 1e6 / min(latencies), "follower_rss_mb": follower_rss,
        "cp_wall_s": cp_wall, "copyfile_s": copyfile,
    }


def _wait_installed(target: Path, snapshot_id: str, proc: subprocess.Popen[bytes], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while InstallTarget(target).installed_snapshot_id() != snapshot_id:
        if proc.poll() is not None:
            raise RuntimeError(f"follower exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{snapshot_id} not installed within {timeout} s")
        time.sleep(0.005)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--also", type=int, action="append", default=[],
                        help="another catalog size to measure (to see memory stay flat)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kryten-delivery-") as tmp:
        work = Path(tmp)
        server = start_nats_server(work / "nats")
        try:
            results = [run_size(n, args.rounds, server, work) for n in sorted({args.items, *args.also})]
        finally:
            server.stop()
    print(f"{'items':>8} {'MB':>7} {'put s':>7} {'MB/s':>7} {'put wall':>9} {'put RSS':>8} {'follow s':>9} "
          f"{'follow RSS':>11} {'cp s':>6} {'put/cp':>7} {'follow/cp':>10}")
    for r in results:
        print(f"{r['items']:>8} {r['size_mb']:>7.1f} {r['put_s']:>7.3f} {r['put_mb_s']:>7.0f} {r['put_wall_s']:>9.2f} "
              f"{r['put_rss_mb']:>7.0f}M {r['follow_latency_s']:>9.3f} {r['follower_rss_mb']:>10.0f}M "
              f"{r['cp_wall_s']:>6.3f} {r['put_s'] / r['cp_wall_s']:>7.1f} "
              f"{r['follow_latency_s'] / r['cp_wall_s']:>10.1f}")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
