"""A deterministic fake source for tests and demos (seed 000 §6): same inputs, same items."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

from kryten_pipeline.catalog_item import CatalogItem, SourceReject
from kryten_pipeline.errors import SourceError
from kryten_pipeline.fault_points import fault_point

FAKE_CATEGORIES = (
    "Music", "Live", "Anime", "Documentary", "Comedy", "Science", "Gaming", "Sports", "News", "Kids",
    "Drama", "Horror", "Éducation", "日本語", "Retro",
)
_WORDS = (
    "amber", "binary", "cobalt", "delta", "ember", "fjord", "glacier", "harbor", "island", "jungle",
    "kestrel", "lantern", "meadow", "nebula", "orchid", "prairie", "quartz", "river", "summit", "tundra",
    "umbra", "valley", "willow", "xenon", "yonder", "zephyr", "café", "naïve", "Ωmega", "東京",
)


class FakeConnector:
    """Yields ``count`` well-formed items derived from ``seed``; can fail after ``fail_after`` items."""

    def __init__(self, count: int = 250, *, seed: int = 7, namespace: str = "default",
                 fail_after: int | None = None) -> None:
        self.count = count
        self.seed = seed
        self.namespace = namespace
        self.fail_after = fail_after
        self.label = f"fake:{count}"
        self.stats: dict[str, Any] = {}
        self.source_rejects: list[SourceReject] = []

    def item(self, index: int) -> CatalogItem:
        rng = random.Random(self.seed * 1_000_003 + index)
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(2, 5)))
        n_categories = rng.choice((0, 1, 1, 2, 3))
        categories = rng.sample(FAKE_CATEGORIES, n_categories)
        duration = None if rng.random() < 0.1 else rng.randint(1, 4 * 3600)
        return CatalogItem(
            video_id=f"fake{self.seed}n{index:07d}",
            title=f"{words.title()} #{index}",
            categories=categories,
            duration_seconds=duration,
            thumbnail_url=f"https://cdn.example.org/thumbs/{index}.jpg" if rng.random() < 0.8 else None,
        )

    async def iter_catalog_items(self) -> AsyncIterator[CatalogItem]:
        for index in range(self.count):
            if self.fail_after is not None and index >= self.fail_after:
                raise SourceError(
                    f"fake source stopped after {index} of {self.count} items (fail_after={self.fail_after})",
                    setting="KRYTEN_FAKE_FAIL_AFTER",
                )
            yield self.item(index)
            fault_point("fetch.fake.item")
            if index % 5000 == 4999:
                await asyncio.sleep(0)
        self.stats = {"records": self.count}
