"""The four assets of DESIGN §1: raw_catalog → validated_items → sqlite_snapshot → kv_published."""

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
from dagster_pandera import pandera_schema_to_dagster_type
from pydantic import Field

from kryten_pipeline import __version__
from kryten_pipeline.catalog_item import CatalogConnector, SourceReject
from kryten_pipeline.connectors import make_connector
from kryten_pipeline.dagster_defs.asset_metadata import (
    COLUMN_SCHEMA_KEY,
    SNAPSHOT_TABLE,
    TABLE_NAME_KEY,
    snapshot_column_schema,
    sqlite_table_metadata,
    validated_column_schema,
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
from kryten_pipeline.kv.object_store import StoredObject, object_name
from kryten_pipeline.kv.store import (
    CurrentEntry,
    PublishResult,
    current_key,
    snapshot_key,
    snapshot_store,
    snapshot_value,
)
from kryten_pipeline.manifest import manifest_base_from
from kryten_pipeline.settings import Settings
from kryten_pipeline.snapshot.diff import KINDS, SnapshotDiff
from kryten_pipeline.snapshot.files import (
    BuiltSnapshot,
    build_snapshot_db,
    install_snapshot,
    kept_snapshot_path,
    live_db_path,
    namespace_dir,
    read_snapshot_meta,
    rows_from_frame,
)
from kryten_pipeline.snapshot.ids import iso_utc, new_snapshot_id
from kryten_pipeline.snapshot.recovery import Reconciliation, reconcile_live_with_current
from kryten_pipeline.validation import (
    VALIDATED_SCHEMA,
    ItemColumns,
    append_item,
    check_thresholds,
    empty_columns,
    passed_validate_items,
    validate_items,
    write_rejects_file,
)

GROUP = "catalog"

RAW_CATALOG_DESCRIPTION = """Every item of the configured catalog source, read through its connector.

**Reads** the source `KRYTEN_SOURCE` names: an export file (`KRYTEN_EXPORT_PATH`, default the shipped sample),
the MediaCMS REST API (`MEDIACMS_URL`) or database (`MEDIACMS_DB_URL`), or the ContentService gRPC stream
(`CONTENT_SERVICE_ADDR`). Before reading, it repairs what a killed refresh of the namespace left half done.

**Guarantees** the whole catalog or a failed step: a source that stops, truncates or misbehaves fails the run with
one line naming the setting to fix — it never hands on a partial catalog. Records it cannot turn into items are
kept as source rejects (counted in `validated_items`).

**Writes** nothing outside Dagster's storage (a pickle per namespace, handed over in memory within a run)."""

VALIDATED_ITEMS_DESCRIPTION = """The items that passed the pandera schema `validated_catalog_items` (see Columns).

**Reads** `raw_catalog`, and the live snapshot's item count (for the collapse guard).

**Guarantees** unique `video_id`s (the first valid occurrence is kept), clean titles and categories, https
manifest URLs. Each rejected row is written with its reasons to `{KRYTEN_DATA_DIR}/{ns}/rejects/*.jsonl`; a
thumbnail URL that is not https is dropped from its item (counted). The blocking check
`schema_and_reject_ratio` stops the refresh when more than `KRYTEN_MAX_REJECT_RATIO` of the rows are rejected or
the catalog shrank below `KRYTEN_MIN_COUNT_RATIO` of the live one."""

SQLITE_SNAPSHOT_DESCRIPTION = """A new SQLite search index of the catalog: the table `catalog_item` (see Columns),
`catalog_category`, `catalog_item_category`, `snapshot_meta` and the FTS5 table `catalog_fts`.

**Reads** `validated_items` and the live file (for the diff and the removal guard).

**Guarantees** a file that passed `PRAGMA integrity_check`, an FTS row per item and a complete `snapshot_meta`
(check `sqlite_integrity`) and removes at most `KRYTEN_MAX_REMOVED_RATIO` of the live catalog unless the run
allows it (check `removal_guard`; launchpad config `allow_removals` or tag `kryten/allow-removals=true`).

**Writes**, in this order: the file into the NATS Object Store (`KRYTEN_OBJECT_BUCKET`, object
`ns/{ns}/{snapshot_id}.sqlite3`), then `{KRYTEN_DATA_DIR}/{ns}/catalog.sqlite3` by an atomic rename (readers see
the old file or the new one, never a mix), keeping `KRYTEN_KEEP_SNAPSHOTS` copies under `snapshots/`."""

KV_PUBLISHED_DESCRIPTION = """The snapshot recorded in NATS KV bucket `KRYTEN_KV_BUCKET`.

**Writes** `ns/{ns}/snapshots/{snapshot_id}` (create-only), then `ns/{ns}/current` by compare-and-set, never
backwards. Each value names the snapshot file's object (`object_bucket`, `object_name`, `size_bytes`,
`sqlite_sha256`), which `kryten-pipeline follow` installs on reader hosts. Then applies retention
(`KRYTEN_KEEP_SNAPSHOTS`: records, files and objects).

**Guarantees** `current` names only a file that is live and verified; if the publish fails, `current` keeps the
previous snapshot and the next refresh moves it forward. The check `kv_current_matches_sqlite` proves that
`current` matches the live file, after each publish and on `KRYTEN_DRIFT_CHECK_CRON`.

**Freshness**: expected anew at every tick of the refresh schedule (`KRYTEN_REFRESH_CRON`)."""
ALLOW_REMOVALS_TAG = "kryten/allow-removals"
OWNERS = ["team:kryten"]
REJECT_FILES_KEPT = 10
_PANDERA_TYPE = pandera_schema_to_dagster_type(VALIDATED_SCHEMA)


def _validated_items_type_check(context: Any, value: Any) -> dg.TypeCheck:
    """The pandera schema as a Dagster type (its table schema shows in the UI).

    The frame ``validate_items`` returns had every row judged by the schema moments earlier in the same
    step; for it, the frame-wide properties are confirmed instead of running the whole schema a second time
    (≈1 s per 100k rows). Any other value gets the full pandera validation.
    """
    if isinstance(value, pd.DataFrame) and passed_validate_items(value):
        return dg.TypeCheck(success=True, description="rows validated by the schema in this step; columns, "
                            "dtypes and unique video_id confirmed", metadata={"rows": len(value)})
    return _PANDERA_TYPE.type_check(context, value)


VALIDATED_ITEMS_TYPE = dg.DagsterType(
    type_check_fn=_validated_items_type_check,
    name=_PANDERA_TYPE.unique_name,
    description=_PANDERA_TYPE.description,
    metadata=_PANDERA_TYPE.metadata,
    typing_type=pd.DataFrame,
)


# Connector stats that repeat a figure raw_catalog already shows (row count, rejects, time, rate).
_STATS_SHOWN_ABOVE = frozenset({"items", "records", "source_rejects", "wall_time_s", "items_per_s"})


@dataclass
class RawCatalog:
    """What a connector produced for one namespace: items as the source gave them (as parallel columns,
    see ``validation.items_to_columns``), plus the records it could not turn into items."""

    namespace: str
    source: str
    columns: ItemColumns
    source_rejects: list[SourceReject] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def item_count(self) -> int:
        return len(self.columns["video_id"])


class SnapshotConfig(dg.Config):
    """Per-run choices of the snapshot step (the launchpad's config of ``sqlite_snapshot``)."""

    allow_removals: bool = Field(
        default=False,
        description="Swap the snapshot in even if it removes more than KRYTEN_MAX_REMOVED_RATIO of the live "
        "catalog (an intended clean-up). Same as `refresh --allow-removals` or the run tag kryten/allow-removals=true.",
    )


async def _reconcile(settings: Settings, namespace: str) -> Reconciliation:
    async with snapshot_store(settings) as store:
        return await reconcile_live_with_current(store, settings.data_dir, namespace)


async def _collect(connector: CatalogConnector) -> ItemColumns:
    columns = empty_columns()
    async for item in connector.iter_catalog_items():
        append_item(columns, item)
    return columns


# Each log line is an event-log write (~10 ms on the default SQLite storage): progress is shown at most this
# often, however often a connector reports; the step's closing line gives the final figures.
PROGRESS_LOG_INTERVAL_S = 3.0


def _progress_logger(context: dg.AssetExecutionContext, *, interval: float = PROGRESS_LOG_INTERVAL_S) -> Any:
    last = [-interval]

    def report(stats: dict[str, Any]) -> None:
        now = time.monotonic()
        if now - last[0] < interval:
            return
        last[0] = now
        shown = ", ".join(f"{k}={v}" for k, v in stats.items() if isinstance(v, (int, float, str)))
        context.log.info(f"progress: {shown}")

    return report


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
        connector = make_connector(settings, namespace=namespace, progress=_progress_logger(context))
        # Under the refresh lock: undo what a killed refresh or rollback left half done
        # (kryten_pipeline.snapshot.recovery); this also fails the run early, before any build, when NATS cannot be
        # reached.
        recovery = asyncio.run(_reconcile(settings, namespace))
        if recovery.action != "none":
            context.log.warning(f"recovery: {recovery.detail}")
        context.log.info(f"reading catalog of namespace {namespace!r} from {connector.label}")
        started = time.perf_counter()
        with bulk_work():
            columns = asyncio.run(_collect(connector))
    except KrytenError as exc:
        raise failure(exc, namespace=namespace) from None
    elapsed = time.perf_counter() - started
    fault_point("fetch.done")
    raw = RawCatalog(namespace, connector.label, columns, list(connector.source_rejects), dict(connector.stats))
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
    with bulk_work():
        result = validate_items(raw_catalog.columns, manifest_base=manifest_base,
                                source_rejects=raw_catalog.source_rejects,
                                require_https_thumbnails=settings.require_https_thumbnails)
    elapsed = time.perf_counter() - started
    live_meta = read_snapshot_meta(live_db_path(settings.data_dir, namespace))
    live_count = int(live_meta["item_count"]) if live_meta and live_meta.get("item_count") else None
    report = check_thresholds(result, live_item_count=live_count, max_reject_ratio=settings.max_reject_ratio,
                              min_count_ratio=settings.min_count_ratio)
    rejects_path = _write_rejects(settings, namespace, context.run_id, result.rejects)

    frame = result.frame
    frame.attrs.update(source=raw_catalog.source, rejected_count=result.rejected_count, total=result.total)
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
        "preview": dg.MetadataValue.md(_preview(frame)),
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
    yield dg.Output(frame, metadata=metadata)
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
                                     setting=_threshold_setting(report.problems)),
            namespace=namespace,
        )


def _threshold_setting(problems: list[str]) -> str:
    for setting in ("KRYTEN_MAX_REJECT_RATIO", "KRYTEN_MIN_COUNT_RATIO"):
        if any(setting in problem for problem in problems):
            return setting
    return "KRYTEN_SOURCE"


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
    context: dg.AssetExecutionContext, config: SnapshotConfig, validated_items: pd.DataFrame,
    pipeline: PipelineResource, nats: NatsResource,
) -> Any:
    namespace = context.partition_key
    step_started = time.perf_counter()
    fault_point("step.sqlite_snapshot.start")
    settings = kryten_settings(pipeline, nats)
    now = datetime.now(UTC)
    live_meta = read_snapshot_meta(live_db_path(settings.data_dir, namespace))
    snapshot_id = new_snapshot_id(now, after=live_meta.get("snapshot_id") if live_meta else None)
    source = str(validated_items.attrs.get("source", "unknown"))
    rejected = int(validated_items.attrs.get("rejected_count", 0))
    try:
        with bulk_work():
            built = build_snapshot_db(
                rows_from_frame(validated_items),
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
    diff_metadata = _diff_metadata(diff)
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
        stored = asyncio.run(_store_file(settings, built, snapshot_value(info, run_id=context.run_id)))
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
    top_categories = Counter(c for cats in validated_items["categories"] for c in cats).most_common(10)
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


async def _store_file(settings: Settings, built: BuiltSnapshot, value: dict[str, Any]) -> StoredObject:
    async with snapshot_store(settings) as store:
        await store.check_publishable(built.namespace, value)
        return await store.objects.put_file(
            object_name(built.namespace, built.snapshot_id), built.path, sha256=built.sha256,
            description=f"kryten snapshot {built.namespace}/{built.snapshot_id}: {built.item_count} items",
            kv_bucket=settings.kv_bucket,
        )


def _diff_metadata(diff: SnapshotDiff | None) -> dict[str, Any]:
    if diff is None:
        return {"diff": "no previous snapshot"}
    rows = [
        (kind, sample["video_id"], sample["title"], sample.get("before", ""), sample.get("after", ""))
        for kind in KINDS for sample in diff.samples.get(kind, [])
    ]
    return {
        "diff": diff.summary(),
        **{f"diff.{kind}": diff.counts.get(kind, 0) for kind in KINDS},
        "diff.removed_ratio": round(diff.removed_ratio, 4),
        "diff.examples": dg.MetadataValue.md(
            markdown_table(["change", "video_id", "title", "before", "after"], rows) if rows else "no changes"
        ),
    }


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
        result = asyncio.run(_publish(settings, namespace, value))
    except KrytenError as exc:
        moved = _current_if_it_names(settings, namespace, value["snapshot_id"])
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
    retention = _apply_retention(settings, namespace, context)
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


def _apply_retention(settings: Settings, namespace: str, context: dg.AssetExecutionContext) -> dict[str, Any]:
    """Keep the newest KRYTEN_KEEP_SNAPSHOTS snapshots (files and KV records). The publish already
    succeeded, so a failure here is reported, not fatal: the next publish or `prune_snapshots` retries."""
    from kryten_pipeline.snapshot.retention import apply_retention

    try:
        pruned = asyncio.run(apply_retention(settings, namespace))
    except KrytenError as exc:
        context.log.warning(f"retention skipped: {exc}")
        return {"retention": f"skipped: {exc}"}
    if pruned.deleted_files or pruned.deleted_records or pruned.deleted_objects:
        context.log.info(f"retention: kept {', '.join(pruned.kept)}; deleted records "
                         f"{pruned.deleted_records or 'none'}, files {pruned.deleted_files or 'none'}, "
                         f"objects {pruned.deleted_objects or 'none'}")
    return {
        "kept_snapshots": dg.MetadataValue.json(pruned.kept),
        "pruned_records": dg.MetadataValue.json(pruned.deleted_records),
        "pruned_files": dg.MetadataValue.json(pruned.deleted_files),
        "pruned_objects": dg.MetadataValue.json(pruned.deleted_objects),
    }


async def _publish(settings: Settings, namespace: str, value: dict[str, Any]) -> Any:
    async with snapshot_store(settings) as store:
        return await store.publish_snapshot(namespace, value)


def _current_if_it_names(settings: Settings, namespace: str, snapshot_id: str) -> CurrentEntry | None:
    """After a failed publish: KV current if it names ``snapshot_id`` anyway (an unconfirmed CAS that went
    through), else None — also when it cannot be read (the next refresh's recovery then sorts it out)."""

    async def read() -> CurrentEntry | None:
        async with snapshot_store(settings) as store:
            return await store.read_current(namespace)

    try:
        entry = asyncio.run(read())
    except KrytenError:
        return None
    return entry if entry is not None and entry.snapshot_id == snapshot_id else None


def _write_rejects(settings: Settings, namespace: str, run_id: str, rejects: list[Any]) -> Path | None:
    if not rejects:
        return None
    folder = namespace_dir(settings.data_dir, namespace) / "rejects"
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = folder / f"{stamp}-{run_id[:8]}.jsonl"
    write_rejects_file(path, rejects)
    for old in sorted(folder.glob("*.jsonl"))[:-REJECT_FILES_KEPT]:
        old.unlink(missing_ok=True)
    return path


def _preview(frame: pd.DataFrame, rows: int = 5) -> str:
    head = frame.head(rows)
    return markdown_table(
        ["video_id", "title", "categories", "duration_seconds"],
        (
            (r.video_id, r.title, ", ".join(r.categories), "" if pd.isna(r.duration_seconds) else r.duration_seconds)
            for r in head.itertuples(index=False)
        ),
    )


