"""The MediaCMS API connector against the fake MediaCMS server (a real HTTP server on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import json
import math
import os
from pathlib import Path
from typing import Any

import pytest

from kryten_pipeline.catalog_item import CatalogConnector, CatalogItem
from kryten_pipeline.connectors.mediacms import MediaCMSConnector, PlayablePolicy
from kryten_pipeline.errors import ConfigurationError, SourceError
from kryten_pipeline.settings import Settings
from kryten_pipeline_tests.fake_mediacms import (
    LISTING_CAP,
    PAGE_SIZE,
    FakeCatalog,
    FakeMedia,
    FakeMediaCMS,
    delete_items,
    generate_catalog,
    move_to_front,
)

EDITOR = FakeMediaCMS.EDITOR_TOKEN


def collect(connector: MediaCMSConnector) -> list[CatalogItem]:
    async def run() -> list[CatalogItem]:
        return [item async for item in connector.iter_catalog_items()]

    return asyncio.run(run())


def connector_for(server: FakeMediaCMS, token: str | None = EDITOR, **kwargs: Any) -> MediaCMSConnector:
    kwargs.setdefault("backoff_base", 0.01)
    return MediaCMSConnector(server.url, token=token, **kwargs)


def assert_matches(items: list[CatalogItem], expected: dict[str, FakeMedia], server: FakeMediaCMS) -> None:
    got = {item.video_id: item for item in items}
    assert len(got) == len(items), "an item was yielded twice"
    assert set(got) == set(expected)
    for token, media in expected.items():
        item = got[token]
        assert item.title == media.title
        assert sorted(item.categories) == sorted(media.categories), token
        assert item.duration_seconds == media.duration
        assert item.thumbnail_url == (None if media.thumbnail_path is None
                                      else server.frontend_host + media.thumbnail_path)


def search_pages(catalog: FakeCatalog, *, capped: bool = True) -> int:
    """Pages a full walk of every category search needs (listable videos, as the default policy asks)."""
    total = 0
    for category in catalog.categories:
        needle = category.title.strip()
        size = sum(1 for m in catalog.items if m.listable and m.media_type == "video"
                   and any(needle in t for t in m.categories))
        total += max(1, math.ceil((min(size, LISTING_CAP) if capped else size) / PAGE_SIZE))
    return total


# --------------------------------------------------------------------------------------------- enumeration


def test_editor_token_reads_the_whole_catalog_through_manage_media() -> None:
    catalog = generate_catalog(2_600, 20, seed=1)
    with FakeMediaCMS(catalog) as server:
        connector = connector_for(server)
        items = collect(connector)
        assert_matches(items, catalog.expected_playable(), server)
        assert connector.stats["endpoint"] == "manage_media" and connector.stats["editor"] is True
        assert server.counts["media"] == 0 and server.counts["media_detail"] == 0
        # N/50 listing pages + the category pages + a handful, never ~N.
        listing_pages = math.ceil(len(catalog.items) / PAGE_SIZE)
        assert server.counts["manage_media"] == listing_pages
        assert server.total_requests <= listing_pages + search_pages(catalog) + 5
        assert connector.stats["requests"] == server.total_requests
        assert connector.stats["items"] == len(items)
        assert {r.accept for r in server.log} == {"application/json"}
        assert not any(r.status == 404 for r in server.log)  # never a page past the end
        assert isinstance(connector, CatalogConnector)
        json.dumps(connector.stats)  # JSON-serialisable


def test_no_page_body_waits_for_the_garbage_collector() -> None:
    """httpx leaves each response in a reference cycle; the connector reads bodies so that no response caches one
    (at 100k items those cached bodies were ~59 MB waiting for a collection, README "Benchmarks")."""
    import gc

    import httpx

    catalog = generate_catalog(600, 5, seed=3)
    with FakeMediaCMS(catalog) as server:
        gc.collect()
        gc.disable()
        try:
            items = collect(connector_for(server))
            responses = [o for o in gc.get_objects() if isinstance(o, httpx.Response)]
            assert len(responses) >= server.total_requests > 10  # the cycles are there, uncollected
            for response in responses:
                with pytest.raises(httpx.ResponseNotRead):
                    response.content  # noqa: B018 - the body was never cached on the response
        finally:
            gc.enable()
        assert_matches(items, catalog.expected_playable(), server)


def test_listed_items_wait_on_disk_not_in_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Until every category is known the connector holds each listed item's token, not its values: those wait in a
    temporary file and come back a batch at a time (at 100k items they were 40 MB of strings, README
    "Benchmarks"). Measured with tracemalloc over the connector's own allocations, at the first item it yields,
    with titles large enough to stand out: all of them held would be ``title_bytes``."""
    import tracemalloc

    from kryten_pipeline.connectors import mediacms

    monkeypatch.setattr(mediacms, "LISTING_SPILL_ROWS", 20)
    catalog = generate_catalog(1000, 5, seed=4)
    for media in catalog.items:
        media.title = f"{media.token} " + "x" * 16_000
    title_bytes = sum(len(media.title) for media in catalog.expected_playable().values())
    held: list[int] = []

    async def run() -> list[CatalogItem]:
        items = []
        async for item in connector_for(server).iter_catalog_items():
            if not items:
                own = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, "*/kryten_pipeline/*")])
                held.append(sum(stat.size for stat in own.statistics("filename")))
            items.append(item)
        return items

    with FakeMediaCMS(catalog) as server:
        tracemalloc.start()
        try:
            items = asyncio.run(run())
        finally:
            tracemalloc.stop()
        assert_matches(items, catalog.expected_playable(), server)
    assert title_bytes > 10_000_000
    assert held[0] < title_bytes / 5, (held[0], title_bytes)


def test_a_failed_walk_leaves_no_listing_file_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The listing's temporary file is closed as soon as the walk fails, not when the connector is collected."""
    from kryten_pipeline.connectors import mediacms

    monkeypatch.setattr(mediacms, "LISTING_SPILL_ROWS", 20)  # on disk from the first pages on
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    catalog = generate_catalog(900, 4, seed=9)

    def open_in_tmp() -> list[str]:
        """This process's open files in the temporary directory (an anonymous one reads '<dir>/#123 (deleted)')."""
        links = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                links.append(os.readlink(f"/proc/self/fd/{fd}"))
            except FileNotFoundError:  # closed meanwhile, e.g. the directory listing's own descriptor
                continue
        return [link for link in links if link.startswith(str(tmp_path))]

    with FakeMediaCMS(catalog) as server:
        server.after_page("/api/v1/manage_media", 2, delete_items([m.token for m in catalog.items[:40]]))
        connector = connector_for(server)
        with pytest.raises(SourceError, match="changed while it was read"):
            collect(connector)
        assert open_in_tmp() == []
        collect(connector_for(server))  # the same directory serves the next refresh
        assert open_in_tmp() == []


def test_anonymous_small_catalog_uses_media_and_never_asks_manage_media() -> None:
    catalog = generate_catalog(700, 20, seed=2)
    with FakeMediaCMS(catalog) as server:
        connector = connector_for(server, token=None)
        assert_matches(collect(connector), catalog.expected_playable(), server)
        assert connector.stats["endpoint"] == "media" and connector.stats["auth"] == "anonymous"
        assert server.counts["manage_media"] == 0 and server.counts["whoami"] == 0
        assert server.counts["media"] == math.ceil(sum(1 for m in catalog.items if m.listable) / PAGE_SIZE)


@pytest.mark.parametrize("token", [None, FakeMediaCMS.USER_TOKEN])
def test_capped_listing_without_an_editor_token_fails_instead_of_truncating(token: str | None) -> None:
    catalog = generate_catalog(1_500, 5, seed=3)
    with FakeMediaCMS(catalog) as server:
        connector = connector_for(server, token=token)
        yielded: list[CatalogItem] = []

        async def run() -> None:
            async for item in connector.iter_catalog_items():
                yielded.append(item)

        with pytest.raises(SourceError) as caught:
            asyncio.run(run())
        assert caught.value.setting == "MEDIACMS_TOKEN"
        assert "editor" in str(caught.value) and "1000" in str(caught.value)
        assert yielded == []  # nothing reaches the consumer before the failure
        assert server.counts["media"] == LISTING_CAP // PAGE_SIZE  # stopped on next: null, no page past the end
        assert not any(r.status == 404 for r in server.log)


def test_pre_7_2_server_without_the_cap_is_read_whole_anonymously() -> None:
    catalog = generate_catalog(2_600, 20, seed=4)
    with FakeMediaCMS(catalog, capped=False) as server:
        connector = connector_for(server, token=None)
        assert_matches(collect(connector), catalog.expected_playable(), server)
        assert connector.stats["detail_calls"] == 0 and connector.stats["capped_categories"] == 0
        listing = math.ceil(sum(1 for m in catalog.items if m.listable) / PAGE_SIZE)
        assert server.total_requests <= listing + search_pages(catalog, capped=False) + 2


def test_next_links_from_an_internal_host_are_rebased() -> None:
    catalog = generate_catalog(400, 4, seed=5)
    with FakeMediaCMS(catalog, public_base="http://backend.internal:8000") as server:
        connector = connector_for(server)
        assert_matches(collect(connector), catalog.expected_playable(), server)
        assert connector.stats["rebased_links"] > 0


def test_api_root_in_the_url_is_accepted_and_credentials_in_it_are_hidden() -> None:
    catalog = generate_catalog(120, 3, seed=6)
    with FakeMediaCMS(catalog) as server:
        url = server.url.replace("http://", "http://alice:alice-pass@") + "/api/v1/"
        connector = MediaCMSConnector(url)
        assert "alice-pass" not in connector.label and connector.label == f"mediacms:{server.url}"
        collect(connector)
        assert connector.stats["auth"] == "login"


def test_an_item_moving_to_the_top_during_the_walk_is_recovered() -> None:
    catalog = generate_catalog(600, 4, seed=7)
    mover = catalog.items[400]
    with FakeMediaCMS(catalog) as server:
        server.after_page("/api/v1/manage_media", 2, move_to_front(mover.token))
        connector = connector_for(server)
        items = collect(connector)
        assert mover.token in {i.video_id for i in items}
        assert_matches(items, catalog.expected_playable(), server)
        assert connector.stats["recovered_items"] >= 1 and connector.stats["duplicates"] >= 1


def test_a_small_drift_is_tolerated() -> None:
    catalog = generate_catalog(600, 4, seed=8)
    with FakeMediaCMS(catalog) as server:
        server.after_page("/api/v1/manage_media", 3, delete_items([catalog.items[5].token]))
        connector = connector_for(server)
        collect(connector)
        assert connector.stats["count_drift"] == 1


def test_many_items_disappearing_during_the_walk_fail_the_run() -> None:
    catalog = generate_catalog(900, 4, seed=9)
    with FakeMediaCMS(catalog) as server:
        server.after_page("/api/v1/manage_media", 2, delete_items([m.token for m in catalog.items[:40]]))
        connector = connector_for(server)
        with pytest.raises(SourceError, match="changed while it was read"):
            collect(connector)


# --------------------------------------------------------------------------------------------- categories


def test_categories_are_exact_titles_despite_the_substring_search() -> None:
    catalog = generate_catalog(1_200, 20, seed=10)
    with FakeMediaCMS(catalog) as server:
        items = {i.video_id: i for i in collect(connector_for(server))}
    by_token = catalog.by_token()
    martial_only = [t for t, i in items.items() if "Martial Arts" in by_token[t].categories
                    and "Art" not in by_token[t].categories]
    assert martial_only and all("Art" not in items[t].categories for t in martial_only)
    docudrama_only = [t for t, i in items.items() if by_token[t].categories == ["Docudrama"]]
    assert docudrama_only and all(items[t].categories == ["Docudrama"] for t in docudrama_only)
    leading = [t for t in items if " Leading Space" in by_token[t].categories]
    assert leading and all(" Leading Space" in items[t].categories for t in leading)
    several = [i for i in items.values() if len(i.categories) == 3]
    assert several, "items keep all their categories"
    odd = {'Tom "&" Jerry\'s <Picks>', "日本語のアニメ", "Rock & Roll", "Sci-Fi/Fantasy"}
    assert odd <= {c for i in items.values() for c in i.categories}


def _big_category_catalog(seed: int) -> FakeCatalog:
    # Three categories ("Art", "Martial Arts", "Docudrama"): "Art" has > 1,000 members and is a substring of
    # "Martial Arts", the hardest case for the capped search.
    catalog = generate_catalog(3_000, 3, seed=seed)
    assert sum(1 for m in catalog.items if m.listable and "Art" in m.categories) > LISTING_CAP
    return catalog


def test_capped_categories_are_completed_from_manage_media_with_few_detail_calls() -> None:
    catalog = _big_category_catalog(11)
    with FakeMediaCMS(catalog) as server:
        connector = connector_for(server)
        assert_matches(collect(connector), catalog.expected_playable(), server)
        assert connector.stats["capped_categories"] >= 1
        assert connector.stats["manage_category_filter"] == "honoured"
        assert connector.stats["detail_calls"] == server.counts["media_detail"]
        assert server.counts["media_detail"] < len(catalog.items) / 20
        assert server.total_requests < len(catalog.items) / 5


def test_a_category_uid_filter_gives_exact_lists_and_no_detail_calls() -> None:
    catalog = _big_category_catalog(12)
    with FakeMediaCMS(catalog, manage_category_filter="uid") as server:
        connector = connector_for(server)
        assert_matches(collect(connector), catalog.expected_playable(), server)
        assert connector.stats["detail_calls"] == 0
        art_uid = next(c.uid for c in catalog.categories if c.title == "Art")
        assert any(r.query.get("category") == art_uid for r in server.log)


def test_a_server_ignoring_the_category_filter_is_detected() -> None:
    catalog = _big_category_catalog(13)
    with FakeMediaCMS(catalog, manage_category_filter="ignored") as server:
        connector = connector_for(server)
        assert_matches(collect(connector), catalog.expected_playable(), server)
        assert connector.stats["manage_category_filter"] == "ignored"


def test_without_an_editor_token_capped_categories_use_other_orders_then_details() -> None:
    # Latest releases leave anonymous /media uncapped but cap /search: no /manage_media to fall back on.
    catalog = _big_category_catalog(14)
    with FakeMediaCMS(catalog, capped_media=False) as server:
        connector = connector_for(server, token=None)
        assert_matches(collect(connector), catalog.expected_playable(), server)
        assert connector.stats["window_pages"] > 0
        assert connector.stats["detail_calls"] == server.counts["media_detail"]
        uncategorised = sum(1 for m in catalog.expected_playable().values() if not m.categories)
        # Detail calls only for items no listing could place (uncategorised items cannot be found by search).
        assert server.counts["media_detail"] <= uncategorised + len(catalog.items) / 10


def test_an_item_deleted_before_its_detail_call_is_rejected_not_fatal() -> None:
    catalog = _big_category_catalog(15)
    with FakeMediaCMS(catalog, capped_media=False) as server:
        victim = next(m for m in catalog.expected_playable().values() if not m.categories)
        last_page = math.ceil(sum(1 for m in catalog.items if m.listable) / PAGE_SIZE)
        server.after_page("/api/v1/media", last_page, delete_items([victim.token]))
        connector = connector_for(server, token=None)
        items = collect(connector)
        assert victim.token not in {i.video_id for i in items}
        assert any(victim.token in r.reason for r in connector.source_rejects)


# --------------------------------------------------------------------------------------------- policy


def test_default_policy_excludes_everything_not_listable_video() -> None:
    catalog = generate_catalog(1_500, 6, seed=16)
    with FakeMediaCMS(catalog) as server:
        connector = connector_for(server)
        items = collect(connector)
    assert {i.video_id for i in items} == set(catalog.expected_playable())
    excluded = connector.stats["excluded"]
    assert sum(excluded.values()) == connector.stats["excluded_total"] == len(catalog.items) - len(items)
    assert {"state:private", "state:unlisted", "is_reviewed:false", "media_type:audio"} <= set(excluded)
    assert any(k.startswith("encoding_status:") for k in excluded)


def test_a_wider_policy_includes_private_and_audio_with_their_categories() -> None:
    catalog = generate_catalog(1_500, 6, seed=17)
    policy = PlayablePolicy.parse("listable, private, unlisted, audio")
    with FakeMediaCMS(catalog) as server:
        connector = connector_for(server, policy=policy)
        items = collect(connector)

        def keep(m: FakeMedia) -> bool:
            return (m.media_type in ("video", "audio") and m.state in ("public", "private", "unlisted")
                    and m.is_reviewed and m.encoding_status == "success")

        assert_matches(items, catalog.expected_playable(include=keep), server)
        assert any(catalog.by_token()[i.video_id].state == "private" and i.categories for i in items)


def test_policy_words_are_validated() -> None:
    assert PlayablePolicy.parse("all").require_reviewed is False
    assert PlayablePolicy.parse(None) == PlayablePolicy()
    with pytest.raises(ConfigurationError) as caught:
        PlayablePolicy.parse("listable,everything")
    assert caught.value.setting == "MEDIACMS_PLAYABLE"


def test_relative_thumbnails_are_made_absolute_against_the_base_url() -> None:
    catalog = generate_catalog(200, 3, seed=18)
    with FakeMediaCMS(catalog, relative_thumbnails=True) as server:
        items = collect(connector_for(server))
        with_thumbnail = [i for i in items if i.thumbnail_url]
        assert with_thumbnail and all(i.thumbnail_url.startswith(server.url + "/media/") for i in with_thumbnail)


# --------------------------------------------------------------------------------------------- wiring


def test_progress_is_reported_with_stats_snapshots() -> None:
    catalog = generate_catalog(3_000, 5, seed=19)
    snapshots: list[dict[str, Any]] = []
    with FakeMediaCMS(catalog) as server:
        connector = connector_for(server, progress=snapshots.append)
        items = collect(connector)
    assert len(snapshots) >= 2
    assert snapshots[0]["pages"] < snapshots[-1]["pages"]
    assert snapshots[-1]["items"] == len(items) and snapshots[-1]["wall_time_s"] > 0
    for snapshot in snapshots:
        json.dumps(snapshot)


def test_from_settings_and_no_secret_anywhere() -> None:
    catalog = generate_catalog(150, 3, seed=20)
    with FakeMediaCMS(catalog) as server:
        settings = Settings.from_env({"MEDIACMS_URL": server.url, "MEDIACMS_TOKEN": EDITOR,
                                      "MEDIACMS_PLAYABLE": "listable,audio", "MEDIACMS_CONCURRENCY": "2"})
        connector = MediaCMSConnector.from_settings(settings)
        assert connector.concurrency == 2 and "audio" in connector.policy.media_types
        collect(connector)
        assert EDITOR not in connector.label and EDITOR not in json.dumps(connector.stats)
    with pytest.raises(ConfigurationError) as caught:
        MediaCMSConnector.from_settings(Settings.from_env({}))
    assert caught.value.setting == "MEDIACMS_URL"
    with pytest.raises(ConfigurationError):
        MediaCMSConnector("media.example.org")


def test_login_with_username_and_password() -> None:
    catalog = generate_catalog(150, 3, seed=21)
    with FakeMediaCMS(catalog) as server:
        connector = MediaCMSConnector(server.url, username="editor", password="editor-pass")
        assert_matches(collect(connector), catalog.expected_playable(), server)
        assert connector.stats["auth"] == "login" and connector.stats["endpoint"] == "manage_media"
        assert all(r.authorization == "token" for r in server.log if r.path != "/api/v1/login")
        bad = MediaCMSConnector(server.url, username="editor", password="wrong-secret")
        with pytest.raises(ConfigurationError) as caught:
            collect(bad)
        assert caught.value.setting == "MEDIACMS_PASSWORD" and "wrong-secret" not in str(caught.value)


def test_basic_auth_when_the_release_has_no_login_endpoint() -> None:
    catalog = generate_catalog(150, 3, seed=22)
    with FakeMediaCMS(catalog) as server:
        server.inject("status", path="/api/v1/login", status=404)
        connector = MediaCMSConnector(server.url, username="editor", password="editor-pass")
        assert_matches(collect(connector), catalog.expected_playable(), server)
        assert connector.stats["auth"] == "basic"
        assert any(r.authorization == "basic" for r in server.log)
