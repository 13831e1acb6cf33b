"""MediaCMS database strategy (issue 5 §1): read MediaCMS's PostgreSQL directly, read-only.

For deployments where the REST API is capped (1,000 rows a list since 7.2) or too slow. One streaming query
over a server-side cursor yields every playable media row with all its categories; memory stays bounded by
the batch size on both ends. "Playable" is the API connector's ``PlayablePolicy`` (``MEDIACMS_PLAYABLE``,
default: listable videos), applied in SQL.

Schema assumption: MediaCMS 8.x (older releases have the same core columns) — tables ``files_media``,
``files_category`` and ``files_media_category``. The session is read-only (``default_transaction_read_only``)
with a ``statement_timeout``, and the walk runs in one REPEATABLE READ READ ONLY transaction so the item
stream and the exclusion counts describe the same database state. Give kryten a role with SELECT on the
three tables only; the read-only session is a second guard, not the first.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote, urlsplit

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict

from kryten_pipeline.catalog_item import CatalogItem, ProgressCallback, SourceReject
from kryten_pipeline.connectors.mediacms import PlayablePolicy
from kryten_pipeline.errors import ConfigurationError, SourceError
from kryten_pipeline.settings import Settings

SCHEMA_ASSUMPTION = (
    "MediaCMS 8.x schema (tables files_media, files_category, files_media_category; "
    "older releases share these core columns)"
)
#: Every column the query reads, checked up front so a mismatch is reported whole, not one error at a time.
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "files_media": (
        "id", "friendly_token", "title", "duration", "state", "is_reviewed", "encoding_status", "media_type",
        "thumbnail", "uploaded_thumbnail",
    ),
    "files_category": ("id", "title"),
    "files_media_category": ("media_id", "category_id"),
}
#: Where MediaCMS serves files stored under its media root (Django ``MEDIA_URL``).
MEDIA_URL_PATH = "/media/"
CURSOR_NAME = "kryten_catalog"


def policy_params(policy: PlayablePolicy) -> dict[str, Any]:
    """Query parameters for ``policy`` (the API connector's ``MEDIACMS_PLAYABLE`` policy, applied in SQL)."""
    return {
        "media_types": list(policy.media_types),
        "states": list(policy.states),
        "require_reviewed": policy.require_reviewed,
        "encoding_statuses": list(policy.encoding_statuses),
    }


# coalesce: a NULL in any policy column means "not playable", never "unknown, let it through".
_POLICY_SQL = """coalesce(
    m.media_type = ANY(%(media_types)s::text[])
    AND m.state = ANY(%(states)s::text[])
    AND (m.is_reviewed OR NOT %(require_reviewed)s)
    AND m.encoding_status = ANY(%(encoding_statuses)s::text[]), false)"""

# Joins + GROUP BY over rows read in id order: PostgreSQL plans this as a merge join feeding a streaming
# GroupAggregate (no sort or hash of the whole table), so a cursor gets first rows at once and the server's
# memory stays flat. Measured ~3x faster server-side than a correlated ARRAY(subquery) per row. The extra
# GROUP BY columns are free when m.id is the primary key (PostgreSQL drops them) and keep the query valid
# if it is not.
CATALOG_QUERY = f"""
SELECT m.friendly_token,
       m.title,
       m.duration,
       m.uploaded_thumbnail,
       m.thumbnail,
       coalesce(array_agg(c.title ORDER BY c.title, c.id) FILTER (WHERE c.title IS NOT NULL), '{{}}')
           AS categories
FROM files_media m
LEFT JOIN files_media_category mc ON mc.media_id = m.id
LEFT JOIN files_category c ON c.id = mc.category_id
WHERE {_POLICY_SQL}
GROUP BY m.id, m.friendly_token, m.title, m.duration, m.uploaded_thumbnail, m.thumbnail
ORDER BY m.id
"""

# Why rows were left out, worded and ordered like PlayablePolicy.exclusion() in the API connector (first
# failing rule wins), so both MediaCMS strategies report the same "excluded" figures.
EXCLUDED_QUERY = f"""
SELECT CASE
         WHEN m.media_type IS NULL THEN 'media_type:missing'
         WHEN m.media_type <> ALL(%(media_types)s::text[]) THEN 'media_type:' || m.media_type
         WHEN m.state IS NULL THEN 'state:missing'
         WHEN m.state <> ALL(%(states)s::text[]) THEN 'state:' || m.state
         WHEN %(require_reviewed)s AND m.is_reviewed IS NULL THEN 'is_reviewed:missing'
         WHEN %(require_reviewed)s AND NOT m.is_reviewed THEN 'is_reviewed:false'
         WHEN m.encoding_status IS NULL THEN 'encoding_status:missing'
         ELSE 'encoding_status:' || m.encoding_status
       END AS reason,
       count(*)
FROM files_media m
WHERE NOT {_POLICY_SQL}
GROUP BY 1
ORDER BY 1
"""

# pg_catalog, not information_schema: the latter hides columns the role has no privilege on, which would
# turn a missing GRANT into a misleading "column missing".
SCHEMA_QUERY = """
SELECT t.name, a.attname
FROM unnest(%(tables)s::text[]) AS t(name)
LEFT JOIN pg_attribute a
       ON a.attrelid = to_regclass(t.name) AND a.attnum > 0 AND NOT a.attisdropped
"""

_DOUBLE_SLASH = re.compile(r"/{2,}")
_UNSAFE_PATH_CHAR = re.compile(r"[^A-Za-z0-9/._~-]")
_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")
_DSN_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def media_file_url(mediacms_url: str, path: str | None) -> str | None:
    """Absolute URL of a file stored under MediaCMS's media root.

    ``original//thumbnails/user/alice/x.jpg`` → ``{base}/media/original/thumbnails/user/alice/x.jpg``: MediaCMS
    stores some paths with a doubled slash, which its web server serves with the slashes collapsed.
    """
    if not path:
        return None
    path = path.strip()
    if not path:
        return None
    if path.startswith(("https://", "http://")):
        return path
    if "//" in path:
        path = _DOUBLE_SLASH.sub("/", path)
    path = path.lstrip("/")
    if path.startswith("media/"):
        path = path[len("media/"):]
    if _UNSAFE_PATH_CHAR.search(path):  # quote() is the slow part; most stored names need none
        path = quote(path, safe="/")
    return mediacms_url.rstrip("/") + MEDIA_URL_PATH + path


def scrub_secrets(text: str, secrets: tuple[str | None, ...] = ()) -> str:
    """Remove passwords from a message: URL userinfo, ``password=`` pairs and any known secret value."""
    text = _URL_PASSWORD.sub(r"\1***@", text)
    text = _DSN_PASSWORD.sub(r"\1***", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class MediaCMSDatabaseConnector:
    """Streams playable MediaCMS media from its PostgreSQL database as ``CatalogItem``s."""

    def __init__(
        self,
        conninfo: str,
        *,
        mediacms_url: str,
        password: str | None = None,
        statement_timeout_s: int = 300,
        batch_size: int = 2000,
        policy: PlayablePolicy | None = None,
        progress: ProgressCallback | None = None,
    ) -> None:
        try:
            params = conninfo_to_dict(conninfo)
        except psycopg.Error:
            # psycopg's message quotes the string, which may hold a password: do not pass it on.
            raise ConfigurationError(
                "MEDIACMS_DB_URL is neither a libpq URL (postgresql://user@host:5432/db) nor a key=value DSN",
                setting="MEDIACMS_DB_URL",
            ) from None
        if not urlsplit(mediacms_url).netloc:
            raise ConfigurationError(
                f"MEDIACMS_URL must be an absolute URL (thumbnails are built on it), got {mediacms_url!r}",
                setting="MEDIACMS_URL",
            )
        self._conninfo = conninfo
        self._password = password
        self._secrets = (password, str(params.get("password") or "") or None, os.environ.get("PGPASSWORD"))
        self.mediacms_url = mediacms_url.rstrip("/")
        self.statement_timeout_s = statement_timeout_s
        self.batch_size = batch_size
        self.policy = policy or PlayablePolicy()
        self.progress = progress
        self.label = "mediacms-db:" + _describe(params)
        self.stats: dict[str, Any] = {}
        self.source_rejects: list[SourceReject] = []

    @classmethod
    def from_settings(
        cls, settings: Settings, *, progress: ProgressCallback | None = None
    ) -> MediaCMSDatabaseConnector:
        if not settings.mediacms_db_url:
            raise ConfigurationError(
                "source mediacms-db needs the MediaCMS database: set MEDIACMS_DB_URL "
                "(e.g. postgresql://kryten@db.internal:5432/mediacms)",
                setting="MEDIACMS_DB_URL",
            )
        if not settings.mediacms_url:
            raise ConfigurationError(
                "source mediacms-db needs MEDIACMS_URL to make thumbnail (and manifest) URLs absolute",
                setting="MEDIACMS_URL",
            )
        return cls(
            settings.mediacms_db_url,
            mediacms_url=settings.mediacms_url,
            password=settings.mediacms_db_password,
            statement_timeout_s=settings.mediacms_db_statement_timeout_s,
            batch_size=settings.mediacms_db_batch_size,
            policy=PlayablePolicy.parse(settings.mediacms_playable),
            progress=progress,
        )

    @asynccontextmanager
    async def session(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """The connection extraction uses: session read-only, statement timeout, one read-only transaction.

        Raises ``SourceError`` naming MEDIACMS_DB_URL (password scrubbed) when the database cannot be reached.
        """
        extra: dict[str, Any] = {"fallback_application_name": "kryten-pipeline"}
        if self._password:
            extra["password"] = self._password
        if "connect_timeout" not in conninfo_to_dict(self._conninfo):
            extra["connect_timeout"] = 15
        try:
            conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True, **extra)
        except psycopg.Error as exc:
            detail = scrub_secrets(str(exc).strip(), self._secrets)
            raise SourceError(
                f"cannot connect to the MediaCMS database {self.label}: {detail} — check MEDIACMS_DB_URL "
                "(host, port, database, user) and the password (MEDIACMS_DB_PASSWORD, PGPASSWORD or ~/.pgpass)",
                setting="MEDIACMS_DB_URL",
            ) from None
        try:
            try:
                # Session level (not just per transaction), so nothing this connection runs can write.
                await conn.execute(
                    "SELECT set_config('default_transaction_read_only', 'on', false),"
                    " set_config('statement_timeout', %s, false)",
                    (str(self.statement_timeout_s * 1000),),
                )
                await conn.set_autocommit(False)
                await conn.set_read_only(True)
                await conn.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
            except psycopg.Error as exc:
                raise SourceError(
                    f"cannot prepare a read-only session on {self.label}: "
                    f"{scrub_secrets(str(exc).strip(), self._secrets)}",
                    setting="MEDIACMS_DB_URL",
                ) from None
            yield conn
        finally:
            await conn.close()

    async def iter_catalog_items(self) -> AsyncIterator[CatalogItem]:
        """Yield every playable media row with all its categories; ``SourceError`` if the walk breaks."""
        started = time.perf_counter()
        self.source_rejects = []
        params = policy_params(self.policy)
        self.stats = {
            "rows": 0,
            "batches": 0,
            "batch_size": self.batch_size,
            "policy": params,
            "with_categories": 0,
            "without_thumbnail": 0,
            "wall_time_s": 0.0,
            "rows_per_s": 0.0,
        }
        async with self.session() as conn:
            try:
                await self._check_schema(conn)
                async with conn.cursor(name=CURSOR_NAME) as cursor:
                    await cursor.execute(CATALOG_QUERY, params)
                    while True:
                        rows = await cursor.fetchmany(self.batch_size)
                        if not rows:
                            break
                        self.stats["batches"] += 1
                        for row in rows:
                            item = self._row_to_item(row)
                            self.stats["rows"] += 1
                            yield item
                        self._update_timing(started)
                        if self.progress is not None:
                            self.progress(dict(self.stats))
                await self._count_excluded(conn, params)
            except psycopg.Error as exc:
                raise self._translate(exc) from exc
        self._update_timing(started)

    def _row_to_item(self, row: tuple[Any, ...]) -> CatalogItem:
        token, title, duration, uploaded_thumbnail, thumbnail, categories = row
        # Two categories may share a title; the item lists each name once.
        names = list(dict.fromkeys(categories or ()))
        thumbnail_url = media_file_url(self.mediacms_url, uploaded_thumbnail) or media_file_url(
            self.mediacms_url, thumbnail
        )
        if names:
            self.stats["with_categories"] += 1
        if thumbnail_url is None:
            self.stats["without_thumbnail"] += 1
        return CatalogItem(
            video_id=token,
            title=title,
            categories=names,
            duration_seconds=duration,  # as stored (0 when MediaCMS could not probe it), like the API connector
            thumbnail_url=thumbnail_url,
        )

    async def _check_schema(self, conn: psycopg.AsyncConnection[Any]) -> None:
        cursor = await conn.execute(SCHEMA_QUERY, {"tables": list(REQUIRED_COLUMNS)})
        found: dict[str, set[str]] = {table: set() for table in REQUIRED_COLUMNS}
        present: set[str] = set()
        for table, column in await cursor.fetchall():
            if column is not None:
                present.add(table)
                found[table].add(column)
        missing_tables = [table for table in REQUIRED_COLUMNS if table not in present]
        missing_columns = [
            f"{table}.{column}"
            for table, columns in REQUIRED_COLUMNS.items()
            if table in present
            for column in columns
            if column not in found[table]
        ]
        if missing_tables or missing_columns:
            parts = []
            if missing_tables:
                parts.append("missing tables: " + ", ".join(missing_tables))
            if missing_columns:
                parts.append("missing columns: " + ", ".join(missing_columns))
            raise ConfigurationError(
                f"the database behind {self.label} does not look like MediaCMS ({'; '.join(parts)}); "
                f"kryten reads the {SCHEMA_ASSUMPTION}. Point MEDIACMS_DB_URL at MediaCMS's database "
                "(and its schema on the search_path), or use KRYTEN_SOURCE=mediacms for other releases",
                setting="MEDIACMS_DB_URL",
            )

    async def _count_excluded(self, conn: psycopg.AsyncConnection[Any], params: dict[str, Any]) -> None:
        # Same transaction (REPEATABLE READ) as the stream, so the counts describe the rows just read.
        cursor = await conn.execute(EXCLUDED_QUERY, params)
        excluded = {reason: count for reason, count in await cursor.fetchall()}
        self.stats["excluded"] = excluded
        self.stats["excluded_total"] = sum(excluded.values())

    def _update_timing(self, started: float) -> None:
        elapsed = time.perf_counter() - started
        self.stats["wall_time_s"] = round(elapsed, 3)
        self.stats["rows_per_s"] = round(self.stats["rows"] / elapsed, 1) if elapsed > 0 else 0.0

    def _translate(self, exc: psycopg.Error) -> Exception:
        detail = scrub_secrets(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                               self._secrets)
        rows = self.stats.get("rows", 0)
        if isinstance(exc, pg_errors.UndefinedTable | pg_errors.UndefinedColumn):
            return ConfigurationError(
                f"the MediaCMS database query failed: {detail}; kryten reads the {SCHEMA_ASSUMPTION}",
                setting="MEDIACMS_DB_URL",
            )
        if isinstance(exc, pg_errors.InsufficientPrivilege):
            return ConfigurationError(
                f"the database user of {self.label} may not read the catalog: {detail}; grant it SELECT on "
                "files_media, files_category and files_media_category",
                setting="MEDIACMS_DB_URL",
            )
        if isinstance(exc, pg_errors.QueryCanceled):
            return SourceError(
                f"the MediaCMS database query was cancelled after {rows} rows ({detail}); raise "
                "MEDIACMS_DB_STATEMENT_TIMEOUT_S or lower MEDIACMS_DB_BATCH_SIZE",
                setting="MEDIACMS_DB_STATEMENT_TIMEOUT_S",
            )
        return SourceError(
            f"reading the MediaCMS database {self.label} failed after {rows} rows: {detail}",
            setting="MEDIACMS_DB_URL",
        )


def _describe(params: dict[str, Any]) -> str:
    """A secret-free ``user@host:port/dbname`` for labels and messages."""
    user = params.get("user") or os.environ.get("PGUSER") or ""
    host = params.get("host") or params.get("hostaddr") or os.environ.get("PGHOST") or "localhost"
    port = params.get("port") or os.environ.get("PGPORT") or "5432"
    dbname = params.get("dbname") or os.environ.get("PGDATABASE") or user
    return f"{user + '@' if user else ''}{host}:{port}/{dbname}"
