"""MediaCMS database connector against a real PostgreSQL started for this module (see ``pg_fixtures``)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from kryten_pipeline.catalog_item import CatalogItem
from kryten_pipeline.connectors import make_connector
from kryten_pipeline.connectors.mediacms_db import MediaCMSDatabaseConnector, media_file_url, scrub_secrets
from kryten_pipeline.errors import ConfigurationError, SourceError
from kryten_pipeline.settings import Settings
from kryten_pipeline_tests.pg_fixtures import (
    MediaRow,
    PostgresServer,
    create_mediacms_schema,
    insert_media,
    running_postgres,
    skip_without_postgres,
)

BASE = "https://media.example.org"
_db_names = itertools.count()


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    skip_without_postgres()
    with running_postgres() as server:
        yield server


def fresh_db(pg: PostgresServer, rows: list[MediaRow] | None = None) -> str:
    """A new database with MediaCMS's tables, filled with ``rows``."""
    name = pg.create_database(f"mediacms_{next(_db_names)}")
    with pg.connect(name) as conn:
        create_mediacms_schema(conn)
        if rows:
            insert_media(conn, rows)
    return name


def connector(pg: PostgresServer, dbname: str, **kwargs: Any) -> MediaCMSDatabaseConnector:
    return MediaCMSDatabaseConnector(pg.url(dbname), mediacms_url=BASE, **kwargs)


def collect(conn: MediaCMSDatabaseConnector) -> list[CatalogItem]:
    async def walk() -> list[CatalogItem]:
        return [item async for item in conn.iter_catalog_items()]

    return asyncio.run(walk())


SAMPLE = [
    MediaRow("aaaaaaaa1", "Two categories", duration=125, categories=["Music", "Live"],
             thumbnail="original//thumbnails/user/alice/a1.jpg"),
    MediaRow("aaaaaaaa2", "No categories", duration=0),
    MediaRow("aaaaaaaa3", "Uploaded thumb wins", categories=["Music"],
             thumbnail="original//thumbnails/user/bob/auto.jpg",
             uploaded_thumbnail="original/thumbnails/user/bob/my pick.jpg"),
    MediaRow("bbbbbbbb1", "Private", state="private", categories=["Music"]),
    MediaRow("bbbbbbbb2", "Unlisted", state="unlisted"),
    MediaRow("bbbbbbbb3", "Not reviewed", is_reviewed=False),
    MediaRow("bbbbbbbb4", "Still encoding", encoding_status="running"),
    MediaRow("bbbbbbbb5", "Failed encoding", encoding_status="fail"),
    MediaRow("bbbbbbbb6", "A podcast", media_type="audio"),
    MediaRow("bbbbbbbb7", "A picture", media_type="image", duration=0),
    MediaRow("aaaaaaaa4", "Titles & <symbols> 東京 ", categories=["Éducation", "日本語", "Live"]),
]


def test_yields_playable_items_with_all_their_categories(pg: PostgresServer) -> None:
    db = fresh_db(pg, SAMPLE)
    source = connector(pg, db, batch_size=2)
    items = collect(source)

    assert items == [
        CatalogItem("aaaaaaaa1", "Two categories", ["Live", "Music"], 125,
                    f"{BASE}/media/original/thumbnails/user/alice/a1.jpg"),
        CatalogItem("aaaaaaaa2", "No categories", [], 0, None),
        CatalogItem("aaaaaaaa3", "Uploaded thumb wins", ["Music"], 60,
                    f"{BASE}/media/original/thumbnails/user/bob/my%20pick.jpg"),
        CatalogItem("aaaaaaaa4", "Titles & <symbols> 東京 ", ["Live", "Éducation", "日本語"], 60, None),
    ]
    stats = source.stats
    assert stats["rows"] == 4
    assert stats["batches"] == 2
    assert stats["rows"] + stats["excluded_total"] == len(SAMPLE)
    assert stats["excluded_total"] == 7
    # Worded like the API connector's exclusion reasons (first failing rule).
    assert stats["excluded"] == {
        "media_type:audio": 1, "media_type:image": 1, "state:private": 1, "state:unlisted": 1,
        "is_reviewed:false": 1, "encoding_status:running": 1, "encoding_status:fail": 1,
    }
    assert stats["with_categories"] == 3 and stats["without_thumbnail"] == 2
    assert stats["rows_per_s"] >= 0 and stats["wall_time_s"] >= 0
    assert source.source_rejects == []


def test_streams_through_a_server_side_cursor_in_batches(pg: PostgresServer) -> None:
    rows = [MediaRow(f"tok{i:06d}", f"Item {i}", categories=["A"] if i % 2 else []) for i in range(1000)]
    db = fresh_db(pg, rows)
    source = connector(pg, db, batch_size=128)
    seen_while_streaming: list[tuple[str, str]] = []

    async def walk() -> list[str]:
        ids = []
        async for item in source.iter_catalog_items():
            ids.append(item.video_id)
            if len(ids) == 1:
                # Mid-walk, the connector's backend has fetched one batch from a declared cursor.
                with pg.connect(db) as observer:
                    seen_while_streaming.extend(observer.execute(
                        "SELECT state, query FROM pg_stat_activity "
                        "WHERE application_name = 'kryten-pipeline' AND datname = current_database()"
                    ).fetchall())
        return ids

    ids = asyncio.run(walk())
    assert ids == [row.friendly_token for row in rows]
    assert source.stats["batches"] == 8  # ceil(1000 / 128)
    assert len(seen_while_streaming) == 1
    state, query = seen_while_streaming[0]
    assert state == "idle in transaction"
    assert query.startswith("FETCH FORWARD 128 FROM")


def test_session_is_read_only_with_a_statement_timeout(pg: PostgresServer) -> None:
    db = fresh_db(pg, SAMPLE[:1])
    source = connector(pg, db, statement_timeout_s=7)

    async def attempt_write() -> tuple[str, str]:
        async with source.session() as conn:
            read_only = (await (await conn.execute("SHOW default_transaction_read_only")).fetchone())[0]
            timeout = (await (await conn.execute("SHOW statement_timeout")).fetchone())[0]
            await conn.rollback()
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                await conn.execute("INSERT INTO files_category (uid, title) VALUES ('x', 'Sneaky')")
            return read_only, timeout

    assert asyncio.run(attempt_write()) == ("on", "7s")
    with pg.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM files_category WHERE title = 'Sneaky'").fetchone() == (0,)


def test_missing_column_names_the_mediacms_release_assumption(pg: PostgresServer) -> None:
    db = fresh_db(pg, SAMPLE)
    with pg.connect(db) as conn:
        conn.execute("ALTER TABLE files_media DROP COLUMN encoding_status")

    with pytest.raises(ConfigurationError) as caught:
        collect(connector(pg, db))
    message = str(caught.value)
    assert "files_media.encoding_status" in message
    assert "MediaCMS 8.x" in message
    assert "MEDIACMS_DB_URL" in message


def test_missing_tables_are_listed(pg: PostgresServer) -> None:
    db = pg.create_database(f"not_mediacms_{next(_db_names)}")

    with pytest.raises(ConfigurationError) as caught:
        collect(connector(pg, db))
    assert "missing tables: files_media, files_category, files_media_category" in str(caught.value)


def test_bad_password_is_a_source_error_without_the_password(pg: PostgresServer) -> None:
    db = fresh_db(pg)
    wrong = "Wr0ng-Pa55word-xyz"
    attempts = [
        MediaCMSDatabaseConnector(pg.url(db, with_password=False), mediacms_url=BASE, password=wrong),
        MediaCMSDatabaseConnector(pg.url(db, password=wrong), mediacms_url=BASE),
        MediaCMSDatabaseConnector(
            f"host=127.0.0.1 port={pg.port} dbname={db} user={pg.superuser} password={wrong}", mediacms_url=BASE
        ),
    ]
    for source in attempts:
        with pytest.raises(SourceError) as caught:
            collect(source)
        message = str(caught.value)
        assert "MEDIACMS_DB_URL" in message
        assert "password authentication failed" in message
        assert wrong not in message and wrong not in repr(caught.value)
        assert caught.value.__cause__ is None  # psycopg's exception (and its conninfo) is not chained
        assert wrong not in source.label


def test_unreachable_server_is_a_source_error() -> None:
    source = MediaCMSDatabaseConnector("postgresql://kryten:secret@127.0.0.1:1/mediacms?connect_timeout=5",
                                       mediacms_url=BASE)
    with pytest.raises(SourceError) as caught:
        collect(source)
    assert "MEDIACMS_DB_URL" in str(caught.value)
    assert "secret" not in str(caught.value)
    assert source.label == "mediacms-db:kryten@127.0.0.1:1/mediacms"


def test_statement_timeout_is_reported_with_its_setting(pg: PostgresServer) -> None:
    db = fresh_db(pg, SAMPLE)
    source = connector(pg, db, statement_timeout_s=1)
    with pg.connect(db, autocommit=False) as locker:
        locker.execute("LOCK TABLE files_media IN ACCESS EXCLUSIVE MODE")  # the catalog query must wait
        with pytest.raises(SourceError) as caught:
            collect(source)
        locker.rollback()
    assert "MEDIACMS_DB_STATEMENT_TIMEOUT_S" in str(caught.value)


def test_from_settings_with_dsn_and_pgpassword(pg: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> None:
    db = fresh_db(pg, SAMPLE)
    monkeypatch.setenv("PGPASSWORD", pg.password)
    settings = Settings.from_env({
        "KRYTEN_SOURCE": "mediacms-db",
        "MEDIACMS_URL": BASE + "/",
        "MEDIACMS_DB_URL": f"host=127.0.0.1 port={pg.port} dbname={db} user={pg.superuser}",
        "MEDIACMS_DB_BATCH_SIZE": "3",
    })
    source = make_connector(settings)
    assert isinstance(source, MediaCMSDatabaseConnector)
    assert [item.video_id for item in collect(source)] == ["aaaaaaaa1", "aaaaaaaa2", "aaaaaaaa3", "aaaaaaaa4"]
    assert source.stats["batches"] == 2


def test_playable_policy_comes_from_mediacms_playable(pg: PostgresServer) -> None:
    db = fresh_db(pg, SAMPLE)
    settings = Settings.from_env({
        "KRYTEN_SOURCE": "mediacms-db", "MEDIACMS_URL": BASE, "MEDIACMS_DB_URL": pg.url(db),
        "MEDIACMS_PLAYABLE": "listable,audio,unlisted",
    })
    source = MediaCMSDatabaseConnector.from_settings(settings)
    ids = [item.video_id for item in collect(source)]
    assert ids == ["aaaaaaaa1", "aaaaaaaa2", "aaaaaaaa3", "bbbbbbbb2", "bbbbbbbb6", "aaaaaaaa4"]
    assert source.stats["excluded_total"] == 5
    assert pg.password not in source.label


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"MEDIACMS_URL": BASE}, "MEDIACMS_DB_URL"),
        ({"MEDIACMS_DB_URL": "postgresql://db/mediacms"}, "MEDIACMS_URL"),
        ({"MEDIACMS_URL": BASE, "MEDIACMS_DB_URL": "host=db password='unterminated"}, "MEDIACMS_DB_URL"),
    ],
)
def test_configuration_errors_name_the_setting(env: dict[str, str], setting: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        MediaCMSDatabaseConnector.from_settings(Settings.from_env({"KRYTEN_SOURCE": "mediacms-db", **env}))
    assert caught.value.setting == setting
    assert "unterminated" not in str(caught.value)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("original//thumbnails/user/alice/x.jpg", f"{BASE}/media/original/thumbnails/user/alice/x.jpg"),
        ("/original/thumbnails/x.jpg", f"{BASE}/media/original/thumbnails/x.jpg"),
        ("media/original/thumbnails/x.jpg", f"{BASE}/media/original/thumbnails/x.jpg"),
        ("original/thumbnails/user/zoë/a b.jpg", f"{BASE}/media/original/thumbnails/user/zo%C3%AB/a%20b.jpg"),
        ("https://cdn.example.org/t.jpg", "https://cdn.example.org/t.jpg"),
        ("", None),
        ("   ", None),
        (None, None),
    ],
)
def test_media_file_url(path: str | None, expected: str | None) -> None:
    assert media_file_url(BASE + "/", path) == expected


def test_scrub_secrets() -> None:
    assert scrub_secrets("postgresql://u:hunter2@h/db") == "postgresql://u:***@h/db"
    assert scrub_secrets("host=h password=hunter2 user=u") == "host=h password=*** user=u"
    assert scrub_secrets("failed for hunter2", ("hunter2",)) == "failed for ***"
