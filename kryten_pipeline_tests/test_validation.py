"""Validation: every rule gives a reason; thresholds guard against publishing a broken catalog."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from kryten_pipeline.catalog_item import CatalogItem, SourceReject
from kryten_pipeline.validation import VALIDATED_SCHEMA, check_thresholds, validate_items, write_rejects_file

BASE = "https://media.example.org"


def good(i: int, **overrides: object) -> CatalogItem:
    values: dict[str, object] = {
        "video_id": f"vid{i:05d}", "title": f"Title {i}", "categories": ["Music"], "duration_seconds": 60,
        "thumbnail_url": None,
    }
    values.update(overrides)
    return CatalogItem(**values)  # type: ignore[arg-type]


def reasons_for(item: CatalogItem) -> list[str]:
    result = validate_items([good(0), item], manifest_base=BASE)
    assert result.rejected_count == 1, result.rejects
    return result.rejects[0].reasons


def test_valid_items_pass_with_trimmed_titles_and_derived_manifests() -> None:
    result = validate_items(
        [
            good(1, title="  Spaced  ", categories=["A", " B ", "A", ""]),
            good(2, categories=None, duration_seconds=None),
        ],
        manifest_base=BASE,
    )
    assert result.rejected_count == 0 and result.total == 2
    frame = result.frame
    assert list(frame.columns) == ["video_id", "title", "categories", "duration_seconds", "thumbnail_url",
                                   "manifest_url"]
    assert frame.loc[0, "title"] == "Spaced"
    assert frame.loc[0, "categories"] == ["A", "B"]
    assert frame.loc[1, "categories"] == []
    assert pd.isna(frame.loc[1, "duration_seconds"])
    assert frame.loc[0, "manifest_url"] == f"{BASE}/api/v1/media/cytube/vid00001.json?format=json"
    VALIDATED_SCHEMA.validate(frame)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"video_id": None}, "video_id is missing"),
        ({"video_id": 42}, "video_id must be a string"),
        ({"video_id": "../etc/passwd"}, "video_id does not match"),
        ({"video_id": "x" * 65}, "video_id does not match"),
        ({"title": None}, "title is missing"),
        ({"title": "   "}, "title is empty after trimming"),
        ({"title": 5}, "title must be a string"),
        ({"title": "bad\x00title"}, "title contains control or bidi override characters"),
        ({"title": "evil\u202etxt.exe"}, "title contains control or bidi override characters"),
        ({"title": "two\nlines"}, "title contains control or bidi override characters"),
        ({"categories": ["ok", "nul\x00"]}, "a category contains control or bidi override characters"),
        ({"categories": ["\x1b[31mred"]}, "a category contains control or bidi override characters"),
        ({"categories": ["c\x851"]}, "a category contains control or bidi override characters"),
        ({"categories": ["x" * 5_000_000]}, "a category longer than 200 characters: 5000000"),
        ({"categories": [f"c{i}" for i in range(10_000)]}, "more than 100 categories: 10000"),
        ({"title": "x" * 1001}, "title longer than 1000"),
        ({"duration_seconds": -1}, "duration_seconds is negative"),
        ({"duration_seconds": "abc"}, "duration_seconds must be an integer"),
        ({"duration_seconds": "²"}, "duration_seconds must be an integer"),  # a digit to str.isdigit, not to int
        ({"duration_seconds": "٣"}, "duration_seconds must be an integer"),  # ASCII digits only
        ({"duration_seconds": 1.5}, "duration_seconds must be whole seconds"),
        ({"duration_seconds": float("nan")}, "duration_seconds must be whole seconds"),
        ({"duration_seconds": True}, "duration_seconds must be an integer"),
        ({"categories": "Music"}, "categories must be a list of strings"),
        ({"categories": ["ok", 3]}, "categories must be a list of strings"),
    ],
)
def test_each_rule_rejects_with_a_reason(overrides: dict[str, object], expected: str) -> None:
    reasons = reasons_for(good(1, **overrides))
    assert any(r.startswith(expected) for r in reasons), reasons


def test_a_reason_shows_the_value_as_python_writes_it() -> None:
    """pandera hands numpy scalars as failure cases when a column's are all numbers; the reason shows -5, never
    np.int64(-5) — and so reads the same whichever batch the row falls in."""
    assert reasons_for(good(1, duration_seconds=-5)) == ["duration_seconds is negative: -5"]


def test_duplicates_keep_the_first_occurrence() -> None:
    result = validate_items([good(1, title="first"), good(2), good(1, title="second")], manifest_base=BASE)
    assert list(result.frame["video_id"]) == ["vid00001", "vid00002"]
    assert result.frame.loc[0, "title"] == "first"
    assert result.rejects[0].row == 3
    assert result.rejects[0].reasons[0].startswith("duplicate video_id")


def test_integral_float_and_digit_string_durations_are_accepted() -> None:
    result = validate_items([good(1, duration_seconds=12.0), good(2, duration_seconds="34")], manifest_base=BASE)
    assert list(result.frame["duration_seconds"]) == [12, 34]


def test_source_rejects_are_counted_and_reasons_grouped() -> None:
    result = validate_items(
        [good(1), good(2, video_id="a b"), good(3, video_id="c d")],
        manifest_base=BASE,
        source_rejects=[SourceReject("{", "line 9: invalid JSON: Expecting value")],
    )
    assert result.total == 4 and result.rejected_count == 3
    top = dict(result.top_reasons())
    assert top["video_id does not match [A-Za-z0-9_-]{1,64}"] == 2
    assert top["invalid JSON"] == 1


def test_thresholds() -> None:
    items = [good(i) for i in range(95)] + [good(100 + i, video_id=None) for i in range(5)]
    result = validate_items(items, manifest_base=BASE)
    ok = check_thresholds(result, live_item_count=None, max_reject_ratio=0.05, min_count_ratio=0.5)
    assert ok.passed and result.reject_ratio == pytest.approx(0.05)
    too_strict = check_thresholds(result, live_item_count=None, max_reject_ratio=0.04, min_count_ratio=0.5)
    assert not too_strict.passed and "KRYTEN_MAX_REJECT_RATIO" in too_strict.problems[0]
    collapsed = check_thresholds(result, live_item_count=200, max_reject_ratio=0.05, min_count_ratio=0.5)
    assert not collapsed.passed and "KRYTEN_MIN_COUNT_RATIO" in collapsed.problems[0]
    assert check_thresholds(result, live_item_count=190, max_reject_ratio=0.05, min_count_ratio=0.5).passed
    empty = validate_items([], manifest_base=BASE)
    assert not check_thresholds(empty, live_item_count=None, max_reject_ratio=0.05, min_count_ratio=0.5).passed


def test_rejects_file_has_one_json_line_per_reject(tmp_path: Path) -> None:
    result = validate_items([good(1), good(2, title=""), good(3, video_id="bad id")], manifest_base=BASE)
    path = tmp_path / "rejects" / "run.jsonl"
    assert write_rejects_file(path, result.rejects) == 2
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [line["row"] for line in lines] == [2, 3]
    assert all(line["reasons"] for line in lines)
    assert lines[1]["record"]["video_id"] == "bad id"


def test_a_lone_surrogate_is_found_among_many_clean_values() -> None:
    items = [good(i, categories=["Music", "News"]) for i in range(50)]
    items[17] = good(17, title="bad \ud800 title")
    items[31] = good(31, categories=["Music", "News\udfff"])
    items[40] = good(40, categories=["Music", "News\udfff"])  # the same list again: judged once, both rejected
    items[44] = good(44, thumbnail_url="https://x.example/\udc80.jpg")
    result = validate_items(items, manifest_base=BASE)
    rejected = {r.video_id: r.reasons for r in result.rejects}
    assert set(rejected) == {"vid00017", "vid00031", "vid00040"}
    assert result.frame.set_index("video_id").loc["vid00044", "thumbnail_url"] is None  # dropped, item kept
    assert rejected["vid00017"] == ["title is not valid Unicode (a lone surrogate)"]
    assert rejected["vid00031"] == rejected["vid00040"] == ["categories are not valid Unicode (a lone surrogate)"]
    assert result.frame["categories"].tolist()[0] == ["Music", "News"]


def test_dagster_type_trusts_only_the_frame_validate_items_returned() -> None:
    from kryten_pipeline.dagster_defs.asset_types import VALIDATED_ITEMS_TYPE
    from kryten_pipeline.validation import passed_validate_items

    frame = validate_items([good(i) for i in range(5)], manifest_base=BASE).frame
    assert passed_validate_items(frame)
    check = VALIDATED_ITEMS_TYPE.type_check(None, frame)  # type: ignore[arg-type]
    assert check.success and "confirmed" in (check.description or "")

    grown = frame.copy()
    grown.loc[len(grown)] = ["bad id!", "", [], None, None, "http://not-https"]
    assert not passed_validate_items(grown)  # a row added since: the whole schema runs again
    failed = VALIDATED_ITEMS_TYPE.type_check(None, grown)  # type: ignore[arg-type]
    assert not failed.success and "video_id does not match" in (failed.description or "")

    duplicated = pd.concat([frame, frame.iloc[:1]], ignore_index=True)
    duplicated.attrs = dict(frame.attrs, kryten_schema_validated_rows=len(duplicated))  # a forged count
    assert not passed_validate_items(duplicated)
    assert not VALIDATED_ITEMS_TYPE.type_check(None, duplicated).success  # type: ignore[arg-type]

    elsewhere = pd.DataFrame(frame.to_dict(orient="list")).astype({"duration_seconds": "Int64"})
    assert not passed_validate_items(elsewhere)  # no marker: validated in full, and it is valid
    assert VALIDATED_ITEMS_TYPE.type_check(None, elsewhere).success  # type: ignore[arg-type]
    assert not VALIDATED_ITEMS_TYPE.type_check(None, [1, 2]).success  # type: ignore[arg-type]


def test_a_duplicate_keeps_the_first_valid_occurrence_and_reasons_count_once() -> None:
    items = [
        CatalogItem("dup1", "", [], None, None),  # first occurrence fails its content check (empty title)
        CatalogItem("dup1", "Valid later", [], None, None),
        CatalogItem("dup1", "Third", [], None, None),
        CatalogItem("bad id!", "Bad id", [], None, None),
    ]
    result = validate_items(items, manifest_base="https://media.example.org")
    assert result.frame["title"].tolist() == ["Valid later"]
    reasons = {r.row: r.reasons for r in result.rejects}
    assert reasons[1] == ["title is empty after trimming: ''"]
    assert reasons[3] == ["duplicate video_id (first valid occurrence kept): 'dup1'"]
    assert reasons[4] == ["video_id does not match [A-Za-z0-9_-]{1,64}: 'bad id!'"]  # not also its manifest
    assert sum(result.reason_counts.values()) == 3


@pytest.mark.parametrize(("thumbnail", "reason"), [
    ("http://cdn.example.org/t.jpg", "plain http (KRYTEN_REQUIRE_HTTPS_THUMBNAILS)"),
    ('https://x.example/"onerror=alert(1)', "characters RFC 3986 does not allow in a URL"),
    ("https://x.example/a b.jpg", "characters RFC 3986 does not allow in a URL"),
    ("https://x.example/%zz.jpg", "characters RFC 3986 does not allow in a URL"),
    ("https://user:secret@x.example/t.jpg", "characters RFC 3986 does not allow in a URL"),
    ("/media/thumb.jpg", "not an absolute http(s) URL"),
    ("javascript:alert(1)", "not an absolute http(s) URL"),
    (7, "not a string (int)"),
])
def test_a_bad_thumbnail_is_dropped_not_the_item(thumbnail: object, reason: str) -> None:
    result = validate_items([good(1, thumbnail_url=thumbnail), good(2)], manifest_base=BASE)
    assert result.rejected_count == 0 and result.accepted_count == 2
    assert result.frame["thumbnail_url"].tolist()[0] is None
    assert result.dropped == {f"thumbnail_url dropped: {reason}": 1}


def test_good_thumbnails_are_kept_and_http_when_allowed() -> None:
    urls = ["https://cdn.example.org/a%20b.jpg?x=1&y=(2)", "https://[2001:db8::1]:8443/t.jpg", "https://x.example"]
    result = validate_items([good(i, thumbnail_url=u) for i, u in enumerate(urls)], manifest_base=BASE)
    assert result.frame["thumbnail_url"].tolist() == urls and not result.dropped
    relaxed = validate_items([good(1, thumbnail_url="http://cdn.example.org/t.jpg")], manifest_base=BASE,
                             require_https_thumbnails=False)
    assert relaxed.frame["thumbnail_url"].tolist() == ["http://cdn.example.org/t.jpg"] and not relaxed.dropped
