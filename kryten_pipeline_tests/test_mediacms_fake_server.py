"""The fake MediaCMS behaves like the real API (reference/mediacms-api.md): checked with a plain HTTP client."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from kryten_pipeline_tests.fake_mediacms import LISTING_CAP, FakeMediaCMS, generate_catalog

CATALOG = generate_catalog(1_300, 6, seed=3)
CLIENT = httpx.Client(follow_redirects=False)  # one client: creating one per call costs ~0.1 s of TLS setup


@pytest.fixture(scope="module")
def server() -> Iterator[FakeMediaCMS]:
    with FakeMediaCMS(CATALOG, public_base="http://internal.invalid:8000") as fake:
        yield fake


def get(server: FakeMediaCMS, path: str, token: str | None = None, scheme: str = "Token",
        **params: str) -> httpx.Response:
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"{scheme} {token}"
    return CLIENT.get(server.url + path, params=params, headers=headers)


def test_media_listing_envelope_pages_and_links(server: FakeMediaCMS) -> None:
    first = get(server, "/api/v1/media", page_size="500").json()
    assert set(first) == {"count", "next", "previous", "results", "tags"}
    assert len(first["results"]) == 50  # page_size ignored
    assert first["next"] == "http://internal.invalid:8000/api/v1/media?page_size=500&page=2"
    assert first["previous"] is None
    second = get(server, "/api/v1/media", page="2").json()
    assert second["previous"] == "http://internal.invalid:8000/api/v1/media"
    dates = [r["add_date"] for r in first["results"]]
    assert len(dates) == 50 and "friendly_token" in first["results"][0]
    assert "categories_info" not in first["results"][0]


def test_listings_are_capped_and_past_the_end_is_404(server: FakeMediaCMS) -> None:
    listable = sum(1 for m in CATALOG.items if m.listable)
    assert listable > LISTING_CAP
    assert get(server, "/api/v1/media").json()["count"] == LISTING_CAP
    last = get(server, "/api/v1/media", page="20").json()
    assert last["next"] is None
    past = get(server, "/api/v1/media", page="21")
    assert past.status_code == 404 and past.json() == {"detail": "Invalid page."}


def test_manage_media_is_for_editors_and_uncapped(server: FakeMediaCMS) -> None:
    assert get(server, "/api/v1/manage_media").status_code == 403
    assert get(server, "/api/v1/manage_media", FakeMediaCMS.USER_TOKEN).status_code == 403
    body = get(server, "/api/v1/manage_media", FakeMediaCMS.EDITOR_TOKEN).json()
    assert body["count"] == len(CATALOG.items)
    filtered = get(server, "/api/v1/manage_media", FakeMediaCMS.MANAGER_TOKEN, state="private").json()
    assert 0 < filtered["count"] < len(CATALOG.items)


def test_categories_are_a_bare_sorted_array_without_ids(server: FakeMediaCMS) -> None:
    body = get(server, "/api/v1/categories").json()
    assert isinstance(body, list)
    assert [c["title"] for c in body] == sorted(c.title for c in CATALOG.categories)
    assert "id" not in body[0] and {"title", "uid", "media_count"} <= set(body[0])


def test_search_is_a_case_sensitive_substring_match_with_categories_info(server: FakeMediaCMS) -> None:
    assert get(server, "/api/v1/search").json() == {}
    art = get(server, "/api/v1/search", c="Art").json()
    assert "tags" not in art
    titles = {c["title"] for r in art["results"] for c in r["categories_info"]}
    assert "Martial Arts" in titles  # "Art" is a substring of "Martial Arts"
    for needle in ("drama", "Drama"):
        expected = sum(1 for m in CATALOG.items if m.listable and any(needle in c for c in m.categories))
        assert get(server, "/api/v1/search", c=needle).json()["count"] == min(expected, LISTING_CAP)
    assert get(server, "/api/v1/search", c="drama").json()["count"] != get(server, "/api/v1/search", c="Drama").json()[
        "count"]


def test_detail_shape_and_errors(server: FakeMediaCMS) -> None:
    media = next(m for m in CATALOG.items if m.listable)
    body = get(server, f"/api/v1/media/{media.token}").json()
    assert "friendly_token" not in body and "api_url" not in body
    assert body["thumbnail_url"] is None or body["thumbnail_url"].startswith("/media/")
    assert "categories_info" in body and len(body["related_media"]) > 0
    missing = get(server, "/api/v1/media/NoSuchOne")
    assert missing.status_code == 400 and missing.json() == {"detail": "media file does not exist"}
    private = next(m for m in CATALOG.items if m.state == "private")
    assert get(server, f"/api/v1/media/{private.token}").status_code == 400


def test_authentication_rules(server: FakeMediaCMS) -> None:
    assert get(server, "/api/v1/media", "not-a-real-token").status_code == 403  # even on a public endpoint
    bearer = get(server, "/api/v1/manage_media", FakeMediaCMS.EDITOR_TOKEN, scheme="Bearer")
    assert bearer.status_code == 403  # Bearer is ignored: the caller is anonymous
    assert get(server, "/api/v1/whoami").status_code == 403
    assert get(server, "/api/v1/whoami", FakeMediaCMS.EDITOR_TOKEN).json()["username"] == "editor"
    login = CLIENT.post(server.url + "/api/v1/login", data={"username": "alice", "password": "alice-pass"})
    assert login.json()["token"] == FakeMediaCMS.USER_TOKEN
    shared = get(server, "/api/v1/media", FakeMediaCMS.USER_TOKEN).json()["results"]
    assert all(r["state"] in ("public", "private") for r in shared)


def test_unknown_path_is_an_html_404_and_requests_are_counted(server: FakeMediaCMS) -> None:
    server.reset_counts()
    answer = get(server, "/api/v1/nothing-here")
    assert answer.status_code == 404 and answer.headers["content-type"].startswith("text/html")
    get(server, "/api/v1/categories")
    assert server.counts == {"other": 1, "categories": 1}


def test_login_required_mode_redirects_every_api_call() -> None:
    with FakeMediaCMS(generate_catalog(10, 2), login_required=True) as fake:
        answer = get(fake, "/api/v1/media", FakeMediaCMS.EDITOR_TOKEN)
        assert answer.status_code == 302
        assert answer.headers["location"].startswith("/accounts/login/?next=")


def test_uncapped_mode_lists_everything() -> None:
    with FakeMediaCMS(CATALOG, capped=False) as fake:
        assert get(fake, "/api/v1/media").json()["count"] == sum(1 for m in CATALOG.items if m.listable)
