"""MediaCMS: enumerating the whole listing (``/manage_media`` with an editor token, else the capped ``/media``),
page by page side by side, de-duplicated and reconciled with ``count``; the playable policy every item is judged
by. Part of ``MediaCMSConnector`` (see ``mediacms.py``)."""

from __future__ import annotations

import asyncio
import json
import math
import sys
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from kryten_pipeline.catalog_item import SourceReject
from kryten_pipeline.connectors.mediacms_http import scrub_url
from kryten_pipeline.errors import ConfigurationError, SourceError

#: MediaCMS ≥ 7.2 cuts /media and /search lists at this many rows (``count`` never exceeds it there).
LISTING_CAP = 1000
#: Unique items may differ from ``count`` by this much (items legitimately moving during a walk) before the
#: run fails: max(absolute, ratio × count).
DRIFT_TOLERANCE_ITEMS = 2
DRIFT_TOLERANCE_RATIO = 0.001
#: Extra orderings of a capped category search, each exposing up to another 1,000 rows, tried before detail
#: calls when no editor token is available.
DEFAULT_ORDER = ("add_date", "desc")
SEARCH_WINDOWS = (
    DEFAULT_ORDER, ("add_date", "asc"), ("title", "asc"), ("title", "desc"), ("views", "asc"), ("views", "desc"),
    ("likes", "asc"), ("likes", "desc"),
)
PROGRESS_EVERY_PAGES = 25
#: A loop guard for link-following walks: no MediaCMS page is smaller than this (they hold 50).
PAGE_SIZE_MIN = 10
_MEDIA_TYPES = ("video", "audio", "image", "pdf")
_STATES = ("public", "unlisted", "private")
_ENCODING_STATUSES = ("success", "pending", "running", "fail")


# --------------------------------------------------------------------------------------------- policy


@dataclass(frozen=True, slots=True)
class PlayablePolicy:
    """Which media the playlist may play. Default: *listable* videos (public, reviewed, encoded)."""

    media_types: tuple[str, ...] = ("video",)
    states: tuple[str, ...] = ("public",)
    require_reviewed: bool = True
    encoding_statuses: tuple[str, ...] = ("success",)

    WORDS = ("listable", "unlisted", "private", "unreviewed", "unencoded", "audio", "image", "pdf", "video", "all")

    @classmethod
    def parse(cls, raw: str | None) -> PlayablePolicy:
        """``MEDIACMS_PLAYABLE``: ``listable`` (default) plus any of the relaxations in ``WORDS``, or ``all``."""
        media_types, states = ["video"], ["public"]
        require_reviewed, encodings = True, ["success"]
        for word in (part.strip().lower() for part in (raw or "listable").split(",")):
            if word in ("", "listable", "video"):
                continue
            if word == "all":
                return cls(_MEDIA_TYPES, _STATES, False, _ENCODING_STATUSES)
            if word in ("audio", "image", "pdf"):
                media_types.append(word)
            elif word in ("unlisted", "private"):
                states.append(word)
            elif word == "unreviewed":
                require_reviewed = False
            elif word == "unencoded":
                encodings = list(_ENCODING_STATUSES)
            else:
                raise ConfigurationError(
                    f"unknown playable rule {word!r}; use a comma list of {', '.join(cls.WORDS)}",
                    setting="MEDIACMS_PLAYABLE",
                )
        return cls(tuple(dict.fromkeys(media_types)), tuple(dict.fromkeys(states)), require_reviewed,
                   tuple(dict.fromkeys(encodings)))

    @property
    def listable_only(self) -> bool:
        """True if every playable item is one MediaCMS lists publicly (so /search can see it)."""
        return self.states == ("public",) and self.require_reviewed and self.encoding_statuses == ("success",)

    def exclusion(self, record: dict[str, Any]) -> str | None:
        """Why ``record`` is not playable (``"state:private"``, ``"media_type:missing"``...), or None."""
        media_type = record.get("media_type")
        if media_type not in self.media_types:
            return f"media_type:{media_type if isinstance(media_type, str) else 'missing'}"
        state = record.get("state")
        if state not in self.states:
            return f"state:{state if isinstance(state, str) else 'missing'}"
        if self.require_reviewed and record.get("is_reviewed") is not True:
            return "is_reviewed:false" if record.get("is_reviewed") is False else "is_reviewed:missing"
        status = record.get("encoding_status")
        if status not in self.encoding_statuses:
            return f"encoding_status:{status if isinstance(status, str) else 'missing'}"
        return None

    def server_filters(self) -> dict[str, str]:
        """/manage_media filters that narrow the listing to the policy (a hint: items are still checked)."""
        filters: dict[str, str] = {}
        if len(self.media_types) == 1:
            filters["media_type"] = self.media_types[0]
        if len(self.states) == 1:
            filters["state"] = self.states[0]
        if len(self.encoding_statuses) == 1:
            filters["encoding_status"] = self.encoding_statuses[0]
        if self.require_reviewed:
            filters["is_reviewed"] = "true"
        return filters

    def describe(self) -> str:
        return (f"media_type in {list(self.media_types)}, state in {list(self.states)}, "
                f"reviewed {'required' if self.require_reviewed else 'not required'}, "
                f"encoding_status in {list(self.encoding_statuses)}")


# --------------------------------------------------------------------------------------------- helpers


async def run_all(coroutines: Iterable[Awaitable[Any]]) -> list[Any]:
    """Run concurrently; on the first failure cancel the rest and raise that failure (not a group)."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    if not tasks:
        return []
    try:
        done, _pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        return [task.result() for task in tasks]
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass(slots=True)
class _WalkResult:
    pages: int
    first_count: int
    last_count: int
    max_count: int
    ended_early: bool


# --------------------------------------------------------------------------------------------- connector


class MediaCMSListing:
    """The listing walk (a mixin of ``MediaCMSConnector``, whose ``_reset`` sets the state it uses)."""

    async def _choose_listing(self) -> tuple[str, dict[str, str] | None, Any]:
        """Ask whether the token may use the uncapped /manage_media; its first page is kept, not refetched.

        The listing is not narrowed by server-side filters: every item is checked against the policy here, so
        the exclusions can be counted by reason.
        """
        if self._authenticated:
            status, body = await self._request("GET", self._api("manage_media"), allow=(401, 403, 404))
            if status == 200:
                self._editor = True
                self.stats.update(endpoint="manage_media", editor=True)
                return self._api("manage_media"), None, body
        self.stats["endpoint"] = "media"
        return self._api("media"), None, None

    # ------------------------------------------------------------------ walking paginated lists

    async def _walk(
        self,
        url: str,
        params: dict[str, str] | None,
        on_results: Callable[[int, list[Any]], None],
        *,
        what: str,
        first: Any = None,
        stop_after_first: Callable[[int], bool] | None = None,
        sequential: bool = False,
    ) -> _WalkResult:
        """Read a paginated list to its end; ``on_results(page_number, results)`` gets every page.

        Page 1 gives ``count`` and the page size; pages 2..⌈count/size⌉ are then requested side by side
        (bounded by the connector's concurrency) as ``page=N`` on the configured base URL — MediaCMS
        paginates by page number, and computing the links avoids its absolute ``next`` URLs, which may
        name an internal host. Only pages the latest ``count`` says exist are asked for; the walk ends when
        the last one says ``next: null`` (if items were added meanwhile, it goes on). ``on_results`` may be
        called out of page order; nothing is kept here, so memory stays at one page per request in flight.

        Pages read side by side can miss an item when the list changes meanwhile (an upload or a deletion
        shifts every later item by one); callers check the total and re-read with ``sequential=True``, which
        follows the ``next`` links (rebased onto the configured URL) one page after the other.
        """
        body = first
        if body is None:
            _, body = await self._request("GET", url, params=params)
        count, results, link = self._envelope(body, url, what)
        on_results(1, results)
        counts = [count]
        if not link or (stop_after_first is not None and stop_after_first(count)):
            return _WalkResult(1, count, count, count, False)
        if sequential:
            return await self._walk_links(url, link, on_results, counts, what)
        self._rebase(link)  # validates the link (and counts a foreign host) even though pages are computed
        page_size = max(len(results), 1)
        base = dict(params or {})
        state = {"fetched": 1, "last_link": link, "ended_early": False, "latest": count}

        async def fetch(page: int) -> tuple[int, int, str | None]:
            status, answer = await self._request("GET", url, params={**base, "page": str(page)}, allow=(404,))
            if status == 404:
                return page, -1, None  # "Invalid page.": the list shrank under us
            page_count, page_results, page_link = self._envelope(answer, url, what)
            on_results(page, page_results)
            return page, page_count, page_link

        while True:
            target = math.ceil(state["latest"] / page_size)
            if target <= state["fetched"]:
                if state["last_link"] is None:
                    break
                target = state["fetched"] + 1  # count says done but the server says there is more
            if target > math.ceil(max(counts) / page_size) + 10:
                raise SourceError(
                    f"the MediaCMS {what} keeps announcing more pages ({target} for a count of {max(counts)}); "
                    f"stopping instead of looping", setting="MEDIACMS_URL",
                )
            answers = await run_all(fetch(page) for page in range(state["fetched"] + 1, target + 1))
            for page, page_count, page_link in answers:
                if page_count < 0:
                    state["ended_early"] = True
                    continue
                counts.append(page_count)
                if page == target:
                    state["last_link"] = page_link
            state["fetched"] = target
            state["latest"] = counts[-1]
            if state["ended_early"] or state["last_link"] is None:
                break
        return _WalkResult(target if not state["ended_early"] else state["fetched"], counts[0], counts[-1],
                           max(counts), bool(state["ended_early"]))

    async def _walk_links(self, url: str, link: str, on_results: Callable[[int, list[Any]], None],
                          counts: list[int], what: str) -> _WalkResult:
        pages, visited, ended_early = 1, {url}, False
        next_link: str | None = link
        while next_link:
            next_url = self._rebase(next_link)
            if next_url in visited or pages > math.ceil(max(counts) / PAGE_SIZE_MIN) + 10:
                raise SourceError(
                    f"the MediaCMS {what} keeps sending next links ({pages} pages for a count of {max(counts)}); "
                    f"stopping instead of looping", setting="MEDIACMS_URL",
                )
            visited.add(next_url)
            status, body = await self._request("GET", next_url, allow=(404,))
            if status == 404:
                ended_early = True  # the list shrank under us: "Invalid page."
                break
            count, results, next_link = self._envelope(body, url, what)
            pages += 1
            counts.append(count)
            on_results(pages, results)
        return _WalkResult(pages, counts[0], counts[-1], max(counts), ended_early)

    def _envelope(self, body: Any, url: str, what: str) -> tuple[int, list[Any], str | None]:
        if not isinstance(body, dict) or not isinstance(body.get("results"), list) or \
                not isinstance(body.get("count"), int):
            shape = type(body).__name__ if not isinstance(body, dict) else f"keys {sorted(body)[:6]}"
            raise SourceError(
                f"MediaCMS {what} ({scrub_url(url)}) did not answer with a {{count, next, results}} page ({shape}); "
                f"this MediaCMS release is not supported or MEDIACMS_URL points elsewhere", setting="MEDIACMS_URL",
            )
        link = body.get("next")
        return body["count"], body["results"], link if isinstance(link, str) and link else None

    def _tolerance(self, count: int) -> int:
        return max(DRIFT_TOLERANCE_ITEMS, math.ceil(count * DRIFT_TOLERANCE_RATIO))

    # ------------------------------------------------------------------ the main listing

    def _listing_rows(self, results: list[Any]) -> list[tuple[Any, ...]]:
        """One page of list items as compact rows:
        (token, exclusion, title, duration, thumbnail, visible to /search, uploader)."""
        policy, base = self.policy, self.base_url
        rows: list[tuple[Any, ...]] = []
        for record in results:
            token = record.get("friendly_token") if isinstance(record, dict) else None
            if not isinstance(token, str) or not token:
                rows.append((None, excerpt(record), None, None, None, False, None))
                continue
            token = sys.intern(token)  # the same string object as every later sighting (category searches)
            reason = policy.exclusion(record)
            if reason is not None:
                rows.append((token, reason, None, None, None, False, None))
                continue
            thumbnail = record.get("thumbnail_url")
            if isinstance(thumbnail, str):
                thumbnail = thumbnail.strip() or None
                if thumbnail and thumbnail.startswith("/"):
                    thumbnail = base + thumbnail  # site-relative: absolute against MEDIACMS_URL
            duration = record.get("duration")
            if isinstance(duration, float) and duration.is_integer():
                duration = int(duration)
            visible = record.get("state") == "public" and record.get("is_reviewed") is True and \
                record.get("encoding_status") == "success"
            author = record.get("user")
            rows.append((token, None, record.get("title"), duration, thumbnail, visible,
                         author if isinstance(author, str) else None))
        return rows

    def _merge_listing(self, rows: list[tuple[Any, ...]]) -> None:
        """Add rows in listing order: first sighting wins, duplicates and exclusions are counted."""
        seen, playable, stats = self._seen, self._playable, self.stats
        excluded = stats["excluded"]
        authors = self._authors
        for token, reason, title, duration, thumbnail, visible, author in rows:
            if token is None:
                self.source_rejects.append(SourceReject(reason, "list item without a friendly_token"))
            elif token in seen:
                stats["duplicates"] += 1
            else:
                seen.add(token)
                if reason is not None:
                    excluded[reason] = excluded.get(reason, 0) + 1
                    stats["excluded_total"] += 1
                else:
                    playable[token] = visible
                    self._listed.add((token, title, duration, thumbnail))
                    if author:
                        authors[token] = sys.intern(author)
        stats["listed"] = len(seen)

    async def _walk_listing(self, url: str, params: dict[str, str] | None, first: Any) -> None:
        endpoint = self.stats["endpoint"]
        # Pages arrive out of order; items keep the listing's order: each page is merged as soon as every page
        # before it has been, so only the pages that arrived early wait here, not the whole listing (at 100k items
        # that held every row twice, as page rows and as merged items, until the last page came).
        pages: dict[int, list[tuple[Any, ...]]] = {}
        next_page = [1]

        def take(page: int, results: list[Any]) -> None:
            pages[page] = self._listing_rows(results)
            while next_page[0] in pages:
                self._merge_listing(pages.pop(next_page[0]))
                next_page[0] += 1
            self.stats["pages"] += 1
            self._report()

        result = await self._walk(url, params, take, what=f"/{endpoint} listing", first=first)
        for page in sorted(pages):  # after a page that was never answered (the list shrank meanwhile)
            self._merge_listing(pages.pop(page))
        self.stats["listing_count"] = result.last_count
        capped = endpoint == "media"
        if capped and (result.max_count == LISTING_CAP or (result.ended_early and len(self._seen) >= LISTING_CAP)):
            who = "an ordinary user token" if self._authenticated else "anonymous access"
            raise SourceError(
                f"MediaCMS lists exactly {LISTING_CAP} items to {who}: MediaCMS 7.2+ cuts /api/v1/media at "
                f"{LISTING_CAP} rows, so this catalog is probably truncated and is not published. Set "
                f"MEDIACMS_TOKEN to the token of a MediaCMS editor or manager (it lists through the uncapped "
                f"/api/v1/manage_media), or use KRYTEN_SOURCE=mediacms-db", setting="MEDIACMS_TOKEN",
            )
        if result.last_count > len(self._seen):
            # Items published or re-dated during the walk jump to the top of a newest-first list and can
            # fall between pages; the first pages are read again to pick them up...
            before = len(self._seen)
            await self._reread_head(url, params)
            if result.last_count > len(self._seen):
                # ... and if that is not enough, the whole list once more, page after page.
                self.stats["listing_rewalks"] += 1

                def merge(_page: int, results: list[Any]) -> None:
                    self._merge_listing(self._listing_rows(results))
                    self.stats["pages"] += 1

                result = await self._walk(url, params, merge, what=f"/{endpoint} listing", sequential=True)
            self.stats["recovered_items"] = len(self._seen) - before
        drift = abs(result.last_count - len(self._seen)) + max(0, result.max_count - result.last_count)
        self.stats["count_drift"] = drift
        if drift > self._tolerance(result.max_count):
            raise SourceError(
                f"the MediaCMS /{endpoint} listing changed while it was read: count {result.first_count} at the "
                f"start, {result.last_count} at the end, {len(self._seen)} unique items seen (drift {drift}, "
                f"tolerated {self._tolerance(result.max_count)}). Nothing is published; run the refresh again "
                f"when uploads/deletions have settled", setting="MEDIACMS_URL",
            )

    async def _reread_head(self, url: str, params: dict[str, str] | None) -> None:
        for page in range(1, 4):
            before = len(self._seen)
            status, body = await self._request("GET", url, params={**(params or {}), "page": str(page)},
                                               allow=(404,))
            if status == 404:
                return
            count, results, link = self._envelope(body, url, "listing")
            self._merge_listing(self._listing_rows(results))
            self.stats["pages"] += 1
            if len(self._seen) == before or len(self._seen) >= count or not link:
                return

    # ------------------------------------------------------------------ categories


def excerpt(record: Any) -> str:
    try:
        text = json.dumps(record, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(record)
    return text[:300]
