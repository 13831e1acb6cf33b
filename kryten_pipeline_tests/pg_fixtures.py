"""A real, throw-away PostgreSQL for tests and benchmarks, and MediaCMS's catalog tables to fill it with.

The server comes from the Debian ``postgresql`` package binaries (``/usr/lib/postgresql/*/bin``): ``initdb``
into a temp dir, ``pg_ctl`` start on a random 127.0.0.1 port with its unix socket in that dir, password
(scram-sha-256) authentication, removed afterwards. PostgreSQL refuses to run as root, so under root the
server runs as the ``postgres`` system user (or ``nobody``) via ``runuser``.

Usage::

    with running_postgres() as pg:
        pg.create_database("catalog")
        with pg.connect("catalog") as conn:
            create_mediacms_schema(conn)
"""

from __future__ import annotations

import glob
import os
import pwd
import random
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg

NO_POSTGRES_REASON = (
    "no PostgreSQL server binaries (initdb, pg_ctl, postgres) found under /usr/lib/postgresql/*/bin or on PATH; "
    "install the Debian package: apt-get install -y postgresql"
)
_REQUIRED_BINARIES = ("initdb", "pg_ctl", "postgres")


def find_pg_bin_dir() -> Path | None:
    """The newest PostgreSQL server ``bin`` dir (``KRYTEN_PG_BIN_DIR`` overrides), or None."""
    candidates: list[Path] = []
    if os.environ.get("KRYTEN_PG_BIN_DIR"):
        candidates.append(Path(os.environ["KRYTEN_PG_BIN_DIR"]))
    versioned = glob.glob("/usr/lib/postgresql/*/bin")
    versioned.sort(key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0, reverse=True)
    candidates.extend(Path(p) for p in versioned)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    for candidate in candidates:
        if all(os.access(candidate / name, os.X_OK) for name in _REQUIRED_BINARIES):
            return candidate
    return None


def skip_without_postgres() -> Path:
    """For tests: the bin dir, or ``pytest.skip`` with the reason and the package to install."""
    import pytest

    bin_dir = find_pg_bin_dir()
    if bin_dir is None:
        pytest.skip(NO_POSTGRES_REASON)
    return bin_dir


@dataclass
class PostgresServer:
    """A running throw-away server. ``superuser``/``password`` authenticate over TCP on ``host:port``."""

    bin_dir: Path
    base_dir: Path
    port: int
    superuser: str
    password: str
    host: str = "127.0.0.1"
    run_as: str | None = None
    _stopped: bool = field(default=False, repr=False)

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base_dir

    def url(
        self,
        dbname: str = "postgres",
        *,
        user: str | None = None,
        password: str | None = None,
        with_password: bool = True,
    ) -> str:
        """A libpq URL; ``with_password=False`` leaves the password to other means (PGPASSWORD, kwargs)."""
        user = user or self.superuser
        secret = password if password is not None else self.password
        userinfo = quote(user, safe="") + (":" + quote(secret, safe="") if with_password and secret else "")
        return f"postgresql://{userinfo}@{self.host}:{self.port}/{quote(dbname, safe='')}"

    def connect(self, dbname: str = "postgres", **kwargs: Any) -> psycopg.Connection[Any]:
        """A superuser connection (autocommit unless told otherwise) for setting up fixtures."""
        kwargs.setdefault("autocommit", True)
        return psycopg.connect(self.url(dbname), **kwargs)

    def create_database(self, name: str) -> str:
        with self.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            _run(
                self.run_as,
                [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "immediate", "-w", "stop"],
                cwd=self.base_dir,
                check=False,
            )
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)


@contextmanager
def running_postgres(
    *, superuser: str = "kryten_test", password: str | None = None, settings: Sequence[str] = ()
) -> Iterator[PostgresServer]:
    """Start a fresh server (initdb + pg_ctl) and stop and delete it on exit.

    ``settings`` are extra ``name=value`` server settings. Raises ``RuntimeError`` (with the server log)
    if it cannot start; tests call ``skip_without_postgres()`` first to skip where no binaries exist.
    """
    bin_dir = find_pg_bin_dir()
    if bin_dir is None:
        raise RuntimeError(NO_POSTGRES_REASON)
    password = password or "pw-" + secrets.token_hex(8)
    run_as = _unprivileged_user() if os.geteuid() == 0 else None
    base_dir = Path(tempfile.mkdtemp(prefix="kryten-pg-"))
    server: PostgresServer | None = None
    try:
        os.chmod(base_dir, 0o700)
        pwfile = base_dir / "pwfile"
        pwfile.write_text(password + "\n")
        if run_as is not None:
            entry = pwd.getpwnam(run_as)
            for path in (base_dir, pwfile):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        _run(
            run_as,
            [
                str(bin_dir / "initdb"),
                "-D",
                str(base_dir / "data"),
                "-U",
                superuser,
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
                "--no-instructions",
            ],
            cwd=base_dir,
        )
        pwfile.unlink()
        # A free port can be taken between probing and binding: retry a few times with a new one.
        last_error = ""
        for _attempt in range(5):
            port = _free_port()
            options = " ".join(
                [
                    f"-p {port}",
                    f"-k {base_dir}",
                    "-c listen_addresses=127.0.0.1",
                    # Durability is irrelevant for a throw-away server; these make fills several times faster.
                    "-c fsync=off",
                    "-c synchronous_commit=off",
                    "-c full_page_writes=off",
                    *(f"-c {setting}" for setting in settings),
                ]
            )
            result = _run(
                run_as,
                [
                    str(bin_dir / "pg_ctl"),
                    "-D",
                    str(base_dir / "data"),
                    "-l",
                    str(base_dir / "server.log"),
                    "-w",
                    "-t",
                    "60",
                    "-o",
                    options,
                    "start",
                ],
                cwd=base_dir,
                check=False,
            )
            if result.returncode == 0:
                server = PostgresServer(bin_dir, base_dir, port, superuser, password, run_as=run_as)
                break
            last_error = result.stdout + result.stderr + _tail(base_dir / "server.log")
        if server is None:
            raise RuntimeError(f"PostgreSQL did not start:\n{last_error}")
        yield server
    finally:
        if server is not None:
            server.stop()
        else:
            shutil.rmtree(base_dir, ignore_errors=True)


def _unprivileged_user() -> str:
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise RuntimeError("running as root and no 'postgres' or 'nobody' user exists to run PostgreSQL as")


def _run(run_as: str | None, argv: list[str], *, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    if run_as is not None:
        runuser = shutil.which("runuser")
        if runuser:
            argv = [runuser, "-u", run_as, "--", *argv]
        else:
            entry = pwd.getpwnam(run_as)
            argv = ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups", *argv]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return result


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --- MediaCMS's catalog tables (8.x core columns, as Django creates them) -------------------------------

MEDIACMS_SCHEMA_SQL = """
CREATE TABLE files_category (
    id serial PRIMARY KEY,
    uid varchar(36) NOT NULL UNIQUE,
    title varchar(100) NOT NULL,
    description text NOT NULL DEFAULT '',
    is_global boolean NOT NULL DEFAULT false,
    is_rbac_category boolean NOT NULL DEFAULT false,
    is_lms_course boolean NOT NULL DEFAULT false,
    add_date timestamptz NOT NULL DEFAULT now(),
    user_id integer
);
CREATE TABLE files_media (
    id serial PRIMARY KEY,
    friendly_token varchar(12) NOT NULL UNIQUE,
    title varchar(100) NOT NULL,
    description text NOT NULL DEFAULT '',
    duration integer NOT NULL DEFAULT 0,
    state varchar(20) NOT NULL DEFAULT 'public',
    is_reviewed boolean NOT NULL DEFAULT true,
    encoding_status varchar(20) NOT NULL DEFAULT 'pending',
    media_type varchar(20) NOT NULL DEFAULT 'video',
    listable boolean NOT NULL DEFAULT false,
    thumbnail varchar(500) NOT NULL DEFAULT '',
    uploaded_thumbnail varchar(500) NOT NULL DEFAULT '',
    poster varchar(500) NOT NULL DEFAULT '',
    add_date timestamptz NOT NULL DEFAULT now(),
    edit_date timestamptz NOT NULL DEFAULT now(),
    user_id integer NOT NULL DEFAULT 1
);
CREATE TABLE files_media_category (
    id serial PRIMARY KEY,
    media_id integer NOT NULL REFERENCES files_media (id) DEFERRABLE INITIALLY DEFERRED,
    category_id integer NOT NULL REFERENCES files_category (id) DEFERRABLE INITIALLY DEFERRED,
    UNIQUE (media_id, category_id)
);
CREATE INDEX files_media_category_media_id ON files_media_category (media_id);
CREATE INDEX files_media_category_category_id ON files_media_category (category_id);
"""

MEDIA_COLUMNS = (
    "friendly_token",
    "title",
    "duration",
    "state",
    "is_reviewed",
    "encoding_status",
    "media_type",
    "listable",
    "thumbnail",
    "uploaded_thumbnail",
    "poster",
    "user_id",
)


@dataclass
class MediaRow:
    """One ``files_media`` row; defaults describe a playable (listable) video."""

    friendly_token: str
    title: str
    duration: int = 60
    state: str = "public"
    is_reviewed: bool = True
    encoding_status: str = "success"
    media_type: str = "video"
    thumbnail: str = ""
    uploaded_thumbnail: str = ""
    poster: str = ""
    user_id: int = 1
    categories: list[str] = field(default_factory=list)

    @property
    def listable(self) -> bool:
        return self.state == "public" and self.is_reviewed and self.encoding_status == "success"

    def values(self) -> tuple[Any, ...]:
        return (
            self.friendly_token,
            self.title,
            self.duration,
            self.state,
            self.is_reviewed,
            self.encoding_status,
            self.media_type,
            self.listable,
            self.thumbnail,
            self.uploaded_thumbnail,
            self.poster,
            self.user_id,
        )


def create_mediacms_schema(conn: psycopg.Connection[Any]) -> None:
    conn.execute(MEDIACMS_SCHEMA_SQL)


def insert_categories(conn: psycopg.Connection[Any], titles: Iterable[str]) -> dict[str, int]:
    """Insert categories; returns title → id."""
    ids: dict[str, int] = {}
    with conn.cursor() as cur:
        for title in titles:
            cur.execute(
                "INSERT INTO files_category (uid, title) VALUES (%s, %s) RETURNING id", (secrets.token_hex(16), title)
            )
            row = cur.fetchone()
            assert row is not None
            ids[title] = row[0]
    return ids


def insert_media(conn: psycopg.Connection[Any], rows: Iterable[MediaRow]) -> None:
    """COPY media rows in, then link their categories (creating missing categories by title)."""
    rows = list(rows)
    with conn.cursor() as cur, cur.copy(f"COPY files_media ({', '.join(MEDIA_COLUMNS)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row.values())
    wanted = {title for row in rows for title in row.categories}
    existing = dict(conn.execute("SELECT title, id FROM files_category").fetchall())
    existing.update(insert_categories(conn, sorted(wanted - set(existing))))
    media_ids = dict(conn.execute("SELECT friendly_token, id FROM files_media").fetchall())
    with conn.cursor() as cur, cur.copy("COPY files_media_category (media_id, category_id) FROM STDIN") as copy:
        for row in rows:
            for title in dict.fromkeys(row.categories):
                copy.write_row((media_ids[row.friendly_token], existing[title]))


def fill_mediacms_catalog(
    conn: psycopg.Connection[Any], *, media: int, categories: int = 20, seed: int = 5, unplayable_share: float = 0.1
) -> int:
    """Create the schema and a synthetic catalog of ``media`` rows; returns how many are playable."""
    rng = random.Random(seed)
    create_mediacms_schema(conn)
    titles = [f"Category {i:02d}" for i in range(categories)]
    insert_categories(conn, titles)
    rows = []
    playable = 0
    for i in range(media):
        row = MediaRow(
            friendly_token=f"m{i:08d}",
            title=f"Video number {i} " + rng.choice(("amber", "cobalt", "ember", "fjord", "東京", "café")),
            duration=rng.randint(0, 7200),
            thumbnail=f"original//thumbnails/user/u{i % 97}/t{i}.jpg",
            uploaded_thumbnail=f"original/thumbnails/user/u{i % 97}/up{i}.jpg" if i % 5 == 0 else "",
            categories=rng.sample(titles, rng.choice((0, 1, 1, 2, 3))),
        )
        if rng.random() < unplayable_share:
            row.state = rng.choice(("private", "unlisted"))
        else:
            playable += 1
        rows.append(row)
    insert_media(conn, rows)
    conn.execute("ANALYZE")
    return playable
