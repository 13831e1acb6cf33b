"""``refresh``: one namespace through the Dagster job, or every registered namespace (a backfill or in turn)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from kryten_pipeline.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    freeze_loaded,
    open_project_instance,
    override_source,
    settings_and_namespace,
)
from kryten_pipeline.errors import ConfigurationError
from kryten_pipeline.progress_display import progress_display
from kryten_pipeline.settings import Settings


def cmd_refresh(args: SimpleNamespace) -> int:
    if args.all_namespaces:
        return cmd_refresh_all(args)
    override_source(args.source)
    settings, namespace = settings_and_namespace(args.namespace)
    instance = open_project_instance(settings)

    from kryten_pipeline.dagster_defs.refresh_runs import ensure_namespace_registered, execute_refresh

    ensure_namespace_registered(instance, settings, namespace)
    freeze_loaded()
    tags = {"kryten/trigger": "cli"}
    if args.allow_removals:
        tags["kryten/allow-removals"] = "true"
    display = progress_display(quiet=args.quiet)
    with display or contextlib.nullcontext():
        summary = execute_refresh(instance, namespace, tags=tags, progress=display)
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        print_refresh_summary(summary)
    if not summary["success"]:
        print(f"error: {summary['error'] or 'refresh failed'}", file=sys.stderr)
        # A setting that cannot work (a missing export file, a bad URL) is a usage error, as outside a run.
        return EXIT_USAGE if summary.get("error_type") == "ConfigurationError" else EXIT_FAILED
    return EXIT_OK


def print_refresh_summary(summary: dict[str, Any]) -> None:
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
        + (f"; {counts['thumbnails_dropped']} bad thumbnail URL{'' if counts['thumbnails_dropped'] == 1 else 's'} "
           "dropped (items kept)" if counts.get("thumbnails_dropped") else "")
    )
    if summary.get("rejects_file"):
        lines.append(f"rejects: {summary['rejects_file']}")
    if summary.get("sqlite_path"):
        lines.append(f"sqlite: {summary['sqlite_path']}")
    lines.append(f"timings: {timings or '-'}; total {summary['wall_time_s']:.2f} s")
    lines.append(f"result: {'ok' if summary['success'] else 'FAILED'}")
    print("\n".join(lines))


def cmd_refresh_all(args: SimpleNamespace) -> int:
    """``refresh --all-namespaces``: a backfill when a daemon runs, else each namespace in turn, here."""
    if args.namespace:
        raise ConfigurationError("use either --namespace or --all-namespaces")
    override_source(args.source)
    settings = Settings.from_env()
    instance = open_project_instance(settings)
    from kryten_pipeline.dagster_defs.backfills import (
        BATCH_TAG,
        backfill_daemon_running,
        refresh_in_sequence,
        submit_refresh_backfill,
    )
    from kryten_pipeline.dagster_defs.partitions import register_namespaces, registered_namespaces
    from kryten_pipeline.dagster_defs.refresh_runs import new_run_id

    register_namespaces(instance, settings.namespaces)
    namespaces = registered_namespaces(instance)
    batch = new_run_id()[:8]
    tags = {"kryten/trigger": "cli", BATCH_TAG: batch}
    if getattr(args, "allow_removals", False):
        tags["kryten/allow-removals"] = "true"
    if not args.in_process and backfill_daemon_running(instance):
        backfill_id = submit_refresh_backfill(namespaces, tags=tags, dagster_home=Path(os.environ["DAGSTER_HOME"]))
        if args.json:
            print(json.dumps({"backfill_id": backfill_id, "namespaces": namespaces}))
        else:
            print(f"backfill {backfill_id} submitted: {len(namespaces)} namespaces ({', '.join(namespaces)})")
            print("the Dagster daemon runs it (one run per namespace); follow it in the UI under Runs → Backfills, "
                  f"e.g. http://127.0.0.1:3000/runs/b/{backfill_id}")
        return EXIT_OK
    if not args.quiet:
        print(f"no Dagster daemon for this instance: refreshing {len(namespaces)} namespaces here, one after "
              f"another (batch {batch})", file=sys.stderr)
    freeze_loaded()
    display = progress_display(quiet=args.quiet)
    sink = None if display is None else (lambda ns, line: display(line, label=f"[{ns}] "))
    with display or contextlib.nullcontext():
        summaries = refresh_in_sequence(instance, namespaces, tags=tags, progress=sink)
    failed = [s for s in summaries if not s["success"]]
    if args.json:
        print(json.dumps({"batch": batch, "runs": summaries}, indent=2, ensure_ascii=False))
    else:
        print(f"{'namespace':<20} {'result':<7} {'snapshot_id':<24} {'items':>7}  run_id")
        for s in summaries:
            items = s.get("counts", {}).get("valid")
            print(f"{s['namespace']:<20} {'ok' if s['success'] else 'FAILED':<7} {s.get('snapshot_id') or '-':<24} "
                  f"{items if items is not None else '-':>7}  {s['run_id']}")
        for s in failed:
            print(f"error: {s['namespace']}: {s.get('error') or 'refresh failed'}", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK
