"""DESIGN §2 contracts: manifest URL derivation and the snapshot id form."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from kryten_pipeline.errors import ConfigurationError
from kryten_pipeline.manifest import (
    FALLBACK_MANIFEST_BASE,
    InvalidVideoIdError,
    build_manifest_url,
    manifest_base_from,
    manifest_urls,
)
from kryten_pipeline.snapshot.ids import is_snapshot_id, new_snapshot_id, snapshot_time

KV_KEY_RE = re.compile(r"^[-/_=.a-zA-Z0-9]+$")


def test_manifest_url_uses_the_default_template() -> None:
    url = build_manifest_url("a1B2c3D4e", "https://media.example.org")
    assert url == "https://media.example.org/api/v1/media/cytube/a1B2c3D4e.json?format=json"


def test_manifest_base_defaults_to_mediacms_url_with_https() -> None:
    assert manifest_base_from("http://media.example.org:8080/", None) == "https://media.example.org:8080"
    assert manifest_base_from("http://user:secret@media.example.org", None) == "https://media.example.org"
    assert manifest_base_from(None, None) == FALLBACK_MANIFEST_BASE
    assert manifest_base_from("http://ignored", "https://cdn.example.org/base/") == "https://cdn.example.org/base"


def test_manifest_base_must_be_https() -> None:
    with pytest.raises(ConfigurationError) as info:
        manifest_base_from(None, "http://cdn.example.org")
    assert "KRYTEN_MANIFEST_BASE_URL" in str(info.value)


def test_manifest_urls_in_bulk_equal_one_by_one() -> None:
    ids = ["a1B2c3D4e", "x" * 64, "bad id", "", None, 7, "ok_-9", "x" * 65, "abc\n"]
    for base in ("https://media.example.org", "https://cdn.example.org/base/"):
        expected = [build_manifest_url(v, base) if isinstance(v, str) and v and v.isascii() and " " not in v
                    and len(v) <= 64 and "\n" not in v else None for v in ids]
        assert manifest_urls(ids, base) == expected
    with pytest.raises(ConfigurationError):
        manifest_urls(["abc"], "http://media.example.org")


def test_manifest_base_with_credentials_is_refused_without_echoing_them() -> None:
    with pytest.raises(ConfigurationError) as info:
        manifest_base_from(None, "https://cdn-user:s3cr3t-pw@cdn.example.org/base")
    message = str(info.value)
    assert "KRYTEN_MANIFEST_BASE_URL" in message and "credentials" in message
    assert "s3cr3t-pw" not in message and "cdn-user" not in message


@pytest.mark.parametrize("bad", ["", "a b", "../etc/passwd", "x" * 65, "ünï", "id;drop", None, 12])
def test_manifest_rejects_ids_outside_the_pattern(bad: object) -> None:
    with pytest.raises(InvalidVideoIdError):
        build_manifest_url(bad, "https://m.example")  # type: ignore[arg-type]


def test_snapshot_id_form_is_key_safe_and_sorts_in_time_order() -> None:
    early = new_snapshot_id(datetime(2025, 12, 18, 12, 34, 56, tzinfo=UTC))
    late = new_snapshot_id(datetime(2025, 12, 18, 12, 34, 57, tzinfo=UTC))
    assert re.fullmatch(r"20251218T123456Z-[0-9a-f]{6}", early)
    assert is_snapshot_id(early) and KV_KEY_RE.fullmatch(f"ns/default/snapshots/{early}")
    assert early < late
    assert snapshot_time(early) == datetime(2025, 12, 18, 12, 34, 56, tzinfo=UTC)
    assert not is_snapshot_id("2025-12-18T12:34:56Z-7f3a9c")  # the seed's form has ':'
    assert len({new_snapshot_id() for _ in range(50)}) == 50


def test_snapshot_id_after_an_existing_one_always_sorts_after_it() -> None:
    moment = datetime(2025, 12, 18, 12, 34, 56, tzinfo=UTC)
    for after in ("20251218T123456Z-ffff00", "20251218T123456Z-ffffff", "20301218T000000Z-000000"):
        for _ in range(20):
            new = new_snapshot_id(moment, after=after)
            assert is_snapshot_id(new) and new > after
