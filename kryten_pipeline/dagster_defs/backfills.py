"""Refreshing several namespaces at once (``kryten-pipeline refresh --all-namespaces``).

With a Dagster daemon running for the instance (``dagster dev`` runs one), the CLI submits an asset
backfill over the namespace partitions — exactly what the UI's "Materialize → backfill" does; the
daemon launches one run per namespace through the run queue (at most one per namespace at a time).
Without a daemon nobody would pick a backfill up, so the namespaces are refreshed one after another
in this process instead, each run tagged with a shared ``kryten/batch`` id.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import dagster as dg

from kryten_pipeline.dagster_defs.refresh_runs import execute_refresh

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


def submit_refresh_backfill(
    instance: dg.DagsterInstance, namespaces: list[str], *, tags: dict[str, str],
    definitions: dg.Definitions | None = None,
) -> str:
    """Record an asset backfill of the refresh assets over ``namespaces``; the daemon runs it. Returns its id."""
    from dagster._core.execution.backfill import PartitionBackfill
    from dagster._core.utils import make_new_backfill_id

    if definitions is None:
        from kryten_pipeline.definitions import defs as definitions

    backfill = PartitionBackfill.from_asset_partitions(
        backfill_id=make_new_backfill_id(),
        asset_graph=definitions.resolve_asset_graph(),
        partition_names=list(namespaces),
        asset_selection=[dg.AssetKey(name) for name in REFRESH_ASSETS],
        backfill_timestamp=time.time(),
        tags=dict(tags),
        dynamic_partitions_store=instance,
        all_partitions=False,
        title=f"refresh {len(namespaces)} namespaces",
        description="kryten-pipeline refresh --all-namespaces",
        run_config=None,
    )
    instance.add_backfill(backfill)
    return backfill.backfill_id


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
