"""Snapshot diffs are exact; search ranks, filters, escapes user input and finds file-name titles."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kryten_pipeline.snapshot.build import build_snapshot_db
from kryten_pipeline.snapshot.diff import diff_snapshot_files
from kryten_pipeline.snapshot.files import install_snapshot, live_db_path, read_snapshot_meta
from kryten_pipeline.snapshot.search import build_match_query, search_catalog
from kryten_pipeline.snapshot.titles import readable_title

CATALOG: list[tuple[Any, ...]] = [
    ("bhd2001", "Black.Hawk.Down.[2001].mp4", ["Film", "War"], 8640),
    ("cbebop1", "Cowboy Bebop — Asteroid Blues", ["Anime"], 1440),
    ("cbebop2", "Cowboy Bebop — Stray Dog Strut", ["Anime", "Jazz"], 1440),
    ("cowboys", "Cowboys & Aliens", ["Film"], 7080),
    ("bebopjz", "Bebop Jazz Essentials", ["Jazz", "Music"], 3600),
    ("andornt", "AND OR NOT: Logic (NEAR) \"quoted\" *star* -minus", ["Science"], 600),
    ("cafe001", "Café Society", ["Film"], None),
    ("tokyo01", "東京の夜 Tokyo Nights", ["Music"], 2400),
    ("camel01", "TheDeepBlueSea", ["Nature"], 3000),
]


def rows(catalog: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return [(vid, title, cats, dur, None, f"https://m.example/api/v1/media/cytube/{vid}.json?format=json")
            for vid, title, cats, dur in catalog]


def install(tmp_path: Path, snapshot_id: str, catalog: list[tuple[Any, ...]]) -> Path:
    live = live_db_path(tmp_path, "default")
    built = build_snapshot_db(rows(catalog), data_dir=tmp_path, namespace="default", snapshot_id=snapshot_id,
                              created_at="2025-12-18T00:00:00Z", source="test", compare_with=live)
    install_snapshot(built, data_dir=tmp_path, keep=5)
    return live


def ids(hits: list[Any]) -> list[str]:
    return [hit.video_id for hit in hits]


def test_readable_title() -> None:
    assert readable_title("Black.Hawk.Down.[2001].mp4") == "Black Hawk Down 2001"
    assert readable_title("TheDeepBlueSea") == "The Deep Blue Sea"
    assert readable_title("Cowboy Bebop") == ""


def test_search_ranks_filters_and_finds_file_names(tmp_path: Path) -> None:
    live = install(tmp_path, "20251218T000000Z-aaaaaa", CATALOG)
    assert read_snapshot_meta(live)["snapshot_id"] == "20251218T000000Z-aaaaaa"
    assert ids(search_catalog(live, "black hawk down 2001")) == ["bhd2001"]
    assert search_catalog(live, "black hawk down 2001")[0].title == "Black.Hawk.Down.[2001].mp4"  # unchanged
    assert ids(search_catalog(live, "deep blue sea")) == ["camel01"]
    # Both words in the title beat one word in the title; a category match ranks after title matches.
    assert ids(search_catalog(live, "cowboy bebop")) == ["cbebop1", "cbebop2"]
    bebop = ids(search_catalog(live, "bebop"))
    assert set(bebop) == {"cbebop1", "cbebop2", "bebopjz"}
    assert ids(search_catalog(live, "jazz"))[0] == "bebopjz"  # title match first, then category matches
    # Prefix on the last word, phrases, diacritics folded, CJK.
    assert set(ids(search_catalog(live, "cowb"))) == {"cbebop1", "cbebop2", "cowboys"}
    assert ids(search_catalog(live, '"stray dog"')) == ["cbebop2"]
    assert ids(search_catalog(live, '"dog stray"')) == []
    assert ids(search_catalog(live, "cafe")) == ["cafe001"]
    assert ids(search_catalog(live, "tokyo nights")) == ["tokyo01"]
    # Operators and punctuation are text, never FTS5 syntax.
    assert ids(search_catalog(live, "AND OR NOT")) == ["andornt"]
    assert ids(search_catalog(live, 'NEAR( "quoted" *star* -minus')) == ["andornt"]
    assert search_catalog(live, '")(*') == []
    # Category filters; empty query + filters sorts by title.
    assert set(ids(search_catalog(live, "bebop", categories=["Jazz"]))) == {"cbebop2", "bebopjz"}
    assert ids(search_catalog(live, "", categories=["Film"])) == ["bhd2001", "cafe001", "cowboys"]
    assert ids(search_catalog(live, "", categories=["Film", "War"])) == ["bhd2001"]
    assert len(search_catalog(live, "", limit=3)) == 3


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=st.text(alphabet=st.characters(codec="utf-8"), max_size=40))
def test_fuzzed_queries_never_raise(tmp_path_factory: Any, query: str) -> None:
    live = _shared_db(tmp_path_factory)
    search_catalog(live, query, limit=5)
    search_catalog(live, query, categories=[query], limit=5)
    match = build_match_query(query)
    assert match is None or match.startswith('"')


_DB: dict[str, Path] = {}


def _shared_db(factory: Any) -> Path:
    if "db" not in _DB:
        _DB["db"] = install(factory.mktemp("search"), "20251218T000000Z-aaaaaa", CATALOG)
    return _DB["db"]


def test_diff_between_crafted_snapshots_is_exact(tmp_path: Path) -> None:
    old = [("a", "Alpha", ["x", "y"], 10), ("b", "Beta", ["x"], 20), ("c", "Gamma", [], None),
           ("d", "Delta", ["z"], 40), ("e", "Epsilon", ["y", "x"], 50)]
    new = [("a", "Alpha", ["y", "x"], 10),       # categories reordered: not a recategorisation
           ("b", "Beta (remastered)", ["x"], 21),  # retitled and re-timed
           ("c", "Gamma", ["w"], None),           # recategorised
           ("e", "Epsilon", ["y", "x"], 50),      # unchanged
           ("f", "Phi", [], 60)]                  # added; d removed
    first = install(tmp_path, "20251218T000000Z-aaaaaa", old)
    kept_old = tmp_path / "default" / "snapshots" / "20251218T000000Z-aaaaaa.sqlite3"
    install(tmp_path, "20251218T010000Z-bbbbbb", new)
    diff = diff_snapshot_files(kept_old, first)
    assert diff.counts == {"added": 1, "removed": 1, "retitled": 1, "recategorised": 1, "retimed": 1}
    assert diff.samples["retitled"] == [{"video_id": "b", "title": "Beta (remastered)", "before": "Beta",
                                         "after": "Beta (remastered)"}]
    assert diff.samples["retimed"][0]["before"] == 20 and diff.samples["retimed"][0]["after"] == 21
    assert [s["video_id"] for s in diff.samples["removed"]] == ["d"]
    assert diff.removed_ratio == 0.2 and diff.summary().startswith("+1 −1 items; 1 retitled, 1 recategorised")
    stored = json.loads(read_snapshot_meta(first)["diff_json"])
    assert stored["counts"] == diff.counts and stored["from_snapshot_id"] == "20251218T000000Z-aaaaaa"
