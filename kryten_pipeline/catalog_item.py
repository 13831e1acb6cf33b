"""The connector contract (seed 000 §4.1): every strategy yields ``CatalogItem``s."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(slots=True)
class CatalogItem:
    """One catalog entry as a connector sees it.

    Connectors pass values through as the source gave them (after source-specific mapping); type and
    content rules are enforced by validation, which rejects a bad item with a reason instead of crashing.
    """

    video_id: str
    title: str
    categories: list[str] = field(default_factory=list)
    duration_seconds: int | None = None
    thumbnail_url: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class SourceReject:
    """A source record that could not even be turned into a ``CatalogItem`` (e.g. a malformed line)."""

    record: str
    reason: str


# What a connector reports its progress to: a mapping of its figures so far (requests, pages, items, …).
ProgressCallback = Callable[[dict[str, Any]], None]


@runtime_checkable
class CatalogConnector(Protocol):
    """One extraction strategy. ``stats`` and ``source_rejects`` are filled while iterating."""

    #: Short, secret-free description of the source, e.g. ``export:sample_catalog.jsonl``.
    label: str
    #: Figures for observability (requests, pages, bytes, ...); JSON-serialisable values only.
    stats: dict[str, Any]
    #: Records the connector had to drop before they became items, each with a reason.
    source_rejects: list[SourceReject]

    def iter_catalog_items(self) -> AsyncIterator[CatalogItem]:
        """Yield every item of the catalog; raise ``SourceError`` if the source cannot be read whole."""
        ...
