"""The command line (click): commands, options and the exit codes ``main`` returns.

The commands' work is in ``refresh``, ``inspect`` and ``agents`` beside this module; each imports what it needs
(Dagster, NATS) only when it runs, so ``--help`` and the fast commands start quickly.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

import click

from kryten_pipeline import __version__
from kryten_pipeline.cli.agents import cmd_follow, cmd_pull, cmd_serve
from kryten_pipeline.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, ProcessRole
from kryten_pipeline.cli.inspect import (
    cmd_config,
    cmd_diff,
    cmd_namespaces,
    cmd_rollback,
    cmd_search,
    cmd_snapshots,
    cmd_status,
)
from kryten_pipeline.cli.refresh import cmd_refresh
from kryten_pipeline.errors import ConfigurationError, KrytenError
from kryten_pipeline.gc_tuning import freeze_survivors
from kryten_pipeline.settings import SOURCES, load_dotenv_file


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit code. ``argv=None`` reads the process's own command line."""
    warnings.filterwarnings("ignore")  # Dagster preview/beta notices are not for operators
    ProcessRole.own_process = argv is None
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
        if ProcessRole.own_process:
            # The process exits next: the interpreter's final collections would walk every object once more.
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


@app.command("config")
@json_option
def config_command(**options: Any) -> int:
    """Check every setting; show its value and where it comes from.

    FROM is environment, .env or default. Secrets show only whether they are set. Exit 2, naming the variable,
    when a value is invalid.
    """
    return _run(cmd_config, **options)
