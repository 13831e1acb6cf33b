"""Snapshot files in a NATS JetStream Object Store (DESIGN §2): object ``ns/{ns}/{snapshot_id}.sqlite3``.

The pipeline puts each verified file here before KV names it, so a host that reaches NATS can install
every snapshot without a shared filesystem (``kryten-pipeline follow``), and a rollback or a recovery works
from KV and the object alone. Both directions stream in chunks from and to disk: memory stays flat
whatever the file size.

nats-py checks the object's own digest on download; callers also check the size and sha256 that KV
recorded, which is what makes a downloaded file trustworthy.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    ObjectInfo,
    ObjectMeta,
    ObjectMetaOptions,
    ObjectStoreConfig,
)
from nats.js.errors import (
    APIError,
    BucketNotFoundError,
    InvalidBucketNameError,
    NotFoundError,
    ServiceUnavailableError,
)
from nats.js.object_store import OBJ_CHUNKS_PRE_TEMPLATE, OBJ_STREAM_TEMPLATE, ObjectStore

from kryten_pipeline.errors import ConfigurationError, DeliveryError, NatsUnavailableError, PublishError
from kryten_pipeline.fault_points import fault_point
from kryten_pipeline.kv.nats_errors import NATS_FAILURES, describe_nats_error, is_limit_error
from kryten_pipeline.namespaces import validate_namespace
from kryten_pipeline.snapshot.ids import is_snapshot_id

__all__ = [
    "CHUNK_SIZE",
    "FetchedObject",
    "SnapshotObjectStore",
    "StoredObject",
    "object_name",
]

logger = logging.getLogger(__name__)

# 512 KiB chunks: a 40 MB snapshot is 80 messages (one JetStream ack each); below the 1 MiB default
# max_payload of nats-server. Smaller when the bucket or the server allows less.
CHUNK_SIZE = 512 * 1024
# Bytes JetStream accounts per stored chunk beyond its payload (subject, sequence, timestamps), an upper bound.
_PER_CHUNK_OVERHEAD = 256
STALL_TIMEOUT_S = 30.0
_FETCH_BATCH = 8  # chunks per pull request: at most ~4 MiB in flight


def _write_chunks(sink: BinaryIO, payloads: list[bytes], digest: Any) -> None:
    for payload in payloads:
        fault_point("object.fetch_chunk")
        sink.write(payload)
        digest.update(payload)


def object_name(namespace: str, snapshot_id: str) -> str:
    if not is_snapshot_id(snapshot_id):
        raise ValueError(f"not a snapshot id: {snapshot_id!r}")
    return f"ns/{validate_namespace(namespace)}/{snapshot_id}.sqlite3"


def _snapshot_id_of(name: str, namespace: str) -> str | None:
    prefix = f"ns/{namespace}/"
    if not (name.startswith(prefix) and name.endswith(".sqlite3")):
        return None
    candidate = name[len(prefix) : -len(".sqlite3")]
    return candidate if is_snapshot_id(candidate) else None


def sha256_hex_of_digest(digest: str | None) -> str | None:
    """The hex sha256 of an Object Store digest (``SHA-256=<base64url>``), None if it is not one."""
    if not digest or not digest.upper().startswith("SHA-256="):
        return None
    encoded = digest[len("SHA-256="):]
    try:
        raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    except (binascii.Error, ValueError):
        return None
    return raw.hex() if len(raw) == 32 else None


# Object headers (NATS header form: name → list of values) saying which KV bucket published an object, so
# that retention only ever sweeps objects of its own pipeline when several share a bucket.
KV_BUCKET_HEADER = "Kryten-Kv-Bucket"


@dataclass(frozen=True, slots=True)
class StoredObject:
    bucket: str
    name: str
    size: int
    sha256: str | None
    chunks: int
    kv_bucket: str | None = None

    @classmethod
    def from_info(cls, bucket: str, info: ObjectInfo) -> StoredObject:
        owner = (info.headers or {}).get(KV_BUCKET_HEADER)
        if isinstance(owner, list):
            owner = owner[0] if owner else None
        return cls(bucket=bucket, name=info.name, size=int(info.size or 0),
                   sha256=sha256_hex_of_digest(info.digest), chunks=int(info.chunks or 0),
                   kv_bucket=owner if isinstance(owner, str) else None)


@dataclass(frozen=True, slots=True)
class FetchedObject:
    name: str
    size: int
    sha256: str
    seconds: float


class SnapshotObjectStore:
    """The snapshot files of every namespace in one Object Store bucket (created if absent, unless ``create``
    is False, as for a reader host)."""

    def __init__(self, js: JetStreamContext, bucket: str, *, replicas: int = 1, create: bool = True,
                 max_payload: int | None = None) -> None:
        self._js = js
        self.bucket = bucket
        self.replicas = replicas
        self.create = create
        self.max_payload = max_payload  # the server's limit on one message, when the caller knows it
        self._store: ObjectStore | None = None

    async def ensure_bucket(self) -> ObjectStore:
        if self._store is not None:
            return self._store
        try:
            try:
                store = await self._js.object_store(self.bucket)
            except BucketNotFoundError:
                if not self.create:
                    raise ConfigurationError(
                        f"NATS Object Store bucket {self.bucket!r} does not exist: no snapshot file was published "
                        f"to this NATS yet (or NATS_URL / KRYTEN_OBJECT_BUCKET name another one)",
                        setting="KRYTEN_OBJECT_BUCKET",
                    ) from None
                store = await self._create()
        except InvalidBucketNameError:
            raise ConfigurationError(
                f"invalid NATS Object Store bucket name {self.bucket!r} (letters, digits, '_' and '-' only)",
                setting="KRYTEN_OBJECT_BUCKET",
            ) from None
        except ServiceUnavailableError:
            raise NatsUnavailableError(
                "NATS answered but JetStream is not enabled there (the JetStream API is unavailable)",
                setting="NATS_URL",
            ) from None
        except (ConfigurationError, NatsUnavailableError):
            raise
        except NATS_FAILURES as exc:
            raise NatsUnavailableError(
                f"cannot open NATS Object Store bucket {self.bucket!r}: {describe_nats_error(exc)}", setting="NATS_URL"
            ) from exc
        self._store = store
        return store

    async def _create(self) -> ObjectStore:
        config = ObjectStoreConfig(description="kryten-pipeline snapshot files (SQLite)", replicas=self.replicas)
        try:
            store = await self._js.create_object_store(self.bucket, config=config)
            logger.info("created NATS Object Store bucket %s (%d replicas)", self.bucket, self.replicas)
            return store
        except APIError as exc:
            # Another process created it first (possibly with another config): use theirs.
            try:
                return await self._js.object_store(self.bucket)
            except BucketNotFoundError:
                pass
            reason = exc.description or describe_nats_error(exc)
            if self.replicas > 1:
                raise ConfigurationError(
                    f"cannot create NATS Object Store bucket {self.bucket!r} with {self.replicas} replicas: {reason}; "
                    f"that needs a NATS cluster with at least {self.replicas} JetStream servers",
                    setting="KRYTEN_KV_REPLICAS",
                ) from None
            raise NatsUnavailableError(
                f"cannot create NATS Object Store bucket {self.bucket!r}: {reason}", setting="NATS_URL"
            ) from None

    # -- reads ---------------------------------------------------------------------------------------

    async def stat(self, name: str) -> StoredObject | None:
        """The stored object ``name`` (size, sha256), or None if there is none."""
        store = await self.ensure_bucket()
        try:
            info = await store.get_info(name)
        except NotFoundError:  # ObjectNotFoundError derives from it; a deleted object reads as not found
            return None
        except NATS_FAILURES as exc:
            raise NatsUnavailableError(
                f"reading object {name} of bucket {self.bucket!r} failed: {describe_nats_error(exc)}",
                setting="NATS_URL",
            ) from exc
        return StoredObject.from_info(self.bucket, info)

    async def snapshot_objects(self, namespace: str) -> dict[str, StoredObject]:
        """Snapshot id → object, for every snapshot file of ``namespace`` in the bucket."""
        store = await self.ensure_bucket()
        try:
            infos = await store.list(ignore_deletes=True)
        except NotFoundError:
            return []
        except NATS_FAILURES as exc:
            raise NatsUnavailableError(
                f"listing bucket {self.bucket!r} failed: {describe_nats_error(exc)}", setting="NATS_URL"
            ) from exc
        found: dict[str, StoredObject] = {}
        for info in infos:
            snapshot_id = _snapshot_id_of(info.name or "", namespace)
            if snapshot_id and not info.deleted:
                found[snapshot_id] = StoredObject.from_info(self.bucket, info)
        return dict(sorted(found.items()))

    async def fetch_into(
        self, name: str, sink: BinaryIO, *, progress: Callable[[int], None] | None = None,
        stall_timeout: float = STALL_TIMEOUT_S,
    ) -> FetchedObject:
        """Stream object ``name`` into ``sink``; size and sha256 of what was written are computed on the way
        and must match the object's own (else DeliveryError: corrupted in the store).

        The chunks are read with an ephemeral pull consumer on the object's chunk subject (the Object Store
        layout: ``$O.<bucket>.C.<nuid>``), in batches: nats-py's ``ObjectStore.get`` reads them through an
        ordered push consumer that manages ~25 MB/s here, the pull consumer ~250 MB/s. Raises DeliveryError
        when the object is missing, or when no chunk arrived for ``stall_timeout`` seconds (a NATS outage, or
        the object deleted mid-download).
        """
        started = time.monotonic()
        store = await self.ensure_bucket()
        try:
            info = await store.get_info(name)
        except NotFoundError:
            raise DeliveryError(f"object {name} is not in bucket {self.bucket!r} (deleted, or never stored)",
                                setting="KRYTEN_OBJECT_BUCKET") from None
        except NATS_FAILURES as exc:
            raise DeliveryError(f"reading object {name} of bucket {self.bucket!r} failed: "
                                f"{describe_nats_error(exc)}", setting="NATS_URL") from exc
        expected_chunks, expected_size = int(info.chunks or 0), int(info.size or 0)
        digest = hashlib.sha256()
        received = chunks = 0
        subscription = None
        try:
            if expected_chunks:
                subscription = await self._js.pull_subscribe(
                    OBJ_CHUNKS_PRE_TEMPLATE.format(bucket=self.bucket, obj=info.nuid),
                    stream=OBJ_STREAM_TEMPLATE.format(bucket=self.bucket),
                    config=ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL,
                                          inactive_threshold=max(60.0, stall_timeout * 2)),
                )
            while chunks < expected_chunks:
                try:
                    batch = await subscription.fetch(min(_FETCH_BATCH, expected_chunks - chunks),  # type: ignore[union-attr]
                                                     timeout=stall_timeout)
                except nats.errors.TimeoutError:
                    raise DeliveryError(
                        f"download of {name} from bucket {self.bucket!r} stalled: no data for {stall_timeout:.0f} s "
                        f"after {received} of {expected_size} bytes (NATS unreachable, or the object was deleted "
                        f"meanwhile)", setting="NATS_URL",
                    ) from None
                payloads = [msg.data for msg in batch]
                await asyncio.to_thread(_write_chunks, sink, payloads, digest)
                chunks += len(payloads)
                received += sum(map(len, payloads))
                if progress is not None:
                    progress(sum(map(len, payloads)))
        except (DeliveryError, OSError):
            raise
        except NATS_FAILURES as exc:
            raise DeliveryError(
                f"downloading {name} from bucket {self.bucket!r} failed after {received} of {expected_size} bytes: "
                f"{describe_nats_error(exc)}", setting="NATS_URL",
            ) from exc
        finally:
            if subscription is not None:
                with contextlib.suppress(Exception):  # the consumer also expires on its own (inactive_threshold)
                    await subscription.unsubscribe()
        sha256 = digest.hexdigest()
        if received != expected_size or sha256 != sha256_hex_of_digest(info.digest):
            raise DeliveryError(
                f"object {name} of bucket {self.bucket!r} does not match its own digest or size ({received} of "
                f"{expected_size} bytes; corrupted in the store): digest mismatch", setting="KRYTEN_OBJECT_BUCKET",
            )
        return FetchedObject(name=name, size=received, sha256=sha256, seconds=round(time.monotonic() - started, 3))

    # -- writes --------------------------------------------------------------------------------------

    async def put_file(self, name: str, path: Path, *, sha256: str, description: str | None = None,
                       kv_bucket: str | None = None) -> StoredObject:
        """Store the file at ``path`` as object ``name``, streamed from disk; the stored object must have the
        size and ``sha256`` of the file, else PublishError. An object already holding these bytes is kept
        (a retried publish uploads nothing). ``kv_bucket``: the KV bucket that will name it (a header)."""
        path = Path(path)
        size = path.stat().st_size
        store = await self.ensure_bucket()
        existing = await self.stat(name)
        if existing is not None and existing.size == size and existing.sha256 == sha256:
            return existing
        chunk_size = await self._chunk_size_for(store, size, replacing=existing.size if existing else 0)
        meta = ObjectMeta(name=name, description=description, options=ObjectMetaOptions(max_chunk_size=chunk_size),
                          headers={KV_BUCKET_HEADER: [kv_bucket]} if kv_bucket else None)
        fault_point("object.before_put")
        try:
            with open(path, "rb") as handle:
                info = await store.put(name, handle, meta=meta)  # type: ignore[arg-type]
        except NATS_FAILURES as exc:
            raise self._put_error(name, size, exc) from exc
        fault_point("object.after_put")
        stored = StoredObject.from_info(self.bucket, info)
        if stored.size != size or stored.sha256 != sha256:
            raise PublishError(
                f"object {name} was stored with {stored.size} bytes / sha256 {stored.sha256} but the file has "
                f"{size} bytes / sha256 {sha256} (changed while uploading?); current was not changed"
            )
        return stored

    async def delete(self, name: str) -> bool:
        """Delete object ``name`` (its chunks are purged); False if there was none."""
        store = await self.ensure_bucket()
        try:
            await store.delete(name)
        except NotFoundError:
            return False
        except NATS_FAILURES as exc:
            raise PublishError(
                f"deleting object {name} of bucket {self.bucket!r} failed: {describe_nats_error(exc)}",
                setting="NATS_URL",
            ) from exc
        return True

    async def _chunk_size_for(self, store: ObjectStore, size: int, *, replacing: int) -> int:
        """Refuse, before uploading anything, a file the bucket cannot hold; pick a chunk size it accepts."""
        try:
            status = await store.status()
        except NATS_FAILURES as exc:
            raise PublishError(
                f"reading the status of bucket {self.bucket!r} failed: {describe_nats_error(exc)}; current was not "
                "changed", setting="NATS_URL",
            ) from exc
        config = status.stream_info.config
        chunk = CHUNK_SIZE
        if self.max_payload:
            chunk = min(chunk, self.max_payload - _PER_CHUNK_OVERHEAD)
        max_msg = int(config.max_msg_size or -1)
        if max_msg > 0:
            if max_msg < 1024:
                raise PublishError(
                    f"NATS Object Store bucket {self.bucket!r} accepts messages of at most {max_msg} bytes (its max "
                    f"message size): too small to store a file in chunks. Use a bucket without that limit; current "
                    f"was not changed", setting="KRYTEN_OBJECT_BUCKET",
                )
            chunk = min(chunk, max_msg - _PER_CHUNK_OVERHEAD)
        max_bytes = int(config.max_bytes or -1)
        if max_bytes > 0:
            needed = size + (size // chunk + 2) * _PER_CHUNK_OVERHEAD
            if needed > max_bytes:
                raise PublishError(
                    f"the snapshot file has {size} bytes but NATS Object Store bucket {self.bucket!r} holds at most "
                    f"{max_bytes} bytes (its max bytes): raise the bucket's limit or use another bucket; current was "
                    f"not changed", setting="KRYTEN_OBJECT_BUCKET",
                )
            used = int(status.size or 0)
            # The previous object of the same name is removed only after the new one is complete.
            if used + needed > max_bytes:
                old_copy = f" (the old copy of {replacing} bytes goes only after)" if replacing else ""
                raise PublishError(
                    f"NATS Object Store bucket {self.bucket!r} is full: {used} of its {max_bytes} bytes are used and "
                    f"the snapshot file needs {needed} more{old_copy}. Raise its max bytes, keep fewer snapshots "
                    f"(KRYTEN_KEEP_SNAPSHOTS) or use another bucket; current was not changed",
                    setting="KRYTEN_OBJECT_BUCKET",
                )
        return chunk

    def _put_error(self, name: str, size: int, exc: BaseException) -> PublishError:
        if is_limit_error(exc):
            return PublishError(
                f"NATS refused object {name} ({size} bytes) in bucket {self.bucket!r}: "
                f"{getattr(exc, 'description', None) or describe_nats_error(exc)} (a bucket or account storage "
                f"limit). Raise the limit, keep fewer snapshots (KRYTEN_KEEP_SNAPSHOTS) or use another bucket; "
                f"current was not changed", setting="KRYTEN_OBJECT_BUCKET",
            )
        if isinstance(exc, OSError) and not isinstance(exc, ConnectionError):
            return PublishError(f"reading the snapshot file for object {name} failed: {exc}; current was not changed",
                                setting="KRYTEN_DATA_DIR")
        return PublishError(
            f"storing object {name} in bucket {self.bucket!r} failed: {describe_nats_error(exc)}; current was not "
            "changed", setting="NATS_URL",
        )
