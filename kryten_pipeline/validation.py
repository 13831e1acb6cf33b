"""Validation of connector output with a pandera schema; bad rows are rejected with reasons, never fatal.

Two stages: ``_coerce`` turns each raw value into its column type (a value that cannot be turned gets a
type reason), then ``VALIDATED_SCHEMA`` (pandera, lazy) checks content rules on the typed frame. The
rows that pass both form the validated frame, which is validated once more as a whole.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pandera.pandas as pa

from kryten_pipeline.catalog_item import CatalogItem, SourceReject
from kryten_pipeline.manifest import VIDEO_ID_PATTERN, InvalidVideoIdError, build_manifest_url

MAX_TITLE_LENGTH = 1000
COLUMNS = ["video_id", "title", "categories", "duration_seconds", "thumbnail_url", "manifest_url"]
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_ABSOLUTE_URL = r"^https?://[^\s/?#]+[^\s]*$"


def _categories_are_strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) and item for item in value)


VALIDATED_SCHEMA = pa.DataFrameSchema(
    {
        "video_id": pa.Column(
            str,
            pa.Check.str_matches(VIDEO_ID_PATTERN, error="video_id does not match [A-Za-z0-9_-]{1,64}"),
            nullable=False,
            unique=True,
            report_duplicates="exclude_first",
            description="source id (MediaCMS friendly_token); key of the snapshot",
        ),
        "title": pa.Column(
            str,
            [
                pa.Check(lambda s: s.str.len() > 0, error="title is empty after trimming"),
                pa.Check(lambda s: s.str.len() <= MAX_TITLE_LENGTH, error=f"title longer than {MAX_TITLE_LENGTH}"),
                pa.Check(lambda s: ~s.str.contains(_CONTROL_CHARS), error="title contains control characters"),
            ],
            nullable=False,
            description="display title, trimmed",
        ),
        "categories": pa.Column(
            object,
            pa.Check(_categories_are_strings, element_wise=True, error="categories must be a list of strings"),
            nullable=False,
            description="all categories of the item (many-to-many; [] when none)",
        ),
        "duration_seconds": pa.Column(
            "Int64", pa.Check.ge(0, error="duration_seconds is negative"), nullable=True,
            description="whole seconds or null",
        ),
        "thumbnail_url": pa.Column(
            str, pa.Check.str_matches(_ABSOLUTE_URL, error="thumbnail_url is not an absolute http(s) URL"),
            nullable=True, description="absolute URL or null",
        ),
        "manifest_url": pa.Column(
            str, pa.Check.str_startswith("https://", error="manifest_url is not https"), nullable=False,
            description="derived from video_id; always https",
        ),
    },
    strict=True,
    ordered=True,
    name="validated_catalog_items",
)


@dataclass(slots=True)
class RejectedRow:
    row: int
    video_id: Any
    reasons: list[str]
    record: dict[str, Any] | str

    def to_json(self) -> str:
        return json.dumps(
            {"row": self.row, "video_id": self.video_id, "reasons": self.reasons, "record": self.record},
            ensure_ascii=False, default=str,
        )


@dataclass(slots=True)
class ValidationResult:
    frame: pd.DataFrame
    rejects: list[RejectedRow]
    total: int
    reason_counts: Counter[str] = field(default_factory=Counter)

    @property
    def accepted_count(self) -> int:
        return len(self.frame)

    @property
    def rejected_count(self) -> int:
        return len(self.rejects)

    @property
    def reject_ratio(self) -> float:
        return self.rejected_count / self.total if self.total else 0.0

    def top_reasons(self, limit: int = 5) -> list[tuple[str, int]]:
        return self.reason_counts.most_common(limit)


@dataclass(slots=True)
class ThresholdReport:
    passed: bool
    problems: list[str]
    reject_ratio: float
    max_reject_ratio: float
    item_count: int
    live_item_count: int | None
    min_count_ratio: float


class _Coerced:
    """One record turned into typed column values, or the reasons it could not be."""

    __slots__ = ("reasons", "values")

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.reasons: list[str] = []


def _coerce(item: CatalogItem, manifest_base: str) -> _Coerced:
    out = _Coerced()
    video_id = item.video_id
    if video_id is not None and not isinstance(video_id, str):
        out.reasons.append(f"video_id must be a string, got {type(video_id).__name__}")
    out.values["video_id"] = video_id if isinstance(video_id, str) else None

    title = item.title
    if title is not None and not isinstance(title, str):
        out.reasons.append(f"title must be a string, got {type(title).__name__}")
    out.values["title"] = title.strip() if isinstance(title, str) else None

    categories = item.categories
    if categories is None:
        categories = []
    if isinstance(categories, (list, tuple)) and all(isinstance(c, str) for c in categories):
        cleaned = [c.strip() for c in categories]
        out.values["categories"] = list(dict.fromkeys(c for c in cleaned if c))
    else:
        out.reasons.append("categories must be a list of strings")
        out.values["categories"] = []

    duration = item.duration_seconds
    value: int | None = None
    if duration is None:
        value = None
    elif isinstance(duration, bool):
        out.reasons.append("duration_seconds must be an integer, got a boolean")
    elif isinstance(duration, int):
        value = duration
    elif isinstance(duration, float):
        if math.isfinite(duration) and duration.is_integer():
            value = int(duration)
        else:
            out.reasons.append(f"duration_seconds must be whole seconds: {duration!r}")
    elif isinstance(duration, str) and duration.strip().isdigit():
        value = int(duration.strip())
    else:
        out.reasons.append(f"duration_seconds must be an integer: {_short(duration)}")
    if value is not None and abs(value) > 2**62:
        out.reasons.append("duration_seconds out of range")
        value = None
    out.values["duration_seconds"] = value

    thumbnail = item.thumbnail_url
    if thumbnail is not None and not isinstance(thumbnail, str):
        out.reasons.append(f"thumbnail_url must be a string or null, got {type(thumbnail).__name__}")
        thumbnail = None
    if isinstance(thumbnail, str):
        thumbnail = thumbnail.strip() or None
    out.values["thumbnail_url"] = thumbnail

    manifest: str | None = None
    if isinstance(video_id, str):
        try:
            manifest = build_manifest_url(video_id, manifest_base)
        except InvalidVideoIdError:
            manifest = None  # the schema reports the id; this column then reads as not derivable
    out.values["manifest_url"] = manifest
    return out


def validate_items(
    items: Iterable[CatalogItem],
    *,
    manifest_base: str,
    source_rejects: Iterable[SourceReject] = (),
) -> ValidationResult:
    """Validate connector output; return the validated frame and every rejected row with its reasons."""
    rows: list[dict[str, Any]] = []
    positions: list[int] = []
    originals: list[CatalogItem] = []
    rejects: list[RejectedRow] = []
    reason_counts: Counter[str] = Counter()

    for reject in source_rejects:
        rejects.append(RejectedRow(row=0, video_id=None, reasons=[reject.reason], record=reject.record))
        reason_counts[_reason_code(reject.reason)] += 1

    position = 0
    for position, item in enumerate(items, start=1):
        coerced = _coerce(item, manifest_base)
        if coerced.reasons:
            rejects.append(RejectedRow(position, _short_id(item.video_id), coerced.reasons, _record(item)))
            reason_counts.update(_reason_code(r) for r in coerced.reasons)
            continue
        rows.append(coerced.values)
        positions.append(position)
        originals.append(item)
    total = position + sum(1 for r in rejects if r.row == 0)

    frame = _typed_frame(rows)
    failures: dict[int, list[str]] = {}
    try:
        VALIDATED_SCHEMA.validate(frame, lazy=True)
    except pa.errors.SchemaErrors as exc:
        for case in exc.failure_cases.itertuples(index=False):
            index = case.index
            if index is None or (isinstance(index, float) and math.isnan(index)):
                continue
            failures.setdefault(int(index), []).append(_failure_reason(case.column, case.check, case.failure_case))

    if failures:
        for index in sorted(failures):
            reasons = list(dict.fromkeys(failures[index]))
            item = originals[index]
            rejects.append(RejectedRow(positions[index], _short_id(item.video_id), reasons, _record(item)))
            reason_counts.update(_reason_code(r) for r in reasons)
        frame = frame.drop(index=list(failures)).reset_index(drop=True)
        frame = VALIDATED_SCHEMA.validate(frame)  # what is left must pass as a whole
    rejects.sort(key=lambda r: r.row)
    return ValidationResult(frame=frame, rejects=rejects, total=total, reason_counts=reason_counts)


def _typed_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame.from_records(rows, columns=COLUMNS)
    for column in ("video_id", "title", "thumbnail_url", "manifest_url"):
        frame[column] = frame[column].astype(object)
    frame["categories"] = frame["categories"].astype(object)
    frame["duration_seconds"] = pd.array(
        [None if v is None or (isinstance(v, float) and math.isnan(v)) else int(v) for v in frame["duration_seconds"]],
        dtype="Int64",
    )
    return frame


def check_thresholds(
    result: ValidationResult,
    *,
    live_item_count: int | None,
    max_reject_ratio: float,
    min_count_ratio: float,
) -> ThresholdReport:
    """The publish guard: too many rejects, no items, or a collapse against the live snapshot fail it."""
    problems: list[str] = []
    if result.accepted_count == 0:
        problems.append(f"no valid items (read {result.total}, rejected {result.rejected_count})")
    if result.reject_ratio > max_reject_ratio:
        top = "; ".join(f"{reason} ×{count}" for reason, count in result.top_reasons(3))
        problems.append(
            f"{result.rejected_count} of {result.total} rows rejected ({result.reject_ratio:.1%}), above the "
            f"{max_reject_ratio:.1%} limit set by KRYTEN_MAX_REJECT_RATIO; top reasons: {top}"
        )
    if live_item_count and result.accepted_count < min_count_ratio * live_item_count:
        problems.append(
            f"only {result.accepted_count} valid items against {live_item_count} in the live snapshot "
            f"(below {min_count_ratio:.0%}, KRYTEN_MIN_COUNT_RATIO); a truncated source is never published"
        )
    return ThresholdReport(
        passed=not problems, problems=problems, reject_ratio=result.reject_ratio,
        max_reject_ratio=max_reject_ratio, item_count=result.accepted_count, live_item_count=live_item_count,
        min_count_ratio=min_count_ratio,
    )


def write_rejects_file(path: Path, rejects: Iterable[RejectedRow]) -> int:
    """Write one JSON line per rejected row (atomically) and return how many were written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    count = 0
    with tmp.open("w", encoding="utf-8") as handle:
        for reject in rejects:
            handle.write(reject.to_json())
            handle.write("\n")
            count += 1
    os.replace(tmp, path)
    return count


_CHECK_MESSAGES = {
    "not_nullable": "{column} is missing",
    "field_uniqueness": "duplicate video_id (first occurrence kept)",
}


def _failure_reason(column: Any, check: Any, value: Any) -> str:
    check_text = str(check)
    if check_text in _CHECK_MESSAGES:
        message = _CHECK_MESSAGES[check_text].format(column=column)
        if check_text == "not_nullable" and column == "manifest_url":
            return "manifest_url cannot be derived (video_id missing or invalid)"
        return message if check_text == "not_nullable" else f"{message}: {_short(value)}"
    if check_text.startswith("dtype("):
        return f"{column} has the wrong type"
    return f"{check_text}: {_short(value)}"


def _reason_code(reason: str) -> str:
    """Group reasons for counting: the text before the offending value or position."""
    text = re.sub(r"^line \d+: |^item \d+: ", "", reason)
    return text.split(": ")[0] if ": " in text else text


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _short_id(video_id: Any) -> Any:
    if isinstance(video_id, str) and len(video_id) > 100:
        return video_id[:100] + "…"
    return video_id if isinstance(video_id, (str, int, float, type(None))) else _short(video_id)


def _record(item: CatalogItem) -> dict[str, Any]:
    record = item.to_dict()
    for key, value in record.items():
        if isinstance(value, str) and len(value) > 300:
            record[key] = value[:300] + "…"
    return record
