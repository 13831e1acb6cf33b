"""Property-based: arbitrary item dicts through validation and the SQLite build never crash; every rejected row
has a reason; every accepted row is findable through FTS5 by a word of its title (``search_catalog`` quotes the
user's words, so FTS5 and SQL syntax in titles or queries is text, never an error)."""

from __future__ import annotations

import itertools
import json
import sqlite3
import tempfile
import uuid
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from kryten_pipeline.manifest import is_valid_video_id
from kryten_pipeline.snapshot.build import build_snapshot_db, rows_from_frame
from kryten_pipeline.snapshot.files import verify_snapshot_db
from kryten_pipeline.snapshot.search import search_catalog
from kryten_pipeline.validation import (
    MAX_CATEGORIES_PER_ITEM,
    MAX_CATEGORY_LENGTH,
    MAX_TITLE_LENGTH,
    VALIDATED_SCHEMA,
    ValidationResult,
    validate_batches,
    validate_items,
    write_rejects_file,
)

BASE = "https://media.example.org"
_RFC3986 = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~:/?#[]@!$&'()*+,;=%")


def _forbidden(char: str) -> bool:
    code = ord(char)
    return code < 32 or 0x7F <= code <= 0x9F or 0x202A <= code <= 0x202E or 0x2066 <= code <= 0x2069
FIELDS = ("video_id", "title", "categories", "duration_seconds", "thumbnail_url")
FTS_AND_SQL = [
    '"', "'", '""', "AND", "OR", "NOT", "NEAR", "NEAR(a b)", "NEAR/3", "(", ")", "*", "^", "-", "+", ":",
    "title:", "{title}", "catalog_fts", "'; DROP TABLE catalog_item; --", '" OR 1=1 --', "%", "_", "\\",
    "Robert'); DROP TABLE students;--", "a*", '"unbalanced', "MATCH", "rank", "bm25(",
]
any_char = st.characters()  # lone surrogates included: a JSON export can hold "\ud800"
words = st.one_of(st.text(any_char, max_size=12), st.sampled_from(FTS_AND_SQL),
                  st.sampled_from(["cowboy", "bebop", "東京", "café", "naïve", "Ωmega", "Black.Hawk.Down.[2001].mp4"]))
titles = st.one_of(
    st.lists(words, min_size=1, max_size=8).map(" ".join),
    st.text(any_char, max_size=60),  # control characters included
    st.tuples(st.text(any_char, min_size=1, max_size=4), st.integers(100, 800)).map(lambda t: t[0] * t[1]),  # huge
    st.none(), st.integers(), st.floats(), st.booleans(), st.lists(st.text(max_size=4), max_size=3),
)
video_ids = st.one_of(
    st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True),
    st.sampled_from(["../../etc/passwd", "..", "/etc/shadow", "a/b", "a\\b", "a b", "", "x" * 65, "é", "a\x00b",
                     "a.b", "%2e%2e%2f", "con", "-", "_"]),
    st.text(any_char, max_size=70), st.none(), st.integers(), st.floats(), st.lists(st.text(max_size=3), max_size=2),
)
nasty_text = st.sampled_from(["\x00", "\x1b[31m", "\u202e", "\u2066", "\x85", "\t", "\n", "\x9b", "\ud800"])
categories = st.one_of(
    st.none(), st.lists(st.text(any_char, max_size=20), max_size=4),
    st.lists(st.tuples(st.text(max_size=4), nasty_text, st.text(max_size=4)).map("".join), min_size=1, max_size=3),
    st.tuples(st.integers(95, 130), st.text(min_size=1, max_size=3)).map(
        lambda t: [f"c{i}{t[1]}" for i in range(t[0])]),
    st.tuples(st.text(min_size=1, max_size=2), st.integers(150, 400)).map(lambda t: [t[0] * t[1]]),
    st.lists(st.one_of(st.text(max_size=5), st.integers(), st.none(), st.lists(st.text(max_size=3), max_size=2)),
             max_size=3),
    st.text(max_size=10), st.integers(), st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
)
durations = st.one_of(
    st.none(), st.integers(-(10**6), 10**6), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
    st.sampled_from([float("nan"), float("inf"), float("-inf"), 1.5, 0.0, -0.0, True, False]),
    st.text(max_size=8), st.lists(st.integers(), max_size=2),
)
thumbnails = st.one_of(
    st.none(), st.from_regex(r"https?://[a-z]{1,10}\.[a-z]{2,3}/[^\s]{0,20}", fullmatch=True),
    st.text(any_char, max_size=40), st.integers(), st.just("javascript:alert(1)"), st.just("//cdn.example.org/x"),
    st.sampled_from(['https://x.example/"onerror=alert(1)', "http://cdn.example.org/t.jpg", "https://a b.example/",
                     "https://x.example/<script>", "https://x.example/%zz", "https://u:p@x.example/t.jpg",
                     "https://[2001:db8::1]/t.jpg", "https://x.example/a%20b.jpg?q=(1)&r=2"]),
)
any_item = st.fixed_dictionaries({}, optional={"video_id": video_ids, "title": titles, "categories": categories,
                                               "duration_seconds": durations, "thumbnail_url": thumbnails})
# Items that are mostly well-formed, so that the FTS5 property sees many accepted rows with nasty titles.
printable = st.characters(blacklist_categories=("Cs", "Cc"))  # all of Unicode but control chars and surrogates
plausible_item = st.fixed_dictionaries({
    "video_id": st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True),
    "title": st.lists(st.one_of(st.text(printable, min_size=1, max_size=12), st.sampled_from(FTS_AND_SQL)),
                      min_size=1, max_size=8).map(" ".join),
    "categories": st.lists(st.text(printable, min_size=1, max_size=12), max_size=3),
    "duration_seconds": st.one_of(st.none(), st.integers(0, 10**6)),
    "thumbnail_url": st.one_of(st.none(), st.just("https://cdn.example.org/t.jpg")),
})
item_dicts = st.one_of(any_item, plausible_item)


@st.composite
def catalogs(draw: st.DrawFn, max_size: int = 25) -> list[dict[str, Any]]:
    """Item dicts, some repeating an earlier item's video_id (with other values)."""
    items = draw(st.lists(item_dicts, max_size=max_size))
    for source in draw(st.lists(st.integers(0, max(len(items) - 1, 0)), max_size=4)) if items else []:
        copy = dict(draw(item_dicts))
        copy["video_id"] = items[source].get("video_id")
        items.insert(draw(st.integers(source + 1, len(items))), copy)
    return items


def validate(items: list[dict[str, Any]]) -> ValidationResult:
    return validate_items({name: [item.get(name) for item in items] for name in FIELDS}, manifest_base=BASE)


def _no_constant(name: str) -> Any:
    raise ValueError(f"not JSON: {name}")


def check_result(items: list[dict[str, Any]], result: ValidationResult) -> None:
    assert result.total == len(items) == result.accepted_count + result.rejected_count
    rows = [r.row for r in result.rejects]
    assert len(rows) == len(set(rows)) and all(1 <= r <= len(items) for r in rows)
    for reject in result.rejects:
        assert reject.reasons and all(isinstance(r, str) and r.strip() for r in reject.reasons), reject
    frame = result.frame
    VALIDATED_SCHEMA.validate(frame)
    ids = list(frame["video_id"])
    assert len(ids) == len(set(ids)) and all(is_valid_video_id(i) for i in ids)
    for title in frame["title"]:
        assert title == title.strip() and 0 < len(title) <= MAX_TITLE_LENGTH
        assert not any(_forbidden(c) for c in title)
    # The same text policy for categories; thumbnails are https URLs of RFC 3986 characters, or dropped.
    for cats in frame["categories"]:
        assert len(cats) <= MAX_CATEGORIES_PER_ITEM
        assert all(0 < len(c) <= MAX_CATEGORY_LENGTH and c == c.strip() and not any(map(_forbidden, c))
                   for c in cats)
    for url in frame["thumbnail_url"]:
        assert url is None or (url.startswith("https://") and all(ch in _RFC3986 for ch in url)), url
    for reject in result.rejects:  # a thumbnail never costs an item its place
        assert not any(r.startswith("thumbnail_url") for r in reject.reasons), reject
    # The first occurrence of an id is judged on its own; a later one is rejected as a duplicate if the first won.
    accepted_rows = {i + 1 for i in range(len(items))} - set(rows)
    first_seen: dict[Any, int] = {}
    for index, item in enumerate(items, start=1):
        key = item.get("video_id")
        if isinstance(key, str) and key in first_seen and first_seen[key] in accepted_rows:
            assert index not in accepted_rows
        if isinstance(key, str):
            first_seen.setdefault(key, index)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(catalogs())
def test_validation_never_crashes_and_every_reject_has_a_reason(items: list[dict[str, Any]]) -> None:
    result = validate(items)
    check_result(items, result)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "rejects.jsonl"
        assert write_rejects_file(path, result.rejects) == result.rejected_count
        for line in path.read_text(encoding="utf-8").splitlines():  # also splits on U+2028 etc.
            record = json.loads(line, parse_constant=_no_constant)  # strict JSON: no NaN / Infinity
            assert record["reasons"]


_TOKENIZER = sqlite3.connect(":memory:")
_TOKENIZER.execute("CREATE VIRTUAL TABLE t USING fts5(x, tokenize = 'unicode61 remove_diacritics 2')")
_TOKENIZER.execute("CREATE VIRTUAL TABLE v USING fts5vocab(t, 'instance')")


def fts_tokens(text: str) -> list[str]:
    """What the snapshot's FTS5 tokenizer makes of ``text`` (its own Unicode tables, not Python's)."""
    with _TOKENIZER:
        _TOKENIZER.execute("DELETE FROM t")
        _TOKENIZER.execute("INSERT INTO t(x) VALUES (?)", (text,))
        return [row[0] for row in _TOKENIZER.execute("SELECT term FROM v ORDER BY offset")]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(catalogs(max_size=15), st.text(any_char, max_size=40), st.randoms(use_true_random=False))
def test_accepted_rows_are_found_by_a_word_of_their_title(items: list[dict[str, Any]], query: str,
                                                          rnd: Any) -> None:
    result = validate(items)
    with tempfile.TemporaryDirectory() as folder:
        built = build_snapshot_db(
            rows_from_frame(result.frame), data_dir=Path(folder), namespace="default",
            snapshot_id="20260101T000000Z-abcdef", created_at="2026-01-01T00:00:00Z", source="hypothesis",
        )
        assert built.item_count == result.accepted_count
        assert verify_snapshot_db(built.path).passed
        found = 0
        for video_id, title, cats in zip(result.frame["video_id"], result.frame["title"], result.frame["categories"],
                                         strict=True):
            candidates = [w for w in title.split() if fts_tokens(w)]
            if not candidates:
                continue  # no word the tokenizer indexes (only punctuation, emoji, unassigned code points)
            word = rnd.choice(candidates)
            hits = {hit.video_id for hit in search_catalog(built.path, word, limit=1000)}
            assert video_id in hits, (word, title)
            found += 1
            if cats:  # narrowed to one of its categories, it is still found
                category = rnd.choice(cats)
                narrowed = {hit.video_id for hit in search_catalog(built.path, word, categories=[category], limit=1000)}
                assert video_id in narrowed, (word, title, category)
        event(f"accepted rows searched: {min(found, 5)}{'+' if found >= 5 else ''}")
        # Arbitrary user input (FTS5 operators, quotes, SQL) is searched as text: never an error.
        search_catalog(built.path, query, limit=5)
        search_catalog(built.path, query, categories=[query], limit=5)


def test_sql_and_fts_syntax_in_titles_is_stored_and_found_verbatim(tmp_path: Path) -> None:
    nasty = ["'; DROP TABLE catalog_item; --", 'NEAR("a" "b") OR title:x*', '"unbalanced quote', "a AND NOT b"]
    items = [{"video_id": f"v{i}", "title": title} for i, title in enumerate(nasty)]
    result = validate(items)
    assert result.rejected_count == 0
    built = build_snapshot_db(rows_from_frame(result.frame), data_dir=tmp_path, namespace="default",
                              snapshot_id=f"20260101T000000Z-{uuid.uuid4().hex[:6]}",
                              created_at="2026-01-01T00:00:00Z", source="test")
    for i, title in enumerate(nasty):
        assert f"v{i}" in {hit.video_id for hit in search_catalog(built.path, title, limit=50)}
    conn = sqlite3.connect(built.path)
    assert sorted(r[0] for r in conn.execute("SELECT title FROM catalog_item")) == sorted(nasty)
    conn.close()


def _split(items: list[dict[str, Any]], cuts: list[int]) -> list[dict[str, list[Any]]]:
    bounds = sorted({0, len(items), *(c % (len(items) + 1) for c in cuts)})
    return [{name: [item.get(name) for item in items[a:b]] for name in FIELDS} for a, b in itertools.pairwise(bounds)]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(catalogs(), st.lists(st.integers(0, 40), max_size=5))
def test_validating_in_batches_judges_every_row_as_the_whole_catalog_at_once(items: list[dict[str, Any]],
                                                                              cuts: list[int]) -> None:
    """The refresh validates a batch at a time (validate_batches): cut anywhere — duplicates of an id accepted in
    an earlier batch included — the same rows are accepted, in the same order, and the same rows rejected, with
    the same row numbers, records, reasons and counts."""
    whole = validate(items)
    frames: list[Any] = []
    summary = validate_batches(_split(items, cuts), frames.append, manifest_base=BASE)
    accepted = [list(rows_from_frame(frame)) for frame in frames]
    assert [row for batch in accepted for row in batch] == list(rows_from_frame(whole.frame))
    assert summary.accepted_count == whole.accepted_count and summary.total == whole.total == len(items)
    # (pandera may find a row's failures in another order when a batch's column is all missing)
    assert [(r.row, r.video_id, sorted(r.reasons), r.record) for r in summary.rejects] == [
        (r.row, r.video_id, sorted(r.reasons), r.record) for r in whole.rejects]
    assert summary.reason_counts == whole.reason_counts and summary.dropped == whole.dropped
    head = list(rows_from_frame(summary.head)) if summary.head is not None else []
    assert head == list(rows_from_frame(whole.frame.head(5)))
