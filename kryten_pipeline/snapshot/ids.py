"""The one snapshot-id generator: ISO 8601 basic UTC + 6 hex chars, e.g. ``20251218T123456Z-7f3a9c``.

The seed's ``2025-12-18T12:34:56Z-7f3a9c`` contains ``:``, which NATS KV keys reject; the basic form is
key-safe and sorts in time order as a string.
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime, timedelta

SNAPSHOT_ID_PATTERN = r"^\d{8}T\d{6}Z-[0-9a-f]{6}$"
_SNAPSHOT_ID_RE = re.compile(SNAPSHOT_ID_PATTERN)


def new_snapshot_id(now: datetime | None = None, *, after: str | None = None) -> str:
    """A new id; with ``after``, one that sorts strictly after it (two builds in one second, or a clock
    that stepped back, must still move forward: "newer" is decided by comparing ids)."""
    moment = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    candidate = f"{moment:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"
    if after is None or not is_snapshot_id(after) or candidate > after:
        return candidate
    base = snapshot_time(after)
    suffix = int(after[-6:], 16)
    if suffix < 0xFFFFFF:
        return f"{base:%Y%m%dT%H%M%SZ}-{secrets.randbelow(0xFFFFFF - suffix) + suffix + 1:06x}"
    return f"{base + timedelta(seconds=1):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def is_snapshot_id(value: object) -> bool:
    return isinstance(value, str) and _SNAPSHOT_ID_RE.fullmatch(value) is not None


def snapshot_time(snapshot_id: str) -> datetime:
    """The UTC moment encoded in a snapshot id."""
    if not is_snapshot_id(snapshot_id):
        raise ValueError(f"not a snapshot id: {snapshot_id!r}")
    return datetime.strptime(snapshot_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def iso_utc(moment: datetime) -> str:
    """``created_at`` form used in SQLite and KV: ISO 8601 extended, UTC, ``Z`` suffix."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
