"""The Dagster code location: ``workspace.yaml`` and ``dagster -m kryten_pipeline.definitions`` load ``defs``."""

from __future__ import annotations

import dagster as dg

from kryten_pipeline.dagster_defs.assets import kv_published, raw_catalog, sqlite_snapshot, validated_items
from kryten_pipeline.dagster_defs.checks import kv_current_matches_sqlite
from kryten_pipeline.dagster_defs.jobs import drift_check_job, refresh_job
from kryten_pipeline.dagster_defs.maintenance import prune_snapshots_job, rollback_job
from kryten_pipeline.dagster_defs.resources import configured_resources
from kryten_pipeline.dagster_defs.schedules import automation_schedules
from kryten_pipeline.dagster_defs.sensors import (
    catalog_events_ack,
    catalog_updated_events,
    dead_run_repair,
    namespace_registry,
)


def build_definitions() -> dg.Definitions:
    return dg.Definitions(
        assets=[raw_catalog, validated_items, sqlite_snapshot, kv_published],
        asset_checks=[kv_current_matches_sqlite],
        jobs=[refresh_job, drift_check_job, prune_snapshots_job, rollback_job],
        schedules=automation_schedules(),
        sensors=[namespace_registry, dead_run_repair, catalog_updated_events, catalog_events_ack],
        resources=configured_resources(),
        # The steps run one after another anyway; one process keeps the namespace refresh lock (held by
        # the pipeline resource) for the whole run and avoids a process start per step.
        executor=dg.in_process_executor,
    )


defs = build_definitions()
