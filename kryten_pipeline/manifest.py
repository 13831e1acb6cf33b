"""The one place that derives ``manifest_url`` from a ``video_id`` (seed 000 REQ-003, seed 004)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from kryten_pipeline.errors import ConfigurationError

VIDEO_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_VIDEO_ID_RE = re.compile(VIDEO_ID_PATTERN)

DEFAULT_MANIFEST_TEMPLATE = "{manifest_base}/api/v1/media/cytube/{video_id}.json?format=json"
#: Used when neither KRYTEN_MANIFEST_BASE_URL nor MEDIACMS_URL is set (e.g. the shipped sample).
FALLBACK_MANIFEST_BASE = "https://mediacms.invalid"


class InvalidVideoIdError(ValueError):
    """The video id cannot be placed in a manifest URL."""


def is_valid_video_id(video_id: object) -> bool:
    return isinstance(video_id, str) and _VIDEO_ID_RE.fullmatch(video_id) is not None


def manifest_base_from(mediacms_url: str | None, manifest_base_url: str | None) -> str:
    """Resolve the manifest base: the explicit setting, else the MediaCMS URL with scheme https."""
    if manifest_base_url:
        parts = urlsplit(manifest_base_url.strip())
        if parts.scheme != "https" or not parts.netloc:
            raise ConfigurationError(
                f"manifest base URL must be an absolute https URL, got {_safe(manifest_base_url)!r}",
                setting="KRYTEN_MANIFEST_BASE_URL",
            )
        if parts.username or parts.password:
            # Every manifest URL is published (SQLite, KV) to whoever plays the catalog: no secrets in it.
            raise ConfigurationError(
                f"manifest base URL must not carry credentials (user:password@): they would be written into "
                f"every published manifest_url; got {_safe(manifest_base_url)!r}",
                setting="KRYTEN_MANIFEST_BASE_URL",
            )
        return urlunsplit(("https", parts.netloc, parts.path.rstrip("/"), "", ""))
    if mediacms_url:
        parts = urlsplit(mediacms_url.strip())
        if not parts.netloc:
            raise ConfigurationError(
                f"MediaCMS URL must be absolute, got {_safe(mediacms_url)!r}", setting="MEDIACMS_URL"
            )
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return urlunsplit(("https", host, parts.path.rstrip("/"), "", ""))
    return FALLBACK_MANIFEST_BASE


def build_manifest_url(video_id: str, manifest_base: str) -> str:
    """Return the https manifest URL for ``video_id``.

    Raises ``InvalidVideoIdError`` for an id outside ``[A-Za-z0-9_-]{1,64}`` (the item is rejected, the
    run goes on) and ``ConfigurationError`` if the base is not https.
    """
    if not is_valid_video_id(video_id):
        raise InvalidVideoIdError(f"video_id {video_id!r} does not match [A-Za-z0-9_-]{{1,64}}")
    if not manifest_base.startswith("https://"):
        raise ConfigurationError("manifest base must be https", setting="KRYTEN_MANIFEST_BASE_URL")
    return DEFAULT_MANIFEST_TEMPLATE.format(manifest_base=manifest_base.rstrip("/"), video_id=video_id)


def manifest_urls(video_ids: Iterable[Any], manifest_base: str) -> list[str | None]:
    """``build_manifest_url`` for many ids at once (the base is checked once): ``None`` for an id that
    cannot be placed in a manifest URL."""
    build_manifest_url("x", manifest_base)  # checks the base (https)
    head, tail = DEFAULT_MANIFEST_TEMPLATE.split("{video_id}")
    prefix, suffix = head.format(manifest_base=manifest_base.rstrip("/")), tail
    match = _VIDEO_ID_RE.fullmatch
    return [prefix + v + suffix if type(v) is str and match(v) else None for v in video_ids]


def _safe(url: str) -> str:
    """Drop userinfo from a URL before it goes into a message."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return url
