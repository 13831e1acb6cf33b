"""MediaCMS REST API strategy (issue 3): the whole catalog, with every category of every item, on any release.

The traps this module handles are listed in ``reference/mediacms-api.md``. In short:

* **Complete listing.** With an editor/manager token (detected by asking ``/api/v1/manage_media``) the walk
  uses the uncapped ``/manage_media``; otherwise ``/media``, whose lists MediaCMS ≥ 7.2 cuts at 1,000 rows —
  a listing that reports exactly 1,000 is refused, never published as if complete. Pages are read side by
  side as ``page=N`` on ``MEDIACMS_URL`` (the server's absolute ``next`` links may name an internal host; a
  re-read follows them, rebased), never past what ``count`` announces, until ``next: null``; items are
  de-duplicated by ``friendly_token`` and the unique count is reconciled with ``count`` (the head of the
  list, then the whole list page after page, is read again if items moved during the walk).
* **Categories without N+1.** ``/categories`` once, then ``/search?c=<title>`` per category, concurrently. The
  ``c`` filter is a case-sensitive *substring* match, so membership is read from each result's
  ``categories_info`` (which lists *all* categories of the item). A category whose search hits the 1,000 cap is
  completed through ``/manage_media?category=`` when the token allows it (uncapped; exact unless another
  category's title contains this one; newer releases also take the category uid, which is exact). Items no
  list could place are looked for in the capped searches sorted other ways and split by uploader
  (``author``), 1,000 rows at a time; only the rest get a detail call each, counted in
  ``stats["detail_calls"]``.
* **Playable policy.** Listings from an editor token include private, unlisted, unreviewed and unencoded
  media: every item is checked against ``MEDIACMS_PLAYABLE`` (default: listable videos), never trusted.
* **HTTP.** ``Authorization: Token`` (``Bearer`` is silently ignored by MediaCMS), a login call for
  user/password, ``Accept: application/json`` with a content-type check, timeouts, bounded retries with
  exponential backoff and jitter on transport errors/429/5xx/truncated JSON, no retry on 400/401/403, and a
  configuration error (never a followed redirect) for a login redirect or an HTML answer.

No secret appears in a message, a log line or ``stats``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx

from kryten_pipeline.catalog_item import CatalogItem, ProgressCallback, SourceReject
from kryten_pipeline.connectors.mediacms_categories import MediaCMSCategories
from kryten_pipeline.connectors.mediacms_http import MediaCMSHttp, NoCookies, scrub_url
from kryten_pipeline.connectors.mediacms_listing import (
    LISTING_CAP,
    PROGRESS_EVERY_PAGES,
    MediaCMSListing,
    PlayablePolicy,
    run_all,
)
from kryten_pipeline.errors import ConfigurationError
from kryten_pipeline.retry_policy import RetryPolicy
from kryten_pipeline.settings import Settings
from kryten_pipeline.staging import RowSpill

__all__ = ["LISTING_CAP", "MediaCMSConnector", "PlayablePolicy", "scrub_url"]

# Listed items wait on disk, read back this many at a time (staging.RowSpill) once every category is known.
LISTING_SPILL_ROWS = 5_000


class MediaCMSConnector(MediaCMSHttp, MediaCMSListing, MediaCMSCategories):
    """Reads a MediaCMS catalog through its REST API; see the module docstring for what it guarantees."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        username: str | None = None,
        password: str | None = None,
        policy: PlayablePolicy | None = None,
        concurrency: int = 4,
        timeout: float = 30.0,
        retries: int = 4,
        backoff_base: float = 0.5,
        backoff_max: float = 20.0,
        progress: ProgressCallback | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        raw = (base_url or "").strip()
        try:
            parts = urlsplit(raw)
        except ValueError:
            parts = urlsplit("")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(
                f"MediaCMS URL must be an absolute http(s) URL like https://media.example.org, got "
                f"{scrub_url(raw)!r}", setting="MEDIACMS_URL",
            )
        # Credentials written into the URL are used (if no others are set), never shown.
        if parts.username and not (token or username):
            username, password = unquote(parts.username), unquote(parts.password or "")
        path = parts.path.rstrip("/")
        for suffix in ("/api/v1", "/api"):  # tolerate the API root being configured instead of the site
            if path.endswith(suffix):
                path = path[: -len(suffix)]
        self.base_url = scrub_url(urlunsplit((parts.scheme, parts.netloc, path, "", "")))
        self.label = f"mediacms:{self.base_url}"
        self._token = _bare_token(token)
        self._username = (username or "").strip() or None
        self._password = password or None
        self.policy = policy or PlayablePolicy()
        self.concurrency = max(1, int(concurrency))
        self.timeout = float(timeout)
        self.retries = max(0, int(retries))
        self._retry = RetryPolicy(self.retries, backoff_base, backoff_max)
        self._progress = progress
        self._transport = transport
        self.stats: dict[str, Any] = {}
        self.source_rejects: list[SourceReject] = []
        self._listed = RowSpill(LISTING_SPILL_ROWS)
        self._reset()

    @classmethod
    def from_settings(cls, settings: Settings, *, progress: ProgressCallback | None = None) -> MediaCMSConnector:
        if not settings.mediacms_url:
            raise ConfigurationError("KRYTEN_SOURCE=mediacms needs the MediaCMS base URL", setting="MEDIACMS_URL")
        return cls(
            settings.mediacms_url,
            token=settings.mediacms_token,
            username=settings.mediacms_username,
            password=settings.mediacms_password,
            policy=PlayablePolicy.parse(getattr(settings, "mediacms_playable", None)),
            concurrency=getattr(settings, "mediacms_concurrency", 4),
            timeout=getattr(settings, "mediacms_timeout", 30),
            retries=getattr(settings, "mediacms_retries", 4),
            progress=progress,
        )

    # ------------------------------------------------------------------ state

    def _reset(self) -> None:
        self.source_rejects = []
        self.stats = {
            "base_url": self.base_url,
            "auth": "anonymous",
            "endpoint": None,
            "editor": False,
            "policy": self.policy.describe(),
            "requests": 0,
            "retries": 0,
            "retry_reasons": {},
            "bytes": 0,
            "pages": 0,
            "listing_count": None,
            "listed": 0,
            "duplicates": 0,
            "recovered_items": 0,
            "listing_rewalks": 0,
            "count_drift": 0,
            "excluded": {},
            "excluded_total": 0,
            "categories": 0,
            "category_pages": 0,
            "capped_categories": 0,
            "manage_category_pages": 0,
            "window_pages": 0,
            "manage_category_filter": None,
            "detail_calls": 0,
            "unplaced_after_lists": 0,
            "phase_s": {},
            "rebased_links": 0,
            "items": 0,
            "wall_time_s": 0.0,
            "items_per_s": 0.0,
        }
        self._client: httpx.AsyncClient | None = None
        self._semaphore = asyncio.Semaphore(self.concurrency)
        self._auth_header: str | None = None
        self._basic: httpx.BasicAuth | None = None
        self._authenticated = False
        self._editor = False
        # token -> visible to /search; insertion order = listing order. The items' values wait on disk in
        # ``_listed`` until every category is known (at 100k items they were 40 MB of strings in memory).
        self._playable: dict[str, bool] = {}
        self._listed.close()
        self._seen: set[str] = set()
        self._full_categories: dict[str, tuple[str, ...]] = {}
        self._category_lists: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._titles: list[str] = []
        self._supersets: dict[str, list[str]] = {}
        self._search_complete: dict[str, bool] = {}
        # title -> (tokens from /manage_media?category=, exact?) ; exact unless matched as a title substring
        self._candidates: dict[str, tuple[set[str], bool]] = {}
        self._uids: dict[str, str] = {}
        self._walked_orders: dict[str, set[tuple[str, str]]] = {}
        self._filtered_total: asyncio.Future[int] | None = None
        self._media_counts: dict[str, int] = {}
        self._members_by_token: dict[str, list[str]] = {}
        self._authors: dict[str, str] = {}  # token -> uploader, to split capped searches by ``author``
        self._pages_since_progress = 0
        self._started = time.perf_counter()

    def _report(self, *, force: bool = False) -> None:
        if self._progress is None:
            return
        self._pages_since_progress += 0 if force else 1
        if force or self._pages_since_progress >= PROGRESS_EVERY_PAGES:
            self._pages_since_progress = 0
            self._update_timing()
            snapshot = dict(self.stats)
            snapshot["excluded"] = dict(self.stats["excluded"])
            snapshot["retry_reasons"] = dict(self.stats["retry_reasons"])
            snapshot["phase_s"] = dict(self.stats["phase_s"])
            self._progress(snapshot)

    def _update_timing(self) -> None:
        elapsed = time.perf_counter() - self._started
        self.stats["wall_time_s"] = round(elapsed, 3)
        done = self.stats["items"] or len(self._playable)
        self.stats["items_per_s"] = round(done / elapsed, 1) if elapsed > 0 else 0.0

    # ------------------------------------------------------------------ public API

    async def iter_catalog_items(self) -> AsyncIterator[CatalogItem]:
        """Yield every playable item with all its categories; raise before the first item if anything is off.

        All network work (listing, categories, reconciliation) finishes before the first yield, so a
        failure never leaves a consumer with a partial catalog it might take for complete.
        """
        self._reset()
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        headers = {"Accept": "application/json", "User-Agent": "kryten-pipeline"}
        try:
            async with httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0)),
                limits=limits, headers=headers, follow_redirects=False, cookies=NoCookies(),
                transport=self._transport,
            ) as client:
                self._client = client
                await self._authenticate()
                first_path, first_params, first_page = await self._choose_listing()
                await run_all([
                    self._walk_listing(first_path, first_params, first_page),
                    self._walk_categories(),
                ])
                await self._complete_categories()
        except BaseException:
            self._listed.close()  # nothing will be handed on
            raise
        finally:
            self._client = None
            self._update_timing()  # a failed run still reports how far it got
        order = {title: index for index, title in enumerate(self._titles)}
        members, full = self._members_by_token, self._full_categories
        normalised: dict[tuple[str, ...], list[str]] = {}  # few distinct combinations: order each once
        try:
            for token, title, duration, thumbnail in self._listed.rows():
                if token not in self._playable:
                    continue  # disappeared during the refresh (a detail call answered 404)
                categories = full.get(token)
                if categories is None:
                    categories = tuple(members.get(token, ()))
                ordered = normalised.get(categories)
                if ordered is None:
                    ordered = normalised[categories] = _ordered(categories, order)
                self.stats["items"] += 1
                yield CatalogItem(
                    video_id=token,
                    title=title,
                    categories=list(ordered),
                    duration_seconds=duration,
                    thumbnail_url=thumbnail,
                )
        finally:
            self._listed.close()
        self._update_timing()
        self._report(force=True)

    # ------------------------------------------------------------------ HTTP


def _bare_token(token: str | None) -> str | None:
    """Accept ``Token abc`` / ``Bearer abc`` pasted whole: MediaCMS only honours the ``Token`` scheme."""
    if not token or not token.strip():
        return None
    value = token.strip()
    scheme, _, rest = value.partition(" ")
    if rest and scheme.lower() in ("token", "bearer"):
        return rest.strip()
    return value


def _ordered(categories: Iterable[str], order: dict[str, int]) -> list[str]:
    unique = list(dict.fromkeys(categories))
    return sorted(unique, key=lambda c: (order.get(c, len(order)), unique.index(c)))


