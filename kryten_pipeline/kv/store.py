"""The NATS KV record of snapshots (DESIGN §2): ``ns/{ns}/snapshots/{id}`` and ``ns/{ns}/current``.

Publishing writes the snapshot record first (create-only), then moves ``current`` by compare-and-set on
the revision it read, never to an older snapshot id than the one it finds. Every write's result is
checked; NATS errors become :class:`PublishError` / :class:`NatsUnavailableError` that say which key
failed and whether ``current`` changed.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import (
    APIError,
    BucketNotFoundError,
    InvalidBucketNameError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoKeysError,
    ServiceUnavailableError,
)
from nats.js.kv import KeyValue

from kryten_pipeline.errors import (
    ConfigurationError,
    NatsUnavailableError,
    PublishError,
    StaleSnapshotError,
)
from kryten_pipeline.fault_points import fault_point
from kryten_pipeline.kv.connection import nats_connection
from kryten_pipeline.kv.nats_errors import NATS_FAILURES, is_limit_error, is_transient
from kryten_pipeline.kv.nats_errors import describe_nats_error as _describe
from kryten_pipeline.kv.object_store import SnapshotObjectStore
from kryten_pipeline.namespaces import validate_namespace
from kryten_pipeline.settings import Settings
from kryten_pipeline.snapshot.ids import is_snapshot_id

__all__ = [
    "BUCKET_HISTORY",
    "SCHEMA_VERSION",
    "CurrentEntry",
    "PublishResult",
    "SnapshotStore",
    "current_key",
    "snapshot_key",
    "snapshot_store",
    "snapshot_value",
]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DEFAULT_OBJECT_BUCKET = "kryten_playlist_snapshot_files"
BUCKET_HISTORY = 10
MAX_CAS_ATTEMPTS = 10
TRANSIENT_RETRY_WAITS = (0.5, 1.0, 2.0)  # seconds before each retry after a NATS outage or a lost answer
KEYS_TIMEOUT_SECONDS = 30.0

def snapshot_key(namespace: str, snapshot_id: str) -> str:
    return f"ns/{validate_namespace(namespace)}/snapshots/{_checked_snapshot_id(snapshot_id)}"


def current_key(namespace: str) -> str:
    return f"ns/{validate_namespace(namespace)}/current"


def _snapshots_prefix(namespace: str) -> str:
    return f"ns/{validate_namespace(namespace)}/snapshots/"


def _checked_snapshot_id(snapshot_id: object) -> str:
    if not is_snapshot_id(snapshot_id):
        raise ValueError(f"not a snapshot id (expected e.g. 20251218T123456Z-7f3a9c): {snapshot_id!r}")
    return str(snapshot_id)


def encode_value(value: dict[str, Any]) -> bytes:
    """Canonical UTF-8 JSON, so that a retried publish of the same dict produces identical bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _decode(raw: bytes | None, key: str) -> dict[str, Any]:
    try:
        value = json.loads((raw or b"").decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise PublishError(f"KV key {key} does not hold UTF-8 JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise PublishError(f"KV key {key} holds JSON that is not an object")
    return value


def snapshot_value(snapshot: dict[str, Any], *, run_id: str) -> dict[str, Any]:
    """The KV value of DESIGN §2 for a built snapshot (contract fields first, then additive ones)."""
    notes = f"{snapshot['item_count']} items from {snapshot['source']}"
    if snapshot.get("rejected_count"):
        notes += f"; {snapshot['rejected_count']} rejected"
    if snapshot.get("diff_summary"):
        notes += f"; {snapshot['diff_summary']}"
    value = {
        "snapshot_id": snapshot["snapshot_id"],
        "source": snapshot["source"],
        "created_at": snapshot["created_at"],
        "item_count": snapshot["item_count"],
        "notes": notes,
        "schema_version": 1,
        "namespace": snapshot["namespace"],
        "sqlite_path": snapshot["sqlite_path"],
        "sqlite_sha256": snapshot["sqlite_sha256"],
        "size_bytes": snapshot["size_bytes"],
        "object_bucket": snapshot["object_bucket"],
        "object_name": snapshot["object_name"],
        "category_count": snapshot["category_count"],
        "rejected_count": snapshot.get("rejected_count", 0),
        "run_id": run_id,
    }
    if snapshot.get("diff") is not None:
        value["diff"] = snapshot["diff"]
    return value



# -- the store ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PublishResult:
    """Revisions are JetStream stream sequences; ``already_current``: current named this id before the call."""

    snapshot_key: str
    snapshot_revision: int
    current_revision: int
    previous_snapshot_id: str | None
    already_current: bool = False


@dataclass(frozen=True)
class CurrentEntry:
    """The decoded value of ``current`` and its revision (what ``set_current`` expects back)."""

    value: dict[str, Any]
    revision: int

    @property
    def snapshot_id(self) -> str | None:
        sid = self.value.get("snapshot_id")
        return sid if isinstance(sid, str) else None


@dataclass(frozen=True)
class _CurrentState:
    """What `current` holds now, and the revision a compare-and-set must name to replace it."""

    value: dict[str, Any] | None
    cas_revision: int  # 0 = key never existed; else last revision (of a value or a delete marker)


class SnapshotStore:
    """Snapshot records and the ``current`` pointer in one KV bucket (created if absent)."""

    def __init__(self, js: JetStreamContext, bucket: str, *, replicas: int = 1, create: bool = True,
                 object_bucket: str = DEFAULT_OBJECT_BUCKET, max_payload: int | None = None) -> None:
        self._js = js
        self.bucket = bucket
        self.replicas = replicas  # used only when this store creates the bucket
        self.create = create  # False for readers (``follow``): they never create a bucket
        # The snapshot files themselves, on the same connection (created lazily, with the same replicas).
        self.objects = SnapshotObjectStore(js, object_bucket, replicas=replicas, create=create,
                                           max_payload=max_payload)
        self._kv: KeyValue | None = None
        self._max_value_size = -1  # the bucket's limit on one value, -1: none

    def objects_in(self, bucket: str) -> SnapshotObjectStore:
        """The object store a KV record names: this store's own, or (a record from another configuration)
        that bucket, read-only."""
        return self.objects if bucket == self.objects.bucket else SnapshotObjectStore(self._js, bucket, create=False)

    @property
    def jetstream(self) -> JetStreamContext:
        """The JetStream context this store writes through (the object store shares the connection)."""
        return self._js

    async def ensure_bucket(self) -> KeyValue:
        """Bind to the bucket, creating it (history 10, ``replicas`` copies) if it does not exist."""
        if self._kv is not None:
            return self._kv
        try:
            try:
                kv = await self._js.key_value(self.bucket)
            except BucketNotFoundError:
                if not self.create:
                    raise ConfigurationError(
                        f"NATS KV bucket {self.bucket!r} does not exist: nothing has been published to this NATS "
                        f"yet (or NATS_URL / KRYTEN_KV_BUCKET name another one)", setting="KRYTEN_KV_BUCKET",
                    ) from None
                try:
                    kv = await self._js.create_key_value(
                        bucket=self.bucket, history=BUCKET_HISTORY, replicas=self.replicas
                    )
                    logger.info("created NATS KV bucket %s (%d replicas)", self.bucket, self.replicas)
                except APIError as exc:
                    # Another process created it first (possibly with another config): use theirs.
                    logger.debug("creating bucket %s failed (%s); binding to the existing one", self.bucket, exc)
                    try:
                        kv = await self._js.key_value(self.bucket)
                    except BucketNotFoundError:
                        raise self._creation_error(exc) from None
            self._max_value_size = await self._check_config(kv)
        except InvalidBucketNameError:
            raise ConfigurationError(
                f"invalid NATS KV bucket name {self.bucket!r} (letters, digits, '_' and '-' only)",
                setting="KRYTEN_KV_BUCKET",
            ) from None
        except (nats.errors.NoRespondersError, ServiceUnavailableError):
            raise NatsUnavailableError(
                "NATS answered but JetStream is not enabled there (the JetStream API is unavailable)",
                setting="NATS_URL",
            ) from None
        except NATS_FAILURES as exc:
            raise NatsUnavailableError(
                f"cannot open NATS KV bucket {self.bucket!r}: {_describe(exc)}", setting="NATS_URL"
            ) from exc
        self._kv = kv
        return kv

    async def _check_config(self, kv: KeyValue) -> int:
        """Refuse a bucket (created beforehand, by someone else) whose configuration would lose the record;
        return its value size limit. History 1 is fine: compare-and-set needs only the last revision."""
        status = await kv.status()
        config = status.stream_info.config
        if status.ttl:
            raise ConfigurationError(
                f"NATS KV bucket {self.bucket!r} expires values after {status.ttl:g} s: the snapshot records and "
                f"current would vanish. Use a bucket without TTL (delete this one and let kryten-pipeline create "
                f"it, or name another one)", setting="KRYTEN_KV_BUCKET",
            )
        if str(getattr(config.storage, "value", config.storage)) == "memory":
            logger.warning("NATS KV bucket %s keeps values in memory only: a NATS restart loses current", self.bucket)
        return int(config.max_msg_size or -1)

    def _creation_error(self, exc: APIError) -> ConfigurationError | NatsUnavailableError:
        reason = exc.description or _describe(exc)
        if self.replicas > 1:
            return ConfigurationError(
                f"cannot create NATS KV bucket {self.bucket!r} with {self.replicas} replicas: {reason}; that needs "
                f"a NATS cluster with at least {self.replicas} JetStream servers (use 1 on a single server)",
                setting="KRYTEN_KV_REPLICAS",
            )
        return NatsUnavailableError(f"cannot create NATS KV bucket {self.bucket!r}: {reason}", setting="NATS_URL")

    # -- reads -------------------------------------------------------------------------------------

    async def read_current(self, namespace: str) -> CurrentEntry | None:
        """The value ``ns/{namespace}/current`` names now, or None if there is none (never set / deleted)."""
        key = current_key(namespace)
        state = await self._read_current_or_fail(key, NatsUnavailableError)
        if state.value is None:
            return None
        return CurrentEntry(value=state.value, revision=state.cas_revision)

    async def get_snapshot(self, namespace: str, snapshot_id: str) -> dict[str, Any] | None:
        key = snapshot_key(namespace, snapshot_id)
        kv = await self.ensure_bucket()
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:  # also raised for a deleted/purged key
            return None
        except NATS_FAILURES as exc:
            raise NatsUnavailableError(f"reading KV key {key} failed: {_describe(exc)}", setting="NATS_URL") from exc
        return _decode(entry.value, key)

    async def current_history(self, namespace: str) -> list[str]:
        """The snapshot ids ``current`` has named, oldest first, as far as the bucket keeps history."""
        key = current_key(namespace)
        kv = await self.ensure_bucket()
        try:
            entries = await asyncio.wait_for(kv.history(key), timeout=KEYS_TIMEOUT_SECONDS)
        except (NoKeysError, KeyNotFoundError):
            return []
        except NATS_FAILURES as exc:
            raise NatsUnavailableError(f"reading the history of {key} failed: {_describe(exc)}",
                                       setting="NATS_URL") from exc
        ids: list[str] = []
        for entry in entries:
            try:
                snapshot_id = json.loads(entry.value or b"{}").get("snapshot_id")
            except (ValueError, AttributeError):
                continue
            if is_snapshot_id(snapshot_id):
                ids.append(snapshot_id)
        return ids

    async def list_snapshots(self, namespace: str) -> list[dict[str, Any]]:
        """All snapshot records of a namespace, oldest first."""
        prefix = _snapshots_prefix(namespace)
        kv = await self.ensure_bucket()
        try:
            # `/` is not a subject token separator, so no wildcard selects a namespace: filter here.
            keys = await asyncio.wait_for(kv.keys(), timeout=KEYS_TIMEOUT_SECONDS)
        except NoKeysError:
            return []
        except NATS_FAILURES as exc:
            raise NatsUnavailableError(
                f"listing keys of bucket {self.bucket} failed: {_describe(exc)}", setting="NATS_URL"
            ) from exc
        records: list[dict[str, Any]] = []
        for key in sorted(k for k in keys if k.startswith(prefix)):
            snapshot_id = key[len(prefix) :]
            if not is_snapshot_id(snapshot_id):
                continue
            record = await self.get_snapshot(namespace, snapshot_id)
            if record is not None:  # deleted since keys() ran
                records.append(record)
        records.sort(key=lambda r: str(r.get("snapshot_id", "")))
        return records

    # -- writes ------------------------------------------------------------------------------------

    async def publish_snapshot(self, namespace: str, value: dict[str, Any]) -> PublishResult:
        """Write ``snapshots/{id}`` (create-only), then move ``current`` to it by compare-and-set.

        Raises StaleSnapshotError if ``current`` already names a newer snapshot (it is left alone), and
        PublishError if a write fails. Retrying with the same value after a failure is safe.
        """
        snapshot_id = _checked_snapshot_id(value.get("snapshot_id"))
        skey = snapshot_key(namespace, snapshot_id)
        ckey = current_key(namespace)
        data = encode_value(value)
        kv = await self._writable_bucket(skey)
        self._check_value_size(skey, data)

        fault_point("kv.before_snapshot_record")
        snapshot_revision = await self._create_snapshot_record(kv, skey, data)
        fault_point("kv.after_snapshot_record")

        # A NATS restart or a lost answer between here and the compare-and-set is retried: reading current
        # is idempotent, and so is the CAS — it names the revision it read, and a CAS that went through
        # unconfirmed is recognised on the next read (current then names this very snapshot).
        waits = list(TRANSIENT_RETRY_WAITS)
        for _attempt in range(MAX_CAS_ATTEMPTS + len(waits)):
            try:
                state = await self._fetch_current(ckey)
            except NATS_FAILURES as exc:
                if waits and is_transient(exc):
                    await asyncio.sleep(waits.pop(0))
                    continue
                raise PublishError(f"reading {ckey} failed: {_describe(exc)}; {skey} is recorded, current was not "
                                   "changed", setting="NATS_URL") from exc
            previous_id = state.value.get("snapshot_id") if state.value is not None else None
            if state.value is not None and not isinstance(previous_id, str):
                raise PublishError(
                    f"KV key {ckey} holds no snapshot_id, so it cannot be compared with {snapshot_id}; "
                    f"current was not changed (set it explicitly, e.g. with a rollback)"
                )
            if previous_id is not None and previous_id > snapshot_id:
                raise StaleSnapshotError(
                    f"namespace {namespace!r}: current is {previous_id}, newer than {snapshot_id}; current was "
                    f"not moved back ({skey} is recorded)"
                )
            if previous_id == snapshot_id:
                return PublishResult(skey, snapshot_revision, state.cas_revision, previous_id, already_current=True)
            try:
                # cas_revision 0 means "must not exist"; a delete marker's revision lets us replace it.
                fault_point("kv.before_current_cas")
                current_revision = await kv.update(ckey, data, last=state.cas_revision)
                fault_point("kv.after_current_cas")
            except KeyWrongLastSequenceError:
                logger.debug("%s changed while publishing %s; re-reading", ckey, snapshot_id)
                continue
            except NATS_FAILURES as exc:
                if waits and is_transient(exc):
                    logger.debug("moving %s: %s; re-reading and retrying", ckey, _describe(exc))
                    await asyncio.sleep(waits.pop(0))
                    continue
                if isinstance(exc, TimeoutError):
                    raise PublishError(
                        f"moving {ckey} to {snapshot_id} was not confirmed ({_describe(exc)}); {skey} is recorded "
                        f"but current may or may not have moved: check it before retrying (a retry is safe)",
                        setting="NATS_URL",
                    ) from exc
                raise PublishError(
                    f"moving {ckey} to {snapshot_id} failed: {_describe(exc)}; {skey} is recorded, "
                    f"current was not changed", setting="NATS_URL",
                ) from exc
            return PublishResult(skey, snapshot_revision, current_revision, previous_id)
        raise PublishError(
            f"{ckey} kept changing under concurrent writers; gave up after {MAX_CAS_ATTEMPTS} attempts. "
            f"{skey} is recorded, current was not changed by this publish"
        )

    async def check_publishable(self, namespace: str, value: dict[str, Any]) -> None:
        """Raise the PublishError ``publish_snapshot`` would raise for a value the bucket cannot hold — before
        anything is swapped in."""
        skey = snapshot_key(namespace, _checked_snapshot_id(value.get("snapshot_id")))
        await self._writable_bucket(skey)
        self._check_value_size(skey, encode_value(value))

    def _check_value_size(self, skey: str, data: bytes) -> None:
        if 0 < self._max_value_size < len(data):
            raise PublishError(
                f"the value of {skey} has {len(data)} bytes but NATS KV bucket {self.bucket!r} accepts at most "
                f"{self._max_value_size} (it was created with a max value size); current was not changed. Raise its "
                f"limit or use another bucket", setting="KRYTEN_KV_BUCKET",
            )

    async def set_current(self, namespace: str, value: dict[str, Any], *, expected_revision: int | None) -> int:
        """Point ``current`` at ``value`` if it is still at ``expected_revision`` (None: no current).

        Unlike publish_snapshot this may move to an older snapshot (rollback). The snapshot record must
        exist. Returns the new revision of ``current``.
        """
        snapshot_id = _checked_snapshot_id(value.get("snapshot_id"))
        skey = snapshot_key(namespace, snapshot_id)
        ckey = current_key(namespace)
        if await self.get_snapshot(namespace, snapshot_id) is None:
            raise PublishError(f"no snapshot record {skey}; current was not changed")
        kv = await self._writable_bucket(ckey)
        last = expected_revision
        if last is None:
            # "No current" may still leave a delete marker, whose revision the CAS must name.
            state = await self._read_current_or_fail(ckey, PublishError)
            if state.value is not None:
                raise PublishError(
                    f"{ckey} names {state.value.get('snapshot_id')} (revision {state.cas_revision}), "
                    f"expected no current; current was not changed"
                )
            last = state.cas_revision
        try:
            return await kv.update(ckey, encode_value(value), last=last)
        except KeyWrongLastSequenceError:
            raise PublishError(
                f"{ckey} is no longer at revision {expected_revision} (someone else moved it); current was not changed"
            ) from None
        except TimeoutError as exc:
            raise PublishError(
                f"moving {ckey} to {snapshot_id} was not confirmed ({_describe(exc)}); check current"
            ) from exc
        except NATS_FAILURES as exc:
            raise PublishError(
                f"moving {ckey} to {snapshot_id} failed: {_describe(exc)}; current was not changed"
            ) from exc

    async def delete_snapshot_record(self, namespace: str, snapshot_id: str) -> bool:
        """Purge ``snapshots/{id}`` (retention). Refuses if ``current`` names it. False if already absent."""
        skey = snapshot_key(namespace, snapshot_id)
        current = await self.read_current(namespace)
        if current is not None and current.snapshot_id == snapshot_id:
            raise PublishError(f"{skey} is what {current_key(namespace)} names; not deleting the live snapshot")
        if await self.get_snapshot(namespace, snapshot_id) is None:
            return False
        kv = await self._writable_bucket(skey)
        try:
            # purge (not delete) drops the old revisions too, which is the point of retention.
            await kv.purge(skey)
        except NATS_FAILURES as exc:
            raise PublishError(f"deleting {skey} failed: {_describe(exc)}") from exc
        return True

    # -- internals ---------------------------------------------------------------------------------

    async def _writable_bucket(self, key: str) -> KeyValue:
        try:
            return await self.ensure_bucket()
        except NatsUnavailableError as exc:
            raise PublishError(f"cannot write {key}: {exc}; current was not changed", setting="NATS_URL") from exc

    async def _create_snapshot_record(self, kv: KeyValue, skey: str, data: bytes) -> int:
        waits = list(TRANSIENT_RETRY_WAITS)
        while True:
            try:
                return await kv.create(skey, data)
            except KeyWrongLastSequenceError:
                break  # exists already: fine if it is this very value (a retried publish, or a lost answer)
            except NATS_FAILURES as exc:
                if waits and is_transient(exc):
                    await asyncio.sleep(waits.pop(0))
                    continue
                self._raise_write_error(skey, exc)
        try:
            existing = await kv.get(skey)
        except NATS_FAILURES as exc:
            raise PublishError(
                f"{skey} exists but could not be read back: {_describe(exc)}; current was not changed"
            ) from exc
        if existing.value != data:
            raise PublishError(
                f"{skey} already exists with different content (a snapshot id must be unique); current was not changed"
            )
        return existing.revision or 0

    def _raise_write_error(self, skey: str, exc: BaseException) -> NoReturn:
        limit = is_limit_error(exc)
        raise PublishError(
            f"writing {skey} failed: {_describe(exc)}; current was not changed"
            + (f" (the configuration of bucket {self.bucket!r} refuses it: raise its limits or use another bucket)"
               if limit else ""),
            setting="KRYTEN_KV_BUCKET" if limit else "NATS_URL",
        ) from exc

    async def _fetch_current(self, key: str) -> _CurrentState:
        kv = await self.ensure_bucket()
        try:
            entry = await kv.get(key)
        except KeyNotFoundError as exc:
            # nats-py turns "deleted" into KeyNotFoundError but keeps the marker entry: its revision is
            # what a compare-and-set must name to replace it.
            marker = exc.entry
            return _CurrentState(value=None, cas_revision=(marker.revision or 0) if marker is not None else 0)
        return _CurrentState(value=_decode(entry.value, key), cas_revision=entry.revision or 0)

    async def _read_current_or_fail(
        self, key: str, error: type[PublishError | NatsUnavailableError], *, after: str | None = None
    ) -> _CurrentState:
        try:
            return await self._fetch_current(key)
        except NATS_FAILURES as exc:
            if error is PublishError:
                done = f"{after} is recorded, " if after else ""
                raise PublishError(f"reading {key} failed: {_describe(exc)}; {done}current was not changed") from exc
            raise NatsUnavailableError(f"reading KV key {key} failed: {_describe(exc)}", setting="NATS_URL") from exc


# -- lifecycle ---------------------------------------------------------------------------------------


@asynccontextmanager
async def snapshot_store(settings: Settings) -> AsyncIterator[SnapshotStore]:
    """A SnapshotStore (bucket created if absent) on the connection :func:`nats_connection` opens."""
    async with nats_connection(settings) as nc:
        store = SnapshotStore(nc.jetstream(), settings.kv_bucket, replicas=settings.kv_replicas,
                              object_bucket=settings.object_bucket, max_payload=nc.max_payload)
        await store.ensure_bucket()
        yield store
