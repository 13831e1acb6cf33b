"""Small helpers that turn core results into metadata a person wants to read in the Dagster UI."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import dagster as dg

from kryten_pipeline.errors import KrytenError


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        text = "" if value is None else str(value)
        return text.replace("|", "\\|").replace("\n", " ")[:120]

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def failure(exc: KrytenError, **metadata: Any) -> dg.Failure:
    """A step failure whose description is the core's one-line message (shown in the UI and the CLI).

    Raise it ``from None``: the message already says what went wrong and which setting to check, so the UI
    shows it with one stack trace (the step's), not a second one for the core error it explains.
    """
    meta: dict[str, Any] = {"error_type": type(exc).__name__, **metadata}
    if exc.setting:
        meta["setting_to_check"] = exc.setting
    return dg.Failure(description=str(exc), metadata=meta, allow_retries=False)


def scalar_metadata(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten a stats dict into UI metadata (numbers stay numbers; the rest becomes text)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(scalar_metadata(value, prefix=f"{name}."))
        elif isinstance(value, bool) or value is None:
            out[name] = str(value)
        elif isinstance(value, (int, float, str)):
            out[name] = value
        else:
            out[name] = dg.MetadataValue.json(value) if isinstance(value, list) else str(value)
    return out
