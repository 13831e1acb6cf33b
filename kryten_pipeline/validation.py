"""Validation of connector output with a pandera schema; bad rows are rejected with reasons, never fatal.

The policy, one for every source:
- **text** (titles and categories alike): Unicode without C0 or C1 control characters (tab and line breaks
  included: a title is one line), without bidirectional overrides, embeddings or isolates (U+202A–U+202E,
  U+2066–U+2069: they make text display as something else) and without lone surrogates; trimmed; a title at
  most ``MAX_TITLE_LENGTH`` characters, a category at most ``MAX_CATEGORY_LENGTH``, an item at most
  ``MAX_CATEGORIES_PER_ITEM`` categories. A value that breaks it rejects the row, with the reason.
- **URLs** (``thumbnail_url``): absolute, characters RFC 3986 allows only (no quotes, spaces, ``<>``), no
  user info, and ``https`` unless ``KRYTEN_REQUIRE_HTTPS_THUMBNAILS=false``. A thumbnail that breaks it is
  dropped — the item stays, without a thumbnail — and counted by reason (``ValidationResult.dropped``).
- Each reason counts once per row in the top reasons.

Two stages: ``_coerce_columns`` turns each raw value into its column type (a value that cannot be turned gets a
type reason), then ``VALIDATED_SCHEMA`` (pandera, lazy) checks content rules on the typed frame. The
rows that pass both form the validated frame, which is validated once more as a whole.
"""

from __future__ import annotations

import gc
import json
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa

from kryten_pipeline.catalog_item import CatalogItem, SourceReject
from kryten_pipeline.fault_points import fault_point
from kryten_pipeline.manifest import VIDEO_ID_PATTERN, manifest_urls

MAX_TITLE_LENGTH = 1000
MAX_CATEGORY_LENGTH = 200
MAX_CATEGORIES_PER_ITEM = 100
# Set on the frame validate_items returns: the number of rows the schema judged (see passed_validate_items).
VALIDATED_ROWS_ATTR = "kryten_schema_validated_rows"
COLUMNS = ["video_id", "title", "categories", "duration_seconds", "thumbnail_url", "manifest_url"]
# C0 and C1 controls (tab and line breaks included) and the bidirectional formatting characters.
_CONTROL_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
# A lone surrogate (e.g. "\ud800" from a JSON file) has no UTF-8 form: SQLite could not store it.
_SURROGATE = re.compile("[\ud800-\udfff]")
# An absolute http(s) URL of RFC 3986 characters (unreserved, reserved, '%' + two hex digits); no user info.
_URL_CHARS = r"(?:[A-Za-z0-9\-._~:/?#\[\]!$&'()*+,;=]|%[0-9A-Fa-f]{2})"
_HOST = r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?"
_ABSOLUTE_URL = rf"^https?://{_HOST}(?:[/?#]{_URL_CHARS}*)?$"
_ABSOLUTE_URL_RE = re.compile(_ABSOLUTE_URL)


def _categories_are_strings(value: Any) -> bool:
    return isinstance(value, list) and len(value) <= MAX_CATEGORIES_PER_ITEM and all(
        isinstance(item, str) and item and len(item) <= MAX_CATEGORY_LENGTH and not _CONTROL_CHARS.search(item)
        for item in value)


def _categories_column_ok(series: pd.Series) -> pd.Series:
    """``_categories_are_strings`` for every row, judging each distinct list object once (coercion shares
    one cleaned list among the rows that have the same categories)."""
    verdicts: dict[int, bool] = {}
    results = []
    for value in series.tolist():
        key = id(value)
        verdict = verdicts.get(key)
        if verdict is None:
            verdict = verdicts[key] = _categories_are_strings(value)
        results.append(verdict)
    return pd.Series(results, index=series.index, dtype=bool)


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
                pa.Check(lambda s: ~s.str.contains(_CONTROL_CHARS),
                         error="title contains control or bidi override characters"),
            ],
            nullable=False,
            description="display title, trimmed",
        ),
        "categories": pa.Column(
            object,
            pa.Check(_categories_column_ok, error="categories must be a list of at most "
                     f"{MAX_CATEGORIES_PER_ITEM} clean strings of at most {MAX_CATEGORY_LENGTH} characters"),
            nullable=False,
            description="all categories of the item (many-to-many; [] when none)",
        ),
        "duration_seconds": pa.Column(
            "Int64", pa.Check.ge(0, error="duration_seconds is negative"), nullable=True,
            description="whole seconds or null",
        ),
        "thumbnail_url": pa.Column(
            str, pa.Check.str_matches(_ABSOLUTE_URL, error="thumbnail_url is not an absolute http(s) URL"),
            nullable=True, description="absolute URL (RFC 3986 characters; https unless "
            "KRYTEN_REQUIRE_HTTPS_THUMBNAILS=false) or null",
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


DUPLICATE_REASON = "duplicate video_id (first valid occurrence kept)"
# The content rules alone: uniqueness is decided among the rows that pass them (see validate_items).
_CONTENT_SCHEMA = VALIDATED_SCHEMA.update_column("video_id", unique=False)


@dataclass(slots=True)
class RejectedRow:
    row: int
    video_id: Any
    reasons: list[str]
    record: dict[str, Any] | str

    def to_json(self) -> str:
        """One line of strict JSON: NaN and ±Infinity (not JSON) become strings, and the Unicode line
        separators JSON leaves unescaped (U+0085, U+2028, U+2029) are escaped, so no reader splits the line."""
        value = _strict({"row": self.row, "video_id": self.video_id, "reasons": self.reasons, "record": self.record})
        text = json.dumps(value, ensure_ascii=False, default=str, allow_nan=False)
        if _SURROGATE.search(text):  # not encodable as UTF-8: escape everything beyond ASCII
            return json.dumps(value, ensure_ascii=True, default=str, allow_nan=False)
        return text.replace("\x85", "\\u0085").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _strict(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {key if isinstance(key, str) else str(key): _strict(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(item) for item in value]
    return value


class _RejectFigures:
    """The figures of a validation outcome that follow from its rejects, total and reason counts."""

    __slots__ = ()
    rejects: list[RejectedRow]
    total: int
    reason_counts: Counter[str]

    @property
    def rejected_count(self) -> int:
        return len(self.rejects)

    @property
    def reject_ratio(self) -> float:
        return self.rejected_count / self.total if self.total else 0.0

    def top_reasons(self, limit: int = 5) -> list[tuple[str, int]]:
        return self.reason_counts.most_common(limit)


@dataclass(slots=True)
class ValidationResult(_RejectFigures):
    frame: pd.DataFrame
    rejects: list[RejectedRow]
    total: int
    reason_counts: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)  # values dropped from kept rows (bad thumbnails)

    @property
    def accepted_count(self) -> int:
        return len(self.frame)


@dataclass(slots=True)
class ThresholdReport:
    passed: bool
    problems: list[str]
    reject_ratio: float
    max_reject_ratio: float
    item_count: int
    live_item_count: int | None
    min_count_ratio: float


ItemColumns = dict[str, list[Any]]
_ITEM_FIELDS = ("video_id", "title", "categories", "duration_seconds", "thumbnail_url")


def empty_columns() -> ItemColumns:
    return {name: [] for name in _ITEM_FIELDS}


def append_item(columns: ItemColumns, item: CatalogItem) -> None:
    columns["video_id"].append(item.video_id)
    columns["title"].append(item.title)
    columns["categories"].append(item.categories)
    columns["duration_seconds"].append(item.duration_seconds)
    columns["thumbnail_url"].append(item.thumbnail_url)


def items_to_columns(items: Iterable[CatalogItem]) -> ItemColumns:
    """Connector output as five parallel lists: compact to keep, fast to pickle, fast to coerce."""
    columns = empty_columns()
    for item in items:
        append_item(columns, item)
    return columns


def _coerce_columns(columns: ItemColumns, manifest_base: str, *, require_https_thumbnails: bool = True,
                    dropped: Counter[str] | None = None) -> tuple[ItemColumns, dict[int, list[str]]]:
    """Turn raw values into column types; a value that cannot be turned gives its row a type reason.

    Column by column with a fast path for values that already have the right type (the common case).
    Thumbnails that break the URL policy are dropped and counted in ``dropped``.
    """
    reasons: dict[int, list[str]] = {}
    dropped = Counter() if dropped is None else dropped

    def bad(index: int, reason: str) -> None:
        reasons.setdefault(index, []).append(reason)

    ids: list[Any] = []
    for index, value in enumerate(columns["video_id"]):
        if value is None or type(value) is str:
            ids.append(value)
        else:
            bad(index, f"video_id must be a string, got {type(value).__name__}")
            ids.append(None)

    titles: list[Any] = []
    # One scan over all the text of a column finds out whether any value holds a lone surrogate (almost
    # never); only then is each value searched.
    check_titles = _any_surrogate(columns["title"])
    for index, value in enumerate(columns["title"]):
        if type(value) is str:
            if check_titles and _SURROGATE.search(value):
                bad(index, "title is not valid Unicode (a lone surrogate)")
            titles.append(value.strip())
        elif value is None:
            titles.append(None)
        else:
            bad(index, f"title must be a string, got {type(value).__name__}")
            titles.append(None)

    categories: list[Any] = []
    # Few distinct category lists: each is cleaned once (the cleaned lists are shared, never mutated).
    cleaned_lists: dict[tuple[str, ...], list[str]] = {}
    list_problems: dict[tuple[str, ...], str] = {}
    for index, value in enumerate(columns["categories"]):
        if value is None:
            categories.append([])
        elif isinstance(value, (list, tuple)) and all(type(c) is str for c in value):
            key = tuple(value)
            cleaned = cleaned_lists.get(key)
            if cleaned is None:
                cleaned = cleaned_lists[key] = list(dict.fromkeys(c for c in (c.strip() for c in key) if c))
                problem = _category_problem(key, cleaned)
                if problem:
                    list_problems[key] = problem
            problem = list_problems.get(key)
            if problem:
                bad(index, problem)
            categories.append(cleaned)
        else:
            bad(index, "categories must be a list of strings")
            categories.append([])

    durations: list[Any] = []
    for index, value in enumerate(columns["duration_seconds"]):
        number: int | None = None
        if value is None:
            pass
        elif type(value) is int:
            number = value
        elif isinstance(value, bool):
            bad(index, "duration_seconds must be an integer, got a boolean")
        elif isinstance(value, float):
            if math.isfinite(value) and value.is_integer():
                number = int(value)
            else:
                bad(index, f"duration_seconds must be whole seconds: {value!r}")
        elif isinstance(value, int):
            number = int(value)
        elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
            number = int(value.strip())  # ASCII digits only: "²" is a digit to isdigit() but not to int()
        else:
            bad(index, f"duration_seconds must be an integer: {_short(value)}")
        if number is not None and abs(number) > 2**62:
            bad(index, "duration_seconds out of range")
            number = None
        durations.append(number)

    thumbnails: list[Any] = []
    for value in columns["thumbnail_url"]:
        # A bad thumbnail costs the item its thumbnail, not its place in the catalog.
        url = value.strip() or None if type(value) is str else None
        problem = _thumbnail_problem(value, url, require_https=require_https_thumbnails)
        if problem:
            dropped[problem] += 1
            url = None
        thumbnails.append(url)

    # An id that cannot be placed in a manifest URL leaves it missing; the schema reports the id itself.
    manifests = manifest_urls(ids, manifest_base)
    typed = {
        "video_id": ids, "title": titles, "categories": categories, "duration_seconds": durations,
        "thumbnail_url": thumbnails, "manifest_url": manifests,
    }
    return typed, reasons


def _category_problem(raw: tuple[str, ...], cleaned: list[str]) -> str | None:
    """Why a category list breaks the text policy (judged once per distinct list), or None."""
    if any(_SURROGATE.search(c) for c in raw):
        return "categories are not valid Unicode (a lone surrogate)"
    if len(cleaned) > MAX_CATEGORIES_PER_ITEM:
        return f"more than {MAX_CATEGORIES_PER_ITEM} categories: {len(cleaned)}"
    for category in cleaned:
        if len(category) > MAX_CATEGORY_LENGTH:
            return f"a category longer than {MAX_CATEGORY_LENGTH} characters: {len(category)}"
        if _CONTROL_CHARS.search(category):
            return f"a category contains control or bidi override characters: {_short(category)}"
    return None


def _thumbnail_problem(value: Any, url: str | None, *, require_https: bool) -> str | None:
    """Why a thumbnail value breaks the URL policy (then it is dropped), or None."""
    if value is None or url is None:
        return None if value is None or type(value) is str else f"not a string ({type(value).__name__})"
    if _SURROGATE.search(url) or not _ABSOLUTE_URL_RE.match(url):
        if not url.lower().startswith(("http://", "https://")):
            return "not an absolute http(s) URL"
        return "characters RFC 3986 does not allow in a URL"
    if require_https and not url.startswith("https://"):
        return "plain http (KRYTEN_REQUIRE_HTTPS_THUMBNAILS)"
    return None


def _any_surrogate(values: list[Any]) -> bool:
    """Whether any string in ``values`` holds a lone surrogate: one regex scan over their concatenation."""
    return _SURROGATE.search("".join(v for v in values if type(v) is str)) is not None


def _source_reject_rows(source_rejects: Iterable[SourceReject]) -> tuple[list[RejectedRow], Counter[str]]:
    """Records the connector could not turn into items, as rejected rows (row 0) and their reason counts."""
    rejects = [RejectedRow(row=0, video_id=None, reasons=[r.reason], record=r.record) for r in source_rejects]
    return rejects, Counter(_reason_code(r.reasons[0]) for r in rejects)


def validate_items(
    items: Iterable[CatalogItem] | ItemColumns,
    *,
    manifest_base: str,
    source_rejects: Iterable[SourceReject] = (),
    require_https_thumbnails: bool = True,
    first_row: int = 1,
    seen_ids: set[str] | None = None,
) -> ValidationResult:
    """Validate connector output; return the validated frame and every rejected row with its reasons.

    ``items`` is connector output, or the same as columns (``items_to_columns``). For one batch of a larger
    catalog (``validate_batches``): ``first_row`` is the row number of its first item, and ``seen_ids`` the ids
    accepted in earlier batches — a row repeating one is rejected as a duplicate, and the ids this batch accepts
    are added to it.
    """
    columns = items if isinstance(items, dict) else items_to_columns(items)
    rejects, reason_counts = _source_reject_rows(source_rejects)
    count = len(columns["video_id"])
    total = count + len(rejects)

    dropped: Counter[str] = Counter()
    typed, failures = _coerce_columns(columns, manifest_base, require_https_thumbnails=require_https_thumbnails,
                                      dropped=dropped)
    fault_point("validate.coerced")
    frame = _typed_frame(typed)
    if failures:
        # Rows with a type problem are rejected for it; the schema judges the rest.
        frame = frame.drop(index=list(failures))
    try:
        _CONTENT_SCHEMA.validate(frame, lazy=True)
    except pa.errors.SchemaErrors as exc:
        for case in exc.failure_cases.itertuples(index=False):
            index = case.index
            if index is None or (isinstance(index, float) and math.isnan(index)):
                continue
            failures.setdefault(int(index), []).append(_failure_reason(case.column, case.check, case.failure_case))
    # Duplicates among the rows that passed: the first *valid* occurrence is kept (a row rejected for its
    # content never shadows a valid one with the same id).
    valid_ids = frame["video_id"].drop(index=[i for i in failures if i in frame.index])
    repeated = valid_ids.duplicated(keep="first")
    if seen_ids:
        repeated |= valid_ids.isin(seen_ids)
    for index, video_id in valid_ids[repeated].items():
        failures.setdefault(int(index), []).append(f"{DUPLICATE_REASON}: {_short(video_id)}")

    for index in sorted(failures):
        reasons = list(dict.fromkeys(failures[index]))
        if any(r.startswith("video_id ") for r in reasons):  # its manifest_url failing follows from it
            reasons = [r for r in reasons if not r.startswith("manifest_url cannot be derived")] or reasons
        record = {name: columns[name][index] for name in _ITEM_FIELDS}
        rejects.append(RejectedRow(index + first_row, _short_id(record["video_id"]), reasons, _clip_record(record)))
        reason_counts.update(set(map(_reason_code, reasons)))  # each reason once per row
    fault_point("validate.schema_checked")
    if failures:
        frame = frame.drop(index=[i for i in failures if i in frame.index])
    # Only whole rows were dropped and duplicates keep their first occurrence, so what is left passes as a
    # whole; the Dagster type check of validated_items confirms that (passed_validate_items) and validates any
    # other frame in full.
    frame = frame.reset_index(drop=True)
    frame.attrs[VALIDATED_ROWS_ATTR] = len(frame)
    if seen_ids is not None:
        seen_ids.update(frame["video_id"])
    rejects.sort(key=lambda r: r.row)
    return ValidationResult(frame=frame, rejects=rejects, total=total, reason_counts=reason_counts,
                            dropped=Counter({f"thumbnail_url dropped: {k}": v for k, v in dropped.items()}))


@dataclass(slots=True)
class ValidationSummary(_RejectFigures):
    """What ``validate_batches`` found over all batches (the frames themselves went to its ``emit``)."""

    accepted_count: int
    rejects: list[RejectedRow]
    total: int
    reason_counts: Counter[str]
    dropped: Counter[str]
    head: pd.DataFrame | None  # the first accepted rows (the UI's preview)


def validate_batches(
    batches: Iterable[ItemColumns],
    emit: Callable[[pd.DataFrame], None],
    *,
    manifest_base: str,
    source_rejects: Iterable[SourceReject] = (),
    require_https_thumbnails: bool = True,
    head_rows: int = 5,
) -> ValidationSummary:
    """``validate_items`` over a catalog given a batch at a time: the same rejects, reasons and row numbers as
    for the whole catalog at once, each batch's validated frame handed to ``emit`` in order, so only a batch is
    in memory at a time. Duplicates across batches keep the first valid occurrence, as within one."""
    rejects, reason_counts = _source_reject_rows(source_rejects)
    dropped: Counter[str] = Counter()
    total, accepted, next_row = len(rejects), 0, 1
    head: pd.DataFrame | None = None
    seen: set[str] = set()
    for batch in batches:
        result = validate_items(batch, manifest_base=manifest_base, require_https_thumbnails=require_https_thumbnails,
                                first_row=next_row, seen_ids=seen)
        next_row += len(batch["video_id"])
        total += result.total
        accepted += result.accepted_count
        rejects.extend(result.rejects)
        reason_counts.update(result.reason_counts)
        dropped.update(result.dropped)
        if head is None or len(head) < head_rows:
            more = result.frame.head(head_rows)
            head = more if head is None else pd.concat([head, more]).head(head_rows)
        emit(result.frame)
        del result
        # A batch's frames and pandera's intermediates hold reference cycles; collected now, before the next batch,
        # their memory is reused by it instead of piling up until a rare full collection (100k items: the step's
        # growth 46 -> 26 MB). Cheap inside bulk_work(): everything older is frozen, out of the walk.
        gc.collect()
    return ValidationSummary(accepted_count=accepted, rejects=rejects, total=total, reason_counts=reason_counts,
                             dropped=dropped, head=head)


def passed_validate_items(frame: pd.DataFrame) -> bool:
    """Whether ``frame`` is, unchanged in shape, the one ``validate_items`` returned.

    Its rows were each judged by ``VALIDATED_SCHEMA`` there; what could still differ for the frame as a
    whole — row count, columns and their order, dtypes, unique ids — is checked here, vectorised. Anything
    else (a frame from elsewhere, rows added or dropped since) must be validated in full.
    """
    return (
        frame.attrs.get(VALIDATED_ROWS_ATTR) == len(frame)
        and list(frame.columns) == COLUMNS
        and all(frame[name].dtype == object for name in COLUMNS if name != "duration_seconds")
        and str(frame["duration_seconds"].dtype) == "Int64"
        and bool(frame["video_id"].is_unique)
    )


def _typed_frame(columns: ItemColumns) -> pd.DataFrame:
    frame = pd.DataFrame(
        {name: pd.Series(columns[name], dtype=object) for name in COLUMNS if name != "duration_seconds"}
    )
    frame.insert(3, "duration_seconds", pd.array(columns["duration_seconds"], dtype="Int64"))
    return frame


def check_thresholds(
    result: ValidationResult | ValidationSummary,
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
    path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    count = 0
    # Rejected records are catalog data: no world access (as the snapshot files).
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640), "w", encoding="utf-8") as handle:
        for reject in rejects:
            handle.write(reject.to_json())
            handle.write("\n")
            count += 1
            fault_point("validate.rejects_partial")
    os.replace(tmp, path)
    return count


_CHECK_MESSAGES = {
    "not_nullable": "{column} is missing",
    "field_uniqueness": DUPLICATE_REASON,
}


def _failure_reason(column: Any, check: Any, value: Any) -> str:
    check_text = str(check)
    if isinstance(value, np.generic):  # pandera's failure cases are numpy scalars when a column's are all numbers
        value = value.item()
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


def _clip_record(record: dict[str, Any]) -> dict[str, Any]:
    return {
        key: (value[:300] + "…" if isinstance(value, str) and len(value) > 300 else value)
        for key, value in record.items()
    }
