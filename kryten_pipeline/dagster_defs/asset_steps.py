"""The work the asset steps delegate: NATS round trips (recovery, the Object Store put, the publish, retention),
collecting a connector's items, throttled progress lines, the rejects file and the UI's diff and preview."""

import asyncio
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from kryten_pipeline.catalog_item import CatalogConnector
from kryten_pipeline.dagster_defs.presentation import markdown_table
from kryten_pipeline.errors import KrytenError
from kryten_pipeline.kv.object_store import StoredObject, object_name
from kryten_pipeline.kv.store import CurrentEntry, snapshot_store
from kryten_pipeline.settings import Settings
from kryten_pipeline.snapshot.build import rows_from_frame
from kryten_pipeline.snapshot.diff import KINDS, SnapshotDiff
from kryten_pipeline.snapshot.files import BuiltSnapshot, namespace_dir
from kryten_pipeline.snapshot.recovery import Reconciliation, reconcile_live_with_current
from kryten_pipeline.staging import BATCH_ROWS, BatchWriter, StagedFile
from kryten_pipeline.validation import append_item, empty_columns, write_rejects_file

REJECT_FILES_KEPT = 10


async def reconcile(settings: Settings, namespace: str) -> Reconciliation:
    async with snapshot_store(settings) as store:
        return await reconcile_live_with_current(store, settings.data_dir, namespace)


async def collect(connector: CatalogConnector, path: Path) -> StagedFile:
    """The connector's items, staged at ``path`` in batches of ``BATCH_ROWS`` (parallel columns)."""
    with BatchWriter(path) as writer:
        columns = empty_columns()
        async for item in connector.iter_catalog_items():
            append_item(columns, item)
            if len(columns["video_id"]) == BATCH_ROWS:
                writer.write(columns, BATCH_ROWS)
                columns = empty_columns()
        writer.write(columns, len(columns["video_id"]))
    assert writer.staged is not None
    return writer.staged


class RowStager:
    """Takes each validated frame (``validate_batches``' ``emit``) and stages it as a batch of snapshot rows,
    counting their categories on the way (the UI's top categories)."""

    def __init__(self, writer: BatchWriter) -> None:
        self.writer = writer
        self.categories: Counter[str] = Counter()

    def __call__(self, frame: pd.DataFrame) -> None:
        rows = list(rows_from_frame(frame))
        categories = self.categories
        for row in rows:
            categories.update(row[2])
        self.writer.write(rows, len(rows))


# Each log line is an event-log write (~10 ms on the default SQLite storage): progress is shown at most this
# often, however often a connector reports; the step's closing line gives the final figures.
PROGRESS_LOG_INTERVAL_S = 3.0


def progress_logger(context: dg.AssetExecutionContext, *, interval: float = PROGRESS_LOG_INTERVAL_S) -> Any:
    last = [-interval]

    def report(stats: dict[str, Any]) -> None:
        now = time.monotonic()
        if now - last[0] < interval:
            return
        last[0] = now
        shown = ", ".join(f"{k}={v}" for k, v in stats.items() if isinstance(v, (int, float, str)))
        context.log.info(f"progress: {shown}")

    return report

def threshold_setting(problems: list[str]) -> str:
    for setting in ("KRYTEN_MAX_REJECT_RATIO", "KRYTEN_MIN_COUNT_RATIO"):
        if any(setting in problem for problem in problems):
            return setting
    return "KRYTEN_SOURCE"

async def store_file(settings: Settings, built: BuiltSnapshot, value: dict[str, Any]) -> StoredObject:
    async with snapshot_store(settings) as store:
        await store.check_publishable(built.namespace, value)
        return await store.objects.put_file(
            object_name(built.namespace, built.snapshot_id), built.path, sha256=built.sha256,
            description=f"kryten snapshot {built.namespace}/{built.snapshot_id}: {built.item_count} items",
            kv_bucket=settings.kv_bucket,
        )


def diff_table_metadata(diff: SnapshotDiff | None) -> dict[str, Any]:
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

def retain_and_report(settings: Settings, namespace: str, context: dg.AssetExecutionContext) -> dict[str, Any]:
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


async def publish(settings: Settings, namespace: str, value: dict[str, Any]) -> Any:
    async with snapshot_store(settings) as store:
        return await store.publish_snapshot(namespace, value)


def current_if_it_names(settings: Settings, namespace: str, snapshot_id: str) -> CurrentEntry | None:
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


def write_rejects(settings: Settings, namespace: str, run_id: str, rejects: list[Any]) -> Path | None:
    if not rejects:
        return None
    folder = namespace_dir(settings.data_dir, namespace) / "rejects"
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = folder / f"{stamp}-{run_id[:8]}.jsonl"
    write_rejects_file(path, rejects)
    for old in sorted(folder.glob("*.jsonl"))[:-REJECT_FILES_KEPT]:
        old.unlink(missing_ok=True)
    return path


def preview(frame: pd.DataFrame, rows: int = 5) -> str:
    head = frame.head(rows)
    return markdown_table(
        ["video_id", "title", "categories", "duration_seconds"],
        (
            (r.video_id, r.title, ", ".join(r.categories), "" if pd.isna(r.duration_seconds) else r.duration_seconds)
            for r in head.itertuples(index=False)
        ),
    )
