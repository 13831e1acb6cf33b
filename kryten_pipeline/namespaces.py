"""Namespace names: they become KV key segments and directory names, so they are kept strict."""

from __future__ import annotations

import re

from kryten_pipeline.errors import ConfigurationError

NAMESPACE_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_NAMESPACE_RE = re.compile(NAMESPACE_PATTERN)


def validate_namespace(name: str) -> str:
    if not _NAMESPACE_RE.fullmatch(name):
        raise ConfigurationError(
            f"namespace {name!r} must match [A-Za-z0-9_-]{{1,64}} (it is used in KV keys and paths)",
            setting="KRYTEN_NAMESPACES",
        )
    return name
