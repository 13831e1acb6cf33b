"""Refreshing several namespaces at once (``kryten-pipeline refresh --all-namespaces``).

With a Dagster daemon running for the instance (``dagster dev`` runs one), the CLI submits an asset
backfill over the namespace partitions — exactly what the UI's "Materialize → backfill" does, through the
same GraphQL mutation, run by Dagster's own ``dagster-graphql`` command against the code location (no
webserver needed); the daemon launches one run per namespace through the run queue (at most one per
namespace at a time). Without a daemon nobody would pick a backfill up, so the namespaces are refreshed one
after another in this process instead, each run tagged with a shared ``kryten/batch`` id.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg

from kryten_pipeline.dagster_defs.refresh_runs import execute_refresh
from kryten_pipeline.errors import ConfigurationError, KrytenError

BACKFILL_DAEMON = "BACKFILL"
QUEUE_DAEMON = "QUEUED_RUN_COORDINATOR"
BATCH_TAG = "kryten/batch"
REFRESH_ASSETS = ("raw_catalog", "validated_items", "sqlite_snapshot", "kv_published")


def backfill_daemon_running(instance: dg.DagsterInstance) -> bool:
    """A daemon heartbeats for this instance: the backfill daemon (and the run queue's, if it has one)."""
    required = set(instance.get_required_daemon_types())
    wanted = [d for d in (BACKFILL_DAEMON, QUEUE_DAEMON) if d in required]
    if BACKFILL_DAEMON not in wanted:
        return False  # an ephemeral instance has no daemon
    statuses = instance.get_daemon_statuses(wanted)
    return all(statuses[d].healthy for d in wanted)


LAUNCH_BACKFILL = """
mutation LaunchRefreshBackfill($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on Error { message }
  }
}
"""
CODE_LOCATION = ("-m", "kryten_pipeline.definitions")  # the module workspace.yaml loads
SUBMIT_TIMEOUT_S = 300.0


class BackfillSubmitError(KrytenError):
    """Dagster refused the backfill, or the command submitting it failed."""


def submit_refresh_backfill(namespaces: list[str], *, tags: dict[str, str], dagster_home: Path) -> str:
    """Submit an asset backfill of the refresh assets over ``namespaces`` to the instance at ``dagster_home``;
    the daemon runs it. Returns its id."""
    variables = {"params": {
        "assetSelection": [{"path": [name]} for name in REFRESH_ASSETS],
        "partitionNames": list(namespaces),
        "tags": [{"key": key, "value": value} for key, value in tags.items()],
        "title": f"refresh {len(namespaces)} namespaces",
        "description": "kryten-pipeline refresh --all-namespaces",
    }}
    command = shutil.which("dagster-graphql", path=str(Path(sys.executable).parent)) or shutil.which("dagster-graphql")
    if command is None:
        raise ConfigurationError("the dagster-graphql command is not installed (it comes with dagster-webserver); "
                                 "reinstall kryten-pipeline, or refresh here with --in-process")
    with tempfile.TemporaryDirectory(prefix="kryten-backfill-") as scratch:
        output = Path(scratch) / "result.json"
        try:
            finished = subprocess.run(
                [command, *CODE_LOCATION, "-t", LAUNCH_BACKFILL, "-v", json.dumps(variables), "-o", str(output)],
                env={**os.environ, "DAGSTER_HOME": str(dagster_home)}, capture_output=True, text=True,
                timeout=SUBMIT_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            raise BackfillSubmitError(f"submitting the backfill took over {SUBMIT_TIMEOUT_S:.0f} s") from None
        result = json.loads(output.read_text(encoding="utf-8")) if output.exists() else None
    if finished.returncode != 0 or result is None:
        detail = (finished.stderr.strip().splitlines() or ["no output"])[-1]
        raise BackfillSubmitError(f"dagster-graphql could not submit the backfill (exit {finished.returncode}): "
                                  f"{detail}")
    launched = (result.get("data") or {}).get("launchPartitionBackfill") or {}
    if launched.get("__typename") != "LaunchBackfillSuccess":
        errors = "; ".join(str(error.get("message")) for error in result.get("errors") or [])
        raise BackfillSubmitError(f"Dagster refused the backfill: {launched.get('message') or errors or result}")
    return str(launched["backfillId"])


def refresh_in_sequence(
    instance: dg.DagsterInstance, namespaces: list[str], *, tags: dict[str, str],
    progress: Callable[[str, str], None] | None = None, definitions: dg.Definitions | None = None,
) -> list[dict[str, Any]]:
    """Refresh each namespace in this process, one after another; a failure does not stop the others."""
    summaries = []
    for namespace in namespaces:
        sink = None if progress is None else (lambda line, ns=namespace: progress(ns, line))
        summaries.append(execute_refresh(instance, namespace, tags=tags, progress=sink, definitions=definitions))
    return summaries
