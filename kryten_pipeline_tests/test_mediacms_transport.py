"""The connector's HTTP transport (httpx's own): TLS, keep-alive, dropped connections, errors.

Everything runs against the fake MediaCMS server on 127.0.0.1, over plain HTTP or HTTPS with a throw-away CA.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import httpx
import pytest

from kryten_pipeline.connectors.mediacms import MediaCMSConnector
from kryten_pipeline.errors import ConfigurationError, SourceError
from kryten_pipeline_tests.fake_mediacms import FakeMediaCMS, generate_catalog
from kryten_pipeline_tests.test_mediacms_connector import EDITOR, assert_matches, collect
from kryten_pipeline_tests.tls_helpers import make_pki

LIMITS = httpx.Limits(max_connections=2, max_keepalive_connections=2)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_pki(tmp_path_factory.mktemp("pki"))


def server_tls(pki: dict[str, Path]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki["server.crt"], pki["server.key"])
    return context


def test_a_whole_catalog_over_https_with_a_private_ca_from_ssl_cert_file(
    pki: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(pki["ca.crt"]))
    catalog = generate_catalog(700, 6, seed=3)
    with FakeMediaCMS(catalog, tls=server_tls(pki)) as server:
        assert server.url.startswith("https://127.0.0.1:")
        connector = MediaCMSConnector(server.url, token=EDITOR, concurrency=3)
        items = collect(connector)
        assert_matches(items, catalog.expected_playable(), server)
        assert connector.stats["retries"] == 0
        # Connections are kept alive: a handful of TLS handshakes for every page of the catalog.
        assert connector.stats["requests"] > 20
        assert server.connections <= 3


def test_an_untrusted_certificate_fails_at_once_naming_the_setting(
    pki: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    with FakeMediaCMS(generate_catalog(60, 2, seed=4), tls=server_tls(pki)) as server:
        connector = MediaCMSConnector(server.url, token=EDITOR, backoff_base=0.01)
        with pytest.raises(ConfigurationError) as failed:
            collect(connector)
        message = str(failed.value)
        assert failed.value.setting == "MEDIACMS_URL"
        assert "certificate" in message and "SSL_CERT_FILE" in message
        assert EDITOR not in message
        assert connector.stats["retries"] == 0 and connector.stats["requests"] == 1  # no retry can fix it


def test_plain_http_to_an_https_port_is_a_transport_failure_not_a_hang(pki: dict[str, Path]) -> None:
    with FakeMediaCMS(generate_catalog(60, 2, seed=4), tls=server_tls(pki)) as server:
        plain = server.url.replace("https://", "http://")
        connector = MediaCMSConnector(plain, token=EDITOR, backoff_base=0.01, retries=1, timeout=5)
        with pytest.raises(SourceError) as failed:
            collect(connector)
        assert "MEDIACMS_RETRIES" in str(failed.value)
        assert connector.stats["retries"] == 1


def test_a_connection_the_server_dropped_while_idle_is_replaced_not_reused() -> None:
    """A server (or proxy) keep-alive timeout closes the connection between two requests; the pool must see it
    and open a new one instead of failing the next request."""

    async def two_requests(server: FakeMediaCMS) -> list[int]:
        async with httpx.AsyncClient(limits=LIMITS,
                                     headers={"Authorization": f"Token {EDITOR}"}) as client:
            first = await client.get(f"{server.url}/api/v1/categories")
            await asyncio.sleep(0.2)  # the server's FIN arrives while the connection is idle in the pool
            second = await client.get(f"{server.url}/api/v1/categories")
            third = await client.get(f"{server.url}/api/v1/categories")
            return [first.status_code, second.status_code, third.status_code]

    with FakeMediaCMS(generate_catalog(60, 3, seed=5)) as server:
        server.inject("idle_close", path="/api/v1/categories")
        assert asyncio.run(two_requests(server)) == [200, 200, 200]
        assert server.connections == 2  # the dropped one, then one kept alive for the other two


def test_transport_errors_keep_httpx_types() -> None:
    """Refused connections and read timeouts surface as httpx.ConnectError / ReadTimeout (the connector's retry
    rules are written against those)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]

    async def refused() -> None:
        async with httpx.AsyncClient(limits=LIMITS) as client:
            await client.get(f"http://127.0.0.1:{free_port}/")

    with pytest.raises(httpx.ConnectError):
        asyncio.run(refused())

    with FakeMediaCMS(generate_catalog(60, 2, seed=6)) as server:
        server.inject("slow", path="/api/v1/categories", delay=1.0)

        async def slow() -> None:
            async with httpx.AsyncClient(limits=LIMITS, timeout=0.2,
                                         headers={"Authorization": f"Token {EDITOR}"}) as client:
                await client.get(f"{server.url}/api/v1/categories")

        with pytest.raises(httpx.ReadTimeout):
            asyncio.run(slow())


def test_a_host_name_with_several_addresses_reaches_the_one_that_listens(
    pki: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``localhost`` may resolve to ::1 before 127.0.0.1 (where the server listens): the next address is tried,
    and the certificate is checked against the host name."""
    monkeypatch.setenv("SSL_CERT_FILE", str(pki["ca.crt"]))
    with FakeMediaCMS(generate_catalog(120, 3, seed=7), tls=server_tls(pki)) as server:
        by_name = server.url.replace("127.0.0.1", "localhost")
        connector = MediaCMSConnector(by_name, token=EDITOR, retries=0)
        assert len(collect(connector)) == len(server.catalog.expected_playable())
