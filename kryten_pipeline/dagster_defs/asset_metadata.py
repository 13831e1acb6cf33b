"""What the Dagster UI shows about the catalog assets beyond their values: column schemas, the SQLite table and
file, code references and the published snapshot's freshness policy.

The schemas are derived from the declarations they describe — the pandera schema of ``validated_items`` and the
DDL of the snapshot file — so the UI cannot drift from what the pipeline enforces.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pandera.pandas as pa
import sqlite_utils

from kryten_pipeline.snapshot.build import catalog_item_ddl
from kryten_pipeline.validation import VALIDATED_SCHEMA

SNAPSHOT_TABLE = "catalog_item"
SQLITE_KEY = "dagster/uri"
TABLE_NAME_KEY = "dagster/table_name"
COLUMN_SCHEMA_KEY = "dagster/column_schema"

# What each column of catalog_item holds (DESIGN §2); the types and constraints come from the DDL itself.
SNAPSHOT_COLUMN_DOCS = {
    "video_id": "source id (MediaCMS friendly_token); primary key",
    "title": "display title, trimmed; indexed (idx_catalog_title) and full-text searchable (catalog_fts)",
    "categories_json": "JSON array of the item's categories (also in catalog_item_category)",
    "manifest_url": "https URL of the item's manifest",
    "duration_seconds": "whole seconds, or NULL when the source does not know",
    "thumbnail_url": "absolute URL, or NULL",
    "snapshot_id": "the snapshot this row belongs to (indexed)",
    "created_at": "when the snapshot was created (ISO 8601 UTC)",
}


def validated_column_schema() -> dg.TableSchema:
    """The pandera schema of ``validated_items`` as a Dagster table schema, each rule in words."""
    columns = []
    for name, column in VALIDATED_SCHEMA.columns.items():
        rules = [check.error for check in column.checks if getattr(check, "error", None)]
        columns.append(dg.TableColumn(
            name=name,
            type=_pandera_type(column),
            description=column.description,
            constraints=dg.TableColumnConstraints(nullable=bool(column.nullable), unique=bool(column.unique),
                                                  other=[f"rejected when: {rule}" for rule in rules]),
        ))
    return dg.TableSchema(columns=columns)


def _pandera_type(column: pa.Column) -> str:
    if column.name == "categories":
        return "list[str]"
    return str(column.dtype)


def snapshot_column_schema() -> dg.TableSchema:
    """The ``catalog_item`` table of the snapshot file, read back from its DDL by SQLite itself."""
    db = sqlite_utils.Database(memory=True)
    try:
        db.executescript(catalog_item_ddl())
        table_columns = db.table(SNAPSHOT_TABLE).columns
    finally:
        db.close()
    columns = []
    for column in table_columns:
        pk = bool(column.is_pk)
        columns.append(dg.TableColumn(
            name=column.name, type=column.type, description=SNAPSHOT_COLUMN_DOCS.get(column.name),
            constraints=dg.TableColumnConstraints(nullable=not (column.notnull or pk), unique=pk,
                                                  other=["primary key"] if pk else []),
        ))
    return dg.TableSchema(columns=columns)


def sqlite_table_metadata(path: Path) -> dict[str, Any]:
    """Where the live table is: its name, the file's URI, and the column schema."""
    return {
        TABLE_NAME_KEY: SNAPSHOT_TABLE,
        SQLITE_KEY: path.resolve().as_uri(),
        COLUMN_SCHEMA_KEY: snapshot_column_schema(),
    }


def freshness_policy(refresh_cron: str, timezone: str) -> dg.FreshnessPolicy:
    """The published snapshot is expected anew at every tick of the refresh schedule: at each tick, the latest
    publish must be newer than one schedule interval (the previous tick's run), so a refresh that failed, or a
    schedule left stopped, shows the snapshot as stale at the following tick. Dagster wants the window no longer
    than the shortest interval between ticks."""
    return dg.FreshnessPolicy.cron(
        deadline_cron=refresh_cron, lower_bound_delta=shortest_tick_gap(refresh_cron, timezone), timezone=timezone,
    )


def shortest_tick_gap(cron: str, timezone: str, *, ticks: int = 64) -> timedelta:
    """The shortest interval between consecutive ticks of ``cron``."""
    from zoneinfo import ZoneInfo

    from croniter import croniter

    moments = croniter(cron, datetime.now(UTC).astimezone(ZoneInfo(timezone)))
    times = [moments.get_next(datetime) for _ in range(ticks)]
    return min(later - earlier for earlier, later in itertools.pairwise(times))


def with_code_references(assets: Sequence[Any], *, git_url: str | None, git_branch: str) -> Sequence[Any]:
    """Each asset links to the lines that define it: a local file path always, a link into the repository when
    ``KRYTEN_CODE_GIT_URL`` is set."""
    referenced = dg.with_source_code_references(assets)
    if not git_url:
        return referenced
    package_root = Path(__file__).resolve().parents[2]
    return dg.link_code_references_to_git(
        referenced, git_url=git_url, git_branch=git_branch,
        file_path_mapping=dg.AnchorBasedFilePathMapping(local_file_anchor=package_root,
                                                        file_anchor_path_in_repository=""),
    )
