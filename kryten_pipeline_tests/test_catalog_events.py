"""The catalog.updated stream (seed 004) against a real redis-server: consumer group, bounded reads,
malformed events, XAUTOCLAIM, and the two sensors (coalescing, ack only after a successful refresh)."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import redis

from kryten_pipeline.dagster_defs.automation_resources import CatalogEventsResource
from kryten_pipeline.dagster_defs.jobs import REFRESH_JOB_NAME
from kryten_pipeline.dagster_defs.partitions import register_namespaces
from kryten_pipeline.dagster_defs.resources import PipelineResource
from kryten_pipeline.dagster_defs.sensors import (
    EVENT_COUNT_TAG,
    EVENT_FIRST_ID_TAG,
    EVENT_LAST_ID_TAG,
    catalog_events_ack,
    catalog_updated_events,
)
from kryten_pipeline.kv.embedded_nats import RunningNatsServer
from kryten_pipeline.triggers.catalog_events import CatalogEventStream, CoalescingState
from kryten_pipeline.triggers.event_entries import parse_event
from kryten_pipeline_tests.pipeline_helpers import QUIET, PipelineEnv
from kryten_pipeline_tests.redis_fixtures import RunningRedis

GROUP = "kryten-pipeline"


def event(namespace: str | None = None, **override: Any) -> dict[str, str]:
    payload: dict[str, Any] = {"status": "published"}
    if namespace:
        payload["namespace"] = namespace
    fields = {
        "type": "catalog.updated", "entity": "episode", "entityId": str(uuid.uuid4()), "operation": "update",
        "timestamp": "2025-12-18T12:34:56Z", "payload": json.dumps(payload),
    }
    fields.update(override)
    return fields


def reader(server: RunningRedis, key: str, *, consumer: str = "sensor", batch_size: int = 100,
           claim_idle_ms: int = 60_000) -> CatalogEventStream:
    return CatalogEventStream(server.client(), key, GROUP, consumer, default_namespace="default",
                              batch_size=batch_size, claim_idle_ms=claim_idle_ms)


def pending_ids(client: redis.Redis, key: str) -> list[str]:
    return [row["message_id"] for row in client.xpending_range(key, GROUP, "-", "+", 1000)]


def old_ids(client: redis.Redis, count: int, *, age_ms: int = 120_000) -> list[str]:
    """Explicit entry ids from ``age_ms`` ago (Redis clock), so a debounce window has surely passed."""
    seconds, micros = client.time()
    base = seconds * 1000 + micros // 1000 - age_ms
    return [f"{base}-{i}" for i in range(count)]


def wait_until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


# -- the reader ----------------------------------------------------------------------------------------


def test_consumer_group_is_created_once_and_new_entries_are_read(redis_server: RunningRedis, stream_key: str) -> None:
    stream = reader(redis_server, stream_key)
    client = redis_server.client()
    assert stream.ensure_group() is True  # XGROUP CREATE … MKSTREAM
    assert stream.ensure_group() is False  # BUSYGROUP is not an error
    assert client.exists(stream_key) == 1
    entry_id = client.xadd(stream_key, event("music"))
    result = stream.read_batch()
    assert [(e.entry_id, e.namespace, e.entity, e.operation) for e in result.events] == [
        (entry_id, "music", "episode", "update")
    ]
    assert result.new == 1 and result.seen_id == entry_id
    # Read but not acknowledged: the entry is pending for this consumer until a refresh covered it.
    assert pending_ids(client, stream_key) == [entry_id]
    assert client.xinfo_groups(stream_key)[0]["name"] == GROUP


def test_malformed_events_are_acknowledged_with_a_reason(redis_server: RunningRedis, stream_key: str) -> None:
    stream = reader(redis_server, stream_key)
    client = redis_server.client()
    stream.ensure_group()
    good = client.xadd(stream_key, event())
    wrapped = client.xadd(stream_key, {"event": json.dumps({**event(), "payload": {"slug": "x", "namespace": "kids"}})})
    bad = {
        client.xadd(stream_key, event(type="catalog.deleted")): "type is 'catalog.deleted'",
        client.xadd(stream_key, event(entityId="not-a-uuid")): "entityId 'not-a-uuid' is not a UUID",
        client.xadd(stream_key, event(entity="movie")): "entity 'movie'",
        client.xadd(stream_key, event(operation="upsert")): "operation 'upsert'",
        client.xadd(stream_key, event(timestamp="yesterday")): "timestamp 'yesterday' is not ISO 8601",
        client.xadd(stream_key, event(payload="{oops")): "payload is not JSON",
        client.xadd(stream_key, event(payload=json.dumps({"namespace": "../etc"}))): "namespace '../etc'",
        client.xadd(stream_key, {"data": "[1, 2]"}): "does not hold a JSON object",
    }
    result = stream.read_batch()
    assert [(e.entry_id, e.namespace) for e in result.events] == [(good, "default"), (wrapped, "kids")]
    reasons = {m.entry_id: m.reason for m in result.malformed}
    assert set(reasons) == set(bad)
    for entry_id, expected in bad.items():
        assert expected in reasons[entry_id]
    # Malformed entries are acknowledged at once (retrying cannot help); the valid ones stay pending.
    assert pending_ids(client, stream_key) == [good, wrapped]


def test_reads_are_bounded_and_unhandled_pending_entries_are_recovered(
    redis_server: RunningRedis, stream_key: str
) -> None:
    stream = reader(redis_server, stream_key, batch_size=3)
    client = redis_server.client()
    stream.ensure_group()
    ids = [client.xadd(stream_key, event()) for _ in range(5)]
    first = stream.read_batch()
    assert [e.entry_id for e in first.events] == ids[:3] and first.new == 3
    # The tick that read them "crashed" before saving its position: the same entries come back.
    again = stream.read_batch(seen_id="0-0")
    assert [e.entry_id for e in again.events] == ids[:3] and again.recovered == 3 and again.new == 0
    rest = stream.read_batch(seen_id=again.seen_id)
    assert [e.entry_id for e in rest.events] == ids[3:] and rest.new == 2


def test_entries_of_a_dead_consumer_are_reclaimed_with_xautoclaim(redis_server: RunningRedis, stream_key: str) -> None:
    client = redis_server.client()
    dead = reader(redis_server, stream_key, consumer="crashed-worker")
    dead.ensure_group()
    ids = [client.xadd(stream_key, event("music")) for _ in range(2)]
    assert len(dead.read_batch().events) == 2  # read, never acknowledged: the worker died
    ours = reader(redis_server, stream_key, claim_idle_ms=100)
    wait_until(lambda: min(p["idle_ms"] for p in ours.pending()) > 150)
    result = ours.read_batch()
    assert result.reclaimed == 2 and [e.entry_id for e in result.events] == ids
    assert {p["consumer"] for p in ours.pending()} == {"sensor"}


def test_ack_namespace_through_acknowledges_only_that_namespace_up_to_the_id(
    redis_server: RunningRedis, stream_key: str
) -> None:
    client = redis_server.client()
    stream = reader(redis_server, stream_key)
    stream.ensure_group()
    a1 = client.xadd(stream_key, event("alpha"))
    b1 = client.xadd(stream_key, event("beta"))
    a2 = client.xadd(stream_key, event("alpha"))
    a3 = client.xadd(stream_key, event("alpha"))
    stream.read_batch()
    assert stream.ack_namespace_through("alpha", a2) == [a1, a2]
    assert pending_ids(client, stream_key) == [b1, a3]


def test_parse_event_defaults_the_namespace_and_accepts_an_event_field() -> None:
    parsed = parse_event("1-0", {**event(), "namespace": "music", "payload": ""}, default_namespace="default")
    assert parsed.namespace == "music" and parsed.payload == {}
    assert parse_event("1-1", event(), default_namespace="default").namespace == "default"


# -- the sensors -----------------------------------------------------------------------------------------


def resources(server: RunningRedis, key: str, data_dir: Path, **events: str) -> dict[str, Any]:
    return {
        "pipeline": PipelineResource(namespaces="default,music", data_dir=str(data_dir)),
        "catalog_events": CatalogEventsResource(redis_url=server.url, catalog_event_stream_key=key, **events),
    }


def tick(instance: dg.DagsterInstance, res: dict[str, Any], cursor: str | None = None) -> Any:
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=res) as context:
        return catalog_updated_events(context)


def test_event_sensor_skips_with_a_reason_when_redis_url_is_unset(tmp_path: Path) -> None:
    res = {"pipeline": PipelineResource(data_dir=str(tmp_path)), "catalog_events": CatalogEventsResource()}
    result = tick(dg.DagsterInstance.ephemeral(), res)
    assert isinstance(result, dg.SkipReason) and "REDIS_URL is not set" in result.skip_message


def test_event_sensor_coalesces_a_burst_into_one_run_per_namespace(
    redis_server: RunningRedis, stream_key: str, tmp_path: Path
) -> None:
    client = redis_server.client()
    instance = dg.DagsterInstance.ephemeral()
    res = resources(redis_server, stream_key, tmp_path)
    first = tick(instance, res)  # creates the group; nothing to do yet
    assert not first.run_requests and "waiting: nothing" in first.skip_reason.skip_message
    ids = old_ids(client, 7)
    namespaces = ["default", "music", "default", None, "music", "default", "ghost"]
    for entry_id, ns in zip(ids, namespaces, strict=True):
        client.xadd(stream_key, event(ns) if ns != "default" else event(), id=entry_id)
    client.xadd(stream_key, {"type": "nonsense"}, id=f"{ids[-1].split('-')[0]}-99")

    result = tick(instance, res, first.cursor)
    by_ns = {r.partition_key: r for r in result.run_requests}
    assert set(by_ns) == {"default", "music"}  # one run per namespace, however many events
    default, music = by_ns["default"], by_ns["music"]
    assert (default.tags[EVENT_FIRST_ID_TAG], default.tags[EVENT_LAST_ID_TAG], default.tags[EVENT_COUNT_TAG]) == (
        ids[0], ids[5], "4")  # None → the default namespace
    assert (music.tags[EVENT_FIRST_ID_TAG], music.tags[EVENT_LAST_ID_TAG], music.tags[EVENT_COUNT_TAG]) == (
        ids[1], ids[4], "2")
    assert default.tags["kryten/trigger"] == "catalog.updated" and default.run_key != music.run_key
    # Nothing valid is acknowledged by the sensor: only the malformed entry and the unregistered namespace.
    assert pending_ids(client, stream_key) == ids[:6]
    state = CoalescingState.from_cursor(result.cursor)
    assert state.seen_id.endswith("-99") and not state.bursts
    # The next tick has nothing new: no second run for the same events.
    again = tick(instance, res, result.cursor)
    assert not again.run_requests


def test_event_sensor_waits_for_the_debounce_window(
    redis_server: RunningRedis, stream_key: str, tmp_path: Path
) -> None:
    client = redis_server.client()
    instance = dg.DagsterInstance.ephemeral()
    cursor = tick(instance, resources(redis_server, stream_key, tmp_path)).cursor
    client.xadd(stream_key, event("music"))  # just now
    waiting = tick(instance, resources(redis_server, stream_key, tmp_path, event_debounce_s="30"), cursor)
    assert not waiting.run_requests and "music (1 events)" in waiting.skip_reason.skip_message
    client.xadd(stream_key, event("music"))
    # Window passed (a zero-second window stands in for waiting 30 s), but a refresh of music is running:
    # the burst waits for it rather than queueing a second run behind it.
    running = dg.DagsterRun(job_name=REFRESH_JOB_NAME, run_id=str(uuid.uuid4()),
                           tags={"dagster/partition": "music"}, status=dg.DagsterRunStatus.STARTED)
    instance.add_run(running)
    quiet = resources(redis_server, stream_key, tmp_path, event_debounce_s="0")
    held = tick(instance, quiet, waiting.cursor)
    assert not held.run_requests and "a refresh is in progress" in held.skip_reason.skip_message
    instance.delete_run(running.run_id)
    due = tick(instance, quiet, held.cursor)
    assert [(r.partition_key, r.tags[EVENT_COUNT_TAG]) for r in due.run_requests] == [("music", "2")]


@pytest.mark.slow
def test_entries_are_acknowledged_only_after_a_successful_refresh_and_failures_are_retried(
    redis_server: RunningRedis, stream_key: str, tmp_path: Path, nats_server: RunningNatsServer
) -> None:
    client = redis_server.client()
    env = PipelineEnv(tmp_path / "data", nats_server.url)
    register_namespaces(env.instance, ["music"])
    res = resources(redis_server, stream_key, env.data_dir, event_claim_idle_s="1")
    cursor = tick(env.instance, res).cursor
    for entry_id, ns in zip(old_ids(client, 4), ["default", "music", "default", "default"], strict=True):
        client.xadd(stream_key, event(ns), id=entry_id)
    requested = tick(env.instance, res, cursor)
    request = next(r for r in requested.run_requests if r.partition_key == "default")

    # The refresh fails (the source breaks): nothing is acknowledged (the ack sensor reacts to successes only).
    env.source_fields["fake_fail_after"] = "5"
    failed = env.definitions().resolve_job_def(REFRESH_JOB_NAME).execute_in_process(
        instance=env.instance, partition_key="default", tags=request.tags, raise_on_error=False, run_config=QUIET)
    assert not failed.success
    assert len(pending_ids(client, stream_key)) == 4
    # Once idle longer than KRYTEN_EVENT_CLAIM_IDLE_S, the entries are reclaimed and a new refresh requested.
    wait_until(lambda: min(p["idle_ms"] for p in reader(redis_server, stream_key).pending()) > 1100)
    retried = tick(env.instance, res, requested.cursor)
    retry = next(r for r in retried.run_requests if r.partition_key == "default")
    assert retry.tags[EVENT_COUNT_TAG] == "3" and retry.run_key != request.run_key

    del env.source_fields["fake_fail_after"]
    succeeded = env.definitions().resolve_job_def(REFRESH_JOB_NAME).execute_in_process(
        instance=env.instance, partition_key="default", tags=retry.tags, raise_on_error=False, run_config=QUIET)
    assert succeeded.success
    with dg.build_run_status_sensor_context(
        sensor_name="catalog_events_ack", dagster_event=succeeded.get_run_success_event(),
        dagster_instance=env.instance, dagster_run=succeeded.dagster_run, resources=res,
    ) as context:
        outcome = catalog_events_ack(context)
    assert "acknowledged 3 pending entries" in outcome.skip_message
    remaining = {client.xrange(stream_key, i, i)[0][1]["payload"] for i in pending_ids(client, stream_key)}
    assert remaining == {json.dumps({"status": "published", "namespace": "music"})}
