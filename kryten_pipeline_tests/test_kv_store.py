"""The KV protocol of DESIGN §2 against a real nats-server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from nats.js.errors import BucketNotFoundError

from kryten_pipeline.errors import ConfigurationError, NatsUnavailableError, PublishError, StaleSnapshotError
from kryten_pipeline.kv import embedded_nats
from kryten_pipeline.kv.connection import NatsConnectionSettings, connect_nats
from kryten_pipeline.kv.embedded_nats import find_nats_server_binary, nats_url_answers
from kryten_pipeline.kv.store import (
    SnapshotStore,
    _CurrentState,
    current_key,
    snapshot_key,
    snapshot_store,
)
from kryten_pipeline.settings import Settings
from kryten_pipeline.snapshot.ids import iso_utc, new_snapshot_id

T = TypeVar("T")
BASE = datetime(2025, 12, 18, 12, 0, 0, tzinfo=UTC)


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


def snapshot_value(minutes: int, *, item_count: int = 10, **extra: Any) -> dict[str, Any]:
    moment = BASE + timedelta(minutes=minutes)
    return {
        "snapshot_id": new_snapshot_id(moment),
        "source": "fake",
        "created_at": iso_utc(moment),
        "item_count": item_count,
        "notes": "",
        "schema_version": 1,
        **extra,
    }


async def raw_get(settings: Settings, key: str) -> tuple[dict[str, Any], int] | None:
    """Read a key with plain nats-py, independently of SnapshotStore."""
    nc = await connect_nats(NatsConnectionSettings(url=settings.nats_url), str(settings.nats_url))
    try:
        kv = await nc.jetstream().key_value(settings.kv_bucket)
        try:
            entry = await kv.get(key)
        except Exception:
            return None
        return json.loads(entry.value or b""), int(entry.revision or 0)
    finally:
        await nc.close()


def test_bucket_is_created_if_absent(nats_settings: Settings) -> None:
    async def scenario() -> int:
        async with snapshot_store(nats_settings):
            pass
        nc = await connect_nats(NatsConnectionSettings(url=nats_settings.nats_url), str(nats_settings.nats_url))
        try:
            kv = await nc.jetstream().key_value(nats_settings.kv_bucket)
            status = await kv.status()
            return status.history
        finally:
            await nc.close()

    assert run(scenario()) == 10


def test_new_bucket_gets_the_configured_replicas(nats_settings: Settings) -> None:
    settings = Settings.from_env({"KRYTEN_KV_REPLICAS": "1"}).model_copy(update={
        "nats_url": nats_settings.nats_url, "kv_bucket": nats_settings.kv_bucket, "data_dir": nats_settings.data_dir,
    })
    assert settings.kv_replicas == 1

    async def scenario() -> int:
        async with snapshot_store(settings):
            pass
        nc = await connect_nats(NatsConnectionSettings(url=settings.nats_url), str(settings.nats_url))
        try:
            info = await nc.jetstream().stream_info(f"KV_{settings.kv_bucket}")
            return int(info.config.num_replicas or 0)
        finally:
            await nc.close()

    assert run(scenario()) == 1


def test_more_replicas_than_servers_is_a_configuration_error(nats_settings: Settings) -> None:
    settings = nats_settings.model_copy(update={"kv_replicas": 3})

    async def scenario() -> None:
        async with snapshot_store(settings):
            pass

    # A single nats-server cannot hold 3 replicas: the error names the setting, and no bucket is left behind.
    with pytest.raises(ConfigurationError, match=r"3 replicas.*KRYTEN_KV_REPLICAS") as caught:
        run(scenario())
    assert caught.value.setting == "KRYTEN_KV_REPLICAS"

    async def bucket_exists() -> bool:
        nc = await connect_nats(NatsConnectionSettings(url=settings.nats_url), str(settings.nats_url))
        try:
            await nc.jetstream().key_value(settings.kv_bucket)
        except BucketNotFoundError:
            return False
        finally:
            await nc.close()
        return True

    assert not run(bucket_exists())


def test_kv_replicas_setting_is_validated() -> None:
    assert Settings.from_env({}).kv_replicas == 1
    with pytest.raises(ConfigurationError, match="KRYTEN_KV_REPLICAS"):
        Settings.from_env({"KRYTEN_KV_REPLICAS": "0"})


def test_publish_writes_snapshot_record_then_current(nats_settings: Settings) -> None:
    value = snapshot_value(0)

    async def scenario() -> Any:
        async with snapshot_store(nats_settings) as store:
            return await store.publish_snapshot("default", value)

    result = run(scenario())
    snap = run(raw_get(nats_settings, snapshot_key("default", value["snapshot_id"])))
    cur = run(raw_get(nats_settings, current_key("default")))
    assert snap is not None and cur is not None
    assert snap[0] == value and cur[0] == value
    # Stream sequence numbers are global to the bucket: the record was written first.
    assert snap[1] == result.snapshot_revision < cur[1] == result.current_revision
    assert result.previous_snapshot_id is None


def test_newer_snapshot_moves_current_older_one_does_not(nats_settings: Settings) -> None:
    old, new = snapshot_value(0), snapshot_value(5)

    async def scenario() -> None:
        async with snapshot_store(nats_settings) as store:
            await store.publish_snapshot("default", old)
            result = await store.publish_snapshot("default", new)
            assert result.previous_snapshot_id == old["snapshot_id"]
            with pytest.raises(StaleSnapshotError, match=new["snapshot_id"]):
                await store.publish_snapshot("default", snapshot_value(2))
            current = await store.read_current("default")
            assert current is not None and current.value == new

    run(scenario())


def test_concurrent_newer_current_is_not_overwritten(nats_settings: Settings) -> None:
    """Another writer moves `current` to a newer snapshot between our read and our compare-and-set."""
    ours, theirs = snapshot_value(1), snapshot_value(9)

    class InterleavedStore(SnapshotStore):
        def __init__(self, *args: Any, competitor: Callable[[], Awaitable[None]]) -> None:
            super().__init__(*args)
            self.competitor: Callable[[], Awaitable[None]] | None = competitor
            self.reads = 0

        async def _fetch_current(self, key: str) -> _CurrentState:
            state = await super()._fetch_current(key)
            self.reads += 1
            if self.competitor is not None:  # only after the first read
                competitor, self.competitor = self.competitor, None
                await competitor()
            return state

    async def scenario() -> None:
        async with snapshot_store(nats_settings) as other, snapshot_store(nats_settings) as base:
            await other.publish_snapshot("default", snapshot_value(0))

            async def competitor() -> None:
                await other.publish_snapshot("default", theirs)

            store = InterleavedStore(base._js, nats_settings.kv_bucket, competitor=competitor)
            with pytest.raises(StaleSnapshotError):
                await store.publish_snapshot("default", ours)
            assert store.reads == 2, "the failed compare-and-set must be followed by a re-read"
            current = await other.read_current("default")
            assert current is not None and current.value == theirs
            # Our record was still written (it just is not current).
            assert await other.get_snapshot("default", ours["snapshot_id"]) == ours

    run(scenario())


def test_concurrent_publishers_leave_the_newest_current(nats_settings: Settings) -> None:
    values = [snapshot_value(minutes) for minutes in (3, 7, 1, 9, 4, 8, 2, 6)]

    async def scenario() -> dict[str, Any] | None:
        async def publish(value: dict[str, Any]) -> None:
            async with snapshot_store(nats_settings) as store:
                # A newer one already won: expected for most of them.
                with contextlib.suppress(StaleSnapshotError):
                    await store.publish_snapshot("default", value)

        await asyncio.gather(*(publish(v) for v in values))
        async with snapshot_store(nats_settings) as store:
            current = await store.read_current("default")
            records = await store.list_snapshots("default")
        assert [r["snapshot_id"] for r in records] == sorted(v["snapshot_id"] for v in values)
        return current.value if current else None

    assert run(scenario()) == max(values, key=lambda v: v["snapshot_id"])


def test_republishing_the_same_value_is_idempotent(nats_settings: Settings) -> None:
    value = snapshot_value(0)

    async def scenario() -> None:
        async with snapshot_store(nats_settings) as store:
            first = await store.publish_snapshot("default", value)
            again = await store.publish_snapshot("default", dict(value))
            assert again.already_current
            assert again.snapshot_revision == first.snapshot_revision
            assert again.current_revision == first.current_revision
            with pytest.raises(PublishError, match="different content"):
                await store.publish_snapshot("default", {**value, "item_count": 999})
            current = await store.read_current("default")
            assert current is not None and current.value == value

    run(scenario())


def test_republish_after_record_written_but_current_not_moved(nats_settings: Settings) -> None:
    """A retry after a failure between the two writes completes the publish."""
    value = snapshot_value(0)

    async def scenario() -> None:
        async with snapshot_store(nats_settings) as store:
            kv = await store.ensure_bucket()
            await kv.create(
                snapshot_key("default", value["snapshot_id"]),
                json.dumps(value, sort_keys=True, separators=(",", ":")).encode(),
            )
            assert await store.read_current("default") is None
            result = await store.publish_snapshot("default", value)
            assert not result.already_current
            current = await store.read_current("default")
            assert current is not None and current.value == value

    run(scenario())


def test_list_snapshots_is_per_namespace_and_sorted(nats_settings: Settings) -> None:
    a1, a2, b1 = snapshot_value(5), snapshot_value(1), snapshot_value(3)

    async def scenario() -> None:
        async with snapshot_store(nats_settings) as store:
            assert await store.list_snapshots("alpha") == []  # empty bucket
            await store.publish_snapshot("alpha", a2)
            await store.publish_snapshot("alpha", a1)
            await store.publish_snapshot("beta", b1)
            assert await store.list_snapshots("alpha") == [a2, a1]
            assert await store.list_snapshots("beta") == [b1]
            assert await store.get_snapshot("alpha", b1["snapshot_id"]) is None

    run(scenario())


def test_set_current_rolls_back_and_rejects_a_stale_revision(nats_settings: Settings) -> None:
    old, new = snapshot_value(0), snapshot_value(5)

    async def scenario() -> None:
        async with snapshot_store(nats_settings) as store:
            await store.publish_snapshot("default", old)
            await store.publish_snapshot("default", new)
            current = await store.read_current("default")
            assert current is not None
            stale_revision = current.revision

            revision = await store.set_current("default", old, expected_revision=current.revision)
            assert revision > stale_revision
            rolled_back = await store.read_current("default")
            assert rolled_back is not None and rolled_back.value == old

            with pytest.raises(PublishError, match="no longer at revision"):
                await store.set_current("default", new, expected_revision=stale_revision)
            after = await store.read_current("default")
            assert after is not None and after.value == old and after.revision == revision

            with pytest.raises(PublishError, match="no snapshot record"):
                await store.set_current("default", snapshot_value(7), expected_revision=revision)

    run(scenario())


def test_delete_snapshot_record_refuses_the_current_one(nats_settings: Settings) -> None:
    old, new = snapshot_value(0), snapshot_value(5)

    async def scenario() -> None:
        async with snapshot_store(nats_settings) as store:
            await store.publish_snapshot("default", old)
            await store.publish_snapshot("default", new)
            with pytest.raises(PublishError, match="not deleting"):
                await store.delete_snapshot_record("default", new["snapshot_id"])
            assert await store.delete_snapshot_record("default", old["snapshot_id"]) is True
            assert await store.delete_snapshot_record("default", old["snapshot_id"]) is False
            assert await store.list_snapshots("default") == [new]
            assert await store.get_snapshot("default", old["snapshot_id"]) is None

    run(scenario())


def test_deleted_current_can_be_published_again(nats_settings: Settings) -> None:
    """A delete marker on `current` is replaced by compare-and-set on the marker's revision."""
    first, second = snapshot_value(0), snapshot_value(5)

    async def scenario() -> None:
        async with snapshot_store(nats_settings) as store:
            await store.publish_snapshot("default", first)
            kv = await store.ensure_bucket()
            await kv.delete(current_key("default"))
            assert await store.read_current("default") is None
            await store.publish_snapshot("default", second)
            current = await store.read_current("default")
            assert current is not None and current.value == second

    run(scenario())


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_nats_names_the_setting_and_hides_the_password(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"nats://kryten:s3cr3t-pw@127.0.0.1:{closed_port()}"
    settings = Settings(nats_url=url, nats_password="other-s3cret", data_dir=tmp_path)

    async def scenario() -> None:
        async with snapshot_store(settings):
            pass

    with pytest.raises(NatsUnavailableError) as excinfo:
        run(scenario())
    message = str(excinfo.value)
    assert excinfo.value.setting == "NATS_URL"
    assert "NATS_URL" in message
    assert "127.0.0.1" in message
    assert "s3cr3t-pw" not in message and "other-s3cret" not in message
    assert "s3cr3t-pw" not in caplog.text and "other-s3cret" not in caplog.text


def test_wrong_password_and_missing_jetstream_are_reported_clearly(tmp_path: Path) -> None:
    """A real server with authentication: the failure names the settings to check and no secret."""
    store = tmp_path / "auth"
    store.mkdir()
    # start_nats_server has no auth options: this one is started by hand, with a password and without -js.
    proc = subprocess.Popen(
        [
            find_nats_server_binary(),
            "-a",
            "127.0.0.1",
            "-p",
            "-1",
            "--ports_file_dir",
            str(store),
            "--user",
            "kryten",
            "--pass",
            "right-pass",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        url = None
        while not (url and nats_url_answers(url)) and time.monotonic() < deadline:
            time.sleep(0.01)
            url = embedded_nats._read_ports_file(store, proc.pid)
        assert url is not None

        conn = NatsConnectionSettings(url=url, user="kryten", password="wrong-pass")
        with pytest.raises(NatsUnavailableError) as excinfo:
            run(connect_nats(conn, url, timeout=2.0))
        message = str(excinfo.value)
        assert "authorization" in message.lower()
        assert "wrong-pass" not in message

        # The right password connects; this server has no JetStream, which is reported as such.
        settings = Settings(nats_url=url, nats_user="kryten", nats_password="right-pass", data_dir=tmp_path)

        async def open_store() -> None:
            async with snapshot_store(settings):
                pass

        with pytest.raises(NatsUnavailableError, match="JetStream is not enabled"):
            run(open_store())
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_snapshot_store_without_nats_url_runs_an_embedded_server(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, kv_bucket="kryten_playlist_snapshot")
    value = snapshot_value(0)

    async def scenario() -> str:
        async with snapshot_store(settings) as store:
            url = json.loads((tmp_path / ".nats" / "server.json").read_text())["url"]
            assert nats_url_answers(url)
            await store.publish_snapshot("default", value)
            return url

    url = run(scenario())
    assert not nats_url_answers(url), "the last user stops the embedded server"
    assert not (tmp_path / ".nats" / "server.json").exists()

    async def reopen() -> dict[str, Any] | None:
        async with snapshot_store(settings) as store:
            current = await store.read_current("default")
            return current.value if current else None

    # The JetStream store lives under the data dir, so the KV survives a restart of the server.
    assert run(reopen()) == value
