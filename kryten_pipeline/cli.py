"""``kryten-pipeline``: a thin CLI over the same Dagster definitions the UI shows.

``refresh`` materialises the four assets (and their checks) through Dagster against the project's
instance, so a CLI run appears in the UI's run history exactly like a UI run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kryten_pipeline.errors import ConfigurationError, KrytenError
from kryten_pipeline.namespaces import validate_namespace
from kryten_pipeline.settings import SOURCES, SPEC_BY_FIELD, Settings, load_dotenv_file

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
STEPS = ("raw_catalog", "validated_items", "sqlite_snapshot", "kv_published")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")  # Dagster preview/beta notices are not for operators
    load_dotenv_file()
    try:
        return int(args.handler(args))
    except KrytenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, ConfigurationError) else EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kryten-pipeline",
        description="Refresh and inspect the kryten catalog snapshot (SQLite + NATS KV).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    refresh = sub.add_parser("refresh", help="materialise raw_catalog → … → kv_published for one namespace")
    refresh.add_argument("--namespace", "-n", help="namespace (default: the first of KRYTEN_NAMESPACES)")
    refresh.add_argument("--source", "-s", choices=SOURCES, help="override KRYTEN_SOURCE for this run")
    refresh.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    refresh.add_argument("--quiet", "-q", action="store_true", help="no progress lines on stderr")
    refresh.set_defaults(handler=cmd_refresh)

    status = sub.add_parser("status", help="KV current vs the live SQLite file (exit 1 when inconsistent)")
    status.add_argument("--namespace", "-n")
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=cmd_status)

    snapshots = sub.add_parser("snapshots", help="list snapshots: KV records and kept SQLite files")
    snapshots.add_argument("--namespace", "-n")
    snapshots.add_argument("--json", action="store_true")
    snapshots.set_defaults(handler=cmd_snapshots)

    rollback = sub.add_parser("rollback", help="make a kept snapshot live again and move KV current to it")
    rollback.add_argument("--to", required=True, metavar="SNAPSHOT_ID")
    rollback.add_argument("--namespace", "-n")
    rollback.add_argument("--json", action="store_true")
    rollback.set_defaults(handler=cmd_rollback)

    namespaces = sub.add_parser("namespaces", help="list or add namespaces (Dagster partitions)")
    namespaces.add_argument("action", choices=("list", "add"), nargs="?", default="list")
    namespaces.add_argument("names", nargs="*", metavar="NS")
    namespaces.set_defaults(handler=cmd_namespaces)
    return parser


def _settings_and_namespace(namespace: str | None) -> tuple[Settings, str]:
    """Settings plus the namespace to act on (default: the first configured one)."""
    settings = Settings.from_env()
    return settings, validate_namespace(namespace) if namespace else settings.namespaces[0]


def _open_project_instance(settings: Settings) -> Any:
    """The Dagster instance the UI shows; the working directory becomes its home (see dagster.yaml)."""
    from kryten_pipeline.dagster_defs.instance import open_instance, resolve_dagster_home

    _absolutise_paths()
    home = resolve_dagster_home(settings.data_dir.resolve())
    os.chdir(home)
    return open_instance(home)


def _absolutise_paths() -> None:
    """Relative paths in the environment keep meaning the caller's directory after we chdir."""
    for name in ("data_dir", "export_path"):
        env = SPEC_BY_FIELD[name].env
        value = os.environ.get(env, "").strip() or (SPEC_BY_FIELD[name].default or "")
        if value:
            os.environ[env] = str(Path(value).expanduser().resolve())


# --- refresh -------------------------------------------------------------------------------------


def cmd_refresh(args: argparse.Namespace) -> int:
    if args.source:
        os.environ[SPEC_BY_FIELD["source"].env] = args.source
    settings, namespace = _settings_and_namespace(args.namespace)
    instance = _open_project_instance(settings)

    from kryten_pipeline.dagster_defs.refresh_runs import ensure_namespace_registered, execute_refresh

    ensure_namespace_registered(instance, settings, namespace)
    sink = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    summary = execute_refresh(instance, namespace, tags={"kryten/trigger": "cli"}, progress=sink)
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        _print_refresh_summary(summary)
    if not summary["success"]:
        print(f"error: {summary['error'] or 'refresh failed'}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _print_refresh_summary(summary: dict[str, Any]) -> None:
    counts = summary["counts"]
    timings = ", ".join(
        f"{step} {info['seconds']:.2f} s" for step, info in summary["steps"].items() if "seconds" in info
    )
    lines = [
        f"namespace: {summary['namespace']}",
        f"source: {summary.get('source') or '-'}",
        f"run_id: {summary['run_id']}",
    ]
    if summary["success"]:
        lines.append(f"snapshot_id: {summary['snapshot_id']}")
    lines.append(
        f"items: {counts['valid'] if counts['valid'] is not None else '-'} valid of "
        f"{counts['read'] if counts['read'] is not None else '-'} read, "
        f"{counts['rejected'] if counts['rejected'] is not None else '-'} rejected, "
        f"{counts['categories'] if counts['categories'] is not None else '-'} categories"
    )
    if summary.get("rejects_file"):
        lines.append(f"rejects: {summary['rejects_file']}")
    if summary.get("sqlite_path"):
        lines.append(f"sqlite: {summary['sqlite_path']}")
    lines.append(f"timings: {timings or '-'}; total {summary['wall_time_s']:.2f} s")
    lines.append(f"result: {'ok' if summary['success'] else 'FAILED'}")
    print("\n".join(lines))


# --- status, snapshots, rollback -------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    settings, namespace = _settings_and_namespace(args.namespace)
    from kryten_pipeline.dagster_defs.checks import read_consistency

    report = asyncio.run(read_consistency(settings, namespace))
    current = report.kv_current or {}
    payload = {
        "namespace": namespace,
        "consistent": report.consistent,
        "kv": {
            "bucket": settings.kv_bucket,
            "current": report.kv_current,
            "revision": report.kv_revision,
        },
        "sqlite": {
            "path": report.sqlite_path,
            "snapshot_id": report.sqlite_snapshot_id,
            "item_count": report.sqlite_item_count,
        },
        "problems": report.problems,
    }
    if args.json:
        print(json.dumps(payload, indent=2, ensure_ascii=False))
    else:
        print(f"namespace: {namespace}")
        print(f"kv current: {current.get('snapshot_id') or '-'} ({current.get('item_count', '-')} items, "
              f"revision {report.kv_revision or '-'})")
        count = report.sqlite_item_count if report.sqlite_item_count is not None else "-"
        print(f"sqlite: {report.sqlite_snapshot_id or '-'} ({count} items) at {report.sqlite_path}")
        print(f"consistent: {'yes' if report.consistent else 'NO'}")
        for problem in report.problems:
            print(f"  - {problem}")
    return EXIT_OK if report.consistent else EXIT_FAILED


def cmd_snapshots(args: argparse.Namespace) -> int:
    settings, namespace = _settings_and_namespace(args.namespace)
    from kryten_pipeline.kv_store import snapshot_store
    from kryten_pipeline.snapshot_db import list_kept_snapshots, live_db_path, read_snapshot_meta

    async def read() -> tuple[list[dict[str, Any]], str | None]:
        async with snapshot_store(settings) as store:
            records = await store.list_snapshots(namespace)
            current = await store.read_current(namespace)
        return records, current.snapshot_id if current else None

    records, current_id = asyncio.run(read())
    kept = set(list_kept_snapshots(settings.data_dir, namespace))
    live = (read_snapshot_meta(live_db_path(settings.data_dir, namespace)) or {}).get("snapshot_id")
    by_id = {r["snapshot_id"]: r for r in records}
    rows = []
    for snapshot_id in sorted(set(by_id) | kept, reverse=True):
        record = by_id.get(snapshot_id, {})
        rows.append({
            "snapshot_id": snapshot_id,
            "created_at": record.get("created_at"),
            "item_count": record.get("item_count"),
            "source": record.get("source"),
            "current": snapshot_id == current_id,
            "live": snapshot_id == live,
            "kept_file": snapshot_id in kept,
            "kv_record": snapshot_id in by_id,
        })
    if args.json:
        print(json.dumps({"namespace": namespace, "snapshots": rows}, indent=2, ensure_ascii=False))
        return EXIT_OK
    if not rows:
        print(f"no snapshots for namespace {namespace!r} yet: run `kryten-pipeline refresh`")
        return EXIT_OK
    print(f"{'snapshot_id':<24} {'items':>8}  {'flags':<18} source")
    for row in rows:
        flags = ",".join(f for f, on in (("current", row["current"]), ("live", row["live"]),
                                         ("kept", row["kept_file"])) if on) or "-"
        items = row["item_count"] if row["item_count"] is not None else "-"
        print(f"{row['snapshot_id']:<24} {items:>8}  {flags:<18} {row['source'] or '-'}")
    return EXIT_OK


def cmd_rollback(args: argparse.Namespace) -> int:
    settings, namespace = _settings_and_namespace(args.namespace)
    from kryten_pipeline.rollback import rollback_to
    from kryten_pipeline.snapshot_id import is_snapshot_id

    if not is_snapshot_id(args.to):
        raise ConfigurationError(f"{args.to!r} is not a snapshot id (like 20251218T123456Z-7f3a9c)")
    outcome = asyncio.run(rollback_to(settings, namespace, args.to))
    if args.json:
        print(json.dumps(outcome, indent=2))
    else:
        print(f"namespace {namespace}: current is now {outcome['snapshot_id']} "
              f"(was {outcome['previous_current'] or 'none'}, revision {outcome['current_revision']})")
    return EXIT_OK


def cmd_namespaces(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    instance = _open_project_instance(settings)
    from kryten_pipeline.dagster_defs.partitions import register_namespaces, registered_namespaces

    if args.action == "add":
        if not args.names:
            raise ConfigurationError("name at least one namespace: `kryten-pipeline namespaces add NS`")
        added = register_namespaces(instance, args.names)
        print(f"added: {', '.join(added)}" if added else "already registered")
        return EXIT_OK
    register_namespaces(instance, settings.namespaces)
    configured = set(settings.namespaces)
    for name in registered_namespaces(instance):
        print(f"{name}{'' if name in configured else '  (registered, not in KRYTEN_NAMESPACES)'}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
