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
import http.cookiejar
import json
import math
import ssl
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlencode, urlsplit, urlunsplit

import httpx

from kryten_pipeline import jsonfast
from kryten_pipeline.catalog_item import CatalogItem, ProgressCallback, SourceReject
from kryten_pipeline.errors import ConfigurationError, SourceError
from kryten_pipeline.retry_policy import RetryPolicy, TransientFailure
from kryten_pipeline.settings import Settings

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


def scrub_url(url: str) -> str:
    """``url`` without user:password (and without query/fragment), safe for messages and labels."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


async def _run_all(coroutines: Iterable[Awaitable[Any]]) -> list[Any]:
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


class _NoCookies(http.cookiejar.CookieJar):
    """The API client keeps no cookies: MediaCMS authenticates every API request by its token (or Basic auth),
    and a session cookie would only bring Django's CSRF rules along. Skipping the jar also spares httpx's
    cookie parsing of every response (~0.1 ms a page)."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        return None

    def add_cookie_header(self, request: Any) -> None:
        return None


@dataclass(slots=True)
class _WalkResult:
    pages: int
    first_count: int
    last_count: int
    max_count: int
    ended_early: bool


# --------------------------------------------------------------------------------------------- connector


class MediaCMSConnector:
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
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._retry = RetryPolicy(self.retries, backoff_base, backoff_max)
        self._progress = progress
        self._transport = transport
        self.stats: dict[str, Any] = {}
        self.source_rejects: list[SourceReject] = []
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
        # token -> (title, duration, thumbnail, visible_to_search); insertion order = listing order
        self._playable: dict[str, tuple[Any, Any, Any, bool]] = {}
        self._seen: set[str] = set()
        self._full_categories: dict[str, tuple[str, ...]] = {}
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
                limits=limits, headers=headers, follow_redirects=False, cookies=_NoCookies(),
                transport=self._transport,
            ) as client:
                self._client = client
                await self._authenticate()
                first_path, first_params, first_page = await self._choose_listing()
                await _run_all([
                    self._walk_listing(first_path, first_params, first_page),
                    self._walk_categories(),
                ])
                await self._complete_categories()
        finally:
            self._client = None
            self._update_timing()  # a failed run still reports how far it got
        order = {title: index for index, title in enumerate(self._titles)}
        members, full = self._members_by_token, self._full_categories
        normalised: dict[tuple[str, ...], list[str]] = {}  # few distinct combinations: order each once
        for token, (title, duration, thumbnail, _visible) in self._playable.items():
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
        self._update_timing()
        self._report(force=True)

    # ------------------------------------------------------------------ HTTP

    def _api(self, name: str) -> str:
        return f"{self.base_url}/api/v1/{name}"

    async def _request(
        self,
        method: str,
        url: str,
        *,
        params: dict[str, str] | None = None,
        data: dict[str, str] | None = None,
        allow: tuple[int, ...] = (),
    ) -> tuple[int, Any]:
        """One API call with retries. Returns (status, parsed JSON) for 2xx and for statuses in ``allow``."""
        if params:
            url = f"{url}?{urlencode(params)}"  # one URL parse per request instead of a parse and a merge
        where = scrub_url(url)
        try:
            return await self._retry.call(lambda: self._attempt(method, url, where, data, allow),
                                          on_retry=self._count_retry)
        except TransientFailure as exc:
            raise SourceError(
                f"MediaCMS request {method} {where} failed {self.retries + 1} times (last: {exc.problem}); the "
                f"server is unreachable or overloaded — try again later, or raise MEDIACMS_RETRIES/MEDIACMS_TIMEOUT",
                setting="MEDIACMS_URL",
            ) from None

    def _count_retry(self, failure: TransientFailure) -> None:
        self.stats["retries"] += 1
        reasons = self.stats["retry_reasons"]
        reasons[failure.problem] = reasons.get(failure.problem, 0) + 1

    async def _attempt(self, method: str, url: str, where: str, data: dict[str, str] | None,
                       allow: tuple[int, ...]) -> tuple[int, Any]:
        """One request: its answer, ``TransientFailure`` for what a retry may fix, any other error for the rest."""
        client = self._client
        assert client is not None
        try:
            async with self._semaphore:
                self.stats["requests"] += 1
                response = await client.request(method, url, data=data)
        except httpx.TimeoutException:
            raise TransientFailure("timeout") from None
        except httpx.TransportError as exc:
            rejected = _certificate_rejected(exc) if isinstance(exc, httpx.ConnectError) else None
            if rejected:  # a retry cannot fix an untrusted certificate
                raise self._certificate_error(where, rejected) from None
            raise TransientFailure(f"transport:{type(exc).__name__}") from None
        body = response.content
        self.stats["bytes"] += len(body)
        status = response.status_code
        is_json = "json" in response.headers.get("content-type", "").lower()
        if 300 <= status < 400:
            raise self._redirect_error(where, response.headers.get("location", ""))
        if status == 429 or status >= 500:
            raise TransientFailure(f"http:{status}", retry_after=_retry_after(response.headers.get("retry-after")))
        if status in allow:
            return status, _loads_or_none(body) if is_json else None
        if status in (401, 403):
            raise self._auth_error(where, status)
        if not is_json:
            raise self._html_error(where, status)
        if status >= 400:
            detail = _detail(_loads_or_none(body))
            raise SourceError(
                f"MediaCMS answered HTTP {status} to GET {where}{detail}; the catalog cannot be read whole",
                setting="MEDIACMS_URL",
            )
        try:
            return status, jsonfast.loads(body)
        except ValueError:
            raise TransientFailure("malformed_json") from None

    def _redirect_error(self, where: str, location: str) -> ConfigurationError:
        target = scrub_url(location) if location else "(no Location)"
        if "login" in location.lower():
            return ConfigurationError(
                f"MediaCMS redirected GET {where} to its login page ({target}): the site has "
                f"GLOBAL_LOGIN_REQUIRED on, which locks the REST API even for API tokens. Ask the MediaCMS admin to "
                f"exempt /api/ from the login requirement (or turn it off), or read the catalog with "
                f"KRYTEN_SOURCE=mediacms-db; also check MEDIACMS_URL",
                setting="MEDIACMS_URL",
            )
        return ConfigurationError(
            f"MediaCMS answered GET {where} with a redirect to {target}; set MEDIACMS_URL to the site's final "
            f"address (scheme, host and path prefix) so no redirect is needed",
            setting="MEDIACMS_URL",
        )

    def _auth_error(self, where: str, status: int) -> ConfigurationError:
        if self._token:
            return ConfigurationError(
                f"MediaCMS rejected the API token (HTTP {status} on GET {where}): it is invalid or revoked. Copy a "
                f"current token from the MediaCMS user's profile into MEDIACMS_TOKEN, or unset it for "
                f"anonymous access", setting="MEDIACMS_TOKEN",
            )
        if self._authenticated or self._basic:
            return ConfigurationError(
                f"MediaCMS refused the configured user (HTTP {status} on GET {where}); check MEDIACMS_USERNAME "
                f"and MEDIACMS_PASSWORD", setting="MEDIACMS_PASSWORD",
            )
        return ConfigurationError(
            f"MediaCMS refused anonymous access (HTTP {status} on GET {where}); set MEDIACMS_TOKEN (an editor "
            f"token lists the whole catalog)", setting="MEDIACMS_TOKEN",
        )

    def _certificate_error(self, where: str, reason: str) -> ConfigurationError:
        return ConfigurationError(
            f"MediaCMS's TLS certificate was not accepted on GET {where} ({reason}): MEDIACMS_URL must name the "
            f"host the certificate is issued for; a certificate from a private CA needs that CA in SSL_CERT_FILE "
            f"(or SSL_CERT_DIR)", setting="MEDIACMS_URL",
        )

    def _html_error(self, where: str, status: int) -> ConfigurationError:
        return ConfigurationError(
            f"MediaCMS answered GET {where} with HTTP {status} and an HTML page instead of JSON: MEDIACMS_URL does "
            f"not point at the MediaCMS site root, or a proxy/login page (GLOBAL_LOGIN_REQUIRED) answers in its "
            f"place", setting="MEDIACMS_URL",
        )

    def _rebase(self, link: str) -> str:
        """Move a ``next`` link onto the configured base URL (it may name an internal host or http://)."""
        parts = urlsplit(link)
        index = parts.path.find("/api/v1/")
        if index < 0:
            raise SourceError(f"MediaCMS sent a next link outside its API ({scrub_url(link)}); cannot continue",
                              setting="MEDIACMS_URL")
        rebased = self.base_url + parts.path[index:] + (f"?{parts.query}" if parts.query else "")
        if not link.startswith(self.base_url):
            self.stats["rebased_links"] += 1
        return rebased

    # ------------------------------------------------------------------ authentication and endpoint

    async def _authenticate(self) -> None:
        if self._token:
            self._set_auth(f"Token {self._token}")
            self.stats["auth"] = "token"
        elif self._username and self._password:
            status, body = await self._request(
                "POST", self._api("login"), data={"username": self._username, "password": self._password},
                allow=(400, 401, 403, 404, 405),  # sent before any credentials header is set
            )
            token = body.get("token") if isinstance(body, dict) else None
            if status == 200 and isinstance(token, str) and token:
                self._set_auth(f"Token {token}")
                self.stats["auth"] = "login"
            elif status in (404, 405) or status == 200:
                self._basic = httpx.BasicAuth(self._username, self._password)  # releases without /login
                assert self._client is not None
                self._client.auth = self._basic
                self.stats["auth"] = "basic"
            else:
                raise ConfigurationError(
                    f"MediaCMS refused the login of the configured user (HTTP {status}); check MEDIACMS_USERNAME "
                    f"and MEDIACMS_PASSWORD", setting="MEDIACMS_PASSWORD",
                )
        else:
            return
        self._authenticated = True
        status, _ = await self._request("GET", self._api("whoami"), allow=(401, 403, 404))
        if status in (401, 403):
            raise self._auth_error(scrub_url(self._api("whoami")), status)

    def _set_auth(self, value: str) -> None:
        assert self._client is not None
        self._auth_header = value
        self._client.headers["Authorization"] = value

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
            answers = await _run_all(fetch(page) for page in range(state["fetched"] + 1, target + 1))
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
                rows.append((None, _excerpt(record), None, None, None, False, None))
                continue
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
                    playable[token] = (title, duration, thumbnail, visible)
                    if author:
                        authors[token] = sys.intern(author)
        stats["listed"] = len(seen)

    async def _walk_listing(self, url: str, params: dict[str, str] | None, first: Any) -> None:
        endpoint = self.stats["endpoint"]
        pages: dict[int, list[tuple[Any, ...]]] = {}

        def take(page: int, results: list[Any]) -> None:
            pages[page] = self._listing_rows(results)
            self.stats["pages"] += 1
            self._report()

        result = await self._walk(url, params, take, what=f"/{endpoint} listing", first=first)
        for page in sorted(pages):  # pages arrive out of order; items keep the listing's order
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
        await _run_all(self._category(title) for title in searchable)

    def _take_search_page(self, results: list[Any], hits: set[str] | None = None) -> None:
        full = self._full_categories
        for record in results:
            if not isinstance(record, dict):
                continue
            token = record.get("friendly_token")
            info = record.get("categories_info")
            if not isinstance(token, str) or not isinstance(info, list):
                continue
            full[token] = tuple(c["title"] for c in info if isinstance(c, dict) and isinstance(c.get("title"), str))
            if hits is not None:
                hits.add(token)
        self.stats["category_pages"] += 1
        self._report()

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
        hidden = {t for t in unresolved if not self._playable[t][3]}  # not visible to /search
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
        remaining = {t for t in unknown if self._playable[t][3]}  # /search can only show these

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

        await _run_all(widen(title, None) for _, title in targets)
        if not remaining:
            return
        by_author: dict[str, set[str]] = {}
        for token in remaining:
            author = self._authors.get(token)
            if author:
                by_author.setdefault(author, set()).add(token)
        pairs = sorted(((relevant(title, tokens), title, author) for _, title in targets
                        for author, tokens in by_author.items()), reverse=True)
        await _run_all(widen(title, author) for n, title, author in pairs if n > 1)

    async def _details(self, tokens: set[str]) -> None:
        """The last resort: one detail call per item no listing could place (counted in stats)."""
        ordered = [t for t in self._playable if t in tokens]

        async def one(token: str) -> None:
            self.stats["detail_calls"] += 1
            status, body = await self._request("GET", self._api(f"media/{token}"), allow=(400, 401, 404))
            info = body.get("categories_info") if isinstance(body, dict) else None
            if status == 200 and isinstance(info, list):
                self._full_categories[token] = tuple(
                    c["title"] for c in info if isinstance(c, dict) and isinstance(c.get("title"), str))
            elif status == 200:
                raise SourceError(f"MediaCMS detail for {token} has no categories_info; this release is not "
                                  f"supported", setting="MEDIACMS_URL")
            else:
                # Deleted or made private since it was listed: it is no longer playable.
                self._playable.pop(token, None)
                self.source_rejects.append(SourceReject(
                    token, f"media {token} disappeared during the refresh (detail answered HTTP {status})"))
            self._report()

        await _run_all(one(token) for token in ordered)


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


def _certificate_rejected(exc: BaseException) -> str | None:
    """The reason when ``exc`` (or an error it was raised from) is a failed TLS certificate check, else None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return str(current.verify_message or current.reason or "certificate verify failed")
        current = current.__cause__ or current.__context__
    return None


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _loads_or_none(body: bytes) -> Any:
    try:
        return jsonfast.loads(body)
    except ValueError:
        return None


def _detail(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return f" ({body['detail'][:200]})"
    return ""


def _excerpt(record: Any) -> str:
    try:
        text = json.dumps(record, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(record)
    return text[:300]
