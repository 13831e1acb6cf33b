"""ContentService strategy (issue 5 §2, seed 004): the gRPC ``ContentService.CatalogSnapshot`` stream.

The stream carries flattened series / season / episode / media-asset entries. Playable episodes and
stand-alone media assets become ``CatalogItem``s; series and season entries only give context (a series'
categories flow to its episodes, titles read ``Series — S01E02 — Episode title``).

Unlike MediaCMS, this service gives each entry its manifest. Seed 004's contract is that a manifest is https
on the StreamingService CDN and that a missing one is an error, so an entry whose manifest breaks that rule
is rejected here with a reason and never reaches a snapshot. (kryten still serves its own manifest URL,
derived from the video id downstream, for every item.)

Transport: TLS (CA from a file or the system roots), mutual TLS (client certificate and key from files), or
plaintext to a local Envoy sidecar. Every call sends ``authorization: Bearer <SERVICE_AUTH_TOKEN>``.
Chunks are read until a ``next_cursor`` is empty; a dropped stream is resumed from the last complete chunk's
cursor, with bounded retries and backoff.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import grpc
import grpc.aio

from kryten_pipeline.catalog_item import CatalogItem, ProgressCallback, SourceReject
from kryten_pipeline.errors import ConfigurationError, SourceError
from kryten_pipeline.proto_gen.kryten.contentservice.v1 import content_pb2, content_pb2_grpc
from kryten_pipeline.retry_policy import RetryPolicy, TransientFailure
from kryten_pipeline.settings import Settings

AUTH_METADATA_KEY = "authorization"
PLAYABLE_STATUSES = frozenset({"published"})
#: Codes after which the stream is resumed from the last cursor (a dropped connection, a restarting
#: server, an overloaded proxy). Everything else is not transient and fails at once.
RETRYABLE_CODES = frozenset({
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.INTERNAL,  # e.g. "RST_STREAM" when a proxy cuts the stream
})
_AUTH_CODES = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})
_CHANNEL_OPTIONS = (
    ("grpc.primary_user_agent", "kryten-pipeline"),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
)
_KIND = content_pb2.EntityKind
_KIND_NAMES = {
    _KIND.ENTITY_KIND_SERIES: "series",
    _KIND.ENTITY_KIND_SEASON: "season",
    _KIND.ENTITY_KIND_EPISODE: "episode",
    _KIND.ENTITY_KIND_MEDIA_ASSET: "mediaAsset",
}


def load_channel_credentials(ca: str | None, cert: str | None, key: str | None) -> grpc.ChannelCredentials:
    """TLS credentials from files: ``ca`` (None: system roots), and ``cert`` + ``key`` for mutual TLS."""
    if bool(cert) != bool(key):
        missing = "CONTENT_SERVICE_TLS_KEY" if cert else "CONTENT_SERVICE_TLS_CERT"
        raise ConfigurationError(
            "mutual TLS needs both a client certificate and its key; only one is set", setting=missing
        )
    return grpc.ssl_channel_credentials(
        root_certificates=_read_pem(ca, "CONTENT_SERVICE_TLS_CA") if ca else None,
        private_key=_read_pem(key, "CONTENT_SERVICE_TLS_KEY") if key else None,
        certificate_chain=_read_pem(cert, "CONTENT_SERVICE_TLS_CERT") if cert else None,
    )


def compose_episode_title(series_title: str, season_number: int | None, episode_number: int | None,
                          episode_title: str) -> str:
    """``Series — S01E02 — Episode title``, leaving out whatever part is unknown."""
    series_title = series_title.strip()
    episode_title = episode_title.strip()
    if season_number is not None and episode_number is not None:
        code = f"S{season_number:02d}E{episode_number:02d}"
    elif episode_number is not None:
        code = f"E{episode_number:02d}"
    elif season_number is not None:
        code = f"S{season_number:02d}"
    else:
        code = ""
    if episode_title == series_title:
        episode_title = ""  # "Show — S01E01 — Show" says nothing the series name did not
    return " — ".join(part for part in (series_title, code, episode_title) if part)


def parse_cdn_hosts(raw: str | Iterable[str]) -> tuple[str, ...]:
    """Host names from a comma list; accepts bare hosts, URLs, and ``*.example.net`` for any subdomain."""
    parts = raw.split(",") if isinstance(raw, str) else list(raw)
    hosts = []
    for part in parts:
        part = part.strip().lower()
        if not part:
            continue
        if "://" in part:
            part = urlsplit(part).hostname or ""
        hosts.append(part.rstrip("."))
    return tuple(host for host in hosts if host)


@dataclass(slots=True)
class _Parent:
    title: str
    categories: list[str]


@dataclass(slots=True)
class _Mapping:
    """Series/season context and the episodes waiting for their parent's entry."""

    parents: dict[str, _Parent] = field(default_factory=dict)
    waiting: dict[str, list[content_pb2.CatalogFeedItem]] = field(default_factory=dict)


class _CursorStream:
    """The catalog as a sequence of chunks over ``CatalogSnapshot`` calls, each resumed from the cursor of the
    last chunk received. ``next_chunk`` is one attempt: the next chunk, ``None`` once the catalog is complete, or
    ``TransientFailure`` (the call is dropped; the next attempt opens a new one from the cursor)."""

    def __init__(self, connector: ContentServiceConnector, stub: Any, metadata: tuple[tuple[str, str], ...]) -> None:
        self.connector = connector
        self.stub = stub
        self.metadata = metadata
        self.cursor: str | None = None
        self._call: Any = None
        self._sent_cursor: str | None = None
        self._chunks_this_call = 0

    async def next_chunk(self) -> content_pb2.CatalogSnapshotChunk | None:
        connector = self.connector
        while True:
            if self._call is None:
                request = content_pb2.CatalogSnapshotRequest(limit=connector.chunk_limit)
                if self.cursor:
                    request.cursor = self.cursor
                self._sent_cursor, self._chunks_this_call = self.cursor, 0
                connector.stats["calls"] += 1
                self._call = self.stub.CatalogSnapshot(request, metadata=self.metadata)
            try:
                chunk = await asyncio.wait_for(self._call.read(), timeout=connector.idle_timeout_s)
            except TimeoutError:
                self.close()
                raise TransientFailure(f"no data for {connector.idle_timeout_s:g}s") from None
            except grpc.aio.AioRpcError as exc:
                self.close()
                raise TransientFailure(connector._classify(exc, self.cursor)) from None  # or a permanent error
            if chunk is not grpc.aio.EOF:
                self._chunks_this_call += 1
                return chunk
            # The server ended the call: either the catalog is done, or it pages per call.
            delivered = self._chunks_this_call
            self.close()
            if not delivered:
                return None
            if self.cursor == self._sent_cursor:
                raise SourceError(
                    f"{connector.label} ended a call without moving past cursor {self.cursor!r}; refusing to loop",
                    setting="CONTENT_SERVICE_ADDR",
                )

    def close(self) -> None:
        if self._call is not None:
            self._call.cancel()  # no-op when the call already ended; frees it when we stop early
            self._call = None


class ContentServiceConnector:
    """Reads the ContentService catalog stream and maps it onto ``CatalogItem``s."""

    def __init__(
        self,
        address: str,
        *,
        token: str,
        cdn_hosts: str | Iterable[str],
        credentials: grpc.ChannelCredentials | None,
        transport: str = "tls",
        chunk_limit: int = 100,
        max_retries: int = 5,
        idle_timeout_s: float = 60.0,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 10.0,
        progress: ProgressCallback | None = None,
    ) -> None:
        """``credentials=None`` means plaintext (a local sidecar); see ``from_settings`` for the usual way in."""
        if not token or any(ch.isspace() or not ch.isprintable() or ord(ch) > 126 for ch in token):
            raise ConfigurationError(
                "SERVICE_AUTH_TOKEN must be a non-empty printable ASCII token without spaces",
                setting="SERVICE_AUTH_TOKEN",
            )
        self.cdn_hosts = parse_cdn_hosts(cdn_hosts)
        if not self.cdn_hosts:
            raise ConfigurationError(
                "source content-service needs the StreamingService CDN host that manifest URLs must be on "
                "(seed 004), e.g. CONTENT_SERVICE_CDN_HOST=cdn.example.net",
                setting="CONTENT_SERVICE_CDN_HOST",
            )
        self.address = address
        self._metadata = ((AUTH_METADATA_KEY, f"Bearer {token}"),)
        self._credentials = credentials
        self.transport = "plaintext" if credentials is None else transport
        self.chunk_limit = chunk_limit
        self.idle_timeout_s = idle_timeout_s
        self._retry = RetryPolicy(max_retries, backoff_base_s, backoff_max_s)
        self.progress = progress
        self.label = f"content-service:{address} ({self.transport})"
        self.stats: dict[str, Any] = {}
        self.source_rejects: list[SourceReject] = []

    @classmethod
    def from_settings(cls, settings: Settings, *, progress: ProgressCallback | None = None) -> ContentServiceConnector:
        if not settings.content_service_addr:
            raise ConfigurationError(
                "source content-service needs the ContentService gRPC address, e.g. "
                "CONTENT_SERVICE_ADDR=content.internal:50051 (or 127.0.0.1:9001 for a local Envoy sidecar)",
                setting="CONTENT_SERVICE_ADDR",
            )
        if not settings.service_auth_token:
            raise ConfigurationError(
                "source content-service needs SERVICE_AUTH_TOKEN (sent as 'authorization: Bearer <token>')",
                setting="SERVICE_AUTH_TOKEN",
            )
        tls_files = (settings.content_service_tls_ca, settings.content_service_tls_cert,
                     settings.content_service_tls_key)
        credentials: grpc.ChannelCredentials | None
        if settings.content_service_plaintext:
            if any(tls_files):
                raise ConfigurationError(
                    "CONTENT_SERVICE_PLAINTEXT=true contradicts the CONTENT_SERVICE_TLS_* files that are set; "
                    "choose one",
                    setting="CONTENT_SERVICE_PLAINTEXT",
                )
            credentials, transport = None, "plaintext"
        else:
            credentials = load_channel_credentials(*tls_files)
            transport = "mtls" if settings.content_service_tls_cert else "tls"
        return cls(
            settings.content_service_addr,
            token=settings.service_auth_token,
            cdn_hosts=settings.content_service_cdn_host or "",
            credentials=credentials,
            transport=transport,
            chunk_limit=settings.content_service_chunk_limit,
            max_retries=settings.content_service_max_retries,
            idle_timeout_s=float(settings.content_service_idle_timeout_s),
            progress=progress,
        )

    @asynccontextmanager
    async def _channel(self) -> AsyncIterator[grpc.aio.Channel]:
        if self._credentials is None:
            channel = grpc.aio.insecure_channel(self.address, options=_CHANNEL_OPTIONS)
        else:
            channel = grpc.aio.secure_channel(self.address, self._credentials, options=_CHANNEL_OPTIONS)
        try:
            yield channel
        finally:
            await channel.close()

    async def iter_catalog_items(self) -> AsyncIterator[CatalogItem]:
        """Yield every playable entry; ``SourceError`` if the stream cannot be read to its end."""
        started = time.perf_counter()
        self.source_rejects = []
        self.stats = {
            "transport": self.transport,
            "calls": 0,
            "chunks": 0,
            "feed_items": 0,
            "items": 0,
            "rejected": 0,
            "retries": 0,
            "excluded": {"not_published": 0, "series": 0, "season": 0, "attached_media_assets": 0,
                         "unknown_kind": 0},
            "episodes_without_parent_entry": 0,
            "wall_time_s": 0.0,
            "items_per_s": 0.0,
        }
        mapping = _Mapping()
        async with self._channel() as channel:
            stream = _CursorStream(self, content_pb2_grpc.ContentServiceStub(channel), self._metadata)
            try:
                while True:
                    # Retried per chunk: the retries bound consecutive failures without a chunk received.
                    try:
                        chunk = await self._retry.call(stream.next_chunk, on_retry=self._count_retry)
                    except TransientFailure as exc:
                        raise SourceError(
                            f"the ContentService stream at {self.label} kept failing ({exc.problem}) after "
                            f"{self.stats['items']} items and {self.stats['retries']} retries"
                            + self._tls_hint(exc.problem),
                            setting="CONTENT_SERVICE_ADDR",
                        ) from None
                    if chunk is None:
                        break  # the server ended a call without a chunk: the catalog is complete
                    self.stats["chunks"] += 1
                    for item in self._map_chunk(chunk, mapping):
                        self.stats["items"] += 1
                        yield item
                    stream.cursor = chunk.next_cursor if chunk.HasField("next_cursor") else ""
                    self._update_timing(started)
                    if self.progress is not None:
                        self.progress(dict(self.stats))
                    if not stream.cursor:
                        break
            finally:
                stream.close()
        # Episodes whose series/season entry never came are still playable; they get what context there is.
        for feeds in mapping.waiting.values():
            for feed in feeds:
                self.stats["episodes_without_parent_entry"] += 1
                item = self._playable_item(feed, mapping)
                if item is not None:
                    self.stats["items"] += 1
                    yield item
        mapping.waiting.clear()
        self._update_timing(started)

    def _count_retry(self, _failure: TransientFailure) -> None:
        self.stats["retries"] += 1

    def _classify(self, exc: grpc.aio.AioRpcError, cursor: str | None) -> str:
        """Raise for errors a retry cannot fix; return a short description of a transient one."""
        code = exc.code()
        details = (exc.details() or "").strip()
        if code in _AUTH_CODES:
            raise ConfigurationError(
                f"ContentService at {self.address} refused the token ({code.name}: {details or 'no details'}); "
                "set SERVICE_AUTH_TOKEN to a token allowed to read the catalog",
                setting="SERVICE_AUTH_TOKEN",
            ) from None
        if code == grpc.StatusCode.UNIMPLEMENTED:
            raise ConfigurationError(
                f"{self.address} does not implement kryten.contentservice.v1.ContentService/CatalogSnapshot "
                f"({details or 'UNIMPLEMENTED'}); check CONTENT_SERVICE_ADDR points at ContentService",
                setting="CONTENT_SERVICE_ADDR",
            ) from None
        if code not in RETRYABLE_CODES:
            raise SourceError(
                f"the ContentService stream at {self.label} failed with {code.name}: {details or 'no details'} "
                f"(after {self.stats['items']} items, cursor {cursor!r})",
                setting="CONTENT_SERVICE_ADDR",
            ) from None
        return f"{code.name}: {details}" if details else code.name

    def _tls_hint(self, failure: str) -> str:
        text = failure.lower()
        if self._credentials is not None and any(w in text for w in ("ssl", "tls", "handshake", "certificate")):
            return "; check CONTENT_SERVICE_TLS_CA / CONTENT_SERVICE_TLS_CERT / CONTENT_SERVICE_TLS_KEY"
        return ""

    def _update_timing(self, started: float) -> None:
        elapsed = time.perf_counter() - started
        self.stats["wall_time_s"] = round(elapsed, 3)
        self.stats["items_per_s"] = round(self.stats["items"] / elapsed, 1) if elapsed > 0 else 0.0

    # --- mapping --------------------------------------------------------------------------------------

    def _map_chunk(self, chunk: content_pb2.CatalogSnapshotChunk, mapping: _Mapping) -> list[CatalogItem]:
        items: list[CatalogItem] = []
        excluded = self.stats["excluded"]
        for feed in chunk.items:
            self.stats["feed_items"] += 1
            kind = feed.kind
            if kind in (_KIND.ENTITY_KIND_SERIES, _KIND.ENTITY_KIND_SEASON):
                excluded["series" if kind == _KIND.ENTITY_KIND_SERIES else "season"] += 1
                mapping.parents[feed.id] = _Parent(feed.title.strip(), _clean_categories(feed.categories))
                items.extend(self._release_waiting(feed.id, mapping))
            elif kind == _KIND.ENTITY_KIND_EPISODE:
                item = self._episode_or_wait(feed, mapping)
                if item is not None:
                    items.append(item)
            elif kind == _KIND.ENTITY_KIND_MEDIA_ASSET:
                if feed.episode_id or feed.season_id or feed.series_id:
                    excluded["attached_media_assets"] += 1  # a trailer or extra, not a catalog entry of its own
                    continue
                item = self._playable_item(feed, mapping)
                if item is not None:
                    items.append(item)
            else:
                excluded["unknown_kind"] += 1
        return items

    def _episode_or_wait(self, feed: content_pb2.CatalogFeedItem, mapping: _Mapping) -> CatalogItem | None:
        # The feed is flattened but not necessarily parent-first: hold an episode until its series (and
        # season) entry has been seen, so the series' categories reach it whatever the order.
        for parent_id in (feed.series_id, feed.season_id):
            if parent_id and parent_id not in mapping.parents:
                mapping.waiting.setdefault(parent_id, []).append(feed)
                return None
        return self._playable_item(feed, mapping)

    def _release_waiting(self, parent_id: str, mapping: _Mapping) -> list[CatalogItem]:
        items = []
        for feed in mapping.waiting.pop(parent_id, []):
            item = self._episode_or_wait(feed, mapping)
            if item is not None:
                items.append(item)
        return items

    def _playable_item(self, feed: content_pb2.CatalogFeedItem, mapping: _Mapping) -> CatalogItem | None:
        kind = _KIND_NAMES.get(feed.kind, "unknown")
        if feed.status.strip().lower() not in PLAYABLE_STATUSES:
            self.stats["excluded"]["not_published"] += 1
            return None
        series = mapping.parents.get(feed.series_id) if feed.series_id else None
        season = mapping.parents.get(feed.season_id) if feed.season_id else None
        if feed.kind == _KIND.ENTITY_KIND_EPISODE:
            title = compose_episode_title(
                feed.series_title or (series.title if series else ""),
                feed.season_number if feed.HasField("season_number") else None,
                feed.episode_number if feed.HasField("episode_number") else None,
                feed.title,
            )
        else:
            title = feed.title.strip()
        manifest_url = feed.playback.manifest_url.strip() if feed.HasField("playback") else ""
        reason = None
        if not feed.id:
            reason = "entry has no id"
        elif not title:
            reason = "entry has no title"
        else:
            reason = self._manifest_problem(manifest_url)
        if reason is not None:
            self.stats["rejected"] += 1
            record = {"id": feed.id, "kind": kind, "title": title, "manifest_url": _display_url(manifest_url)}
            self.source_rejects.append(SourceReject(json.dumps(record, ensure_ascii=False), reason))
            return None
        categories = _clean_categories(
            [*(series.categories if series else ()), *(season.categories if season else ()), *feed.categories]
        )
        return CatalogItem(
            video_id=feed.id,
            title=title,
            categories=categories,
            duration_seconds=feed.duration_seconds if feed.HasField("duration_seconds") else None,
            thumbnail_url=feed.thumbnail_url.strip() or None,
        )

    def _manifest_problem(self, manifest_url: str) -> str | None:
        """Seed 004: a manifest must exist, be https, and be on the StreamingService CDN host."""
        if not manifest_url:
            return "no playback.manifest_url (ContentService treats a missing manifest as an error)"
        try:
            parts = urlsplit(manifest_url)
            host = (parts.hostname or "").rstrip(".")
        except ValueError:
            return "playback.manifest_url is not a valid URL"
        if parts.scheme.lower() != "https":
            return f"playback.manifest_url is not https (scheme {parts.scheme or 'missing'!r})"
        if not any(_host_matches(host, allowed) for allowed in self.cdn_hosts):
            return (f"playback.manifest_url host {host!r} is not the CDN host "
                    f"({', '.join(self.cdn_hosts)}; CONTENT_SERVICE_CDN_HOST)")
        return None


def _host_matches(host: str, allowed: str) -> bool:
    if allowed.startswith("*."):
        return host.endswith(allowed[1:]) and len(host) > len(allowed) - 1
    return host == allowed


def _clean_categories(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(v.strip() for v in values if v and v.strip()))


def _display_url(url: str) -> str:
    """A URL for a reject record: no userinfo, query or fragment (where signatures would live)."""
    if not url:
        return ""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, "", ""))
    except ValueError:
        return url[:200]


def _read_pem(path: str, setting: str) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path!r}: {exc.strerror or exc}", setting=setting) from None
