"""What the four assets are, apart from how they run: their descriptions in the UI, the Dagster type of
``validated_items`` (the pandera schema), the value ``raw_catalog`` hands on and the launchpad's config of
``sqlite_snapshot``."""

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import pandas as pd
from dagster_pandera import pandera_schema_to_dagster_type
from pydantic import Field

from kryten_pipeline.catalog_item import SourceReject
from kryten_pipeline.staging import StagedFile
from kryten_pipeline.validation import VALIDATED_SCHEMA, ItemColumns, passed_validate_items

GROUP = "catalog"

RAW_CATALOG_DESCRIPTION = """Every item of the configured catalog source, read through its connector.

**Reads** the source `KRYTEN_SOURCE` names: an export file (`KRYTEN_EXPORT_PATH`, default the shipped sample),
the MediaCMS REST API (`MEDIACMS_URL`) or database (`MEDIACMS_DB_URL`), or the ContentService gRPC stream
(`CONTENT_SERVICE_ADDR`). Before reading, it repairs what a killed refresh of the namespace left half done.

**Guarantees** the whole catalog or a failed step: a source that stops, truncates or misbehaves fails the run with
one line naming the setting to fix — it never hands on a partial catalog. Records it cannot turn into items are
kept as source rejects (counted in `validated_items`).

**Writes** nothing outside Dagster's storage: the items, in batches of 10,000, to
`staging/raw_catalog/{ns}.batches` under the instance's storage directory (so memory stays flat in catalog
size), and a small pickle per namespace naming that file."""

VALIDATED_ITEMS_DESCRIPTION = """The items that passed the pandera schema `validated_catalog_items` (see Columns).

**Reads** `raw_catalog`, and the live snapshot's item count (for the collapse guard).

**Guarantees** unique `video_id`s (the first valid occurrence is kept), clean titles and categories, https
manifest URLs. Each rejected row is written with its reasons to `{KRYTEN_DATA_DIR}/{ns}/rejects/*.jsonl`; a
thumbnail URL that is not https is dropped from its item (counted). The blocking check
`schema_and_reject_ratio` stops the refresh when more than `KRYTEN_MAX_REJECT_RATIO` of the rows are rejected or
the catalog shrank below `KRYTEN_MIN_COUNT_RATIO` of the live one. Validates a batch of 10,000 rows at a
time and stages the accepted rows in `staging/validated_items/{ns}.batches` (Dagster's storage)."""

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


@dataclass
class RawCatalog:
    """What a connector produced for one namespace: items as the source gave them, staged in batches of
    parallel columns (``validation.ItemColumns``), plus the records it could not turn into items."""

    namespace: str
    source: str
    items: StagedFile
    source_rejects: list[SourceReject] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def item_count(self) -> int:
        return self.items.rows

    def batches(self) -> Iterator[ItemColumns]:
        return self.items.read()


@dataclass
class ValidatedItems:
    """The rows that passed validation, staged in batches of ``(video_id, title, categories, duration_seconds,
    thumbnail_url, manifest_url)`` tuples (what the snapshot build takes), and what the build records of them."""

    source: str
    rows: StagedFile
    validated_rows: int
    rejected_count: int
    total: int
    top_categories: list[tuple[str, int]] = field(default_factory=list)

    def iter_rows(self) -> Iterator[tuple[Any, ...]]:
        for batch in self.rows.read():
            yield from batch


_PANDERA_TYPE = pandera_schema_to_dagster_type(VALIDATED_SCHEMA)


def _validated_items_type_check(context: Any, value: Any) -> dg.TypeCheck:
    """The pandera schema as a Dagster type (its table schema shows in the UI).

    The step's own output (``ValidatedItems``) had every row judged by the schema moments earlier, a batch at a
    time, with ids kept unique across batches; for it, the staged file is confirmed to hold exactly those rows.
    A frame ``validate_items`` returned gets its frame-wide properties confirmed; any other value the full pandera
    validation.
    """
    if isinstance(value, ValidatedItems):
        if value.validated_rows == value.rows.rows and value.rows.exists():
            return dg.TypeCheck(success=True, description="rows validated by the schema in this step, a batch at a "
                                "time; unique video_id across batches", metadata={"rows": value.rows.rows})
        return dg.TypeCheck(success=False, description=f"staged rows {value.rows.rows} at {value.rows.path} are not "
                            f"the {value.validated_rows} rows the schema validated")
    if isinstance(value, pd.DataFrame) and passed_validate_items(value):
        return dg.TypeCheck(success=True, description="rows validated by the schema in this step; columns, "
                            "dtypes and unique video_id confirmed", metadata={"rows": len(value)})
    return _PANDERA_TYPE.type_check(context, value)


VALIDATED_ITEMS_TYPE = dg.DagsterType(
    type_check_fn=_validated_items_type_check,
    name=_PANDERA_TYPE.unique_name,
    description=_PANDERA_TYPE.description,
    metadata=_PANDERA_TYPE.metadata,
    typing_type=ValidatedItems,
)


class SnapshotConfig(dg.Config):
    """Per-run choices of the snapshot step (the launchpad's config of ``sqlite_snapshot``)."""

    allow_removals: bool = Field(
        default=False,
        description="Swap the snapshot in even if it removes more than KRYTEN_MAX_REMOVED_RATIO of the live "
        "catalog (an intended clean-up). Same as `refresh --allow-removals` or the run tag kryten/allow-removals=true.",
    )


