"""Reaching NATS: ``NATS_URL`` with its credentials and TLS options, or this data dir's embedded server when it is
unset; connection failures explained in one line naming the setting to fix, secrets never shown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import nats.errors
from nats.aio.client import Client as NatsClient

from kryten_pipeline.errors import (
    ConfigurationError,
    NatsUnavailableError,
)
from kryten_pipeline.kv.embedded_nats import EmbeddedNats
from kryten_pipeline.kv.nats_errors import NATS_FAILURES
from kryten_pipeline.settings import Settings

logger = logging.getLogger(__name__)

# -- connection --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NatsConnectionSettings:
    """What is needed to reach NATS. Secrets are excluded from ``repr`` so they never reach a log."""

    url: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    creds: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> NatsConnectionSettings:
        return cls(
            url=settings.nats_url,
            user=settings.nats_user,
            password=settings.nats_password,
            token=settings.nats_token,
            creds=settings.nats_creds,
            tls_ca=settings.nats_tls_ca,
            tls_cert=settings.nats_tls_cert,
            tls_key=settings.nats_tls_key,
        )

    def secrets(self, url: str | None = None) -> list[str]:
        """Strings that must never appear in a message: password, token, and credentials inside the URL."""
        found = [s for s in (self.password, self.token) if s]
        for candidate in (url, self.url):
            if candidate:
                parts = urlsplit(candidate)
                # nats://TOKEN@host puts the token where a user name would be; a user name beside a
                # password is not secret (and scrubbing a short one would mangle the message).
                found += [s for s in (parts.password if parts.password else parts.username,) if s]
        return found


def redact_url(url: str) -> str:
    """``url`` without user info (``nats://user:secret@host:4222`` → ``nats://host:4222``)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparseable NATS URL>"
    if not parts.scheme and not host:
        # A bare "host:port" parses without a netloc; there is no user info to strip unless '@' is present.
        return url.rpartition("@")[2]
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _tls_context(conn: NatsConnectionSettings, url: str) -> ssl.SSLContext | None:
    wants_tls = bool(conn.tls_ca or conn.tls_cert) or url.startswith("tls://")
    if not wants_tls:
        return None
    try:
        context = ssl.create_default_context(cafile=conn.tls_ca or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"cannot load the NATS CA bundle {conn.tls_ca}: {exc}", setting="NATS_TLS_CA") from exc
    if conn.tls_cert:
        try:
            context.load_cert_chain(conn.tls_cert, conn.tls_key or None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(
                f"cannot load the NATS client certificate {conn.tls_cert} / key {conn.tls_key}: {exc}",
                setting="NATS_TLS_CERT",
            ) from exc
    return context


async def connect_nats(
    conn: NatsConnectionSettings, url: str, *, timeout: float = 5.0, reconnect_forever: bool = False,
    on_reconnected: Callable[[], Awaitable[None]] | None = None,
    on_disconnected: Callable[[], Awaitable[None]] | None = None,
) -> NatsClient:
    """Connect once (a few quick attempts, no endless retry loop); raise NatsUnavailableError on failure.

    ``reconnect_forever``: once connected, a lost server is waited for indefinitely (a long-running agent
    such as ``follow``); otherwise a brief blip is survived and a dead server fails the operation.
    """
    if conn.creds and not Path(conn.creds).is_file():
        raise ConfigurationError(f"NATS credentials file not found: {conn.creds}", setting="NATS_CREDS")
    tls = _tls_context(conn, url)
    secrets = conn.secrets(url)
    shown_url = redact_url(url)
    errors_seen: list[BaseException] = []

    # nats-py's default callbacks log full tracebacks at ERROR for every failed attempt; we report once.
    async def on_error(exc: Exception) -> None:
        errors_seen.append(exc)
        logger.debug("NATS %s: %s", shown_url, _scrub(str(exc) or type(exc).__name__, secrets))

    async def on_disconnect() -> None:
        logger.debug("NATS %s: disconnected", shown_url)
        if on_disconnected is not None:
            await on_disconnected()

    async def on_reconnect() -> None:
        logger.debug("NATS %s: reconnected", shown_url)
        if on_reconnected is not None:
            await on_reconnected()

    options: dict[str, Any] = {
        "servers": [url],
        "error_cb": on_error,
        "disconnected_cb": on_disconnect,
        "reconnected_cb": on_reconnect,
        "connect_timeout": timeout,
        "allow_reconnect": True,
        # bounded by default: a brief blip during a run is survived, a dead server is not
        "max_reconnect_attempts": -1 if reconnect_forever else 2,
        "reconnect_time_wait": 1.0 if reconnect_forever else 0.5,
        "name": "kryten-pipeline",
    }
    if tls is not None:
        options["tls"] = tls
    if conn.user:
        options["user"] = conn.user
    if conn.password:
        options["password"] = conn.password
    if conn.token:
        options["token"] = conn.token
    if conn.creds:
        options["user_credentials"] = conn.creds

    nc = NatsClient()
    try:
        # Overall bound on top of the per-attempt connect_timeout.
        await asyncio.wait_for(nc.connect(**options), timeout=timeout * 2 + 1)
    except ModuleNotFoundError as exc:  # nats-py imports nkeys lazily for .creds files
        await _close_quietly(nc)
        raise ConfigurationError(
            f"NATS_CREDS needs the `nkeys` package (pip install nkeys): {exc}", setting="NATS_CREDS"
        ) from None
    except (*NATS_FAILURES, ValueError) as exc:
        await _close_quietly(nc)
        reason = _connect_failure_reason(exc, errors_seen)
        raise NatsUnavailableError(
            f"cannot connect to NATS at {shown_url}: {_scrub(reason, secrets)}", setting="NATS_URL"
        ) from None  # `from None`: the chained nats-py exception may carry the raw URL
    return nc


def _connect_failure_reason(exc: BaseException, errors_seen: list[BaseException]) -> str:
    # A rejected login is the actionable cause even if later attempts only saw a reset connection.
    for seen in (exc, *errors_seen):
        # nats-py reports a rejected login as a plain Error carrying the server's -ERR text.
        if isinstance(seen, nats.errors.AuthorizationError) or "authorization violation" in str(seen).lower():
            return "authorization failed (check NATS_USER/NATS_PASSWORD, NATS_TOKEN or NATS_CREDS)"
    # NoServersError / a timeout only say "gave up"; the callback saw the actual cause.
    cause = exc
    if isinstance(exc, nats.errors.NoServersError | TimeoutError) and errors_seen:
        cause = errors_seen[-1]
    if isinstance(cause, TimeoutError):
        return "timed out"
    text = str(cause).strip()
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__


async def _close_quietly(nc: NatsClient) -> None:
    with contextlib.suppress(Exception):
        await nc.close()


# -- a connection for the length of a block ------------------------------------------------------------


@asynccontextmanager
async def nats_connection(settings: Settings, **connect_options: Any) -> AsyncIterator[NatsClient]:
    """A connection to ``NATS_URL``, or to this data dir's embedded server when NATS_URL is unset.

    ``connect_options`` go to :func:`connect_nats` (e.g. ``reconnect_forever`` for a long-running agent).
    """
    embedded: EmbeddedNats | None = None
    if settings.nats_url:
        conn = NatsConnectionSettings.from_settings(settings)
        url = settings.nats_url
    else:
        embedded = EmbeddedNats(settings.data_dir)
        # flock may wait for another process: keep the event loop free meanwhile.
        url = await asyncio.to_thread(embedded.acquire)
        conn = NatsConnectionSettings(url=url)  # the loopback server has no auth and no TLS
    try:
        nc = await connect_nats(conn, url, **connect_options)
        try:
            yield nc
        finally:
            await _drain_quietly(nc)
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.release)


async def _drain_quietly(nc: NatsClient) -> None:
    # Every write was already confirmed by a JetStream ack; drain only tidies subscriptions.
    try:
        await nc.drain()
    except Exception as exc:
        logger.debug("NATS drain failed (%s); closing", type(exc).__name__)
    if not nc.is_closed:
        await _close_quietly(nc)
