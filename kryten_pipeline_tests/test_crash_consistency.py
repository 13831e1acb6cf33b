"""Crash consistency: SIGKILL a real ``kryten-pipeline refresh`` at every fault point, then check the invariants.

For each point of ``kryten_pipeline.fault_points`` (fetch, validation, SQLite build, install, KV writes,
retention, recovery, the Dagster step boundaries): copy a data dir holding a published snapshot (two
refreshes of the fake source: 300 then 310 items), run ``python -m kryten_pipeline.cli refresh`` with 330
items and ``KRYTEN_FAULT_POINT`` set, and require that it died by SIGKILL. Then:

1. right after the kill — the live file opens read-only, passes ``integrity_check`` and is wholly the old
   or wholly the new snapshot; KV current is the old value or names a kept file that matches it; every
   kept file is complete; and the state is exactly the one expected for the point: ``old`` (nothing
   changed), ``new`` (published), or ``window`` (killed between the swap and the compare-and-set of
   current: the live file is the new snapshot, current still the old one — ``status`` must say so);
2. a following refresh (340 items) succeeds — after a ``window`` crash its first step reports that it put
   back the file current names — ``status`` is consistent, and no temp file is left.

The points run two at a time, each with its own data dir and KV bucket on one external nats-server; two
more run with the embedded nats-server, which the killed CLI leaves running. Speed: the CLI processes are
forked from a pre-imported interpreter (``cli_zygote``: ``kryten_pipeline.cli.main`` in a fresh child,
without Dagster's ~2.5 s import), except for the baseline and one embedded point, which start
``python -m kryten_pipeline.cli`` itself; the work dirs are on /dev/shm when there is one — fsync is then
free, which changes nothing for a SIGKILL (the page cache survives a killed process).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from queue import Queue
from typing import Any

import pytest

from kryten_pipeline.kv.embedded_nats import RunningNatsServer
from kryten_pipeline_tests.cli_zygote import Zygote
from kryten_pipeline_tests.fault_helpers import (
    cli_environment,
    copy_bucket,
    current_violations,
    inspect_live,
    kept_files_violations,
    read_kv,
    run_cli,
    settings_for,
    status_of,
    temp_files,
    unfinished_runs,
    write_fake_export,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

OLD, NEW, WINDOW = "old", "new", "window"
BASE_ITEMS, OLD_ITEMS, NEW_ITEMS, NEXT_ITEMS = 300, 310, 330, 340
WORKERS = 2


@dataclass(frozen=True)
class Point:
    name: str
    expect: str
    hit: int = 1
    source: str = "fake"
    env: tuple[tuple[str, str], ...] = ()
    before: str | None = None  # a first killed run at this point (to set up the state this one starts from)
    embedded: bool = False
    real_cli: bool = False  # `python -m kryten_pipeline.cli` processes instead of forks of the zygote

    @property
    def key(self) -> str:
        return self.name + ("@embedded" if self.embedded else "")


KEEP_1 = (("KRYTEN_KEEP_SNAPSHOTS", "1"),)
POINTS = [
    Point("step.raw_catalog.start", OLD),
    Point("fetch.fake.item", OLD, hit=150),
    Point("fetch.export.record", OLD, hit=100, source="export"),
    Point("fetch.done", OLD),
    Point("step.validated_items.start", OLD),
    Point("validate.coerced", OLD),
    Point("validate.schema_checked", OLD),
    Point("validate.rejects_partial", OLD, hit=2, source="export"),
    Point("validate.done", OLD),
    Point("step.sqlite_snapshot.start", OLD),
    Point("build.tmp_created", OLD),
    Point("build.after_ddl", OLD),
    Point("build.load_batch", OLD),
    Point("build.after_load_commit", OLD),
    Point("build.after_fts", OLD),
    Point("build.after_diff", OLD),
    Point("build.after_meta", OLD),
    Point("build.after_verify", OLD),
    Point("build.after_fsync", OLD),
    Point("object.before_put", OLD),
    Point("object.after_put", OLD),
    Point("install.locked", OLD),
    Point("install.after_link", OLD),
    Point("install.after_replace", WINDOW),
    Point("install.after_dir_fsync", WINDOW),
    Point("prune.file_deleted", WINDOW, env=KEEP_1),
    Point("step.sqlite_snapshot.swapped", WINDOW),
    Point("step.kv_published.start", WINDOW),
    Point("kv.before_snapshot_record", WINDOW),
    Point("kv.after_snapshot_record", WINDOW),
    Point("kv.before_current_cas", WINDOW),
    Point("kv.after_current_cas", NEW),
    Point("retention.files_pruned", NEW, env=KEEP_1),
    Point("retention.record_deleted", NEW, env=KEEP_1),
    Point("retention.object_deleted", NEW, env=KEEP_1, before="object.after_put"),  # sweeps that orphan
    Point("step.kv_published.end", NEW),
    Point("run.finished", NEW),
    Point("recover.before_roll_forward", WINDOW, before="kv.before_current_cas"),
    Point("kv.before_current_cas", WINDOW, embedded=True, real_cli=True),
    Point("build.load_batch", OLD, embedded=True),
]
# A publish that fails (rather than dies) after the swap leaves the same window state (test_dependency_faults
# pauses a refresh at kv.after_snapshot_record, stops NATS and checks that path).


@dataclass
class Outcome:
    point: Point
    killed: bool = False
    observed: str | None = None
    violations: list[str] = field(default_factory=list)
    recovery: str | None = None
    left_by_crash: list[str] = field(default_factory=list)  # temp files right after the kill
    seconds: float = 0.0


@dataclass
class Baseline:
    data_dir: Path
    bucket: str
    old_id: str


def _shm_root() -> Iterator[Path]:
    parent = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    root = Path(tempfile.mkdtemp(prefix="kryten-crash-", dir=parent))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


Runner = Callable[..., subprocess.CompletedProcess[str]]


def _refresh(run: Runner, work: Path, env: dict[str, str], items: int) -> dict[str, Any]:
    result = run(work, "refresh", "--source", "fake", "--quiet", "--json", env={**env, "KRYTEN_FAKE_ITEMS": str(items)})
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def _prepare_baseline(root: Path, nats_url: str) -> Baseline:
    work = root / "baseline"
    work.mkdir()
    env = cli_environment(work / "data", NATS_URL=nats_url, KRYTEN_KV_BUCKET="crash_base")
    _refresh(run_cli, work, env, BASE_ITEMS)
    second = _refresh(run_cli, work, env, OLD_ITEMS)
    return Baseline(work / "data", "crash_base", second["snapshot_id"])


def _copy_baseline(base: Baseline, data_dir: Path, nats_url: str, bucket: str) -> None:
    shutil.copytree(base.data_dir, data_dir, symlinks=True)
    config = data_dir / ".dagster_home" / "dagster.yaml"
    if config.exists():  # its storage paths are absolute
        config.write_text(config.read_text().replace(str(base.data_dir), str(data_dir)))
    asyncio.run(copy_bucket(nats_url, base.bucket, bucket, rewrite=(str(base.data_dir), str(data_dir))))


def _kill_run(run: Runner, work: Path, env: dict[str, str], point_name: str, point: Point) -> tuple[bool, str]:
    run_env = {**env, "KRYTEN_FAULT_POINT": point_name, "KRYTEN_FAULT_POINT_HIT": str(point.hit),
               "KRYTEN_FAKE_ITEMS": str(NEW_ITEMS), **dict(point.env)}
    args = ["refresh", "--source", point.source, "--quiet"]
    if point.source == "export":
        run_env["KRYTEN_EXPORT_PATH"] = str(write_fake_export(work / "export.jsonl", NEW_ITEMS, bad=3))
    result = run(work, *args, env=run_env)
    return result.returncode == -signal.SIGKILL, f"exit {result.returncode}: {result.stderr[-1500:]}"


def _classify(live_id: str | None, live_count: int | None, current: dict[str, Any] | None,
              old: dict[str, Any] | None) -> str:
    old_id = (old or {}).get("snapshot_id")
    live_new = live_id is not None and old_id is not None and live_id > old_id and live_count == NEW_ITEMS
    if live_id == old_id and current == old:
        return OLD
    if live_new and current == old:
        return WINDOW
    if live_new and current is not None and current.get("snapshot_id") == live_id:
        return NEW
    return f"unexpected (live {live_id}/{live_count}, current {(current or {}).get('snapshot_id')}, old {old_id})"


def run_point(point: Point, root: Path, base: Baseline | None, nats_url: str, zygotes: Queue[Zygote]) -> Outcome:
    zygote = zygotes.get()
    try:
        return _run_point(run_cli if point.real_cli else zygote.run, point, root, base, nats_url)
    except Exception as exc:  # reported with the point, not as a crash of the whole suite
        return Outcome(point, violations=[f"harness error: {type(exc).__name__}: {exc}"])
    finally:
        zygotes.put(zygote)


def _run_point(run: Runner, point: Point, root: Path, base: Baseline | None, nats_url: str) -> Outcome:
    started = time.monotonic()
    outcome = Outcome(point)
    work = root / point.key.replace("@", "-")
    work.mkdir()
    data_dir = work / "data"
    if point.embedded:
        settings = settings_for(data_dir, None)
        env = cli_environment(data_dir)
        _refresh(run, work, env, OLD_ITEMS)
    else:
        assert base is not None
        bucket = "crash_" + point.key.replace(".", "_").replace("@", "_")
        _copy_baseline(base, data_dir, nats_url, bucket)
        settings = settings_for(data_dir, nats_url, bucket)
        env = cli_environment(data_dir, NATS_URL=nats_url, KRYTEN_KV_BUCKET=bucket)
    v = outcome.violations
    old, _ = read_kv(settings)
    if point.before:
        killed, detail = _kill_run(run, work, env, point.before, point)
        if not killed:
            v.append(f"setup run at {point.before} was not killed ({detail})")
    outcome.killed, detail = _kill_run(run, work, env, point.name, point)
    if not outcome.killed:
        v.append(f"not killed at {point.name} ({detail})")

    # 1. Right after the kill.
    live_id, live_count, problems = inspect_live(data_dir)
    v += problems
    current, _ = read_kv(settings)
    v += current_violations(data_dir, current, old)
    v += kept_files_violations(data_dir)
    outcome.left_by_crash = temp_files(data_dir)
    outcome.observed = _classify(live_id, live_count, current, old)
    if outcome.observed != point.expect:
        v.append(f"expected state {point.expect!r}, found {outcome.observed!r}")
    if outcome.observed == WINDOW:
        shown = run(work, "status", "--json", env=env)
        report = json.loads(shown.stdout or "{}")
        if shown.returncode != 1 or report.get("consistent") is not False:
            v.append(f"status did not report the interrupted publish as inconsistent: {shown.stdout[:500]}")
        elif not any("publish was interrupted" in p for p in report.get("problems", [])):
            v.append(f"status does not explain the inconsistency: {report.get('problems')}")

    # 2. The next refresh converges.
    try:
        summary = _refresh(run, work, env, NEXT_ITEMS)
    except AssertionError as exc:
        v.append(f"the following refresh failed: {exc}")
        outcome.seconds = time.monotonic() - started
        return outcome
    outcome.recovery = summary["steps"]["raw_catalog"].get("metadata", {}).get("recovery")
    if outcome.observed == WINDOW and "moved current forward" not in str(outcome.recovery):
        v.append(f"the following refresh did not report rolling the live file forward: {outcome.recovery!r}")
    if outcome.observed == WINDOW and summary["steps"]["raw_catalog"].get("status") != "ok":
        v.append("the following refresh failed in its first step")
    new_id = summary["snapshot_id"]
    status = status_of(settings)
    if not status["consistent"]:
        v.append(f"status after the following refresh: {status['problems']}")
    if status["kv"]["current"]["snapshot_id"] != new_id or status["sqlite"]["item_count"] != NEXT_ITEMS:
        v.append(f"after the following refresh current/live are not its snapshot {new_id}: {status}")
    if old is not None and new_id <= old["snapshot_id"]:
        v.append(f"current went backwards: {old['snapshot_id']} → {new_id}")
    v += [f"left behind: {name}" for name in temp_files(data_dir)]
    v += kept_files_violations(data_dir)
    v += [f"Dagster run {run_id} of the killed process still shows {status}" for run_id, status in
          unfinished_runs(data_dir)]
    if point.embedded and (data_dir / ".nats" / "server.json").exists():
        v.append("the embedded nats-server was not stopped after the following refresh")
    outcome.seconds = time.monotonic() - started
    return outcome


@pytest.fixture(scope="module")
def outcomes(nats_server: RunningNatsServer) -> Iterator[dict[str, Outcome]]:
    for root in _shm_root():
        base = _prepare_baseline(root, nats_server.url)
        # The longest first: the embedded points prepare their own data dir (KV lives in the server's store).
        ordered = sorted(POINTS, key=lambda p: (not p.real_cli, not p.embedded))
        zygotes: Queue[Zygote] = Queue()
        for _ in range(WORKERS):
            zygotes.put(Zygote(root))
        try:
            with ThreadPoolExecutor(max_workers=WORKERS) as pool:
                futures = {p.key: pool.submit(run_point, p, root, base, nats_server.url, zygotes) for p in ordered}
                results = {key: future.result() for key, future in futures.items()}
        finally:
            while not zygotes.empty():
                zygotes.get().close()
        report = os.environ.get("KRYTEN_CRASH_REPORT")
        if report:
            rows = [{"point": o.point.key, "expect": o.point.expect, "observed": o.observed, "killed": o.killed,
                     "violations": o.violations, "recovery": o.recovery,
                     "left_by_crash": o.left_by_crash, "seconds": round(o.seconds, 1)}
                    for o in results.values()]
            Path(report).write_text(json.dumps(rows, indent=1), encoding="utf-8")
        yield results
        _stop_leftover_servers(root)


def _stop_leftover_servers(root: Path) -> None:
    # A failed check could leave an embedded server started by a killed CLI; it is ours to stop.
    for server_json in root.glob("*/data/.nats/server.json"):
        try:
            pid = int(json.loads(server_json.read_text())["pid"])
            if b"nats-server" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError, KeyError):
            pass


def test_there_are_at_least_twenty_distinct_points() -> None:
    assert len({p.name for p in POINTS}) >= 20
    assert {p.expect for p in POINTS} == {OLD, NEW, WINDOW}


@pytest.mark.parametrize("point", POINTS, ids=[p.key for p in POINTS])
def test_a_kill_at_the_point_leaves_old_or_new_and_the_next_refresh_converges(
    point: Point, outcomes: dict[str, Outcome]
) -> None:
    outcome = outcomes[point.key]
    assert outcome.killed, outcome.violations
    assert outcome.violations == []
    assert outcome.observed == point.expect
