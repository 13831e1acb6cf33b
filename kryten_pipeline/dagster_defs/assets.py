"""The four assets of DESIGN §1: raw_catalog → validated_items → sqlite_snapshot → kv_published.

Each asset function is the step as the UI shows it (its code reference points here): what it reads, what it
yields and the metadata of its materialization. What they are (descriptions, types, config) is in
``asset_types``; the work they delegate (NATS round trips, rejects, diff tables) in ``asset_steps``.
"""

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import dagster as dg

from kryten_pipeline import __version__
from kryten_pipeline.connectors import make_connector
from kryten_pipeline.dagster_defs.asset_metadata import (
    COLUMN_SCHEMA_KEY,
    SNAPSHOT_TABLE,
    TABLE_NAME_KEY,
    snapshot_column_schema,
    sqlite_table_metadata,
    validated_column_schema,
)
from kryten_pipeline.dagster_defs.asset_steps import (
    RowStager,
    collect,
    current_if_it_names,
    diff_table_metadata,
    preview,
    progress_logger,
    publish,
    reconcile,
    retain_and_report,
    store_file,
    threshold_setting,
    write_rejects,
)
from kryten_pipeline.dagster_defs.asset_types import (
    ALLOW_REMOVALS_TAG,
    GROUP,
    KV_PUBLISHED_DESCRIPTION,
    OWNERS,
    RAW_CATALOG_DESCRIPTION,
    SQLITE_SNAPSHOT_DESCRIPTION,
    VALIDATED_ITEMS_DESCRIPTION,
    VALIDATED_ITEMS_TYPE,
    RawCatalog,
    SnapshotConfig,
    ValidatedItems,
)
from kryten_pipeline.dagster_defs.partitions import namespace_partitions
from kryten_pipeline.dagster_defs.presentation import failure, markdown_table, scalar_metadata
from kryten_pipeline.dagster_defs.resources import (
    CatalogSourceResource,
    NatsResource,
    PipelineResource,
    kryten_settings,
)
from kryten_pipeline.errors import KrytenError, SnapshotBuildError, StaleSnapshotError, ValidationThresholdError
from kryten_pipeline.fault_points import fault_point
from kryten_pipeline.gc_tuning import bulk_work
from kryten_pipeline.kv.object_store import object_name
from kryten_pipeline.kv.store import (
    PublishResult,
    current_key,
    snapshot_key,
    snapshot_value,
)
from kryten_pipeline.manifest import manifest_base_from
from kryten_pipeline.snapshot.build import build_snapshot_db
from kryten_pipeline.snapshot.files import install_snapshot, kept_snapshot_path, live_db_path, read_snapshot_meta
from kryten_pipeline.snapshot.ids import iso_utc, new_snapshot_id
from kryten_pipeline.staging import BatchWriter, StagingError, staging_path
from kryten_pipeline.validation import check_thresholds, validate_batches

# Connector stats that repeat a figure raw_catalog already shows (row count, rejects, time, rate).
_STATS_SHOWN_ABOVE = frozenset({"items", "records", "source_rejects", "wall_time_s", "items_per_s"})


@dg.asset(
    partitions_def=namespace_partitions,
    group_name=GROUP,
    owners=OWNERS,
    kinds={"python"},
    description=RAW_CATALOG_DESCRIPTION,
)
def raw_catalog(
    context: dg.AssetExecutionContext, pipeline: PipelineResource, catalog_source: CatalogSourceResource,
    nats: NatsResource,
) -> dg.Output[RawCatalog]:
    namespace = context.partition_key
    step_started = time.perf_counter()
    fault_point("step.raw_catalog.start")
    try:
        settings = kryten_settings(pipeline, catalog_source, nats)
        connector = make_connector(settings, namespace=namespace, progress=progress_logger(context))
        # Under the refresh lock: undo what a killed refresh or rollback left half done
        # (kryten_pipeline.snapshot.recovery); this also fails the run early, before any build, when NATS cannot be
        # reached.
        recovery = asyncio.run(reconcile(settings, namespace))
        if recovery.action != "none":
            context.log.warning(f"recovery: {recovery.detail}")
        context.log.info(f"reading catalog of namespace {namespace!r} from {connector.label}")
        started = time.perf_counter()
        with bulk_work():
            staged = asyncio.run(collect(connector, staging_path(context.instance.storage_directory(),
                                                                  "raw_catalog", namespace)))
    except KrytenError as exc:
        raise failure(exc, namespace=namespace) from None
    elapsed = time.perf_counter() - started
    fault_point("fetch.done")
    raw = RawCatalog(namespace, connector.label, staged, list(connector.source_rejects), dict(connector.stats))
    records = raw.item_count + len(raw.source_rejects)
    metadata: dict[str, Any] = {
        "dagster/row_count": raw.item_count,
        "namespace": namespace,
        "source": connector.label,
        "source_rejects": len(raw.source_rejects),
        "wall_time_s": round(time.perf_counter() - step_started, 3),
        "timing.read_s": round(elapsed, 3),
        "items_per_s": round(records / elapsed, 1) if elapsed > 0 else 0.0,
        "recovery": recovery.detail or recovery.action,
        "staged_items": dg.MetadataValue.path(str(staged.path)),
        "staged_batches": staged.batches,
        # The connector's own figures, without those the lines above already give.
        **scalar_metadata({k: v for k, v in raw.stats.items() if k not in _STATS_SHOWN_ABOVE}, prefix="source."),
    }
    if recovery.removed_temp_files:
        metadata["removed_temp_files"] = dg.MetadataValue.json(recovery.removed_temp_files)
    context.log.info(
        f"read {raw.item_count} items ({len(raw.source_rejects)} unreadable records) in {elapsed:.2f} s"
    )
    return dg.Output(raw, metadata=metadata)


@dg.asset(
    partitions_def=namespace_partitions,
    group_name=GROUP,
    owners=OWNERS,
    kinds={"pandas", "pandera"},
    dagster_type=VALIDATED_ITEMS_TYPE,
    description=VALIDATED_ITEMS_DESCRIPTION,
    metadata={COLUMN_SCHEMA_KEY: validated_column_schema()},
    check_specs=[
        dg.AssetCheckSpec(
            "schema_and_reject_ratio",
            asset="validated_items",
            blocking=True,
            partitions_def=namespace_partitions,
            description="Schema held; rejected rows ≤ KRYTEN_MAX_REJECT_RATIO; item count not collapsed "
            "below KRYTEN_MIN_COUNT_RATIO of the live snapshot.",
        )
    ],
)
def validated_items(
    context: dg.AssetExecutionContext,
    raw_catalog: RawCatalog,
    pipeline: PipelineResource,
    catalog_source: CatalogSourceResource,
) -> Any:
    namespace = context.partition_key
    step_started = time.perf_counter()
    fault_point("step.validated_items.start")
    try:
        settings = kryten_settings(pipeline, catalog_source)
        manifest_base = manifest_base_from(settings.mediacms_url, settings.manifest_base_url)
    except KrytenError as exc:
        raise failure(exc, namespace=namespace) from None
    started = time.perf_counter()
    try:
        with bulk_work(), BatchWriter(staging_path(context.instance.storage_directory(), "validated_items",
                                                   namespace)) as writer:
            stager = RowStager(writer)
            result = validate_batches(raw_catalog.batches(), stager, manifest_base=manifest_base,
                                      source_rejects=raw_catalog.source_rejects,
                                      require_https_thumbnails=settings.require_https_thumbnails)
    except KrytenError as exc:
        raise failure(exc, namespace=namespace) from None
    assert writer.staged is not None
    elapsed = time.perf_counter() - started
    live_meta = read_snapshot_meta(live_db_path(settings.data_dir, namespace))
    live_count = int(live_meta["item_count"]) if live_meta and live_meta.get("item_count") else None
    report = check_thresholds(result, live_item_count=live_count, max_reject_ratio=settings.max_reject_ratio,
                              min_count_ratio=settings.min_count_ratio)
    rejects_path = write_rejects(settings, namespace, context.run_id, result.rejects)

    validated = ValidatedItems(
        source=raw_catalog.source, rows=writer.staged, validated_rows=result.accepted_count,
        rejected_count=result.rejected_count, total=result.total, top_categories=stager.categories.most_common(10),
    )
    top = result.top_reasons(10)
    metadata: dict[str, Any] = {
        "dagster/row_count": result.accepted_count,
        "rejected_count": result.rejected_count,
        "total_read": result.total,
        "reject_ratio": round(result.reject_ratio, 5),
        "timing.validate_s": round(elapsed, 3),
        "top_reject_reasons": dg.MetadataValue.md(markdown_table(["reason", "rows"], top) if top else "none"),
        "thumbnails_dropped": sum(result.dropped.values()),
        "dropped_values": dg.MetadataValue.md(
            markdown_table(["dropped (row kept)", "rows"], result.dropped.most_common()) if result.dropped else "none"),
        "preview": dg.MetadataValue.md(preview(result.head) if result.head is not None else "no valid items"),
        "staged_rows": dg.MetadataValue.path(str(writer.staged.path)),
    }
    if rejects_path:
        metadata["rejects_file"] = dg.MetadataValue.path(str(rejects_path.resolve()))
    metadata["wall_time_s"] = round(time.perf_counter() - step_started, 3)
    dropped = sum(result.dropped.values())
    context.log.info(
        f"{result.accepted_count} valid, {result.rejected_count} rejected of {result.total} "
        f"({result.reject_ratio:.2%}) in {elapsed:.2f} s"
        + (f"; {dropped} bad thumbnails dropped ({', '.join(f'{k} ×{v}' for k, v in result.dropped.items())})"
           if dropped else "")
    )
    fault_point("validate.done")
    yield dg.Output(validated, metadata=metadata)
    yield dg.AssetCheckResult(
        check_name="schema_and_reject_ratio",
        passed=report.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(report.problems) if report.problems else "schema held; thresholds respected",
        metadata={
            "reject_ratio": round(report.reject_ratio, 5),
            "max_reject_ratio": report.max_reject_ratio,
            "item_count": report.item_count,
            "live_item_count": report.live_item_count if report.live_item_count is not None else -1,
            "min_count_ratio": report.min_count_ratio,
            "problems": dg.MetadataValue.json(report.problems),
        },
    )
    if not report.passed:
        # The check is blocking: failing the step here, with the check's reasons, puts them in the run's failure
        # message (Dagster's own blocking-check error only says that a check failed).
        raise failure(
            ValidationThresholdError(f"check schema_and_reject_ratio failed: {'; '.join(report.problems)}",
                                     setting=threshold_setting(report.problems)),
            namespace=namespace,
        )


@dg.asset(
    partitions_def=namespace_partitions,
    group_name=GROUP,
    owners=OWNERS,
    kinds={"sqlite", "nats"},
    description=SQLITE_SNAPSHOT_DESCRIPTION,
    metadata={TABLE_NAME_KEY: SNAPSHOT_TABLE, COLUMN_SCHEMA_KEY: snapshot_column_schema()},
    check_specs=[
        dg.AssetCheckSpec(
            "sqlite_integrity",
            asset="sqlite_snapshot",
            blocking=True,
            partitions_def=namespace_partitions,
            description="PRAGMA integrity_check ok, FTS row count = item count, snapshot_meta complete; "
            "checked on the new file before it is swapped in.",
        ),
        dg.AssetCheckSpec(
            "removal_guard",
            asset="sqlite_snapshot",
            blocking=True,
            partitions_def=namespace_partitions,
            description="The refresh removes at most KRYTEN_MAX_REMOVED_RATIO of the live catalog (unless the run "
            "is tagged kryten/allow-removals=true); the diff is in the metadata.",
        ),
    ],
)
def sqlite_snapshot(
    context: dg.AssetExecutionContext, config: SnapshotConfig, validated_items: ValidatedItems,
    pipeline: PipelineResource, nats: NatsResource,
) -> Any:
    namespace = context.partition_key
    step_started = time.perf_counter()
    fault_point("step.sqlite_snapshot.start")
    settings = kryten_settings(pipeline, nats)
    now = datetime.now(UTC)
    live_meta = read_snapshot_meta(live_db_path(settings.data_dir, namespace))
    snapshot_id = new_snapshot_id(now, after=live_meta.get("snapshot_id") if live_meta else None)
    source = validated_items.source
    rejected = validated_items.rejected_count
    try:
        with bulk_work():
            built = build_snapshot_db(
                validated_items.iter_rows(),
                data_dir=settings.data_dir,
                namespace=namespace,
                snapshot_id=snapshot_id,
                created_at=iso_utc(now),
                source=source,
                extra_meta={
                    "rejected_count": rejected,
                    "run_id": context.run_id,
                    "generator": f"kryten-pipeline {__version__}",
                },
                compare_with=live_db_path(settings.data_dir, namespace),
            )
    except StagingError as exc:
        raise failure(exc, namespace=namespace) from None
    except SnapshotBuildError as exc:
        yield dg.AssetCheckResult(check_name="sqlite_integrity", passed=False, description=str(exc))
        yield dg.AssetCheckResult(check_name="removal_guard", passed=False, description="not evaluated: build failed")
        raise failure(exc, namespace=namespace) from None
    # The passing check results are yielded after the output they judge, so that each names this run's
    # materialization as its target; a failing one is yielded before the step fails.
    judged = [dg.AssetCheckResult(
        check_name="sqlite_integrity",
        passed=True,
        description="integrity_check ok; FTS rows = items; snapshot_meta complete",
        metadata={"item_count": built.item_count, "snapshot_id": built.snapshot_id},
    )]
    diff = built.diff
    allowed_by = "config allow_removals" if config.allow_removals else f"tag {ALLOW_REMOVALS_TAG}"
    allowed = config.allow_removals or context.run.tags.get(ALLOW_REMOVALS_TAG, "").lower() in ("1", "true", "yes")
    removed_ratio = diff.removed_ratio if diff else 0.0
    guard_ok = removed_ratio <= settings.max_removed_ratio or allowed
    diff_metadata = diff_table_metadata(diff)
    guard_description = (
        f"{diff.summary() if diff else 'no previous snapshot'}; removed {removed_ratio:.1%} of the live catalog "
        f"(limit {settings.max_removed_ratio:.0%}, KRYTEN_MAX_REMOVED_RATIO"
        + (f"; allowed by this run ({allowed_by})" if allowed and removed_ratio > settings.max_removed_ratio else "")
        + ")"
    )
    judged.append(dg.AssetCheckResult(
        check_name="removal_guard", passed=guard_ok, severity=dg.AssetCheckSeverity.ERROR,
        description=guard_description, metadata=diff_metadata,
    ))
    if not guard_ok:
        yield from judged
        built.path.unlink(missing_ok=True)
        raise failure(
            ValidationThresholdError(
                f"the refresh would remove {diff.counts['removed']} of {diff.from_count} items "
                f"({removed_ratio:.1%} > {settings.max_removed_ratio:.0%}); not swapped in. If this is intended, "
                f"run again with --allow-removals (launchpad: sqlite_snapshot config allow_removals: true; "
                f"run tag {ALLOW_REMOVALS_TAG}=true)",
                setting="KRYTEN_MAX_REMOVED_RATIO",
            ),
            namespace=namespace,
        )
    info = {
        "namespace": namespace,
        "snapshot_id": built.snapshot_id,
        "created_at": built.created_at,
        "source": source,
        "item_count": built.item_count,
        "category_count": built.category_count,
        "rejected_count": rejected,
        "sqlite_path": str(live_db_path(settings.data_dir, namespace).resolve()),
        "snapshot_file": str(kept_snapshot_path(settings.data_dir, namespace, built.snapshot_id).resolve()),
        "sqlite_sha256": built.sha256,
        "size_bytes": built.size_bytes,
        "object_bucket": settings.object_bucket,
        "object_name": object_name(namespace, built.snapshot_id),
        "previous_snapshot_id": None,
        "diff": dict(diff.counts) if diff else None,
        "diff_summary": diff.summary() if diff else None,
    }
    # The file goes into the Object Store before it is swapped in (and so before KV can name it), and the KV
    # value is checked against the bucket's limits: a failure here leaves the live file and current as they were.
    t0 = time.perf_counter()
    try:
        stored = asyncio.run(store_file(settings, built, snapshot_value(info, run_id=context.run_id)))
    except KrytenError as exc:
        yield from judged
        built.path.unlink(missing_ok=True)
        raise failure(exc, namespace=namespace) from None
    put_s = time.perf_counter() - t0
    context.log.info(f"stored {built.size_bytes} bytes as object {stored.name} of bucket {stored.bucket} "
                     f"in {put_s:.2f} s")
    try:
        installed = install_snapshot(built, data_dir=settings.data_dir, keep=settings.keep_snapshots)
    except (StaleSnapshotError, OSError) as exc:
        yield from judged
        error = exc if isinstance(exc, KrytenError) else SnapshotBuildError(f"swap failed: {exc}")
        raise failure(error, namespace=namespace) from None
    fault_point("step.sqlite_snapshot.swapped")
    context.log.info(
        f"snapshot {built.snapshot_id}: {built.item_count} items, {built.category_count} categories, "
        f"swapped in at {installed.live_path} (previous: {installed.previous_snapshot_id or 'none'})"
    )
    top_categories = validated_items.top_categories
    info["previous_snapshot_id"] = installed.previous_snapshot_id
    yield dg.Output(
        info,
        metadata={
            "dagster/row_count": built.item_count,
            "snapshot_id": built.snapshot_id,
            "sqlite_path": dg.MetadataValue.path(info["sqlite_path"]),
            "snapshot_file": dg.MetadataValue.path(info["snapshot_file"]),
            "sha256": built.sha256,
            "size_bytes": built.size_bytes,
            "object_bucket": stored.bucket,
            "object_name": stored.name,
            "object_chunks": stored.chunks,
            "timing.object_put_s": round(put_s, 3),
            "object_put_mb_per_s": round(built.size_bytes / 1e6 / put_s, 1) if put_s > 0 else 0.0,
            "category_count": built.category_count,
            "category_memberships": built.membership_count,
            "previous_snapshot_id": installed.previous_snapshot_id or "none",
            "pruned_snapshots": dg.MetadataValue.json(installed.pruned),
            "top_categories": dg.MetadataValue.md(
                markdown_table(["category", "items"], top_categories) if top_categories else "none"
            ),
            **diff_metadata,
            **{f"timing.{k}": v for k, v in built.timings.items()},
            **sqlite_table_metadata(installed.live_path),
            "wall_time_s": round(time.perf_counter() - step_started, 3),
        },
    )
    yield from judged


@dg.asset(
    partitions_def=namespace_partitions,
    group_name=GROUP,
    owners=OWNERS,
    kinds={"nats"},
    description=KV_PUBLISHED_DESCRIPTION,
)
def kv_published(
    context: dg.AssetExecutionContext, sqlite_snapshot: dict[str, Any], pipeline: PipelineResource,
    nats: NatsResource,
) -> dg.Output[dict[str, Any]]:
    namespace = context.partition_key
    step_started = time.perf_counter()
    fault_point("step.kv_published.start")
    settings = kryten_settings(pipeline, nats)
    value = snapshot_value(sqlite_snapshot, run_id=context.run_id)
    try:
        result = asyncio.run(publish(settings, namespace, value))
    except KrytenError as exc:
        moved = current_if_it_names(settings, namespace, value["snapshot_id"])
        if moved is None:
            # The live file stays: readers already have it and it passed every check before its swap, so going
            # back would show them ids going backwards. The next refresh's recovery records it and moves current.
            note = (f"; the live file keeps {value['snapshot_id']} (it passed every check): the next refresh records "
                    f"it and moves current forward to it")
            raise failure(type(exc)(f"{exc}{note}", setting=exc.setting), namespace=namespace,
                          live_snapshot_id=value["snapshot_id"]) from None
        # The compare-and-set went through but its answer was lost: current names the live file, as it must.
        context.log.warning(f"publish reported an error, yet current names {value['snapshot_id']}: {exc}")
        result = PublishResult(snapshot_key(namespace, value["snapshot_id"]), 0, moved.revision,
                               sqlite_snapshot.get("previous_snapshot_id"))
    context.log.info(
        f"published {value['snapshot_id']} as {current_key(namespace)} (revision {result.current_revision}); "
        f"previous current: {result.previous_snapshot_id or 'none'}"
    )
    publish_s = time.perf_counter() - step_started
    retention = retain_and_report(settings, namespace, context)
    fault_point("step.kv_published.end")
    return dg.Output(
        value,
        metadata={
            "snapshot_id": value["snapshot_id"],
            "dagster/row_count": value["item_count"],
            "bucket": settings.kv_bucket,
            "snapshot_key": snapshot_key(namespace, value["snapshot_id"]),
            "snapshot_revision": result.snapshot_revision,
            "current_key": current_key(namespace),
            "current_revision": result.current_revision or 0,
            "previous_current": result.previous_snapshot_id or "none",
            "nats": "embedded" if not settings.nats_url else "external",
            **retention,
            "timing.publish_s": round(publish_s, 3),
            "wall_time_s": round(time.perf_counter() - step_started, 3),
        },
    )
