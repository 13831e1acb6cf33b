"""The Dagster code location: ``workspace.yaml`` and ``dagster -m kryten_pipeline.definitions`` load ``defs``."""

from __future__ import annotations

import dagster as dg

from kryten_pipeline.dagster_defs.asset_metadata import freshness_policy, with_code_references
from kryten_pipeline.dagster_defs.assets import kv_published, raw_catalog, sqlite_snapshot, validated_items
from kryten_pipeline.dagster_defs.checks import kv_current_matches_sqlite
from kryten_pipeline.dagster_defs.jobs import drift_check_job, refresh_job
from kryten_pipeline.dagster_defs.maintenance import prune_snapshots_job, rollback_job
from kryten_pipeline.dagster_defs.resources import configured_resources
from kryten_pipeline.dagster_defs.schedules import automation_schedules, schedule_settings
from kryten_pipeline.dagster_defs.sensors import (
    build_catalog_event_sensors,
    dead_run_repair,
    namespace_registry,
    redis_configured,
)


def catalog_assets() -> list[dg.AssetsDefinition]:
    """The four assets as the UI shows them: linked to their source, the published snapshot with a freshness
    policy that follows the refresh schedule."""
    settings = schedule_settings()
    fresh = freshness_policy(settings.refresh_cron, settings.refresh_timezone)
    assets = dg.map_asset_specs(
        lambda spec: spec.replace_attributes(freshness_policy=fresh) if spec.key == kv_published.key else spec,
        [raw_catalog, validated_items, sqlite_snapshot, kv_published],
    )
    return list(with_code_references(assets, git_url=settings.code_git_url, git_branch=settings.code_git_branch))


def build_definitions() -> dg.Definitions:
    return dg.Definitions(
        assets=catalog_assets(),
        asset_checks=[kv_current_matches_sqlite],
        jobs=[refresh_job, drift_check_job, prune_snapshots_job, rollback_job],
        schedules=automation_schedules(),
        sensors=[namespace_registry, dead_run_repair, *build_catalog_event_sensors(redis_configured())],
        resources=configured_resources(),
        # The steps run one after another anyway; one process keeps the namespace refresh lock (held by
        # the pipeline resource) for the whole run and avoids a process start per step.
        executor=dg.in_process_executor,
    )


defs = build_definitions()
