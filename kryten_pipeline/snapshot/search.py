"""Search over a snapshot file: FTS5 with bm25 ranking, safe query building, category filters.

User input never reaches FTS5 as syntax: every word becomes a quoted string (quotes doubled), so
``"``, ``(``, ``AND``/``OR``/``NOT``/``NEAR``, ``*`` and ``-`` are searched as text and can never raise
an FTS5 syntax error. Balanced ``"…"`` in the input searches a phrase; the last word matches as a prefix.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kryten_pipeline.snapshot.build import FTS_TOKENIZER
from kryten_pipeline.snapshot.files import open_readonly

_CONTROL = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")  # and lone surrogates: no UTF-8 form, never indexed
_SURROGATE = re.compile("[\ud800-\udfff]")
_TOKENIZERS = threading.local()
# Column weights for bm25: video_id (unindexed), title, title_alt, categories.
_BM25 = "bm25(catalog_fts, 0.0, 10.0, 6.0, 2.0)"


def _quote(term: str) -> str:
    return '"' + term.replace('"', '""') + '"'


def fts_tokens(text: str) -> list[str]:
    """The tokens FTS5 makes of ``text`` with the snapshot's tokenizer, in order.

    Asked of SQLite itself (an in-memory FTS5 table, one per thread): its Unicode tables are not Python's.
    Private-use, unassigned and recently assigned code points are tokens to SQLite but not ``\\w`` to Python,
    and a few letters the other way round — a word judged by Python could be unfindable, or an empty phrase
    that makes ``AND`` match nothing.
    """
    conn = getattr(_TOKENIZERS, "conn", None)
    if conn is None:
        conn = sqlite3.connect(":memory:", isolation_level=None)
        conn.execute(f"CREATE VIRTUAL TABLE t USING fts5(x, tokenize = '{FTS_TOKENIZER}')")
        conn.execute("CREATE VIRTUAL TABLE v USING fts5vocab(t, 'instance')")
        _TOKENIZERS.conn = conn
    conn.execute("DELETE FROM t")
    conn.execute("INSERT INTO t(x) VALUES (?)", (text,))
    return [row[0] for row in conn.execute("SELECT term FROM v ORDER BY offset")]


def build_match_query(text: str) -> str | None:
    """An FTS5 MATCH expression for free text, or ``None`` if it holds no searchable word."""
    phrases: list[str] = []
    text = _CONTROL.sub(" ", text)  # FTS5 reads its query as a C string: a NUL would cut it short
    # Balanced quotes delimit phrases; everything else is split on whitespace.
    parts = re.split(r'"([^"]*)"', text) if text.count('"') >= 2 else [text]
    for position, part in enumerate(parts):
        if position % 2 == 1:
            if fts_tokens(part):
                phrases.append(_quote(" ".join(part.split())))
        else:
            phrases.extend(_quote(word) for word in part.replace('"', " ").split() if fts_tokens(word))
    if not phrases:
        return None
    last_open = not text.rstrip().endswith('"') and not text[-1:].isspace()
    if last_open:
        phrases[-1] += " *"  # the word being typed matches as a prefix
    return " ".join(phrases)


@dataclass(slots=True)
class SearchHit:
    video_id: str
    title: str
    categories: list[str]
    duration_seconds: int | None
    thumbnail_url: str | None
    manifest_url: str
    score: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def search_catalog(
    db_path: Path, query: str = "", *, categories: list[str] | None = None, limit: int = 20,
) -> list[SearchHit]:
    """Search a snapshot file: ranked by bm25 for a query; by title when only filters (or nothing) are given.

    Each category filter narrows the result (an item must be in all of them).
    """
    limit = max(1, min(int(limit), 1000))
    if any(_SURROGATE.search(c) for c in categories or []):
        return []  # no stored category holds a lone surrogate (it has no UTF-8 form)
    match = build_match_query(query) if query else None
    if match is None and query.strip() and not categories:
        return []  # only punctuation: nothing to search for
    columns = "i.video_id, i.title, i.categories_json, i.duration_seconds, i.thumbnail_url, i.manifest_url"
    params: list[Any] = []
    if match is not None:
        # Rank inside FTS5 and keep only the top rows before touching catalog_item: a common word can
        # match a large share of the catalog, and joining every match first would dominate the latency.
        # A category narrows the FTS5 match itself (its words in the `categories` column, a cheap doclist
        # intersection), then membership is checked exactly per remaining row.
        category_match = "".join(
            f" AND categories : {_quote(_CONTROL.sub(' ', c))}" for c in categories or [] if fts_tokens(c)
        )
        exact = "".join(
            " AND EXISTS (SELECT 1 FROM catalog_item i2 JOIN catalog_item_category c ON c.video_id = i2.video_id"
            " WHERE i2.rowid = catalog_fts.rowid AND c.category = ?)"
            for _ in categories or []
        )
        sql = (
            f"WITH hits AS (SELECT rowid, {_BM25} AS score FROM catalog_fts WHERE catalog_fts MATCH ?{exact}"
            f" ORDER BY score LIMIT ?) SELECT {columns}, hits.score FROM hits"
            " JOIN catalog_item i ON i.rowid = hits.rowid ORDER BY hits.score, i.title"
        )
        params = [f"({match}){category_match}", *(categories or []), limit]
    else:
        # Title order walks the title index and stops after `limit` rows that pass the filters.
        filters = " AND ".join(
            "EXISTS (SELECT 1 FROM catalog_item_category c WHERE c.video_id = i.video_id AND c.category = ?)"
            for _ in categories or []
        )
        sql = (f"SELECT {columns}, NULL FROM catalog_item i{' WHERE ' + filters if filters else ''}"
               " ORDER BY i.title, i.video_id LIMIT ?")
        params = [*(categories or []), limit]
    conn = open_readonly(db_path)
    try:
        rows = conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError as exc:  # e.g. a file from an older schema
        raise sqlite3.OperationalError(f"search failed on {db_path}: {exc}") from exc
    finally:
        conn.close()
    return [
        SearchHit(video_id=r[0], title=r[1], categories=json.loads(r[2]), duration_seconds=r[3],
                  thumbnail_url=r[4], manifest_url=r[5], score=None if r[6] is None else round(r[6], 4))
        for r in rows
    ]
