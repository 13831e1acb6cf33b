"""``kryten-pipeline``: a thin CLI over the same Dagster definitions the UI shows.

``refresh`` materialises the four assets (and their checks) through Dagster against the project's
instance, so a CLI run appears in the UI's run history exactly like a UI run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click

from kryten_pipeline import __version__
from kryten_pipeline.errors import ConfigurationError, KrytenError, NatsUnavailableError
from kryten_pipeline.gc_tuning import freeze_survivors
from kryten_pipeline.namespaces import validate_namespace
from kryten_pipeline.progress_display import progress_display
from kryten_pipeline.settings import SOURCES, SPEC_BY_FIELD, Settings, load_dotenv_file

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CANNOT_TELL = 3  # status: KV could not be read, so consistency is unknown
STEPS = ("raw_catalog", "validated_items", "sqlite_snapshot", "kv_published")


# Whether this process is the command itself (``main()`` reading sys.argv), not a caller of ``main([...])``
# such as a test: only then may it freeze the garbage collector's view of what it loaded (gc_tuning).
_OWN_PROCESS = False


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit code. ``argv=None`` reads the process's own command line."""
    global _OWN_PROCESS
    warnings.filterwarnings("ignore")  # Dagster preview/beta notices are not for operators
    _OWN_PROCESS = argv is None
    try:
        result = app.main(args=None if argv is None else list(argv), prog_name="kryten-pipeline",
                          standalone_mode=False)
        return int(result or EXIT_OK)  # a command's exit code; --help and --version give 0
    except click.ClickException as exc:  # a usage error: an unknown option, a bad value (exit 2, as before)
        exc.show()
        return exc.exit_code
    except KrytenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, ConfigurationError) else EXIT_FAILED
    except (KeyboardInterrupt, click.Abort):
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `kryten-pipeline diff | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    finally:
        if _OWN_PROCESS:
            # The process exits next: the interpreter's final collections would walk every object once more.
            freeze_survivors()


def _freeze_loaded() -> None:
    """Once the command has loaded Dagster and the definitions, keep them out of the collections of its run."""
    if _OWN_PROCESS:
        import kryten_pipeline.definitions  # noqa: F401 - loaded now, so that it is frozen with the rest

        freeze_survivors()


# --- the command line (click) ----------------------------------------------------------------------


class FileMode(click.ParamType):
    """An octal file mode such as 0644."""

    name = "MODE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            mode = int(str(value), 8)
        except ValueError:
            self.fail(f"{value!r} is not an octal mode like 0644", param, ctx)
        if not 0 <= mode <= 0o777:
            self.fail(f"{value!r} is not a file mode", param, ctx)
        return mode


def _run(handler: Callable[[SimpleNamespace], int], **options: Any) -> int:
    return handler(SimpleNamespace(**options))


CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 110}
namespace_option = click.option("--namespace", "-n", metavar="NS",
                                help="namespace (default: the first of KRYTEN_NAMESPACES)")
json_option = click.option("--json", is_flag=True, help="print the result as JSON on stdout")


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "--version", prog_name="kryten-pipeline")
def app() -> None:
    """Refresh and inspect the kryten catalog snapshot (SQLite + NATS KV).

    Settings come from the environment and a .env file in the working directory (README, Configuration).
    Shell completion: eval "$(_KRYTEN_PIPELINE_COMPLETE=bash_source kryten-pipeline)" (zsh_source, fish_source).
    """
    load_dotenv_file()


@app.command("refresh")
@namespace_option
@click.option("--source", "-s", type=click.Choice(SOURCES), help="override KRYTEN_SOURCE for this run")
@click.option("--json", is_flag=True, help="print the summary as JSON on stdout")
@click.option("--quiet", "-q", is_flag=True, help="no progress display on stderr")
@click.option("--all-namespaces", is_flag=True,
              help="every registered namespace: a Dagster backfill if a daemon runs, else one after another")
@click.option("--in-process", is_flag=True, help="with --all-namespaces: refresh here even if a daemon could run "
              "a backfill")
@click.option("--allow-removals", is_flag=True,
              help="publish even if more than KRYTEN_MAX_REMOVED_RATIO of the catalog disappears")
def refresh_command(**options: Any) -> int:
    """Materialise raw_catalog → … → kv_published for one namespace.

    Progress is drawn on a terminal, as plain lines otherwise; exit 0 only on success, 2 for a setting to fix.
    """
    return _run(cmd_refresh, **options)


@app.command("status")
@namespace_option
@json_option
def status_command(**options: Any) -> int:
    """KV current vs the live SQLite file and its object.

    Exit 0 consistent, 1 inconsistent, 3 cannot tell (NATS unreachable).
    """
    return _run(cmd_status, **options)


@app.command("snapshots")
@namespace_option
@json_option
def snapshots_command(**options: Any) -> int:
    """List snapshots: KV records and kept SQLite files."""
    return _run(cmd_snapshots, **options)


@app.command("rollback")
@click.option("--to", required=True, metavar="SNAPSHOT_ID", help="a kept snapshot")
@namespace_option
@json_option
def rollback_command(**options: Any) -> int:
    """Make a kept snapshot live again and move KV current to it."""
    return _run(cmd_rollback, **options)


@app.command("diff")
@click.option("--from", "from_id", metavar="SNAPSHOT_ID", help="default: the live snapshot's predecessor")
@click.option("--to", "to_id", metavar="SNAPSHOT_ID", help="default: the live snapshot")
@namespace_option
@json_option
def diff_command(**options: Any) -> int:
    """What changed between two kept snapshots (default: live vs its predecessor)."""
    return _run(cmd_diff, **options)


@app.command("search")
@click.argument("query", required=False, default="")
@click.option("--category", "-c", multiple=True, metavar="CATEGORY", help="only items in this category (repeat)")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@namespace_option
@json_option
def search_command(**options: Any) -> int:
    """Search the live snapshot (FTS5, bm25 ranking).

    QUERY is free text; "a quoted phrase" is searched as one; the last word matches as a prefix.
    """
    options["category"] = list(options["category"])
    return _run(cmd_search, **options)


def delivery_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed((
        click.option("--profile", type=click.Choice(("kryten-playlist",)),
                     help="add the columns the kryten-playlist code reads to this host's copy"),
        click.option("--mode", type=FileMode(), default="0644",
                     help="permissions of the installed file (default 0644; the reader's user must be able to "
                     "write if it switches the file to WAL: run follow as that user)"),
        click.option("--stall-timeout", type=float, default=30.0, metavar="SECONDS",
                     help="give a download up when no data arrived for this long (default 30)"),
        click.option("--json", is_flag=True, help="print what was installed as JSON on stdout (pull, follow --once)"),
    )):
        command = option(command)
    return command


@app.command("follow")
@namespace_option
@click.option("--to", required=True, metavar="PATH", help="the database file readers open")
@click.option("--exec", "exec_command", metavar="CMD",
              help="shell command run after each install (KRYTEN_SNAPSHOT_ID, KRYTEN_SNAPSHOT_PATH set)")
@click.option("--once", is_flag=True, help="install the current snapshot (if needed) and exit")
@delivery_options
def follow_command(**options: Any) -> int:
    """Install every snapshot of a namespace at PATH on this host (needs only NATS_URL).

    Watches KV ns/{ns}/current and installs each snapshot it names at PATH: downloaded from the Object Store,
    verified (size, sha256, integrity_check, snapshot id), installed atomically. Runs until SIGINT/SIGTERM;
    with --once installs the current snapshot and exits.
    """
    return _run(cmd_follow, **options)


@app.command("pull")
@namespace_option
@click.option("--to", required=True, metavar="PATH", help="the database file to install")
@click.option("--snapshot", metavar="SNAPSHOT_ID", help="a kept snapshot instead of current")
@delivery_options
def pull_command(**options: Any) -> int:
    """Install one snapshot (default: current) at PATH from the Object Store."""
    return _run(cmd_pull, once=True, exec_command=None, **options)


def _serve_command(name: str, what: str, *, admin: bool, nats: bool) -> None:
    @app.command(name, help=f"Serve {what} until stopped (SIGINT/SIGTERM).")
    def command() -> int:
        return _run(cmd_serve, admin=admin, nats=nats)


_serve_command("serve", "the admin HTTP endpoint and the NATS refresh command", admin=True, nats=True)
_serve_command("serve-admin", "the admin HTTP endpoint (POST /refresh, GET /status; KRYTEN_ADMIN_TOKEN)",
               admin=True, nats=False)
_serve_command("serve-nats", "the NATS command {prefix}.playlist.cmd.catalog_refresh (request/reply)",
               admin=False, nats=True)


@app.command("namespaces")
@click.argument("action", type=click.Choice(("list", "add")), required=False, default="list")
@click.argument("names", nargs=-1, metavar="[NS]...")
def namespaces_command(**options: Any) -> int:
    """List or add namespaces (Dagster partitions)."""
    options["names"] = list(options["names"])
    return _run(cmd_namespaces, **options)


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


def cmd_refresh(args: SimpleNamespace) -> int:
    if args.all_namespaces:
        return cmd_refresh_all(args)
    if args.source:
        os.environ[SPEC_BY_FIELD["source"].env] = args.source
    settings, namespace = _settings_and_namespace(args.namespace)
    instance = _open_project_instance(settings)

    from kryten_pipeline.dagster_defs.refresh_runs import ensure_namespace_registered, execute_refresh

    ensure_namespace_registered(instance, settings, namespace)
    _freeze_loaded()
    tags = {"kryten/trigger": "cli"}
    if args.allow_removals:
        tags["kryten/allow-removals"] = "true"
    display = progress_display(quiet=args.quiet)
    with display or contextlib.nullcontext():
        summary = execute_refresh(instance, namespace, tags=tags, progress=display)
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        _print_refresh_summary(summary)
    if not summary["success"]:
        print(f"error: {summary['error'] or 'refresh failed'}", file=sys.stderr)
        # A setting that cannot work (a missing export file, a bad URL) is a usage error, as outside a run.
        return EXIT_USAGE if summary.get("error_type") == "ConfigurationError" else EXIT_FAILED
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


# --- status, snapshots, rollback -------------------------------------------------------------------


def cmd_status(args: SimpleNamespace) -> int:
    settings, namespace = _settings_and_namespace(args.namespace)
    from kryten_pipeline.snapshot.status import read_snapshot_status

    try:
        payload = asyncio.run(read_snapshot_status(settings, namespace))
    except NatsUnavailableError as exc:
        # Not "inconsistent": nothing can be told without KV.
        print(f"error: cannot tell: {exc}", file=sys.stderr)
        return EXIT_CANNOT_TELL
    if args.json:
        print(json.dumps(payload, indent=2, ensure_ascii=False))
    else:
        current = payload["kv"]["current"] or {}
        sqlite = payload["sqlite"]
        print(f"namespace: {namespace}")
        print(f"kv current: {current.get('snapshot_id') or '-'} ({current.get('item_count', '-')} items, "
              f"revision {payload['kv']['revision'] or '-'})")
        count = sqlite["item_count"] if sqlite["item_count"] is not None else "-"
        print(f"sqlite: {sqlite['snapshot_id'] or '-'} ({count} items) at {sqlite['path']}")
        delivered = payload["object"]
        if delivered["name"]:
            state = f"{delivered['size_bytes']} bytes" if delivered["present"] else "MISSING"
            print(f"object: {delivered['name']} in bucket {delivered['bucket']} ({state})")
        print(f"consistent: {'yes' if payload['consistent'] else 'NO'}")
        for problem in payload["problems"]:
            print(f"  - {problem}")
    return EXIT_OK if payload["consistent"] else EXIT_FAILED


def cmd_snapshots(args: SimpleNamespace) -> int:
    settings, namespace = _settings_and_namespace(args.namespace)
    from kryten_pipeline.kv.store import snapshot_store
    from kryten_pipeline.snapshot.files import list_kept_snapshots, live_db_path, read_snapshot_meta

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


def cmd_rollback(args: SimpleNamespace) -> int:
    settings, namespace = _settings_and_namespace(args.namespace)
    from kryten_pipeline.snapshot.ids import is_snapshot_id
    from kryten_pipeline.snapshot.rollback import rollback_to

    if not is_snapshot_id(args.to):
        raise ConfigurationError(f"{args.to!r} is not a snapshot id (like 20251218T123456Z-7f3a9c)")
    outcome = asyncio.run(rollback_to(settings, namespace, args.to))
    if args.json:
        print(json.dumps(outcome, indent=2))
    else:
        print(f"namespace {namespace}: current is now {outcome['snapshot_id']} "
              f"(was {outcome['previous_current'] or 'none'}, revision {outcome['current_revision']})")
    return EXIT_OK


def cmd_diff(args: SimpleNamespace) -> int:
    settings, namespace = _settings_and_namespace(args.namespace)
    from kryten_pipeline.snapshot.diff import KINDS, diff_snapshot_files
    from kryten_pipeline.snapshot.files import kept_snapshot_path, list_kept_snapshots, live_db_path, read_snapshot_meta
    from kryten_pipeline.snapshot.ids import is_snapshot_id

    kept = list_kept_snapshots(settings.data_dir, namespace)
    live_id = (read_snapshot_meta(live_db_path(settings.data_dir, namespace)) or {}).get("snapshot_id")
    to_id = args.to_id or live_id
    if to_id is None:
        raise ConfigurationError(f"namespace {namespace!r} has no snapshot yet: run `kryten-pipeline refresh`")
    from_id = args.from_id or next((k for k in reversed(kept) if k < to_id), None)
    for name, value in (("--from", from_id), ("--to", to_id)):
        if value is not None and (not is_snapshot_id(value) or value not in kept):
            raise ConfigurationError(
                f"{name} {value}: no kept snapshot with that id (kept: {', '.join(kept) or 'none'})",
                setting="KRYTEN_KEEP_SNAPSHOTS",
            )
    old = kept_snapshot_path(settings.data_dir, namespace, from_id) if from_id else None
    result = diff_snapshot_files(old, kept_snapshot_path(settings.data_dir, namespace, to_id))
    if args.json:
        print(json.dumps(result.to_dict() | {"summary": result.summary()}, indent=2, ensure_ascii=False))
        return EXIT_OK
    print(f"{result.from_snapshot_id or '(none)'} → {result.to_snapshot_id}: {result.summary()}")
    for kind in KINDS:
        for sample in result.samples.get(kind, []):
            change = f"{sample.get('before')!s} → {sample.get('after')!s}" if "before" in sample else ""
            print(f"  {kind:<14} {sample['video_id']:<12} {sample['title'][:60]}  {change}".rstrip())
    return EXIT_OK


def cmd_search(args: SimpleNamespace) -> int:
    settings, namespace = _settings_and_namespace(args.namespace)
    from kryten_pipeline.snapshot.files import live_db_path
    from kryten_pipeline.snapshot.search import search_catalog

    live = live_db_path(settings.data_dir, namespace)
    if not live.exists():
        raise ConfigurationError(f"namespace {namespace!r} has no snapshot yet: run `kryten-pipeline refresh`")
    hits = search_catalog(live, args.query, categories=args.category, limit=args.limit)
    if args.json:
        print(json.dumps([hit.to_dict() for hit in hits], indent=2, ensure_ascii=False))
        return EXIT_OK
    if not hits:
        print("no match")
    for hit in hits:
        duration = _clock(hit.duration_seconds) if hit.duration_seconds else "-"
        print(f"{hit.video_id:<12} {duration:>7}  {hit.title}  [{', '.join(hit.categories)}]")
    return EXIT_OK


def _clock(seconds: int) -> str:
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def cmd_namespaces(args: SimpleNamespace) -> int:
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


# --- several namespaces, triggers -------------------------------------------------------------------


def cmd_refresh_all(args: SimpleNamespace) -> int:
    """``refresh --all-namespaces``: a backfill when a daemon runs, else each namespace in turn, here."""
    if args.namespace:
        raise ConfigurationError("use either --namespace or --all-namespaces")
    if args.source:
        os.environ[SPEC_BY_FIELD["source"].env] = args.source
    settings = Settings.from_env()
    instance = _open_project_instance(settings)
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
        backfill_id = submit_refresh_backfill(instance, namespaces, tags=tags)
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
    _freeze_loaded()
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


def cmd_pull(args: SimpleNamespace) -> int:
    return cmd_follow(args)


def cmd_follow(args: SimpleNamespace) -> int:
    """``follow`` (until stopped, or ``--once``) and ``pull``: snapshots from NATS installed at ``--to``."""
    settings, namespace = _settings_and_namespace(args.namespace)
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
        return _run_until_signal(follower.run(), lambda: log_line(
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


def _run_until_signal(coroutine: Any, on_stop: Any) -> int:
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
    instance = _open_project_instance(settings)
    settings = Settings.from_env()  # again: relative paths were made absolute before the chdir
    os.environ.setdefault("PYTHONWARNINGS", "ignore")  # the refresh processes: no preview notices either
    serve(settings, instance, admin=args.admin, nats=args.nats)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
