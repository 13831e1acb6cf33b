"""The one retry policy of the network sources (tenacity): what is retried, how long it waits, when it gives up."""

from __future__ import annotations

import asyncio

import pytest

from kryten_pipeline.errors import ConfigurationError
from kryten_pipeline.retry_policy import RetryPolicy, TransientFailure


def test_waits_grow_exponentially_with_equal_jitter_and_a_cap() -> None:
    policy = RetryPolicy(retries=6, base_s=0.5, max_s=4.0)
    for retry_number, ceiling in ((1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 4.0), (9, 4.0)):
        waits = [policy.delay(retry_number) for _ in range(200)]
        assert all(ceiling / 2 <= wait <= ceiling for wait in waits)
        assert max(waits) - min(waits) > ceiling / 10  # jittered: concurrent clients spread apart


def test_retry_after_is_honoured_up_to_the_cap() -> None:
    policy = RetryPolicy(retries=3, base_s=0.1, max_s=5.0)
    assert policy.delay(1, retry_after=2.0) == 2.0
    assert policy.delay(1, retry_after=60.0) == 5.0  # a server cannot park the refresh for a minute
    assert 0.05 <= policy.delay(1, retry_after=0.0) <= 0.1


def test_transient_failures_are_retried_then_the_last_one_is_raised() -> None:
    policy = RetryPolicy(retries=2, base_s=0.001, max_s=0.002)
    attempts: list[int] = []
    retried: list[str] = []

    async def always_down() -> None:
        attempts.append(1)
        raise TransientFailure(f"http:503 #{len(attempts)}")

    with pytest.raises(TransientFailure) as info:
        asyncio.run(policy.call(always_down, on_retry=lambda failure: retried.append(failure.problem)))
    assert len(attempts) == 3 and retried == ["http:503 #1", "http:503 #2"]
    assert info.value.problem == "http:503 #3"

    async def second_time_lucky() -> str:
        attempts.append(1)
        if len(attempts) == 4:
            raise TransientFailure("timeout")
        return "page"

    assert asyncio.run(policy.call(second_time_lucky)) == "page" and len(attempts) == 5


def test_other_errors_are_not_retried() -> None:
    policy = RetryPolicy(retries=5, base_s=0.001, max_s=0.002)
    calls: list[int] = []

    async def refused() -> None:
        calls.append(1)
        raise ConfigurationError("token refused", setting="MEDIACMS_TOKEN")

    with pytest.raises(ConfigurationError):
        asyncio.run(policy.call(refused))
    assert calls == [1]
