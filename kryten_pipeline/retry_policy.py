"""One retry policy for the network sources (MediaCMS over HTTP, the ContentService over gRPC), on tenacity.

What is retried is decided by the client: an attempt raises :class:`TransientFailure` (a timeout, a dropped
connection, HTTP 429/5xx, an UNAVAILABLE stream) and anything else — a refused token, a 404, an untrusted
certificate — goes straight through, unretried. Between attempts the wait grows exponentially from ``base_s``,
capped at ``max_s``, with "equal jitter" (half of it fixed, half random, so concurrent clients spread apart and
none retries at once), and never shorter than a server's ``Retry-After`` (itself capped at ``max_s``). After
``retries`` retries the last :class:`TransientFailure` is raised for the client to explain.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import tenacity

T = TypeVar("T")


class TransientFailure(Exception):
    """An attempt failed in a way a later attempt may not: ``problem`` says how (it is counted by kind)."""

    def __init__(self, problem: str, *, retry_after: float | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    retries: int
    base_s: float
    max_s: float

    def delay(self, retry_number: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry ``retry_number`` (1 for the first)."""
        ceiling = min(self.max_s, self.base_s * 2 ** (retry_number - 1))
        delay = ceiling / 2 + random.uniform(0, ceiling / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_s))
        return delay

    def _wait_after(self, state: tenacity.RetryCallState, earlier: int) -> float:
        """The wait after the failed attempt ``state`` describes, ``earlier`` failures having come before it."""
        failure = state.outcome.exception() if state.outcome is not None else None
        return self.delay(state.attempt_number + earlier, getattr(failure, "retry_after", None))

    async def call(self, attempt: Callable[[], Awaitable[T]], *,
                   on_retry: Callable[[TransientFailure], None] | None = None) -> T:
        """Await ``attempt()`` until it returns, raises something other than :class:`TransientFailure`, or has
        failed transiently ``retries + 1`` times (then that last failure is raised). ``on_retry`` is told of each
        failure that is retried, before the wait.

        The first attempt runs on its own: a tenacity loop is built only once it failed. A refresh makes thousands
        of calls that almost all succeed at once, and a loop's state (which holds the attempt's result in
        reference cycles until the collector runs) would cost each of them time and memory — at 100k items, 6,764
        requests: +41 MB peak and 5-6 s in the pipeline benchmark.
        """
        try:
            return await attempt()
        except TransientFailure as failure:
            if self.retries < 1:
                raise
            first = failure

        def before_sleep(state: tenacity.RetryCallState) -> None:
            failure = state.outcome.exception() if state.outcome is not None else None
            if on_retry is not None and isinstance(failure, TransientFailure):
                on_retry(failure)

        if on_retry is not None:
            on_retry(first)
        await asyncio.sleep(self.delay(1, first.retry_after))
        # The retries: attempt n of this loop is retry n of the call, so its wait is the one before retry n + 1.
        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(self.retries),
            wait=lambda state: self._wait_after(state, 1),
            retry=tenacity.retry_if_exception_type(TransientFailure),
            before_sleep=before_sleep,
            reraise=True,
        )
        return await retrying(attempt)
