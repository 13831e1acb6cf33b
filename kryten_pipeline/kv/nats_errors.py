"""How NATS failures are classified (worth a retry or not) and described in one line."""

from __future__ import annotations

import nats.errors
from nats.js.errors import APIError, ServiceUnavailableError

__all__ = ["NATS_FAILURES", "describe_nats_error", "is_limit_error", "is_transient"]

# Everything nats-py raises for a failed request: its own errors (timeouts, no responders, closed
# connection, JetStream API errors all derive from nats.errors.Error) plus plain asyncio timeouts.
NATS_FAILURES: tuple[type[BaseException], ...] = (nats.errors.Error, TimeoutError, OSError)


def is_limit_error(exc: BaseException) -> bool:
    """JetStream refused a write because a stream or account limit is reached (max bytes, max message size,
    insufficient storage): the configuration must change, a retry gets the same answer."""
    if not isinstance(exc, APIError):
        return False
    text = str(exc.description or "").lower()
    return "maximum" in text or "insufficient resources" in text or "exceeded" in text


def is_transient(exc: BaseException) -> bool:
    """A failure a retry may cure: a lost answer, a connection being re-established, JetStream still starting."""
    if isinstance(exc, APIError) and not isinstance(exc, ServiceUnavailableError):
        return False  # the server answered: a retry gets the same answer
    if is_limit_error(exc):
        return False  # a bucket limit, not an outage
    return isinstance(exc, (TimeoutError, OSError, nats.errors.ConnectionClosedError,
                            nats.errors.ConnectionReconnectingError, nats.errors.NoRespondersError,
                            nats.errors.StaleConnectionError, ServiceUnavailableError))


def describe_nats_error(exc: BaseException) -> str:
    if isinstance(exc, nats.errors.NoRespondersError):
        return "no responders (is JetStream enabled on this NATS server?)"
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


