"""Fault injection: what the MediaCMS connector retries, what it refuses, and what it tells the operator."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from kryten_pipeline.catalog_item import CatalogItem
from kryten_pipeline.connectors.mediacms import MediaCMSConnector
from kryten_pipeline.errors import ConfigurationError, SourceError
from kryten_pipeline_tests.fake_mediacms import FakeCatalog, FakeMediaCMS, generate_catalog

EDITOR = FakeMediaCMS.EDITOR_TOKEN
CATALOG_SIZE = 400


def collect(connector: MediaCMSConnector) -> list[CatalogItem]:
    async def run() -> list[CatalogItem]:
        return [item async for item in connector.iter_catalog_items()]

    return asyncio.run(run())


def connector_for(server: FakeMediaCMS, token: str | None = EDITOR, **kwargs: Any) -> MediaCMSConnector:
    kwargs.setdefault("backoff_base", 0.01)
    kwargs.setdefault("retries", 3)
    return MediaCMSConnector(server.url, token=token, **kwargs)


@pytest.fixture
def catalog() -> FakeCatalog:
    return generate_catalog(CATALOG_SIZE, 4, seed=30)


@pytest.fixture
def server(catalog: FakeCatalog) -> Iterator[FakeMediaCMS]:
    with FakeMediaCMS(catalog) as fake:
        yield fake


def complete(items: list[CatalogItem], catalog: FakeCatalog) -> bool:
    return {i.video_id for i in items} == set(catalog.expected_playable())


# --------------------------------------------------------------------------------------------- retried


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_a_5xx_burst_is_retried_with_backoff(server: FakeMediaCMS, catalog: FakeCatalog, status: int) -> None:
    server.inject("status", path="/api/v1/manage_media", query={"page": "3"}, times=3, status=status)
    connector = connector_for(server)
    assert complete(collect(connector), catalog)
    assert connector.stats["retries"] == 3 and connector.stats["retry_reasons"] == {f"http:{status}": 3}
    assert server.counts["manage_media"] == 8 + 3  # 8 pages, page 3 asked 4 times


def test_a_burst_longer_than_the_retries_fails_the_run(server: FakeMediaCMS) -> None:
    server.inject("status", path="/api/v1/search", times=50, status=503)
    connector = connector_for(server, retries=2)
    with pytest.raises(SourceError) as caught:
        collect(connector)
    assert "3 times" in str(caught.value) and "MEDIACMS_RETRIES" in str(caught.value)
    assert server.counts["search"] <= 3 * 4  # bounded: (1 + retries) per category at most


def test_429_honours_retry_after(server: FakeMediaCMS, catalog: FakeCatalog) -> None:
    server.inject("status", path="/api/v1/categories", times=1, status=429, retry_after="0",
                  body={"detail": "Request was throttled."})
    connector = connector_for(server)
    assert complete(collect(connector), catalog)
    assert connector.stats["retry_reasons"] == {"http:429": 1}


def test_a_slow_answer_times_out_and_is_retried(server: FakeMediaCMS, catalog: FakeCatalog) -> None:
    server.inject("slow", path="/api/v1/manage_media", query={"page": "2"}, times=1, delay=4.0)
    connector = connector_for(server, timeout=1.0)
    assert complete(collect(connector), catalog)
    assert connector.stats["retry_reasons"].get("timeout", 0) >= 1
    assert server.counts["manage_media"] >= 8 + 1  # page 2 was asked again


def test_malformed_json_is_retried(server: FakeMediaCMS, catalog: FakeCatalog) -> None:
    server.inject("malformed", path="/api/v1/search", times=2)
    connector = connector_for(server)
    assert complete(collect(connector), catalog)
    assert connector.stats["retry_reasons"] == {"malformed_json": 2}


def test_a_dropped_connection_is_retried(server: FakeMediaCMS, catalog: FakeCatalog) -> None:
    server.inject("close", path="/api/v1/manage_media", query={"page": "5"}, times=1)
    connector = connector_for(server)
    assert complete(collect(connector), catalog)
    assert sum(connector.stats["retry_reasons"].values()) == 1
    assert next(iter(connector.stats["retry_reasons"])).startswith("transport:")


def test_an_unreachable_server_is_a_source_error_after_bounded_retries() -> None:
    with FakeMediaCMS(generate_catalog(5, 1)) as fake:
        url = fake.url  # the port is closed once the server stops
    connector = MediaCMSConnector(url, retries=2, backoff_base=0.01)
    with pytest.raises(SourceError) as caught:
        collect(connector)
    assert caught.value.setting == "MEDIACMS_URL"
    # The listing and the category walk run side by side: each gives up after 1 + 2 attempts.
    assert connector.stats["requests"] <= 2 * 3


# --------------------------------------------------------------------------------------------- refused


def test_an_html_answer_is_a_configuration_error_not_retried(server: FakeMediaCMS) -> None:
    server.inject("html", path="/api/v1/manage_media", times=1)
    connector = connector_for(server)
    with pytest.raises(ConfigurationError) as caught:
        collect(connector)
    assert caught.value.setting == "MEDIACMS_URL" and "HTML" in str(caught.value)
    assert server.counts["manage_media"] == 1 and connector.stats["retries"] == 0


def test_a_wrong_base_url_is_reported_as_such(server: FakeMediaCMS) -> None:
    connector = MediaCMSConnector(server.url + "/not-mediacms", backoff_base=0.01)
    with pytest.raises(ConfigurationError) as caught:
        collect(connector)
    assert caught.value.setting == "MEDIACMS_URL" and "HTTP 404" in str(caught.value)


def test_global_login_required_is_explained_and_never_followed(catalog: FakeCatalog) -> None:
    with FakeMediaCMS(catalog, login_required=True) as fake:
        connector = connector_for(fake)
        with pytest.raises(ConfigurationError) as caught:
            collect(connector)
        assert "GLOBAL_LOGIN_REQUIRED" in str(caught.value) and caught.value.setting == "MEDIACMS_URL"
        assert fake.total_requests == 1
        assert not any(r.path.startswith("/accounts/") for r in fake.log)


def test_an_invalid_token_names_mediacms_token_and_is_not_retried(server: FakeMediaCMS) -> None:
    connector = connector_for(server, token="0123456789abcdef-revoked")
    with pytest.raises(ConfigurationError) as caught:
        collect(connector)
    assert caught.value.setting == "MEDIACMS_TOKEN"
    assert "0123456789abcdef-revoked" not in str(caught.value)
    assert server.total_requests == 1 and connector.stats["retries"] == 0


def test_a_token_revoked_mid_run_is_a_configuration_error(server: FakeMediaCMS) -> None:
    server.inject("status", path="/api/v1/search", times=100, status=403, body={"detail": "Invalid token."})
    connector = connector_for(server)
    with pytest.raises(ConfigurationError) as caught:
        collect(connector)
    assert caught.value.setting == "MEDIACMS_TOKEN" and connector.stats["retries"] == 0


def test_a_400_is_not_retried(server: FakeMediaCMS) -> None:
    server.inject("status", path="/api/v1/categories", times=100, status=400, body={"detail": "bad request"})
    connector = connector_for(server)
    with pytest.raises(SourceError) as caught:
        collect(connector)
    assert "HTTP 400" in str(caught.value)
    assert server.counts["categories"] == 1 and connector.stats["retries"] == 0


def test_a_bearer_token_is_sent_as_token_because_mediacms_ignores_bearer(server: FakeMediaCMS,
                                                                         catalog: FakeCatalog) -> None:
    connector = connector_for(server, token=f"Bearer {EDITOR}")
    assert complete(collect(connector), catalog)
    assert connector.stats["endpoint"] == "manage_media"
    assert {r.authorization for r in server.log} == {"token"}


def test_an_unexpected_answer_shape_is_a_source_error(server: FakeMediaCMS) -> None:
    server.inject("status", path="/api/v1/manage_media", query={"page": "2"}, times=1, status=200, body=[1, 2])
    connector = connector_for(server)
    with pytest.raises(SourceError, match="did not answer with a"):
        collect(connector)
