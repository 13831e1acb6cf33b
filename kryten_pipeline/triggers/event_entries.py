"""What one entry of the ``catalog.updated`` stream is: a valid event (``parse_event``) or a malformed entry with
its reason, and the order of stream entry ids. The wire formats are described in ``catalog_events``."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kryten_pipeline.errors import KrytenError
from kryten_pipeline.namespaces import validate_namespace

EVENT_TYPE = "catalog.updated"
ENTITIES = frozenset({"category", "series", "season", "episode", "mediaAsset"})
OPERATIONS = frozenset({"create", "update", "delete"})
_ENVELOPE_FIELDS = ("event", "data", "message")
_MAX_REASON_CHARS = 200


class MalformedEventError(ValueError):
    """An entry that is not a valid ``catalog.updated`` event; the message is the reason."""


@dataclass(frozen=True)
class CatalogEvent:
    """One valid ``catalog.updated`` event and the stream entry that carried it."""

    entry_id: str
    namespace: str
    entity: str
    entity_id: str
    operation: str
    timestamp: str
    payload: dict[str, Any] = field(default_factory=dict)

    @property
    def entry_ms(self) -> int:
        """When Redis stored the entry (milliseconds since the epoch, from the entry id)."""
        return entry_ms(self.entry_id)


@dataclass(frozen=True)
class MalformedEntry:
    entry_id: str
    reason: str


def entry_id_key(entry_id: str) -> tuple[int, int]:
    """Sort key of a stream entry id ``<ms>-<seq>``."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def entry_ms(entry_id: str) -> int:
    return entry_id_key(entry_id)[0]


def max_entry_id(*ids: str | None) -> str:
    present = [i for i in ids if i]
    return max(present, key=entry_id_key) if present else "0-0"


def min_entry_id(*ids: str | None) -> str | None:
    present = [i for i in ids if i]
    return min(present, key=entry_id_key) if present else None


def entry_text(value: Any) -> str | None:
    """A field or id as redis-py returns it (bytes unless decoded) as text."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def clip_reason(text: str) -> str:
    """A reason short enough for a log line and the run's metadata."""
    return text if len(text) <= _MAX_REASON_CHARS else text[: _MAX_REASON_CHARS - 1] + "…"


def parse_event(entry_id: str, fields: Mapping[Any, Any] | None, *, default_namespace: str) -> CatalogEvent:
    """Validate one stream entry as a ``catalog.updated`` event; raise MalformedEventError with the reason."""
    if not fields:
        raise MalformedEventError("entry has no fields (deleted from the stream?)")
    flat = {entry_text(k) or "": v for k, v in fields.items()}
    event: dict[str, Any]
    if "type" not in flat and len(flat) == 1 and next(iter(flat)) in _ENVELOPE_FIELDS:
        (name, raw), = flat.items()
        try:
            decoded = json.loads(entry_text(raw) or "")
        except ValueError as exc:
            raise MalformedEventError(f"field {name!r} is not JSON: {exc}") from None
        if not isinstance(decoded, dict):
            raise MalformedEventError(f"field {name!r} does not hold a JSON object")
        event = decoded
    else:
        event = {k: entry_text(v) for k, v in flat.items()}

    kind = event.get("type")
    if kind != EVENT_TYPE:
        raise MalformedEventError(f"type is {kind!r}, expected {EVENT_TYPE!r}")
    entity = _one_of(event, "entity", ENTITIES, ", ".join(sorted(ENTITIES)))
    entity_id = _parsed(event, "entityId", uuid.UUID, "a UUID")
    operation = _one_of(event, "operation", OPERATIONS, "create, update, delete")
    timestamp = _parsed(event, "timestamp", datetime.fromisoformat, "ISO 8601")
    payload = event.get("payload", {})
    if isinstance(payload, str):
        try:
            payload = json.loads(payload) if payload.strip() else {}
        except ValueError as exc:
            raise MalformedEventError(f"payload is not JSON: {exc}") from None
    if payload is None:
        payload = {}
    if not isinstance(payload, dict):
        raise MalformedEventError("payload is not a JSON object")
    namespace = payload.get("namespace") or event.get("namespace") or default_namespace
    try:
        validate_namespace(str(namespace))
    except KrytenError:
        raise MalformedEventError(f"namespace {namespace!r} is not a valid namespace name") from None
    return CatalogEvent(
        entry_id=entry_id, namespace=str(namespace), entity=str(entity), entity_id=str(entity_id),
        operation=str(operation), timestamp=str(timestamp), payload=payload,
    )


def _one_of(event: Mapping[str, Any], name: str, allowed: frozenset[str], listed: str) -> Any:
    value = event.get(name)
    if value not in allowed:
        raise MalformedEventError(f"{name} {value!r} is not one of {listed}")
    return value


def _parsed(event: Mapping[str, Any], name: str, parse: Any, what: str) -> Any:
    value = event.get(name)
    try:
        parse(str(value))
    except ValueError:
        raise MalformedEventError(f"{name} {value!r} is not {what}") from None
    return value
