"""The long-lived agents: ``follow`` and ``pull`` (a reader host), ``serve*`` (the refresh triggers)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from kryten_pipeline.cli.common import EXIT_FAILED, EXIT_OK, open_project_instance, settings_and_namespace
from kryten_pipeline.errors import ConfigurationError
from kryten_pipeline.settings import Settings


def cmd_pull(args: SimpleNamespace) -> int:
    return cmd_follow(args)


def cmd_follow(args: SimpleNamespace) -> int:
    """``follow`` (until stopped, or ``--once``) and ``pull``: snapshots from NATS installed at ``--to``."""
    settings, namespace = settings_and_namespace(args.namespace)
    from kryten_pipeline.delivery.follower import (
        Follower,
        InstallTarget,
        describe_hook,
        log_line,
        pull_snapshot,
        run_hook,
        terminal_progress,
    )
    from kryten_pipeline.snapshot.ids import is_snapshot_id

    snapshot_id = getattr(args, "snapshot", None)
    if snapshot_id is not None and not is_snapshot_id(snapshot_id):
        raise ConfigurationError(f"{snapshot_id!r} is not a snapshot id (like 20251218T123456Z-7f3a9c)",
                                 setting="--snapshot")
    target = InstallTarget(Path(args.to), file_mode=args.mode)
    progress = terminal_progress()
    if not args.once:
        follower = Follower(settings, namespace, target, exec_command=args.exec_command, profile=args.profile,
                            progress=progress, stall_timeout=args.stall_timeout)
        return run_until_signal(follower.run(), lambda: log_line(
            f"follow: stopped ({follower.installs} installs this run; {target.path} holds "
            f"{target.installed_snapshot_id() or 'nothing'})"))

    async def once() -> Any:
        report = await pull_snapshot(settings, namespace, target, snapshot_id=snapshot_id, profile=args.profile,
                                     progress=progress, stall_timeout=args.stall_timeout)
        if args.exec_command and report.action == "installed":
            report.hook = await run_hook(args.exec_command, report)
        return report

    report = asyncio.run(once())
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.line())
        if report.hook is not None:
            print(describe_hook(report.hook))
    if report.hook is not None and not report.hook.ok:
        print(f"error: {describe_hook(report.hook)}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def run_until_signal(coroutine: Any, on_stop: Any) -> int:
    """Run a long-lived agent; SIGTERM or SIGINT stops it cleanly (a download in progress is removed)."""
    import signal

    async def main() -> None:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, task.cancel)  # type: ignore[union-attr]
        await coroutine

    try:
        asyncio.run(main())
    except asyncio.CancelledError:
        on_stop()
        return EXIT_OK
    return EXIT_OK


def cmd_serve(args: SimpleNamespace) -> int:
    """``serve``, ``serve-admin``, ``serve-nats``: runs go into the project's Dagster instance (the UI shows them)."""
    settings = Settings.from_env()
    from kryten_pipeline.triggers.admin_app import check_admin_settings
    from kryten_pipeline.triggers.serving import serve

    if args.admin:
        check_admin_settings(settings)  # refuse before opening anything
    instance = open_project_instance(settings)
    settings = Settings.from_env()  # again: relative paths were made absolute before the chdir
    os.environ.setdefault("PYTHONWARNINGS", "ignore")  # the refresh processes: no preview notices either
    serve(settings, instance, admin=args.admin, nats=args.nats)
    return EXIT_OK
