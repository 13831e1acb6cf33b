"""MediaCMS: every category of every item without N+1 calls — ``/categories``, a search per category read through
``categories_info``, capped searches completed through ``/manage_media``, other orderings and uploaders, and
detail calls only for what is left. Part of ``MediaCMSConnector`` (see ``mediacms.py``)."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from kryten_pipeline.catalog_item import SourceReject
from kryten_pipeline.connectors.mediacms_listing import DEFAULT_ORDER, LISTING_CAP, SEARCH_WINDOWS, run_all
from kryten_pipeline.errors import SourceError


class MediaCMSCategories:
    """Category resolution (a mixin of ``MediaCMSConnector``, whose ``_reset`` sets the state it uses)."""

    async def _walk_categories(self) -> None:
        _, body = await self._request("GET", self._api("categories"))
        records: list[Any]
        if isinstance(body, list):
            records = body
        elif isinstance(body, dict) and isinstance(body.get("results"), list):
            records = []  # a paginated variant: follow it
            await self._walk(self._api("categories"), None, lambda _page, rows: records.extend(rows),
                             what="/categories list", first=body)
        else:
            raise SourceError("MediaCMS /api/v1/categories did not answer with a list of categories",
                              setting="MEDIACMS_URL")
        records = [r for r in records if isinstance(r, dict) and isinstance(r.get("title"), str)]
        self._titles = list(dict.fromkeys(r["title"] for r in records))
        self._uids = {r["title"]: r["uid"] for r in records if isinstance(r.get("uid"), str) and r["uid"]}
        self._media_counts = {r["title"]: r["media_count"] for r in records if isinstance(r.get("media_count"), int)}
        searchable = [t for t in self._titles if t.strip()]
        self.stats["categories"] = len(self._titles)
        self.stats["categories_unsearchable"] = len(self._titles) - len(searchable)
        # The server strips ``c`` and matches it as a case-sensitive substring of category titles.
        self._supersets = {t: [y for y in self._titles if y != t and t.strip() in y] for t in searchable}
        await run_all(self._category(title) for title in searchable)

    def _take_search_page(self, results: list[Any], hits: set[str] | None = None) -> None:
        full = self._full_categories
        for record in results:
            if not isinstance(record, dict):
                continue
            token = record.get("friendly_token")
            info = record.get("categories_info")
            if not isinstance(token, str) or not isinstance(info, list):
                continue
            token = sys.intern(token)
            full[token] = self._category_list(info)
            if hits is not None:
                hits.add(token)
        self.stats["category_pages"] += 1
        self._report()

    def _category_list(self, info: list[Any]) -> tuple[str, ...]:
        """An item's category titles from its ``categories_info``. A catalog has few distinct lists: each is kept
        once, shared by its items (at 100k items, one tuple and its strings per item were 15 MB)."""
        titles = tuple(sys.intern(c["title"]) for c in info if isinstance(c, dict) and isinstance(c.get("title"), str))
        return self._category_lists.setdefault(titles, titles)

    def _search_params(self, title: str, order: tuple[str, str] | None = None) -> dict[str, str]:
        params = {"c": title}
        if len(self.policy.media_types) == 1:
            params["media_type"] = self.policy.media_types[0]
        if order is not None and order != DEFAULT_ORDER:
            params["sort_by"], params["ordering"] = order
        return params

    async def _category(self, title: str) -> None:
        hits: set[str] = set()
        ambiguous = bool(self._supersets.get(title))
        need_candidates = self._editor and not self.policy.listable_only

        def capped_and_replaceable(count: int) -> bool:
            # An editor gets the whole category from /manage_media: no need to read 1,000 capped rows first,
            # unless they are needed to tell this category apart from those whose titles contain it.
            return count == LISTING_CAP and self._editor and not ambiguous

        def take(_page: int, rows: list[Any]) -> None:
            self._take_search_page(rows, hits)

        what = f"category search {title!r}"
        params = self._search_params(title)
        result = await self._walk(self._api("search"), params, take, what=what, stop_after_first=capped_and_replaceable)
        if result.max_count != LISTING_CAP and (len(hits) < result.last_count or result.max_count != result.last_count):
            # The list moved while its pages were read side by side: read it again, page after page.
            result = await self._walk(self._api("search"), params, take, what=what, sequential=True)
        if result.pages > 1 or not capped_and_replaceable(result.first_count):
            self._walked_orders.setdefault(title, set()).add(DEFAULT_ORDER)
        # Strict: a category list that lost an item would silently drop a membership.
        complete = result.max_count != LISTING_CAP and len(hits) >= result.last_count
        self._search_complete[title] = complete
        if not complete:
            self.stats["capped_categories"] += 1
        if self._editor and (need_candidates or not complete):
            await self._category_candidates(title, ambiguous)

    async def _category_candidates(self, title: str, ambiguous: bool) -> None:
        """The category's items from the uncapped /manage_media (editor tokens only).

        Its ``category`` filter matches a title *substring* on 8.x; newer releases also accept the category
        uid, which is exact — tried first when another title contains this one.
        """
        uid = self._uids.get(title)
        if ambiguous and uid:
            tokens, count = await self._manage_listing(title, uid)
            if tokens is not None and 0 < count != await self._policy_total():
                self._candidates[title] = (tokens, True)
                return
        tokens, _ = await self._manage_listing(title, title)
        if tokens is not None:
            self._candidates[title] = (tokens, not ambiguous)

    async def _policy_total(self) -> int:
        """How many items /manage_media lists with the policy's filters alone (asked once, shared)."""
        if self._filtered_total is None:
            self._filtered_total = asyncio.get_running_loop().create_future()
            try:
                _, body = await self._request("GET", self._api("manage_media"), params=self.policy.server_filters())
                self._filtered_total.set_result(self._envelope(body, "manage_media", "/manage_media listing")[0])
            except BaseException as exc:
                self._filtered_total.set_exception(exc)
                raise
        return await asyncio.shield(self._filtered_total)

    async def _manage_listing(self, title: str, category: str) -> tuple[set[str] | None, int]:
        params = dict(self.policy.server_filters())
        params["category"] = category
        tokens: set[str] = set()
        total = await self._policy_total()

        def filter_ignored(count: int) -> bool:
            # Releases that ignore ``category`` list everything: recognisable at once when the category is
            # known (from /categories) to hold fewer items than that.
            ignored = count == total and self._media_counts.get(title, total) < total
            if ignored:
                self.stats["manage_category_filter"] = "ignored"
            return ignored

        def take(_page: int, results: list[Any]) -> None:
            tokens.update(r["friendly_token"] for r in results
                          if isinstance(r, dict) and isinstance(r.get("friendly_token"), str))
            self.stats["manage_category_pages"] += 1
            self.stats["category_pages"] += 1
            self._report()

        what = f"category listing {title!r}"
        result = await self._walk(self._api("manage_media"), params, take, what=what, stop_after_first=filter_ignored)
        if self.stats["manage_category_filter"] == "ignored":
            return None, result.last_count
        if len(tokens) < result.last_count or result.max_count != result.last_count:
            result = await self._walk(self._api("manage_media"), params, take, what=what, sequential=True)
        if len(tokens) < result.last_count:
            return None, result.last_count  # the list moved too much under us: treat the category as unknown
        return tokens, result.last_count

    async def _complete_categories(self) -> None:
        """Place items no complete category list covered: more search orders, then detail calls."""
        phases = self.stats["phase_s"]
        phases["listing_and_categories"] = round(time.perf_counter() - self._started, 3)
        self._check_candidate_filter()
        members, unknown = self._plan()
        self.stats["unplaced_after_lists"] = len(unknown)
        if unknown:
            started = time.perf_counter()
            await self._search_windows(unknown)
            members, unknown = self._plan()
            phases["search_windows"] = round(time.perf_counter() - started, 3)
        if unknown:
            started = time.perf_counter()
            await self._details(unknown)
            members, unknown = self._plan()
            phases["detail_calls"] = round(time.perf_counter() - started, 3)
        self._members_by_token = members

    def _check_candidate_filter(self) -> None:
        """Some releases ignore /manage_media's ``category``: check its lists against what /search proved."""
        if self.stats["manage_category_filter"] == "ignored":
            self._candidates.clear()
            return
        if not self._candidates:
            return
        full = self._full_categories
        for title, (tokens, exact) in self._candidates.items():
            needle = title.strip()
            for token in tokens:
                categories = full.get(token)
                if categories is None:
                    continue
                if (title not in categories) if exact else not any(needle in c for c in categories):
                    self.stats["manage_category_filter"] = "ignored"
                    self._candidates.clear()
                    return
        self.stats["manage_category_filter"] = "honoured"

    def _plan(self) -> tuple[dict[str, list[str]], set[str]]:
        """(categories of each unresolved playable item, items whose categories are still unknown).

        An item is *resolved* once a /search or detail answer gave its categories_info. For the others,
        membership in category t is known if t's search was complete (the item would have appeared), or from
        t's /manage_media list — exact unless another category title contains t and the item could belong
        to that one.
        """
        full = self._full_categories
        unresolved = {t for t in self._playable if t not in full}
        if not unresolved:
            return {}, set()
        hidden = {t for t in unresolved if not self._playable[t]}  # not visible to /search
        members: dict[str, list[str]] = {}
        unknown: set[str] = set()
        for title in self._titles:
            if title not in self._search_complete:
                continue  # blank title: cannot be searched or filtered on
            entry = self._candidates.get(title)
            if entry is not None:
                candidates, exact = entry
                base = candidates & unresolved
                undecided: set[str] = set()
                if not exact:
                    for other in self._supersets.get(title, ()):
                        if other in self._candidates:
                            undecided |= base & self._candidates[other][0]
                        elif self._search_complete.get(other):
                            undecided |= base & hidden
                        else:
                            undecided |= base
                unknown |= undecided
                for token in base - undecided:
                    members.setdefault(token, []).append(title)
            elif self._search_complete[title]:
                unknown |= hidden
            else:
                unknown |= unresolved
        return members, unknown

    async def _search_windows(self, unknown: set[str]) -> None:
        """Read capped category searches in other orders, then per uploader (``author``): each such list
        shows up to 1,000 more items with their categories_info, where a detail call shows one."""
        remaining = {t for t in unknown if self._playable[t]}  # /search can only show these

        def relevant(title: str, tokens: set[str]) -> int:
            entry = self._candidates.get(title)
            return len(tokens & entry[0]) if entry else len(tokens)

        capped = [t for t, complete in self._search_complete.items() if not complete]
        targets = sorted(((relevant(t, remaining), t) for t in capped), reverse=True)
        targets = [(n, t) for n, t in targets if n]
        if not targets:
            return

        async def widen(title: str, author: str | None) -> None:
            walked = self._walked_orders.setdefault(title if author is None else f"{title}\n{author}", set())
            for order in SEARCH_WINDOWS:
                if order in walked or not remaining:
                    continue
                params = self._search_params(title, order)
                if author is not None:
                    params["author"] = author
                hits: set[str] = set()
                result = await self._walk(self._api("search"), params,
                                          lambda _page, rows, hits=hits: self._take_search_page(rows, hits),
                                          what=f"category search {title!r}")
                walked.add(order)
                self.stats["window_pages"] += result.pages
                gain = len(hits & remaining)
                remaining.difference_update(hits)
                # Stop when the list was whole (other orders hold the same items) or when another order
                # does no better than detail calls would (one item per request).
                if result.max_count < LISTING_CAP or gain <= result.pages:
                    return

        await run_all(widen(title, None) for _, title in targets)
        if not remaining:
            return
        by_author: dict[str, set[str]] = {}
        for token in remaining:
            author = self._authors.get(token)
            if author:
                by_author.setdefault(author, set()).add(token)
        pairs = sorted(((relevant(title, tokens), title, author) for _, title in targets
                        for author, tokens in by_author.items()), reverse=True)
        await run_all(widen(title, author) for n, title, author in pairs if n > 1)

    async def _details(self, tokens: set[str]) -> None:
        """The last resort: one detail call per item no listing could place (counted in stats)."""
        ordered = [t for t in self._playable if t in tokens]

        async def one(token: str) -> None:
            self.stats["detail_calls"] += 1
            status, body = await self._request("GET", self._api(f"media/{token}"), allow=(400, 401, 404))
            info = body.get("categories_info") if isinstance(body, dict) else None
            if status == 200 and isinstance(info, list):
                self._full_categories[token] = self._category_list(info)
            elif status == 200:
                raise SourceError(f"MediaCMS detail for {token} has no categories_info; this release is not "
                                  f"supported", setting="MEDIACMS_URL")
            else:
                # Deleted or made private since it was listed: it is no longer playable.
                self._playable.pop(token, None)
                self.source_rejects.append(SourceReject(
                    token, f"media {token} disappeared during the refresh (detail answered HTTP {status})"))
            self._report()

        await run_all(one(token) for token in ordered)
