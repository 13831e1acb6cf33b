"""Export-file strategy (seed 000 GUD-001): a JSON array, JSON Lines or CSV file of catalog items.

Field names follow ``CatalogItem``; a few MediaCMS-style aliases are accepted so a raw MediaCMS dump works
too (``friendly_token`` → ``video_id``, ``duration`` → ``duration_seconds``, ``thumbnail`` →
``thumbnail_url``). CSV ``categories`` is either ``a|b|c`` or a JSON list. Values are passed on as the
file has them; validation rejects bad ones with a reason.
"""

from __future__ import annotations

import asyncio
import csv
import json
import time
from collections.abc import AsyncIterator, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from kryten_pipeline import jsonfast
from kryten_pipeline.catalog_item import CatalogItem, SourceReject
from kryten_pipeline.errors import ConfigurationError, KrytenError, SourceError
from kryten_pipeline.fault_points import fault_point

SAMPLE_EXPORT_NAME = "sample_catalog.jsonl"
_ALIASES = {
    "video_id": ("video_id", "friendly_token", "id"),
    "title": ("title",),
    "categories": ("categories",),
    "duration_seconds": ("duration_seconds", "duration"),
    "thumbnail_url": ("thumbnail_url", "thumbnail"),
}
_YIELD_EVERY = 2000
_MAX_REJECT_RECORD_CHARS = 300


def sample_export_path() -> Path:
    """The realistic sample catalog shipped inside the package (the default source)."""
    return Path(str(resources.files("kryten_pipeline") / "data" / SAMPLE_EXPORT_NAME))


def detect_format(path: Path) -> str:
    """``json``, ``jsonl`` or ``csv``, from the extension, else from the first non-blank character."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    with path.open("rb") as handle:
        head = handle.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"["):
        return "json"
    if head.startswith(b"{"):
        # One object spanning the file ({"items": [...]}) or one object per line.
        return "json" if suffix == ".json" else "jsonl"
    if suffix == ".json":
        return "json"
    raise SourceError(
        f"cannot tell the format of export file {path.name!r} (expected .json, .jsonl or .csv)",
        setting="KRYTEN_EXPORT_PATH",
    )


def record_to_item(record: dict[str, Any]) -> CatalogItem:
    """Map one export record onto ``CatalogItem`` fields, accepting the documented aliases."""
    values: dict[str, Any] = {}
    for field_name, names in _ALIASES.items():
        for name in names:
            if name in record:
                values[field_name] = record[name]
                break
    categories = values.get("categories")
    if categories is None:
        categories = []
    elif isinstance(categories, str):
        categories = _split_categories(categories)
    return CatalogItem(
        video_id=values.get("video_id"),  # type: ignore[arg-type]  # validation checks the type
        title=values.get("title"),  # type: ignore[arg-type]
        categories=categories,
        duration_seconds=values.get("duration_seconds"),
        thumbnail_url=values.get("thumbnail_url"),
    )


def _split_categories(text: str) -> Any:
    stripped = text.strip()
    if not stripped:
        return []
    if stripped.startswith("["):
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            return stripped  # not a list: validation rejects it with a reason
    return [part.strip() for part in stripped.split("|") if part.strip()]


def _csv_value(raw: str | None) -> Any:
    if raw is None:
        return None
    text = raw.strip()
    return text or None


class ExportFileConnector:
    """Reads a whole export file; a record that is not an object is a source reject, not a crash."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else sample_export_path()
        shipped = path is None
        self.label = f"export:{'sample/' if shipped else ''}{self.path.name}"
        self.stats: dict[str, Any] = {}
        self.source_rejects: list[SourceReject] = []

    def _check_file(self) -> None:
        if not self.path.exists():
            raise ConfigurationError(f"export file {str(self.path)!r} does not exist", setting="KRYTEN_EXPORT_PATH")
        if not self.path.is_file():
            raise ConfigurationError(f"export path {str(self.path)!r} is not a file", setting="KRYTEN_EXPORT_PATH")
        try:
            with self.path.open("rb") as handle:
                head = handle.read(4096)
        except OSError as exc:
            raise self._read_error(exc) from None
        encoding = _foreign_encoding(head)
        if encoding == "binary":
            raise SourceError(
                f"export file {str(self.path)!r} holds binary data (NUL bytes), not a JSON, JSON Lines or CSV "
                f"export: is it the right file?", setting="KRYTEN_EXPORT_PATH",
            )
        if encoding:
            raise SourceError(
                f"export file {str(self.path)!r} is {encoding}, not UTF-8: convert it, e.g. "
                f"`iconv -f {encoding} -t UTF-8 {self.path.name} > {self.path.stem}.utf8{self.path.suffix}`",
                setting="KRYTEN_EXPORT_PATH",
            )

    def _read_error(self, exc: OSError | UnicodeDecodeError) -> KrytenError:
        """One line naming the file and the setting for anything that stops the file being read."""
        where = str(self.path)
        if isinstance(exc, UnicodeDecodeError):
            return SourceError(
                f"export file {where!r} is not UTF-8 text (it holds the byte 0x{exc.object[exc.start]:02x}, which "
                f"UTF-8 does not allow there): save it as UTF-8, e.g. `iconv -f WINDOWS-1252 -t UTF-8` for a "
                f"spreadsheet export", setting="KRYTEN_EXPORT_PATH",
            )
        if isinstance(exc, PermissionError):
            return ConfigurationError(
                f"export file {where!r} cannot be read: permission denied (run as a user that may read it, or "
                f"change its permissions)", setting="KRYTEN_EXPORT_PATH",
            )
        return SourceError(
            f"export file {where!r} could not be read: {exc.strerror or exc} (errno {exc.errno}); the disk or "
            f"the filesystem failed — nothing was published", setting="KRYTEN_EXPORT_PATH",
        )

    def _records(self, fmt: str) -> Iterator[dict[str, Any] | SourceReject]:
        if fmt == "json":
            yield from self._json_records()
        elif fmt == "jsonl":
            yield from self._jsonl_records()
        else:
            yield from self._csv_records()

    def _json_records(self) -> Iterator[dict[str, Any] | SourceReject]:
        try:
            with self.path.open(encoding="utf-8-sig") as handle:
                document = json.load(handle)
        except json.JSONDecodeError as exc:
            raise SourceError(
                f"export file {self.path.name!r} is not valid JSON (line {exc.lineno}, column {exc.colno}: "
                f"{exc.msg}); is it truncated?",
                setting="KRYTEN_EXPORT_PATH",
            ) from None
        except RecursionError:
            raise SourceError(
                f"export file {self.path.name!r} nests JSON more than ~{jsonfast.MAX_DEPTH_HINT} levels deep, which "
                f"no catalog needs: is it the right file?", setting="KRYTEN_EXPORT_PATH",
            ) from None
        if isinstance(document, dict):
            for key in ("items", "results"):
                if isinstance(document.get(key), list):
                    document = document[key]
                    break
        if not isinstance(document, list):
            raise SourceError(
                f"export file {self.path.name!r} must hold a JSON array of items (or {{\"items\": [...]}})",
                setting="KRYTEN_EXPORT_PATH",
            )
        for position, record in enumerate(document, start=1):
            if isinstance(record, dict):
                yield record
            else:
                yield SourceReject(_clip(json.dumps(record)), f"item {position}: not a JSON object")

    def _jsonl_records(self) -> Iterator[dict[str, Any] | SourceReject]:
        with self.path.open("rb") as handle:
            for line_no, raw in enumerate(handle, start=1):
                if line_no == 1:
                    raw = raw.removeprefix(b"\xef\xbb\xbf")
                if not raw.strip():
                    continue
                try:
                    record = jsonfast.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:  # too deep is a JSONDecodeError too
                    reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
                    yield SourceReject(_clip(raw.decode("utf-8", "replace")), f"line {line_no}: invalid JSON: {reason}")
                    continue
                if isinstance(record, dict):
                    yield record
                else:
                    yield SourceReject(_clip(raw.decode("utf-8", "replace")), f"line {line_no}: not a JSON object")

    def _csv_records(self) -> Iterator[dict[str, Any] | SourceReject]:
        with self.path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            if not any(name in header for name in _ALIASES["video_id"]) or "title" not in header:
                raise SourceError(
                    f"CSV export {self.path.name!r} needs a header with video_id and title columns, got {header}",
                    setting="KRYTEN_EXPORT_PATH",
                )
            for row in reader:
                line_no = reader.line_num
                if None in row:  # more cells than header columns
                    yield SourceReject(_clip(json.dumps(row, default=str)), f"line {line_no}: too many columns")
                    continue
                record: dict[str, Any] = {key: _csv_value(value) for key, value in row.items()}
                duration = record.get("duration_seconds", record.get("duration"))
                if isinstance(duration, str) and duration.isdigit():
                    record["duration_seconds"] = int(duration)
                    record.pop("duration", None)
                yield record

    def _guarded(self, records: Iterator[dict[str, Any] | SourceReject]) -> Iterator[dict[str, Any] | SourceReject]:
        try:
            yield from records
        except (OSError, UnicodeDecodeError) as exc:
            raise self._read_error(exc) from None

    async def iter_catalog_items(self) -> AsyncIterator[CatalogItem]:
        self._check_file()
        started = time.perf_counter()
        fmt = detect_format(self.path)
        count = 0
        self.source_rejects = []
        for position, record in enumerate(self._guarded(self._records(fmt)), start=1):
            if isinstance(record, SourceReject):
                self.source_rejects.append(record)
                continue
            count += 1
            yield record_to_item(record)
            fault_point("fetch.export.record")
            if position % _YIELD_EVERY == 0:
                await asyncio.sleep(0)  # let other tasks (progress, cancellation) run on huge files
        if count == 0 and not self.source_rejects:
            raise SourceError(f"export file {self.path.name!r} contains no items", setting="KRYTEN_EXPORT_PATH")
        elapsed = time.perf_counter() - started
        self.stats = {
            "format": fmt,
            "file_bytes": self.path.stat().st_size,
            "records": count,
            "source_rejects": len(self.source_rejects),
            "wall_time_s": round(elapsed, 3),
        }


def _foreign_encoding(head: bytes) -> str | None:
    """The encoding a file evidently has when it is not UTF-8: a UTF-16/32 byte-order mark, or NUL bytes."""
    for bom, name in ((b"\xff\xfe\x00\x00", "UTF-32LE"), (b"\x00\x00\xfe\xff", "UTF-32BE"),
                      (b"\xff\xfe", "UTF-16LE"), (b"\xfe\xff", "UTF-16BE")):
        if head.startswith(bom):
            return name
    if b"\x00" in head:
        even, odd = head[0::2].count(0), head[1::2].count(0)
        if odd > len(head) // 4 and even == 0:
            return "UTF-16LE"
        if even > len(head) // 4 and odd == 0:
            return "UTF-16BE"
        return "binary"
    return None


def _clip(text: str) -> str:
    text = text.rstrip("\r\n")
    return text if len(text) <= _MAX_REJECT_RECORD_CHARS else text[:_MAX_REJECT_RECORD_CHARS] + "…"
