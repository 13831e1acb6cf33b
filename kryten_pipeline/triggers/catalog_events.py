"""Seed 004's ``catalog.updated`` events, read from a Redis Stream through a consumer group.

Delivery is at-least-once: an entry read with ``XREADGROUP`` stays *pending* in the group until it is
acknowledged with ``XACK``, and an entry is acknowledged only once the catalog change it announces has
been persisted — here, once a refresh of its namespace that started after the entry was read succeeded
(see :meth:`CatalogEventStream.ack_namespace_through`). So a failed refresh leaves its entries pending;
they are taken over again with ``XAUTOCLAIM`` once they have been idle for ``claim_idle_ms`` and retried,
which also rescues entries a dead consumer left behind. Malformed entries are acknowledged at once
(retrying them cannot help) and reported with the reason.

An entry is either flat — the seed's fields as stream fields, ``payload`` as a JSON string::

    XADD catalog:events * type catalog.updated entity episode entityId 6f1c… operation update
         timestamp 2025-12-18T12:34:56Z payload '{"status":"published","namespace":"default"}'

— or one field (``event``, ``data`` or ``message``) holding the whole event as a JSON object. The
namespace to refresh is ``payload.namespace``, else a ``namespace`` field, else the default namespace.

Plain Python on redis-py: no Dagster here (the sensors in ``dagster_defs.sensors`` wire it).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from kryten_pipeline.errors import ConfigurationError, EventStreamError
from kryten_pipeline.settings import Settings
from kryten_pipeline.triggers.event_entries import (
    CatalogEvent,
    MalformedEntry,
    MalformedEventError,
    clip_reason,
    entry_text,
    max_entry_id,
    min_entry_id,
    parse_event,
)

if TYPE_CHECKING:
    import redis

__all__ = ["CatalogEventStream", "CoalescingState", "NamespaceBurst", "ReadResult", "redact_redis_url"]

logger = logging.getLogger(__name__)

_ACK_SCAN_PAGE = 200

def _redis_failures() -> tuple[type[BaseException], ...]:
    """Everything redis-py raises for an unreachable, refusing or misbehaving server.

    redis-py is imported only when a stream is used (≈0.1–0.2 s): most processes that load the code location,
    the CLI's refresh among them, never touch Redis."""
    import redis.exceptions

    return (redis.exceptions.RedisError, OSError)


@dataclass
class ReadResult:
    """One bounded read: valid events, malformed entries (already acknowledged), and where to go on."""

    events: list[CatalogEvent] = field(default_factory=list)
    malformed: list[MalformedEntry] = field(default_factory=list)
    recovered: int = 0  # entries of this consumer read before but not handled (e.g. a crashed tick)
    new: int = 0  # entries never delivered to the group before
    reclaimed: int = 0  # idle pending entries taken over with XAUTOCLAIM
    seen_id: str = "0-0"  # highest id read as new or recovered: the next recovery read starts after it
    claim_cursor: str = "0-0"  # where the next XAUTOCLAIM scan continues ("0-0": from the start)

    @property
    def entries(self) -> int:
        return self.recovered + self.new + self.reclaimed


def redact_redis_url(url: str) -> str:
    """``url`` without its password (``redis://:secret@host:6379/0`` → ``redis://host:6379/0``)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparseable REDIS_URL>"
    return f"{parts.scheme}://{host}{port}{parts.path}"


class CatalogEventStream:
    """The sensor's view of the stream: one consumer in one consumer group."""

    def __init__(
        self,
        client: redis.Redis,
        stream: str,
        group: str,
        consumer: str,
        *,
        default_namespace: str,
        batch_size: int = 500,
        claim_idle_ms: int = 900_000,
        label: str | None = None,
    ) -> None:
        self.client = client
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.default_namespace = default_namespace
        self.batch_size = batch_size
        self.claim_idle_ms = claim_idle_ms
        self.label = label or stream

    @classmethod
    def from_settings(cls, settings: Settings, *, default_namespace: str | None = None) -> CatalogEventStream:
        """A reader on ``REDIS_URL``; raises ConfigurationError when it is unset or malformed."""
        if not settings.redis_url:
            raise ConfigurationError("REDIS_URL is not set, so there is no catalog event stream to read",
                                     setting="REDIS_URL")
        import redis

        shown = redact_redis_url(settings.redis_url)
        try:
            client = redis.Redis.from_url(
                settings.redis_url, decode_responses=True, socket_timeout=10, socket_connect_timeout=5,
            )
        except ValueError as exc:
            raise ConfigurationError(f"REDIS_URL {shown} is not a Redis URL: {exc}", setting="REDIS_URL") from None
        return cls(
            client, settings.catalog_event_stream_key, settings.event_group, settings.event_consumer,
            default_namespace=default_namespace or settings.namespaces[0],
            batch_size=settings.event_batch_size, claim_idle_ms=settings.event_claim_idle_s * 1000,
            label=f"{shown} stream {settings.catalog_event_stream_key}",
        )

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> CatalogEventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading -----------------------------------------------------------------------------------

    def ensure_group(self) -> bool:
        """Create the consumer group (and the stream) if absent; True if this call created it.

        A new group starts at the end of the stream (``$``): a refresh reads the whole catalog anyway,
        so history before the pipeline subscribed needs no replay.
        """
        import redis.exceptions

        try:
            self.client.xgroup_create(self.stream, self.group, id="$", mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" in str(exc):
                return False
            raise self._error("creating consumer group", exc) from None
        except _redis_failures() as exc:
            raise self._error("creating consumer group", exc) from None
        logger.info("created consumer group %s on %s", self.group, self.label)
        return True

    def read_batch(self, *, seen_id: str = "0-0", claim_cursor: str = "0-0") -> ReadResult:
        """Read at most ``batch_size`` entries: this consumer's unhandled pending ones first (ids after
        ``seen_id``), then new ones, then idle pending ones of any consumer (XAUTOCLAIM from
        ``claim_cursor``). Malformed entries are acknowledged before this returns."""
        self.ensure_group()
        result = ReadResult(seen_id=seen_id or "0-0", claim_cursor=claim_cursor or "0-0")
        to_ack: list[str] = []
        budget = self.batch_size
        try:
            recovered = self._read_group(result.seen_id, budget)
            result.recovered = len(recovered)
            budget -= len(recovered)
            new = self._read_group(">", budget) if budget > 0 else []
            result.new = len(new)
            budget -= len(new)
            for entry_id, _fields in (*recovered, *new):
                result.seen_id = max_entry_id(result.seen_id, entry_id)
            reclaimed: list[tuple[str, Any]] = []
            if budget > 0:
                answer = self.client.xautoclaim(
                    self.stream, self.group, self.consumer, self.claim_idle_ms, result.claim_cursor, count=budget,
                )
                result.claim_cursor = entry_text(answer[0]) or "0-0"
                reclaimed = list(answer[1])
                # Redis ≥ 7 also reports (and drops from the pending list) entries deleted from the stream.
                if len(answer) > 2 and answer[2]:
                    logger.info("%d pending entries were deleted from %s", len(answer[2]), self.label)
            result.reclaimed = len(reclaimed)
        except _redis_failures() as exc:
            raise self._error("reading", exc) from None
        for entry_id, fields in (*recovered, *new, *reclaimed):
            entry_id = entry_text(entry_id) or ""
            try:
                result.events.append(parse_event(entry_id, fields, default_namespace=self.default_namespace))
            except MalformedEventError as exc:
                reason = clip_reason(str(exc))
                result.malformed.append(MalformedEntry(entry_id, reason))
                to_ack.append(entry_id)
                logger.warning("malformed catalog event %s on %s (acknowledged): %s", entry_id, self.label, reason)
        if to_ack:
            self.ack(to_ack)
        return result

    def _read_group(self, start: str, count: int) -> list[tuple[str, Any]]:
        answer = self.client.xreadgroup(self.group, self.consumer, {self.stream: start}, count=count)
        entries: list[tuple[str, Any]] = []
        for _stream, items in answer or []:
            entries.extend((entry_text(entry_id) or "", fields) for entry_id, fields in items)
        return entries

    # -- acknowledging -----------------------------------------------------------------------------

    def ack(self, entry_ids: Iterable[str]) -> int:
        """XACK the entries; returns how many were pending (already acknowledged ones count 0)."""
        ids = list(dict.fromkeys(entry_ids))
        if not ids:
            return 0
        try:
            return int(self.client.xack(self.stream, self.group, *ids))
        except _redis_failures() as exc:
            raise self._error("acknowledging", exc) from None

    def ack_namespace_through(self, namespace: str, last_id: str, *, max_scan: int = 10_000) -> list[str]:
        """Acknowledge every pending entry of ``namespace`` with an id up to ``last_id``, any consumer.

        Called once a refresh of ``namespace`` that started after ``last_id`` was read has succeeded:
        that refresh read the catalog after each of those changes, so all of them are persisted —
        including entries of earlier, failed runs. Entries deleted from the stream or malformed are
        acknowledged too. Scans at most ``max_scan`` pending entries.
        """
        acked: list[str] = []
        start = "-"
        scanned = 0
        try:
            while scanned < max_scan:
                page = self.client.xpending_range(
                    self.stream, self.group, min=start, max=last_id, count=min(_ACK_SCAN_PAGE, max_scan - scanned),
                )
                if not page:
                    break
                ids = [entry_text(row["message_id"]) or "" for row in page]
                scanned += len(ids)
                pipe = self.client.pipeline(transaction=False)
                for entry_id in ids:
                    pipe.xrange(self.stream, min=entry_id, max=entry_id, count=1)
                matches: list[str] = []
                for entry_id, found in zip(ids, pipe.execute(), strict=True):
                    if not found:
                        matches.append(entry_id)  # deleted from the stream: nothing left to do
                        continue
                    try:
                        event = parse_event(entry_id, found[0][1], default_namespace=self.default_namespace)
                    except MalformedEventError:
                        matches.append(entry_id)
                        continue
                    if event.namespace == namespace:
                        matches.append(entry_id)
                if matches:
                    self.client.xack(self.stream, self.group, *matches)
                    acked.extend(matches)
                if len(ids) < _ACK_SCAN_PAGE:
                    break
                start = "(" + ids[-1]
        except _redis_failures() as exc:
            raise self._error("acknowledging", exc) from None
        return acked

    # -- inspection --------------------------------------------------------------------------------

    def server_time_ms(self) -> int:
        """Redis's clock: compared with entry ids (also Redis's clock), so host clock skew cannot matter."""
        try:
            seconds, micros = self.client.time()
        except _redis_failures() as exc:
            raise self._error("reading the server time", exc) from None
        return int(seconds) * 1000 + int(micros) // 1000

    def pending(self, consumer: str | None = None, *, count: int = 1000) -> list[dict[str, Any]]:
        """Pending entries of the group (optionally of one consumer): id, consumer, idle ms, deliveries."""
        try:
            rows = self.client.xpending_range(self.stream, self.group, min="-", max="+", count=count,
                                              consumername=consumer)
        except _redis_failures() as exc:
            raise self._error("listing pending entries", exc) from None
        return [
            {"entry_id": entry_text(r["message_id"]), "consumer": entry_text(r["consumer"]),
             "idle_ms": int(r["time_since_delivered"]), "deliveries": int(r["times_delivered"])}
            for r in rows
        ]

    def _error(self, doing: str, exc: BaseException) -> EventStreamError:
        import redis.exceptions

        text = str(exc).strip() or type(exc).__name__
        if isinstance(exc, redis.exceptions.AuthenticationError):
            text = "authentication failed (check the password in REDIS_URL)"
        return EventStreamError(f"{doing} {self.label} (group {self.group}) failed: {text}", setting="REDIS_URL")


# -- coalescing ---------------------------------------------------------------------------------------

MAX_DELAY_WINDOWS = 10  # a steady trickle of events never postpones a refresh by more than this many windows


@dataclass
class NamespaceBurst:
    """Events of one namespace not yet handed to a refresh: a compact summary, not the ids themselves."""

    first_id: str
    last_id: str
    count: int
    first_ms: int  # oldest entry time (Redis clock)
    last_ms: int  # newest entry time

    def add(self, event: CatalogEvent) -> None:
        self.first_id = min_entry_id(self.first_id, event.entry_id) or event.entry_id
        self.last_id = max_entry_id(self.last_id, event.entry_id)
        self.count += 1
        self.first_ms = min(self.first_ms, event.entry_ms)
        self.last_ms = max(self.last_ms, event.entry_ms)

    def due(self, now_ms: int, debounce_ms: int) -> bool:
        """Quiet for a whole debounce window, or waiting for too long already."""
        return now_ms - self.last_ms >= debounce_ms or now_ms - self.first_ms >= MAX_DELAY_WINDOWS * max(
            debounce_ms, 1000
        )


@dataclass
class CoalescingState:
    """The event sensor's cursor: read positions plus the bursts waiting for their debounce window.

    Only summaries are kept (first/last id, count): the entries stay pending in the consumer group
    until a refresh covering them succeeds, which is what acknowledging needs.
    """

    seen_id: str = "0-0"
    claim_cursor: str = "0-0"
    batch_seq: int = 0
    bursts: dict[str, NamespaceBurst] = field(default_factory=dict)

    @classmethod
    def from_cursor(cls, cursor: str | None) -> CoalescingState:
        if not cursor:
            return cls()
        try:
            data = json.loads(cursor)
            return cls(
                seen_id=str(data.get("seen", "0-0")),
                claim_cursor=str(data.get("claim", "0-0")),
                batch_seq=int(data.get("seq", 0)),
                bursts={ns: NamespaceBurst(**burst) for ns, burst in dict(data.get("bursts", {})).items()},
            )
        except (ValueError, TypeError, AttributeError):
            logger.warning("event sensor cursor is unreadable; starting over (pending entries are re-read)")
            return cls()

    def to_cursor(self) -> str:
        return json.dumps({
            "v": 1, "seen": self.seen_id, "claim": self.claim_cursor, "seq": self.batch_seq,
            "bursts": {ns: vars(burst) for ns, burst in sorted(self.bursts.items())},
        }, separators=(",", ":"))

    def absorb(self, read: ReadResult, events: Iterable[CatalogEvent]) -> None:
        self.seen_id = max_entry_id(self.seen_id, read.seen_id)
        self.claim_cursor = read.claim_cursor
        for event in events:
            burst = self.bursts.get(event.namespace)
            if burst is None:
                self.bursts[event.namespace] = NamespaceBurst(
                    event.entry_id, event.entry_id, 1, event.entry_ms, event.entry_ms
                )
            else:
                burst.add(event)

    def take_due(self, now_ms: int, debounce_ms: int, *, hold: Iterable[str] = ()) -> list[tuple[str, NamespaceBurst]]:
        """Remove and return the bursts whose window has passed (except namespaces in ``hold``)."""
        held = set(hold)
        due = [(ns, b) for ns, b in sorted(self.bursts.items()) if ns not in held and b.due(now_ms, debounce_ms)]
        for ns, _burst in due:
            del self.bursts[ns]
        return due
