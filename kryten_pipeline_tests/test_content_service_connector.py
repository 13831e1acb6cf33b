"""ContentService connector against an in-process grpc.aio server on 127.0.0.1 (plaintext, TLS, mutual TLS)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from kryten_pipeline.catalog_item import CatalogItem
from kryten_pipeline.connectors import make_connector
from kryten_pipeline.connectors.content_service import (
    ContentServiceConnector,
    compose_episode_title,
    load_channel_credentials,
)
from kryten_pipeline.errors import ConfigurationError, SourceError
from kryten_pipeline.proto_gen.kryten.contentservice.v1 import content_pb2, content_pb2_grpc
from kryten_pipeline.settings import Settings
from kryten_pipeline_tests.tls_helpers import make_pki

TOKEN = "svc-token-5f2a"
CDN = "cdn.example.net"
K = content_pb2.EntityKind


def uid(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, name))


def manifest(name: str) -> str:
    return f"https://{CDN}/hls/{uid(name)}/master.m3u8"


def series(name: str, title: str, categories: tuple[str, ...] = ()) -> content_pb2.CatalogFeedItem:
    return content_pb2.CatalogFeedItem(id=uid(name), kind=K.ENTITY_KIND_SERIES, title=title,
                                       categories=categories, status="published")


def season(name: str, series_name: str, number: int, categories: tuple[str, ...] = ()) -> content_pb2.CatalogFeedItem:
    return content_pb2.CatalogFeedItem(id=uid(name), kind=K.ENTITY_KIND_SEASON, title=f"Season {number}",
                                       series_id=uid(series_name), season_number=number, categories=categories,
                                       status="published")


def episode(name: str, series_name: str, series_title: str, season_name: str | None, season_number: int,
            number: int, title: str, *, categories: tuple[str, ...] = (), manifest_url: str | None = None,
            status: str = "published", duration: int | None = 1500) -> content_pb2.CatalogFeedItem:
    item = content_pb2.CatalogFeedItem(
        id=uid(name), kind=K.ENTITY_KIND_EPISODE, title=title, series_id=uid(series_name), series_title=series_title,
        season_id=uid(season_name) if season_name else "", season_number=season_number, episode_number=number,
        categories=categories, status=status, thumbnail_url=f"https://img.example.net/{uid(name)}.jpg",
    )
    if duration is not None:
        item.duration_seconds = duration
    item.playback.manifest_url = manifest(name) if manifest_url is None else manifest_url
    item.playback.variants.add(label="720p", bitrate=3_000_000)
    return item


def asset(name: str, title: str, *, manifest_url: str | None = None, status: str = "published",
          episode_name: str | None = None, categories: tuple[str, ...] = ()) -> content_pb2.CatalogFeedItem:
    item = content_pb2.CatalogFeedItem(id=uid(name), kind=K.ENTITY_KIND_MEDIA_ASSET, title=title,
                                       status=status, categories=categories,
                                       episode_id=uid(episode_name) if episode_name else "")
    if manifest_url != "":
        item.playback.manifest_url = manifest(name) if manifest_url is None else manifest_url
    return item


def big_catalog(n_series: int = 6, seasons: int = 2, episodes: int = 8, assets: int = 25) -> list[Any]:
    """Series, then their seasons and episodes, then stand-alone assets: a realistic parent-first feed."""
    feed: list[Any] = []
    for s in range(n_series):
        feed.append(series(f"s{s}", f"Show {s}", (f"Genre {s % 3}",)))
        for n in range(1, seasons + 1):
            feed.append(season(f"s{s}n{n}", f"s{s}", n))
            feed.extend(episode(f"s{s}n{n}e{e}", f"s{s}", f"Show {s}", f"s{s}n{n}", n, e, f"Part {e}")
                        for e in range(1, episodes + 1))
    feed.extend(asset(f"a{i}", f"Film {i}", categories=("Film",)) for i in range(assets))
    return feed


class FakeContentService(content_pb2_grpc.ContentServiceServicer):
    """Pages ``items`` by ``request.limit``; cursors are opaque strings. Knobs inject the failures under test."""

    def __init__(self, items: list[Any], *, token: str = TOKEN,
                 auth_code: grpc.StatusCode = grpc.StatusCode.UNAUTHENTICATED,
                 drop_after: dict[int, int] | None = None, drop_code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
                 stall_after: dict[int, int] | None = None, chunks_per_call: int | None = None,
                 always_fail: grpc.StatusCode | None = None) -> None:
        self.items = items
        self.token = token
        self.auth_code = auth_code
        self.drop_after = drop_after or {}  # call number → chunks sent before the stream drops
        self.drop_code = drop_code
        self.stall_after = stall_after or {}  # call number → chunks sent before the stream goes silent
        self.chunks_per_call = chunks_per_call
        self.always_fail = always_fail
        self.requests: list[tuple[str | None, int]] = []
        self.auth_headers: list[str | None] = []
        self.sent_cursors: list[str] = []

    async def CatalogSnapshot(self, request: Any, context: Any) -> AsyncIterator[Any]:
        metadata = dict(context.invocation_metadata())
        self.auth_headers.append(metadata.get("authorization"))
        self.requests.append((request.cursor if request.HasField("cursor") else None, request.limit))
        call_number = len(self.requests)
        if metadata.get("authorization") != f"Bearer {self.token}":
            await context.abort(self.auth_code, "invalid service token")
        if self.always_fail is not None:
            await context.abort(self.always_fail, "upstream connect error (test)")
        limit = request.limit or 100
        position = int(request.cursor.removeprefix("pos-")) if request.HasField("cursor") else 0
        sent = 0
        while position < len(self.items):
            if self.drop_after.get(call_number) == sent:
                await context.abort(self.drop_code, "connection reset by peer (test)")
            if self.stall_after.get(call_number) == sent:
                await asyncio.Event().wait()  # silent until the client gives up on this call
            page = self.items[position:position + limit]
            position += len(page)
            next_cursor = f"pos-{position}" if position < len(self.items) else ""
            self.sent_cursors.append(next_cursor)
            yield content_pb2.CatalogSnapshotChunk(items=page, next_cursor=next_cursor)
            sent += 1
            if self.chunks_per_call is not None and sent >= self.chunks_per_call:
                return  # this server pages per call: the client must ask again with next_cursor


@asynccontextmanager
async def serving(service: FakeContentService,
                  credentials: grpc.ServerCredentials | None = None) -> AsyncIterator[str]:
    server = grpc.aio.server()
    content_pb2_grpc.add_ContentServiceServicer_to_server(service, server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(grace=None)


def plaintext_connector(address: str, **kwargs: Any) -> ContentServiceConnector:
    options: dict[str, Any] = {"token": TOKEN, "cdn_hosts": CDN, "credentials": None, "backoff_base_s": 0.01,
                               "backoff_max_s": 0.02, "chunk_limit": 7}
    options.update(kwargs)
    return ContentServiceConnector(address, **options)


async def collect(connector: ContentServiceConnector) -> list[CatalogItem]:
    return [item async for item in connector.iter_catalog_items()]


def run_against(service: FakeContentService, make: Callable[[str], ContentServiceConnector],
                credentials: grpc.ServerCredentials | None = None) -> tuple[list[CatalogItem], ContentServiceConnector]:
    async def scenario() -> tuple[list[CatalogItem], ContentServiceConnector]:
        async with serving(service, credentials) as address:
            connector = make(address)
            return await collect(connector), connector

    return asyncio.run(scenario())


def expected_ids(feed: list[Any]) -> list[str]:
    return [f.id for f in feed if f.kind in (K.ENTITY_KIND_EPISODE, K.ENTITY_KIND_MEDIA_ASSET)]


# --- paging and resumption ----------------------------------------------------------------------------

def test_pages_with_cursor_until_next_cursor_is_empty() -> None:
    feed = big_catalog()
    service = FakeContentService(feed)
    items, connector = run_against(service, plaintext_connector)

    assert [item.video_id for item in items] == expected_ids(feed)
    assert service.requests == [(None, 7)]  # one call streamed every chunk
    assert connector.stats["chunks"] == -(-len(feed) // 7)
    assert service.sent_cursors[-1] == ""
    assert connector.stats["items"] == len(items)
    assert connector.stats["retries"] == 0
    assert connector.source_rejects == []


def test_call_that_ends_before_the_catalog_is_continued_from_next_cursor() -> None:
    feed = big_catalog()
    service = FakeContentService(feed, chunks_per_call=3)
    items, connector = run_against(service, plaintext_connector)

    assert [item.video_id for item in items] == expected_ids(feed)
    assert len(service.requests) == -(-connector.stats["chunks"] // 3)
    # Every follow-up call starts where the previous one stopped.
    assert [cursor for cursor, _ in service.requests[1:]] == service.sent_cursors[2::3][: len(service.requests) - 1]


def test_resumes_from_last_cursor_after_mid_stream_unavailable() -> None:
    feed = big_catalog()
    service = FakeContentService(feed, drop_after={1: 4, 2: 2})
    items, connector = run_against(service, plaintext_connector)

    ids = [item.video_id for item in items]
    assert ids == expected_ids(feed)
    assert len(ids) == len(set(ids))  # nothing delivered twice, nothing skipped
    assert [cursor for cursor, _ in service.requests] == [None, "pos-28", "pos-42"]
    assert connector.stats["retries"] == 2
    assert connector.stats["calls"] == 3


def test_silent_stream_is_abandoned_and_resumed() -> None:
    feed = big_catalog(n_series=1)
    service = FakeContentService(feed, stall_after={1: 1})
    items, connector = run_against(service, lambda a: plaintext_connector(a, idle_timeout_s=0.3))

    assert [item.video_id for item in items] == expected_ids(feed)
    assert [cursor for cursor, _ in service.requests] == [None, "pos-7"]
    assert connector.stats["retries"] == 1


def test_gives_up_after_bounded_retries() -> None:
    service = FakeContentService(big_catalog(), always_fail=grpc.StatusCode.UNAVAILABLE)

    with pytest.raises(SourceError) as caught:
        run_against(service, lambda a: plaintext_connector(a, max_retries=3))

    assert len(service.requests) == 4  # the first call and three retries
    message = str(caught.value)
    assert "UNAVAILABLE" in message and "CONTENT_SERVICE_ADDR" in message


def test_non_transient_error_fails_without_retry() -> None:
    service = FakeContentService(big_catalog(), always_fail=grpc.StatusCode.INVALID_ARGUMENT)

    with pytest.raises(SourceError, match="INVALID_ARGUMENT"):
        run_against(service, plaintext_connector)
    assert len(service.requests) == 1


# --- authentication -----------------------------------------------------------------------------------

def test_token_is_sent_as_bearer_authorization_metadata() -> None:
    service = FakeContentService(big_catalog(n_series=1))
    run_against(service, plaintext_connector)
    assert service.auth_headers == [f"Bearer {TOKEN}"]


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED])
def test_rejected_token_is_a_configuration_error_and_not_retried(code: grpc.StatusCode) -> None:
    service = FakeContentService(big_catalog(), token="the-right-token", auth_code=code)

    with pytest.raises(ConfigurationError) as caught:
        run_against(service, lambda a: plaintext_connector(a, max_retries=5))

    assert len(service.requests) == 1
    assert caught.value.setting == "SERVICE_AUTH_TOKEN"
    assert "SERVICE_AUTH_TOKEN" in str(caught.value) and code.name in str(caught.value)
    assert TOKEN not in str(caught.value)


# --- mapping ------------------------------------------------------------------------------------------

def test_mapping_series_context_titles_and_stand_alone_assets() -> None:
    feed = [
        # The episode arrives before its series and season: it must still get the series' categories.
        episode("e1", "show", "The Show", "show-s1", 1, 2, "The Heist", categories=("Crime",)),
        series("show", "The Show", ("Drama", "Crime")),
        season("show-s1", "show", 1, ("Season Pass",)),
        episode("e2", "show", "The Show", "show-s1", 1, 3, "", duration=None),
        episode("e3", "show", "The Show", "show-s1", 1, 4, "Draft cut", status="draft"),
        asset("film", "A Film", categories=("Film",)),
        asset("trailer", "Trailer", episode_name="e1"),
        episode("orphan", "gone", "Gone Show", None, 2, 1, "Pilot"),
    ]
    items, connector = run_against(FakeContentService(feed), plaintext_connector)
    by_id = {item.video_id: item for item in items}

    assert set(by_id) == {uid("e1"), uid("e2"), uid("film"), uid("orphan")}
    heist = by_id[uid("e1")]
    assert heist.title == "The Show — S01E02 — The Heist"
    assert heist.categories == ["Drama", "Crime", "Season Pass"]
    assert heist.duration_seconds == 1500
    assert heist.thumbnail_url == f"https://img.example.net/{uid('e1')}.jpg"
    assert by_id[uid("e2")].title == "The Show — S01E03"
    assert by_id[uid("e2")].duration_seconds is None
    assert by_id[uid("film")] == CatalogItem(uid("film"), "A Film", ["Film"], None, None)
    assert by_id[uid("orphan")].title == "Gone Show — S02E01 — Pilot"
    excluded = connector.stats["excluded"]
    assert excluded["not_published"] == 1 and excluded["attached_media_assets"] == 1
    assert excluded["series"] == 1 and excluded["season"] == 1
    assert connector.stats["episodes_without_parent_entry"] == 1


@pytest.mark.parametrize(
    ("series_title", "season_number", "episode_number", "title", "expected"),
    [
        ("Show", 1, 2, "Title", "Show — S01E02 — Title"),
        ("Show", None, 12, "Title", "Show — E12 — Title"),
        ("Show", 3, None, "", "Show — S03"),
        ("", 1, 1, "Title", "S01E01 — Title"),
        ("Show", 1, 1, "Show", "Show — S01E01"),
        ("Show", 10, 100, "  Long  ", "Show — S10E100 — Long"),
    ],
)
def test_compose_episode_title(series_title: str, season_number: int | None, episode_number: int | None,
                               title: str, expected: str) -> None:
    assert compose_episode_title(series_title, season_number, episode_number, title) == expected


def test_manifest_must_be_https_on_the_cdn_host() -> None:
    feed = [
        asset("ok", "Fine"),
        asset("sub", "Other CDN node", manifest_url=f"https://edge1.{CDN}/x/master.m3u8"),
        asset("http", "Plain HTTP", manifest_url=f"http://{CDN}/x/master.m3u8"),
        asset("elsewhere", "Elsewhere", manifest_url="https://evil.example.org/x/master.m3u8?sig=SECRET"),
        asset("missing", "No manifest", manifest_url=""),
        asset("lookalike", "Lookalike", manifest_url=f"https://{CDN}.evil.example.org/x.m3u8"),
    ]
    items, connector = run_against(FakeContentService(feed), plaintext_connector)

    assert [item.video_id for item in items] == [uid("ok")]
    reasons = {reject.record: reject.reason for reject in connector.source_rejects}
    assert len(reasons) == 5
    by_title = {next(r for r in reasons if f'"{t}"' in r): t for t in
                ("Other CDN node", "Plain HTTP", "Elsewhere", "No manifest", "Lookalike")}
    reason_of = {title: reasons[record] for record, title in by_title.items()}
    assert "not https" in reason_of["Plain HTTP"]
    assert "not the CDN host" in reason_of["Elsewhere"] and "CONTENT_SERVICE_CDN_HOST" in reason_of["Elsewhere"]
    assert "missing manifest" in reason_of["No manifest"]
    assert "not the CDN host" in reason_of["Lookalike"]
    assert "not the CDN host" in reason_of["Other CDN node"]
    assert all("SECRET" not in record for record in reasons)  # signed query strings stay out of reject records
    assert connector.stats["rejected"] == 5


def test_wildcard_cdn_host_allows_subdomains() -> None:
    feed = [asset("sub", "Edge", manifest_url=f"https://edge1.{CDN}/x/master.m3u8"), asset("apex", "Apex")]
    items, _ = run_against(FakeContentService(feed), lambda a: plaintext_connector(a, cdn_hosts=f"*.{CDN}, {CDN}"))
    assert [item.video_id for item in items] == [uid("sub"), uid("apex")]


# --- configuration ------------------------------------------------------------------------------------

def settings(**env: str) -> Settings:
    base = {"KRYTEN_SOURCE": "content-service", "CONTENT_SERVICE_ADDR": "127.0.0.1:1",
            "SERVICE_AUTH_TOKEN": TOKEN, "CONTENT_SERVICE_CDN_HOST": CDN}
    base.update(env)
    return Settings.from_env({k: v for k, v in base.items() if v is not None})


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"CONTENT_SERVICE_ADDR": ""}, "CONTENT_SERVICE_ADDR"),
        ({"SERVICE_AUTH_TOKEN": ""}, "SERVICE_AUTH_TOKEN"),
        ({"SERVICE_AUTH_TOKEN": "two words"}, "SERVICE_AUTH_TOKEN"),
        ({"CONTENT_SERVICE_CDN_HOST": ""}, "CONTENT_SERVICE_CDN_HOST"),
        ({"CONTENT_SERVICE_TLS_CERT": "/nonexistent/client.crt"}, "CONTENT_SERVICE_TLS_KEY"),
        ({"CONTENT_SERVICE_TLS_CA": "/nonexistent/ca.crt"}, "CONTENT_SERVICE_TLS_CA"),
        ({"CONTENT_SERVICE_PLAINTEXT": "true", "CONTENT_SERVICE_TLS_CA": "/x/ca.crt"}, "CONTENT_SERVICE_PLAINTEXT"),
    ],
)
def test_configuration_errors_name_the_setting(env: dict[str, str], setting: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        ContentServiceConnector.from_settings(settings(**env))
    assert caught.value.setting == setting
    assert setting in str(caught.value)
    assert TOKEN not in str(caught.value)


def test_make_connector_selects_content_service() -> None:
    connector = make_connector(settings(CONTENT_SERVICE_PLAINTEXT="true"))
    assert isinstance(connector, ContentServiceConnector)
    assert connector.label == "content-service:127.0.0.1:1 (plaintext)"
    assert TOKEN not in connector.label


# --- TLS and mutual TLS -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throw-away CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl."""
    return make_pki(tmp_path_factory.mktemp("pki"))


def server_credentials(pki: dict[str, Path], *, require_client_auth: bool) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [(pki["server.key"].read_bytes(), pki["server.crt"].read_bytes())],
        root_certificates=pki["ca.crt"].read_bytes() if require_client_auth else None,
        require_client_auth=require_client_auth,
    )


def from_env(**env: str) -> Callable[[str], ContentServiceConnector]:
    return lambda address: ContentServiceConnector.from_settings(settings(CONTENT_SERVICE_ADDR=address, **env))


def test_tls_with_a_ca_file(pki: dict[str, Path]) -> None:
    feed = big_catalog(n_series=1)
    items, connector = run_against(FakeContentService(feed), from_env(CONTENT_SERVICE_TLS_CA=str(pki["ca.crt"])),
                                   server_credentials(pki, require_client_auth=False))
    assert [item.video_id for item in items] == expected_ids(feed)
    assert connector.stats["transport"] == "tls"


def test_tls_fails_when_the_server_certificate_is_not_trusted(pki: dict[str, Path]) -> None:
    service = FakeContentService(big_catalog(n_series=1))
    with pytest.raises(SourceError) as caught:
        # No CA file: the system roots do not know the test CA.
        run_against(service, from_env(CONTENT_SERVICE_MAX_RETRIES="0"),
                    server_credentials(pki, require_client_auth=False))
    assert "CONTENT_SERVICE_ADDR" in str(caught.value)
    assert service.requests == []  # the handshake failed before any request reached the service


def test_mutual_tls_with_client_certificate_and_key(pki: dict[str, Path]) -> None:
    feed = big_catalog(n_series=2)
    service = FakeContentService(feed)
    items, connector = run_against(
        service,
        from_env(CONTENT_SERVICE_TLS_CA=str(pki["ca.crt"]), CONTENT_SERVICE_TLS_CERT=str(pki["client.crt"]),
                 CONTENT_SERVICE_TLS_KEY=str(pki["client.key"])),
        server_credentials(pki, require_client_auth=True),
    )
    assert [item.video_id for item in items] == expected_ids(feed)
    assert connector.stats["transport"] == "mtls"
    assert service.auth_headers == [f"Bearer {TOKEN}"]


def test_mutual_tls_server_refuses_a_client_without_certificate(pki: dict[str, Path]) -> None:
    service = FakeContentService(big_catalog(n_series=1))
    with pytest.raises(SourceError):
        run_against(service, from_env(CONTENT_SERVICE_TLS_CA=str(pki["ca.crt"]), CONTENT_SERVICE_MAX_RETRIES="0"),
                    server_credentials(pki, require_client_auth=True))
    assert service.requests == []


def test_load_channel_credentials_reads_pem_files(pki: dict[str, Path]) -> None:
    credentials = load_channel_credentials(str(pki["ca.crt"]), str(pki["client.crt"]), str(pki["client.key"]))
    assert isinstance(credentials, grpc.ChannelCredentials)
