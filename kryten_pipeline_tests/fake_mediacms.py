"""A real local HTTP server that behaves like the MediaCMS REST API (``reference/mediacms-api.md``).

It serves a deterministic generated catalog of any size on 127.0.0.1 (random port) and reproduces what a
connector must cope with: the ``{count, next, previous, results, tags}`` envelope with fixed 50-item pages
(``page_size`` ignored), absolute ``next`` links built from the host the server *believes* it has (possibly an
internal ``http://`` one), 404 ``Invalid page.`` past the end, newest first, the 1,000-row cap on ``/media`` and
``/search`` (switchable off for pre-7.2 releases), ``/manage_media`` for editors only and uncapped, a bare-array
``/categories`` without ids, ``{}`` from a bare search, the case-sensitive *substring* category search with
``categories_info``, anonymous vs token visibility, ``Bearer`` silently ignored, an invalid token answered 403
even on public endpoints, ``/whoami``, ``POST /login``, the ``GLOBAL_LOGIN_REQUIRED`` redirect, and injected
faults (5xx bursts, 429, slow answers, malformed JSON, HTML answers, catalog edits during a walk).

Every request is counted per endpoint and logged, so tests can assert request totals.

Usage::

    catalog = generate_catalog(2_000, 20)
    with FakeMediaCMS(catalog) as server:
        server.url            # http://127.0.0.1:PORT
        server.EDITOR_TOKEN   # an editor's API token
        server.inject("status", path="/api/v1/media", times=2, status=503)
"""

from __future__ import annotations

import base64
import contextlib
import json
import random
import ssl
import string
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, parse_qsl, quote, urlencode, urlsplit

PAGE_SIZE = 50
LISTING_CAP = 1000
TOKEN_ALPHABET = string.ascii_letters + string.digits

# Category titles chosen to exercise the traps: "Art" is a substring of "Martial Arts" (the search filter is a
# substring match), "drama" differs from "Docudrama" only by case (the match is case-sensitive), a leading
# space (the server strips ``c``), HTML-ish characters, quotes, "&", "/", and non-Latin scripts.
CATEGORY_TITLES = (
    "Art", "Martial Arts", "Docudrama", "Drama", " Leading Space", "Rock & Roll", "Tom \"&\" Jerry's <Picks>",
    "Sci-Fi/Fantasy", "Éducation", "日本語のアニメ", "Documentary", "Music", "News", "Sports", "Comedy",
    "Kids", "Horror", "Nature", "History", "Travel", "Science", "Gaming", "Retro", "Live", "Cooking",
)
PLAIN_CATEGORY_TITLES = (
    "Documentary", "Music", "News", "Sports", "Comedy", "Kids", "Horror", "Nature", "History", "Travel",
    "Science", "Gaming", "Retro", "Live", "Cooking", "Éducation", "日本語のアニメ", "Rock & Roll", "Sci-Fi/Fantasy",
    "Tom \"&\" Jerry's <Picks>",
)
_WORDS = (
    "amber", "binary", "cobalt", "delta", "ember", "fjord", "glacier", "harbor", "island", "jungle", "kestrel",
    "lantern", "meadow", "nebula", "orchid", "prairie", "quartz", "river", "summit", "tundra", "café", "naïve",
    "Ωmega", "東京", "Ελλάδα", "🎬",
)
_TITLE_SHAPES = (
    "{w}", "{w}", "{w}", "{w} & friends", "a < b > c: {w}", "\"{w}\" — the 'quoted' cut", "  {w} (leading spaces)",
    "{w} (trailing)  ", "AC/DC live: {w}", "<b>{w}</b> is not markup",
)
USERS = {
    # name: (role, password, token)
    "editor": ("editor", "editor-pass", "e" * 40),
    "manager": ("manager", "manager-pass", "m" * 40),
    "alice": ("user", "alice-pass", "a" * 40),
}


@dataclass
class FakeMedia:
    token: str
    uid: str
    title: str
    description: str
    add_date: datetime
    user: str
    media_type: str
    state: str
    is_reviewed: bool
    encoding_status: str
    duration: int
    thumbnail_path: str | None
    categories: list[str]
    views: int
    likes: int
    shared_with: frozenset[str] = frozenset()

    @property
    def listable(self) -> bool:
        return self.state == "public" and self.is_reviewed and self.encoding_status == "success"


@dataclass
class FakeCategory:
    title: str
    uid: str
    description: str = ""
    user: str = "editor"
    is_global: bool = False


@dataclass
class FakeCatalog:
    """Items newest first (the order MediaCMS lists them) and categories (any order; served sorted)."""

    items: list[FakeMedia]
    categories: list[FakeCategory]

    def by_token(self) -> dict[str, FakeMedia]:
        return {item.token: item for item in self.items}

    def expected_playable(self, *, include: Callable[[FakeMedia], bool] | None = None) -> dict[str, FakeMedia]:
        """What a correct connector yields with the default policy (listable videos), keyed by token."""
        keep = include or (lambda m: m.listable and m.media_type == "video")
        return {m.token: m for m in self.items if keep(m)}


def generate_catalog(
    n_items: int,
    n_categories: int = 20,
    *,
    seed: int = 0,
    playable_share: float = 0.9,
    category_weights: tuple[float, float, float, float] = (0.2, 0.5, 0.2, 0.1),
    titles: tuple[str, ...] = CATEGORY_TITLES,
) -> FakeCatalog:
    """A deterministic catalog: ``n_items`` media, ``n_categories`` categories, many-to-many.

    About ``playable_share`` of the items are listable videos; the rest are spread over audio/image/pdf,
    private (some shared with ``alice``), unlisted, unreviewed, pending and failed encodings.
    ``category_weights`` is the share of items with 0, 1, 2 and 3 categories. ``titles`` are used in order,
    the first ones the most popular (the default puts the "Art" ⊂ "Martial Arts" trap in the two largest
    categories: a worst case for a capped substring search; ``PLAIN_CATEGORY_TITLES`` has no such nesting).
    """
    rng = random.Random(seed)
    chosen_titles = list(titles[:n_categories])
    while len(chosen_titles) < n_categories:
        chosen_titles.append(f"Category {len(chosen_titles) + 1:02d}")
    titles = tuple(chosen_titles)
    categories = [
        FakeCategory(title=t, uid=f"{rng.getrandbits(128):032x}", description=f"about {t.strip()}") for t in titles
    ]
    popularity = [1.0 / (1 + i % 7) for i in range(n_categories)]  # a few popular categories, a long tail
    tokens: set[str] = set()
    items: list[FakeMedia] = []
    # Newest first; a few groups share one add_date (ordering ties, as in the field).
    moment = datetime(2025, 12, 1, 12, 0, 0, tzinfo=UTC)
    previous_title = "first"
    for index in range(n_items):
        token = "".join(rng.choices(TOKEN_ALPHABET, k=9))
        while token in tokens:
            token = "".join(rng.choices(TOKEN_ALPHABET, k=9))
        tokens.add(token)
        if rng.random() > 0.05:
            moment -= timedelta(seconds=rng.randint(1, 3600), microseconds=rng.randint(0, 999_999))
        if rng.random() < 0.02:
            title = previous_title  # the same file uploaded twice under two tokens
        else:
            words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 4)))
            title = rng.choice(_TITLE_SHAPES).format(w=f"{words} {index}")[:100]
        previous_title = title
        media_type, state, reviewed, encoding = "video", "public", True, "success"
        if rng.random() > playable_share:
            kind = rng.choice(("audio", "image", "pdf", "private", "private", "unlisted", "unreviewed", "pending",
                               "fail"))
            if kind in ("audio", "image", "pdf"):
                media_type = kind
            elif kind in ("private", "unlisted"):
                state = kind
            elif kind == "unreviewed":
                reviewed = False
            else:
                encoding = kind
        k = rng.choices((0, 1, 2, 3), weights=category_weights)[0]
        chosen: list[str] = []
        while len(chosen) < min(k, n_categories):
            title_c = rng.choices(titles, weights=popularity)[0]
            if title_c not in chosen:
                chosen.append(title_c)
        uid = f"{rng.getrandbits(128):032x}"
        user = rng.choice(("editor", "alice", "bob", "carol"))
        items.append(FakeMedia(
            token=token, uid=uid, title=title, description=f"description of {title}", add_date=moment,
            user=user, media_type=media_type, state=state, is_reviewed=reviewed, encoding_status=encoding,
            duration=0 if media_type == "image" else rng.randint(5, 4 * 3600),
            thumbnail_path=None if rng.random() < 0.05 else f"/media/original/thumbnails/user/{user}/{uid}.jpg",
            categories=chosen, views=rng.randint(0, 10_000), likes=rng.randint(0, 500),
            shared_with=frozenset({"alice"}) if state == "private" and rng.random() < 0.5 else frozenset(),
        ))
    return FakeCatalog(items=items, categories=categories)


# --------------------------------------------------------------------------------------------- faults


@dataclass
class Fault:
    """One injected misbehaviour for requests whose path starts with ``path`` (and whose query has ``query``)."""

    kind: str  # status | slow | malformed | html | close | idle_close (answer, then drop the kept-alive connection)
    path: str = "/api/"
    times: int = 1
    skip: int = 0
    status: int = 503
    delay: float = 0.0
    retry_after: str | None = None
    body: Any = None  # for "status": answer this JSON instead of an HTML error page
    query: dict[str, str] = field(default_factory=dict)

    def matches(self, path: str, query: dict[str, str]) -> bool:
        return path.startswith(self.path) and all(query.get(k) == v for k, v in self.query.items())


@dataclass
class PageHook:
    """Run ``action(catalog)`` once, right after page ``page`` of ``path`` has been served."""

    path: str
    page: int
    action: Callable[[FakeCatalog], None]
    done: bool = False


@dataclass
class RequestRecord:
    method: str
    path: str
    query: dict[str, str]
    status: int
    authorization: str  # "none", "token", "bearer", "basic", "invalid"
    accept: str = ""


# --------------------------------------------------------------------------------------------- server


class FakeMediaCMS:
    """The fake MediaCMS server. Thread-safe; start with ``start()`` or use as a context manager."""

    EDITOR_TOKEN = USERS["editor"][2]
    MANAGER_TOKEN = USERS["manager"][2]
    USER_TOKEN = USERS["alice"][2]

    def __init__(
        self,
        catalog: FakeCatalog,
        *,
        capped: bool = True,
        capped_media: bool | None = None,
        public_base: str | None = None,
        frontend_host: str = "https://media.example.org",
        login_required: bool = False,
        relative_thumbnails: bool = False,
        manage_category_filter: str = "substring",
        latency: float = 0.0,
        port: int = 0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """``capped``: the ≥7.2 1,000-row cap on /media and /search (``capped_media``
        overrides it for /media). ``public_base``: the scheme+host the
        server believes it has (used for ``next``/``previous``/``url``); default: its real address.
        ``manage_category_filter``: how /manage_media treats ``category`` — "substring" (8.x), "uid" (newer:
        a uid, else an exact title), "exact" or "ignored". ``latency``: seconds every answer waits first, as a
        Django + PostgreSQL server's would (threads: concurrent requests wait side by side). ``tls``: a server
        context to answer over HTTPS (the handshake runs in the connection's own thread)."""
        self.catalog = catalog
        self.capped = capped
        # Latest releases cap /media for signed-in users only; None: same as ``capped``.
        self.capped_media = capped if capped_media is None else capped_media
        self.login_required = login_required
        self.relative_thumbnails = relative_thumbnails
        self.manage_category_filter = manage_category_filter
        self.frontend_host = frontend_host.rstrip("/")
        self.latency = latency
        self._public_base = public_base
        self.lock = threading.RLock()
        self.counts: Counter[str] = Counter()
        self.log: list[RequestRecord] = []
        self.faults: list[Fault] = []
        self.hooks: list[PageHook] = []
        self._list_cache: dict[tuple[Any, ...], list[FakeMedia]] = {}
        self._fragment_cache: dict[tuple[str, str], bytes] = {}
        self._index: dict[str, FakeMedia] | None = None
        self._httpd = _QuietServer(("127.0.0.1", port), _make_handler(self))
        self._httpd.tls = tls
        self._thread: threading.Thread | None = None

    # ---- lifecycle

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"{'https' if self._httpd.tls else 'http'}://{host}:{port}"

    @property
    def connections(self) -> int:
        """TCP connections accepted so far (a client that keeps connections alive opens few)."""
        return self._httpd.connections

    @property
    def public_base(self) -> str:
        return (self._public_base or self.url).rstrip("/")

    def start(self) -> FakeMediaCMS:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-mediacms", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeMediaCMS:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- test controls

    def inject(self, kind: str, **kwargs: Any) -> Fault:
        fault = Fault(kind=kind, **kwargs)
        with self.lock:
            self.faults.append(fault)
        return fault

    def after_page(self, path: str, page: int, action: Callable[[FakeCatalog], None]) -> None:
        with self.lock:
            self.hooks.append(PageHook(path=path, page=page, action=action))

    def mutate(self, action: Callable[[FakeCatalog], None]) -> None:
        with self.lock:
            action(self.catalog)
            self._invalidate()

    def reset_counts(self) -> None:
        with self.lock:
            self.counts.clear()
            self.log.clear()

    @property
    def total_requests(self) -> int:
        return sum(self.counts.values())

    def warm(self) -> None:
        """Render every item once (a benchmark should time the client, not the first render)."""
        with self.lock:
            for media in self.catalog.items:
                self._fragment("list", media)
                self._fragment("search", media)

    def _invalidate(self) -> None:
        self._list_cache.clear()
        self._fragment_cache.clear()
        self._index = None

    def _find(self, token: str) -> FakeMedia | None:
        if self._index is None:
            self._index = self.catalog.by_token()
        return self._index.get(token)

    # ---- catalog views (called with the lock held)

    def _visible(self, view: str, user: str | None, params: dict[str, str]) -> list[FakeMedia]:
        key = (view, user, tuple(sorted(params.items())))
        cached = self._list_cache.get(key)
        if cached is not None:
            return cached
        items = self.catalog.items
        if view == "media":
            result = [m for m in items if m.listable or (user is not None and user in m.shared_with)]
            result.sort(key=lambda m: m.add_date, reverse=True)
        elif view == "search":
            result = self._search(items, user, params)
        else:  # manage
            result = self._manage(items, params)
        if (view == "search" and self.capped) or (view == "media" and self.capped_media):
            result = result[:LISTING_CAP]
        self._list_cache[key] = result
        return result

    def _search(self, items: list[FakeMedia], user: str | None, params: dict[str, str]) -> list[FakeMedia]:
        result = [m for m in items if m.listable or (user is not None and user in m.shared_with)]
        category = params.get("c", "").strip()
        if category:
            result = [m for m in result if any(category in title for title in m.categories)]  # case-sensitive
        query = params.get("q", "").strip().lower()
        if query:
            result = [m for m in result if query in m.title.lower()]
        if params.get("t", "").strip():
            result = []  # the fake catalog has no tags
        media_type = params.get("media_type", "").strip()
        if media_type in ("video", "image", "audio", "pdf"):
            result = [m for m in result if m.media_type == media_type]
        author = params.get("author", "").strip()
        if author:
            result = [m for m in result if m.user == author]
        return _sorted(result, params)

    def _manage(self, items: list[FakeMedia], params: dict[str, str]) -> list[FakeMedia]:
        result = list(items)
        for name in ("state", "encoding_status", "media_type"):
            value = params.get(name, "").strip()
            if value:
                result = [m for m in result if getattr(m, name) == value]
        reviewed = params.get("is_reviewed", "").strip()
        if reviewed in ("true", "false"):
            result = [m for m in result if m.is_reviewed == (reviewed == "true")]
        category = params.get("category", "").strip()
        if category and self.manage_category_filter == "substring":
            result = [m for m in result if any(category in title for title in m.categories)]
        elif category and self.manage_category_filter == "exact":
            result = [m for m in result if category in m.categories]
        elif category and self.manage_category_filter == "uid":
            # Newer releases: a category uid first, then an exact title for older clients.
            match = next((c.title for c in self.catalog.categories if c.uid == category), category)
            result = [m for m in result if match in m.categories]
        return _sorted(result, params)

    # ---- serialisation

    def _thumbnail(self, media: FakeMedia, *, relative: bool) -> str | None:
        if media.thumbnail_path is None:
            return None
        return media.thumbnail_path if relative else self.frontend_host + media.thumbnail_path

    def list_item(self, media: FakeMedia) -> dict[str, Any]:
        base = self.public_base
        return {
            "friendly_token": media.token,
            "url": f"{base}/view?m={media.token}",
            "api_url": f"{base}/api/v1/media/{media.token}",
            "user": media.user,
            "title": media.title,
            "description": media.description,
            "add_date": _iso(media.add_date, media.views),
            "views": media.views,
            "media_type": media.media_type,
            "state": media.state,
            "duration": media.duration,
            "thumbnail_url": self._thumbnail(media, relative=self.relative_thumbnails),
            "is_reviewed": media.is_reviewed,
            "preview_url": f"/media/original/thumbnails/user/{media.user}/{media.uid}.gif",
            "author_name": media.user.title(),
            "author_profile": f"/user/{media.user}/",
            "author_thumbnail": "/media/userlogos/user.jpg",
            "encoding_status": media.encoding_status,
            "likes": media.likes,
            "dislikes": 0,
            "reported_times": 0,
            "featured": False,
            "user_featured": False,
            "size": f"{(media.duration % 900) / 10 + 1:.1f}MB",
        }

    def search_item(self, media: FakeMedia) -> dict[str, Any]:
        base = self.public_base
        return {
            "title": media.title,
            "author_name": media.user.title(),
            "author_profile": f"/user/{media.user}/",
            "thumbnail_url": self._thumbnail(media, relative=self.relative_thumbnails),
            "add_date": _iso(media.add_date, media.views),
            "views": media.views,
            "description": media.description,
            "friendly_token": media.token,
            "duration": media.duration,
            "url": f"{base}/view?m={media.token}",
            "api_url": f"{base}/api/v1/media/{media.token}",
            "media_type": media.media_type,
            "preview_url": f"/media/original/thumbnails/user/{media.user}/{media.uid}.gif",
            "categories_info": self._categories_info(media),
        }

    def _categories_info(self, media: FakeMedia) -> list[dict[str, Any]]:
        return [{"title": t, "url": f"/search?c={quote(t)}", "is_lms_course": False} for t in media.categories]

    def detail(self, media: FakeMedia) -> dict[str, Any]:
        item = self.list_item(media)
        del item["friendly_token"], item["api_url"]
        item["thumbnail_url"] = self._thumbnail(media, relative=True)  # asset URLs are site-relative
        item.update({
            "categories_info": self._categories_info(media),
            "tags_info": [],
            "hls_info": {} if media.encoding_status != "success" else {
                "master_file": f"/media/hls/{media.uid}/master.m3u8",
            },
            "encodings_info": {"720": {"h264": {"status": media.encoding_status, "progress": 100}}},
            "poster_url": f"/media/original/thumbnails/user/{media.user}/{media.uid}_poster.jpg",
            "original_media_url": f"/media/original/user/{media.user}/{media.uid}.mp4",
        })
        return item

    def _fragment(self, kind: str, media: FakeMedia) -> bytes:
        key = (kind, media.token)
        cached = self._fragment_cache.get(key)
        if cached is None:
            body = self.list_item(media) if kind == "list" else self.search_item(media)
            cached = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
            self._fragment_cache[key] = cached
        return cached

    def page_body(self, path: str, query: list[tuple[str, str]], items: list[FakeMedia], page: int, kind: str,
                  *, tags: bool) -> bytes:
        count = len(items)
        start = (page - 1) * PAGE_SIZE
        chunk = items[start:start + PAGE_SIZE]
        last_page = max(1, -(-count // PAGE_SIZE))
        nxt = self._page_link(path, query, page + 1) if page < last_page else None
        prev = self._page_link(path, query, page - 1) if page > 1 else None
        head = {"count": count, "next": nxt, "previous": prev}
        parts = [json.dumps(head, separators=(",", ":"))[:-1].encode(), b',"results":[',
                 b",".join(self._fragment(kind, m) for m in chunk), b"]"]
        if tags:
            parts.append(b',"tags":""')
        parts.append(b"}")
        return b"".join(parts)

    def _page_link(self, path: str, query: list[tuple[str, str]], page: int) -> str:
        # DRF builds links from request.build_absolute_uri(): the host and scheme the server sees.
        rest = [(k, v) for k, v in query if k != "page"]
        if page > 1:
            rest.append(("page", str(page)))
        qs = urlencode(rest)
        return f"{self.public_base}{path}" + (f"?{qs}" if qs else "")


def _sorted(items: list[FakeMedia], params: dict[str, str]) -> list[FakeMedia]:
    sort_by = params.get("sort_by", "").strip()
    if sort_by not in ("title", "add_date", "edit_date", "views", "likes"):
        sort_by = "add_date"
    attr = "add_date" if sort_by == "edit_date" else sort_by
    descending = params.get("ordering", "").strip() != "asc"
    return sorted(items, key=lambda m: getattr(m, attr), reverse=descending)


def _iso(moment: datetime, salt: int) -> str:
    # The server's own time zone and optional microseconds, as MediaCMS prints them.
    if salt % 3 == 0:
        return moment.isoformat().replace("+00:00", "Z")
    return moment.astimezone(timezone(timedelta(hours=1))).isoformat()


# --------------------------------------------------------------------------------------------- handler


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    tls: ssl.SSLContext | None = None
    connections = 0  # TCP connections accepted

    def get_request(self) -> tuple[Any, Any]:
        sock, address = self.socket.accept()
        self.connections += 1
        if self.tls is not None:  # handshake on the first read, in the handler thread, not here
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out and hung up (the "slow" fault) is expected, not an error to print.
        pass


def _make_handler(server: FakeMediaCMS) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body leave in one go, no 40 ms delayed-ACK stalls
        server_version = "nginx"
        sys_version = ""

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

        # ---- plumbing

        def _send(self, status: int, body: bytes, content_type: str = "application/json",
                  headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Vary", "Accept, Cookie")
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, payload: Any) -> None:
            self._send(status, json.dumps(payload, ensure_ascii=False).encode())

        def _html(self, status: int, text: str, headers: dict[str, str] | None = None) -> None:
            body = f"<!DOCTYPE html><html><head><title>{text}</title></head><body><h1>{text}</h1></body></html>"
            self._send(status, body.encode(), "text/html; charset=utf-8", headers)

        def _endpoint(self, path: str) -> str:
            trimmed = path.rstrip("/")
            if trimmed.startswith("/api/v1/media/") and trimmed.count("/") == 4:
                return "media_detail"
            return {
                "/api/v1/media": "media", "/api/v1/search": "search", "/api/v1/manage_media": "manage_media",
                "/api/v1/categories": "categories", "/api/v1/whoami": "whoami", "/api/v1/login": "login",
            }.get(trimmed, "other")

        def _auth(self) -> tuple[str, str | None, bool]:
            """(kind, user, valid)."""
            header = self.headers.get("Authorization", "")
            scheme, _, value = header.partition(" ")
            value = value.strip()
            if not header:
                return "none", None, True
            if scheme.lower() == "token":
                for name, (_role, _pw, token) in USERS.items():
                    if value == token:
                        return "token", name, True
                return "invalid", None, False
            if scheme.lower() == "basic":
                try:
                    name, _, password = base64.b64decode(value).decode().partition(":")
                except (ValueError, UnicodeDecodeError):
                    return "invalid", None, False
                if name in USERS and USERS[name][1] == password:
                    return "basic", name, True
                return "invalid", None, False
            return "bearer", None, True  # any other scheme (Bearer) is silently ignored: anonymous

        # ---- dispatch

        def _handle(self, method: str) -> None:
            parts = urlsplit(self.path)
            path = parts.path
            query_list = parse_qsl(parts.query, keep_blank_values=True)
            query = dict(query_list)
            endpoint = self._endpoint(path)
            auth_kind, user, valid = self._auth()
            if method == "POST":
                length = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
            else:
                form = {}
            with server.lock:
                server.counts[endpoint] += 1
                record = RequestRecord(method, path, query, 0, auth_kind, self.headers.get("Accept", ""))
                server.log.append(record)
                fault = next((f for f in server.faults if f.times > 0 and f.matches(path, query)), None)
                if fault is not None and fault.skip > 0:
                    fault.skip -= 1
                    fault = None
                elif fault is not None:
                    fault.times -= 1
            if server.latency:
                time.sleep(server.latency)
            status = self._dispatch(method, path, query_list, query, endpoint, user, valid, form, fault)
            record.status = status

        def _dispatch(self, method: str, path: str, query_list: list[tuple[str, str]], query: dict[str, str],
                      endpoint: str, user: str | None, valid: bool, form: dict[str, str],
                      fault: Fault | None) -> int:
            if fault is not None:
                if fault.kind == "slow":
                    time.sleep(fault.delay)
                elif fault.kind == "status":
                    headers = {"Retry-After": fault.retry_after} if fault.retry_after else None
                    if fault.body is not None:
                        self._send(fault.status, json.dumps(fault.body).encode(), headers=headers)
                    else:
                        self._html(fault.status, f"{fault.status} Bad Gateway", headers)
                    return fault.status
                elif fault.kind == "html":
                    self._html(200, "Welcome to our portal")
                    return 200
                elif fault.kind == "malformed":
                    self._send(200, b'{"count": 12, "next": null, "results": [{"friendly_token": "abc')
                    return 200
                elif fault.kind == "close":
                    self.close_connection = True
                    self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n{\"cou")
                    return 0
                elif fault.kind == "idle_close":
                    # A keep-alive timeout on the server (or a proxy): a complete answer without
                    # "Connection: close", then the connection is gone before the client's next request.
                    self.close_connection = True
            if server.login_required:
                # django-global-login-required redirects before DRF authenticates: tokens do not help.
                target = quote(path + ("?" + urlencode(query_list) if query_list else ""), safe="")
                self._html(302, "Found", {"Location": f"/accounts/login/?next={target}"})
                return 302
            if not valid:
                self._json(403, {"detail": "Invalid token."})
                return 403
            if method == "POST":
                if endpoint != "login":
                    self._json(405, {"detail": f'Method "{method}" not allowed.'})
                    return 405
                return self._login(form)
            if endpoint == "media":
                return self._listing(path, query_list, query, "media", user, kind="list", tags=True)
            if endpoint == "search":
                if not any(query.get(k, "").strip() for k in ("q", "c", "t")):
                    self._json(200, {})
                    return 200
                return self._listing(path, query_list, query, "search", user, kind="search", tags=False)
            if endpoint == "manage_media":
                if user is None:
                    self._json(403, {"detail": "Authentication credentials were not provided."})
                    return 403
                if USERS[user][0] not in ("editor", "manager"):
                    self._json(403, {"detail": "You do not have permission to perform this action."})
                    return 403
                return self._listing(path, query_list, query, "manage", user, kind="list", tags=False)
            if endpoint == "media_detail":
                return self._detail(path.rstrip("/").rsplit("/", 1)[1], user)
            if endpoint == "categories":
                with server.lock:
                    body = [self._category(c) for c in sorted(server.catalog.categories, key=lambda c: c.title)]
                self._json(200, body)
                return 200
            if endpoint == "whoami":
                if user is None:
                    self._json(403, {"detail": "Authentication credentials were not provided."})
                    return 403
                role = USERS[user][0]
                self._json(200, {"username": user, "name": user.title(), "is_editor": role != "user",
                                 "is_manager": role == "manager", "email": f"{user}@example.org"})
                return 200
            self._html(404, "Not Found")
            return 404

        def _category(self, category: FakeCategory) -> dict[str, Any]:
            count = sum(1 for m in server.catalog.items if m.listable and category.title in m.categories)
            return {"title": category.title, "uid": category.uid, "description": category.description,
                    "is_global": category.is_global, "media_count": count, "user": category.user,
                    "thumbnail_url": f"{server.frontend_host}/media/categories/{category.uid}.jpg",
                    "is_lms_course": False}

        def _login(self, form: dict[str, str]) -> int:
            name, password = form.get("username", ""), form.get("password", "")
            if name in USERS and USERS[name][1] == password:
                self._json(200, {"email": f"{name}@example.org", "username": name, "token": USERS[name][2]})
                return 200
            self._json(400, {"detail": "Incorrect username or password."})
            return 400

        def _listing(self, path: str, query_list: list[tuple[str, str]], query: dict[str, str], view: str,
                     user: str | None, *, kind: str, tags: bool) -> int:
            raw_page = query.get("page", "1")
            filters = {k: v for k, v in query.items() if k not in ("page", "page_size")}
            with server.lock:
                items = server._visible(view, user, filters)
                count = len(items)
                try:
                    page = int(raw_page)
                except ValueError:
                    page = 0
                if page < 1 or (page - 1) * PAGE_SIZE >= max(count, 1):
                    body = None
                else:
                    body = server.page_body(path, query_list, items, page, kind, tags=tags)
                    for hook in server.hooks:
                        if not hook.done and path.rstrip("/") == hook.path.rstrip("/") and page == hook.page:
                            hook.done = True
                            hook.action(server.catalog)
                            server._invalidate()
            if body is None:
                self._json(404, {"detail": "Invalid page."})
                return 404
            self._send(200, body)
            return 200

        def _detail(self, token: str, user: str | None) -> int:
            with server.lock:
                media = server._find(token)
                if media is None or (media.state == "private" and user is None):
                    body, status = {"detail": "media file does not exist"}, 400
                elif media.state == "private" and user not in media.shared_with and \
                        USERS[user][0] == "user" and media.user != user:
                    body, status = {"detail": "media is private"}, 401
                else:
                    pool = [m for m in server.catalog.items[:500] if m.listable]
                    related = random.Random().sample(pool, min(100, len(pool)))  # different every call
                    head = json.dumps(server.detail(media), ensure_ascii=False).encode()
                    related_json = b",".join(server._fragment("list", m) for m in related)
                    self._send(200, head[:-1] + b',"related_media":[' + related_json + b"]}")
                    return 200
            self._json(status, body)
            return status

    return Handler


def move_to_front(token: str) -> Callable[[FakeCatalog], None]:
    """A catalog edit that bumps one item to newest (e.g. re-published), shifting everything before it."""

    def action(catalog: FakeCatalog) -> None:
        item = next(m for m in catalog.items if m.token == token)
        catalog.items.remove(item)
        item.add_date = catalog.items[0].add_date + timedelta(seconds=1)
        catalog.items.insert(0, item)

    return action


def delete_items(tokens: Iterator[str] | list[str]) -> Callable[[FakeCatalog], None]:
    doomed = set(tokens)

    def action(catalog: FakeCatalog) -> None:
        catalog.items[:] = [m for m in catalog.items if m.token not in doomed]

    return action


def main(argv: list[str] | None = None) -> None:
    """Serve a generated catalog until interrupted: ``python -m kryten_pipeline_tests.fake_mediacms 10000``."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("items", type=int)
    parser.add_argument("--categories", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--uncapped", action="store_true", help="pre-7.2 behaviour: no 1,000-row cap")
    parser.add_argument("--public-base", default=None, help="host the server believes it has (for next links)")
    args = parser.parse_args(argv)
    server = FakeMediaCMS(generate_catalog(args.items, args.categories, seed=args.seed), capped=not args.uncapped,
                          public_base=args.public_base, port=args.port)
    server.warm()
    print(f"MEDIACMS_URL={server.url}", flush=True)
    print(f"MEDIACMS_TOKEN={server.EDITOR_TOKEN}  # editor: complete catalog; user token: {server.USER_TOKEN}",
          flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server._httpd.serve_forever()


if __name__ == "__main__":
    main()
