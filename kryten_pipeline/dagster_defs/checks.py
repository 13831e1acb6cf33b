"""``kv_current_matches_sqlite``: reads KV and the live SQLite file directly, never the IO manager, so it can
also run alone on a schedule to catch drift."""


import asyncio
from typing import Any

import dagster as dg

from kryten_pipeline.consistency import ConsistencyReport, compare_current_with_sqlite
from kryten_pipeline.dagster_defs.assets import kv_published
from kryten_pipeline.dagster_defs.partitions import namespace_partitions
from kryten_pipeline.dagster_defs.presentation import failure
from kryten_pipeline.dagster_defs.resources import NatsResource, PipelineResource, kryten_settings
from kryten_pipeline.errors import KrytenError
from kryten_pipeline.kv_store import snapshot_store
from kryten_pipeline.settings import Settings


async def read_consistency(settings: Settings, namespace: str) -> ConsistencyReport:
    async with snapshot_store(settings) as store:
        entry = await store.read_current(namespace)
    value = entry.value if entry else None
    revision = entry.revision if entry else None
    return compare_current_with_sqlite(namespace, settings.data_dir, value, revision)


@dg.asset_check(
    asset=kv_published,
    partitions_def=namespace_partitions,
    description="KV ns/{ns}/current .snapshot_id and .item_count equal the live SQLite file's (and its sha256).",
)
def kv_current_matches_sqlite(
    context: dg.AssetCheckExecutionContext, pipeline: PipelineResource, nats: NatsResource
) -> dg.AssetCheckResult:
    namespace = context.partition_key
    settings = kryten_settings(pipeline, nats)
    try:
        report = asyncio.run(read_consistency(settings, namespace))
    except KrytenError as exc:
        raise failure(exc, namespace=namespace) from exc
    current: dict[str, Any] = report.kv_current or {}
    return dg.AssetCheckResult(
        passed=report.consistent,
        severity=dg.AssetCheckSeverity.ERROR,
        description="consistent" if report.consistent else "; ".join(report.problems),
        metadata={
            "kv_snapshot_id": str(current.get("snapshot_id")),
            "kv_item_count": current.get("item_count", -1),
            "kv_revision": report.kv_revision or 0,
            "sqlite_snapshot_id": str(report.sqlite_snapshot_id),
            "sqlite_item_count": report.sqlite_item_count if report.sqlite_item_count is not None else -1,
            "sqlite_path": dg.MetadataValue.path(report.sqlite_path),
        },
    )
