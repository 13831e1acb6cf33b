"""Maintenance jobs launched from the UI (Launchpad): ``prune_snapshots`` and ``rollback``.

Both are thin wiring over the core (``retention.apply_retention``, ``rollback.rollback_to``); each records
what it did as run metadata, and a rollback also shows on the asset timeline of ``sqlite_snapshot`` and
``kv_published`` for that namespace, since it changes which snapshot readers get.
"""

import asyncio

import dagster as dg

from kryten_pipeline.dagster_defs.checks import read_consistency
from kryten_pipeline.dagster_defs.partitions import registered_namespaces
from kryten_pipeline.dagster_defs.presentation import failure
from kryten_pipeline.dagster_defs.resources import NatsResource, PipelineResource, kryten_settings
from kryten_pipeline.errors import ConfigurationError, KrytenError
from kryten_pipeline.namespaces import validate_namespace
from kryten_pipeline.snapshot.files import namespace_lock
from kryten_pipeline.snapshot.ids import is_snapshot_id
from kryten_pipeline.snapshot.retention import apply_retention
from kryten_pipeline.snapshot.rollback import rollback_to

ROLLBACK_JOB_NAME = "rollback"
PRUNE_JOB_NAME = "prune_snapshots"
REFRESH_LOCK_TIMEOUT_S = 600


class PruneSnapshotsConfig(dg.Config):
    namespace: str = "default"
    keep: int | None = None  # default: KRYTEN_KEEP_SNAPSHOTS


class RollbackConfig(dg.Config):
    namespace: str = "default"
    snapshot_id: str


def _checked_namespace(context: dg.OpExecutionContext, namespace: str) -> str:
    try:
        validate_namespace(namespace)
    except KrytenError as exc:
        raise failure(exc, namespace=namespace) from None
    if namespace not in registered_namespaces(context.instance):
        error = ConfigurationError(
            f"namespace {namespace!r} is not registered; add it with `kryten-pipeline namespaces add {namespace}`",
            setting="KRYTEN_NAMESPACES",
        )
        raise failure(error, namespace=namespace)
    return namespace


@dg.op(
    description="Delete kept SQLite files, KV snapshots/ records and their Object Store objects beyond the newest "
    "`keep` (default KRYTEN_KEEP_SNAPSHOTS) of one namespace; never the current or the live one.",
)
def prune_namespace_snapshots(
    context: dg.OpExecutionContext, config: PruneSnapshotsConfig, pipeline: PipelineResource, nats: NatsResource
) -> dg.Output[dict]:
    namespace = _checked_namespace(context, config.namespace)
    settings = kryten_settings(pipeline, nats)
    try:
        # The refresh lock: no publish of this namespace runs while records are deleted.
        with namespace_lock(settings.data_dir, namespace, "refresh", timeout=REFRESH_LOCK_TIMEOUT_S):
            result = asyncio.run(apply_retention(settings, namespace, keep=config.keep))
    except (KrytenError, ValueError, TimeoutError) as exc:
        error = exc if isinstance(exc, KrytenError) else ConfigurationError(str(exc), setting="KRYTEN_KEEP_SNAPSHOTS")
        raise failure(error, namespace=namespace) from None
    context.log.info(
        f"namespace {namespace}: kept {', '.join(result.kept) or 'nothing'}; deleted records "
        f"{result.deleted_records or 'none'}, files {result.deleted_files or 'none'}, "
        f"objects {result.deleted_objects or 'none'}"
    )
    return dg.Output(
        result.to_dict(),
        metadata={
            "namespace": namespace,
            "keep": result.keep,
            "kept": dg.MetadataValue.json(result.kept),
            "deleted_records": dg.MetadataValue.json(result.deleted_records),
            "deleted_files": dg.MetadataValue.json(result.deleted_files),
            "deleted_objects": dg.MetadataValue.json(result.deleted_objects),
            "current": result.current or "none",
        },
    )


@dg.op(
    description="Swap a kept snapshot file back in as the live catalog.sqlite3 and move KV current to it by "
    "compare-and-set (holds the namespace's refresh lock). Then checks that current and the live file agree.",
)
def rollback_namespace(
    context: dg.OpExecutionContext, config: RollbackConfig, pipeline: PipelineResource, nats: NatsResource
) -> dg.Output[dict]:
    namespace = _checked_namespace(context, config.namespace)
    if not is_snapshot_id(config.snapshot_id):
        error = ConfigurationError(f"{config.snapshot_id!r} is not a snapshot id (like 20251218T123456Z-7f3a9c)")
        raise failure(error, namespace=namespace)
    settings = kryten_settings(pipeline, nats)
    try:
        outcome = asyncio.run(rollback_to(settings, namespace, config.snapshot_id))
        report = asyncio.run(read_consistency(settings, namespace))
    except KrytenError as exc:
        raise failure(exc, namespace=namespace, snapshot_id=config.snapshot_id) from None
    context.log.info(
        f"namespace {namespace}: current is now {outcome['snapshot_id']} (was {outcome['previous_current'] or 'none'}, "
        f"revision {outcome['current_revision']}); consistent: {report.consistent}"
    )
    metadata = {
        "namespace": namespace,
        "rollback_to": outcome["snapshot_id"],
        "previous_current": outcome["previous_current"] or "none",
        "current_revision": outcome["current_revision"],
        "consistent": report.consistent,
    }
    for asset in ("sqlite_snapshot", "kv_published"):
        context.log_event(dg.AssetMaterialization(
            asset_key=asset, partition=namespace, description=f"rollback to {outcome['snapshot_id']}",
            metadata={"snapshot_id": outcome["snapshot_id"], **metadata},
        ))
    if not report.consistent:
        raise dg.Failure(description="after the rollback KV current and the live file disagree: "
                         + "; ".join(report.problems), metadata=metadata)
    return dg.Output(outcome, metadata=metadata)


@dg.job(
    name=PRUNE_JOB_NAME,
    description="Retention for one namespace (op config: namespace, keep). Also applied after every publish.",
    tags={"kryten/kind": "maintenance"},
)
def prune_snapshots_job() -> None:
    prune_namespace_snapshots()


@dg.job(
    name=ROLLBACK_JOB_NAME,
    description="Make a kept snapshot live again (op config: namespace, snapshot_id); "
    "`kryten-pipeline snapshots` lists the kept ones.",
    tags={"kryten/kind": "maintenance"},
)
def rollback_job() -> None:
    rollback_namespace()
