"""Jobs: the refresh itself, and the drift check alone (for schedules)."""

from __future__ import annotations

import dagster as dg

from kryten_pipeline.dagster_defs.assets import kv_published, raw_catalog, sqlite_snapshot, validated_items
from kryten_pipeline.dagster_defs.checks import DRIFT_JOB_NAME, kv_current_matches_sqlite
from kryten_pipeline.dagster_defs.partitions import namespace_partitions

REFRESH_JOB_NAME = "refresh_catalog"

refresh_job = dg.define_asset_job(
    REFRESH_JOB_NAME,
    selection=dg.AssetSelection.assets(raw_catalog, validated_items, sqlite_snapshot, kv_published),
    description="Read the catalog source, validate, build and swap the SQLite snapshot, publish it in NATS KV.",
    tags={"kryten/kind": "refresh"},
)

drift_check_job = dg.define_asset_job(
    DRIFT_JOB_NAME,
    selection=dg.AssetSelection.checks(kv_current_matches_sqlite),
    # A checks-only selection has no asset to infer the partitioning from, and Dagster 1.13 drops a
    # `partitions_def=` given here for such a selection (the job resolves unpartitioned, and every scheduled
    # run request with a partition fails). A partitioned config carries the partitions into the job.
    config=dg.PartitionedConfig(partitions_def=namespace_partitions, run_config_for_partition_key_fn=lambda _: {}),
    description="Only compare KV current with the live SQLite file (catches drift behind the pipeline's back).",
    tags={"kryten/kind": "drift-check"},
)
