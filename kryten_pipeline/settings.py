"""The one place that reads configuration: environment variables (and a ``.env`` file).

Every setting is declared once, as a field of the pydantic model ``Settings``: its variable, type, default,
bounds, description and secrecy. The Dagster resources (``dagster_defs/setting_fields.py``), the CLI and the
README's configuration table (checked by the tests) are built from those declarations, so a name, a type or a
default is never spelled twice. A value that does not validate is refused with a ``ConfigurationError`` naming
its variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from kryten_pipeline.errors import ConfigurationError

SOURCES = ("export", "mediacms", "mediacms-db", "content-service", "fake")


def _setting(env: str, default: Any, help: str, *, secret: bool = False, **bounds: Any) -> Any:
    """A setting's declaration: the variable it is read from, its default (``None``: unset), its help text and
    whether it is a secret (kept out of ``repr`` and of the Dagster launchpad's values)."""
    return Field(default, validation_alias=env, description=help, repr=not secret, validate_default=True,
                 json_schema_extra={"env": env, "secret": secret}, **bounds)


class Settings(BaseModel):
    """Every setting, typed. Read them with ``Settings.from_env()``; ``Settings(field=value)`` takes typed values
    by field name (tests, resources)."""

    model_config = ConfigDict(frozen=True, validate_by_name=True, validate_by_alias=True, extra="forbid",
                              str_strip_whitespace=True)

    namespaces: list[str] = _setting("KRYTEN_NAMESPACES", "default", "comma-separated namespaces (Dagster partitions)")
    data_dir: Path = _setting("KRYTEN_DATA_DIR", "./data", "where snapshots, rejects and the embedded NATS store live")
    source: str = _setting("KRYTEN_SOURCE", "export", "catalog source: " + ", ".join(SOURCES))
    export_path: str | None = _setting("KRYTEN_EXPORT_PATH", None,
                                       "export file (JSON, JSONL, CSV); default: shipped sample")
    fake_items: int = _setting("KRYTEN_FAKE_ITEMS", 250, "item count of the deterministic fake source", ge=0)
    fake_fail_after: int | None = _setting("KRYTEN_FAKE_FAIL_AFTER", None,
                                           "make the fake source fail after N items (tests)", ge=0)
    mediacms_url: str | None = _setting("MEDIACMS_URL", None, "MediaCMS base URL, e.g. https://media.example.org")
    mediacms_token: str | None = _setting("MEDIACMS_TOKEN", None,
                                          "MediaCMS API token (editor token lists everything)", secret=True)
    mediacms_username: str | None = _setting("MEDIACMS_USERNAME", None, "MediaCMS user (alternative to a token)")
    mediacms_password: str | None = _setting("MEDIACMS_PASSWORD", None, "MediaCMS password", secret=True)
    mediacms_playable: str = _setting(
        "MEDIACMS_PLAYABLE", "listable", "what the playlist may play: listable (public, reviewed, encoded videos) "
        "plus any of unlisted, private, unreviewed, unencoded, audio, image, pdf; or all")
    mediacms_concurrency: int = _setting("MEDIACMS_CONCURRENCY", 4, "MediaCMS API requests in flight at once", ge=1)
    mediacms_timeout: int = _setting("MEDIACMS_TIMEOUT", 30, "seconds before a MediaCMS API request times out", ge=1)
    mediacms_retries: int = _setting(
        "MEDIACMS_RETRIES", 4, "retries of a MediaCMS API request after a network error, 429 or 5xx (with backoff)",
        ge=0)
    mediacms_db_url: str | None = _setting(
        "MEDIACMS_DB_URL", None,
        "MediaCMS PostgreSQL as a libpq URL or DSN (source mediacms-db), e.g. postgresql://kryten@db/mediacms")
    mediacms_db_password: str | None = _setting(
        "MEDIACMS_DB_PASSWORD", None, "password for MEDIACMS_DB_URL (else PGPASSWORD or ~/.pgpass)", secret=True)
    mediacms_db_statement_timeout_s: int = _setting(
        "MEDIACMS_DB_STATEMENT_TIMEOUT_S", 300,
        "statement_timeout of the read-only MediaCMS DB session, seconds (per batch fetch)", ge=1)
    mediacms_db_batch_size: int = _setting("MEDIACMS_DB_BATCH_SIZE", 2000, "rows per fetch from the DB cursor", ge=1)
    content_service_addr: str | None = _setting(
        "CONTENT_SERVICE_ADDR", None, "ContentService gRPC address host:port (source content-service)")
    service_auth_token: str | None = _setting(
        "SERVICE_AUTH_TOKEN", None, "ContentService token, sent as 'authorization: Bearer <token>'", secret=True)
    content_service_tls_ca: str | None = _setting(
        "CONTENT_SERVICE_TLS_CA", None, "CA bundle to verify ContentService (default: system roots)")
    content_service_tls_cert: str | None = _setting(
        "CONTENT_SERVICE_TLS_CERT", None, "client certificate for mutual TLS")
    content_service_tls_key: str | None = _setting("CONTENT_SERVICE_TLS_KEY", None, "client key for mutual TLS")
    content_service_plaintext: bool = _setting(
        "CONTENT_SERVICE_PLAINTEXT", False, "true: no TLS (only for a local Envoy sidecar that does mutual TLS)")
    content_service_cdn_host: str | None = _setting(
        "CONTENT_SERVICE_CDN_HOST", None, "host(s) manifest URLs must be on (StreamingService CDN), comma-separated")
    content_service_chunk_limit: int = _setting(
        "CONTENT_SERVICE_CHUNK_LIMIT", 100, "items per streamed chunk", ge=1)
    content_service_max_retries: int = _setting(
        "CONTENT_SERVICE_MAX_RETRIES", 5, "reconnects after a dropped stream without progress before giving up", ge=0)
    content_service_idle_timeout_s: int = _setting(
        "CONTENT_SERVICE_IDLE_TIMEOUT_S", 60, "a stream silent this long (seconds) counts as dropped and is resumed",
        ge=1)
    manifest_base_url: str | None = _setting(
        "KRYTEN_MANIFEST_BASE_URL", None, "https base for manifest URLs; default: MEDIACMS_URL with scheme https")
    nats_url: str | None = _setting("NATS_URL", None, "NATS server URL; unset: start an embedded nats-server")
    nats_user: str | None = _setting("NATS_USER", None, "NATS user")
    nats_password: str | None = _setting("NATS_PASSWORD", None, "NATS password", secret=True)
    nats_token: str | None = _setting("NATS_TOKEN", None, "NATS token", secret=True)
    nats_creds: str | None = _setting("NATS_CREDS", None, "NATS credentials (.creds) file")
    nats_tls_ca: str | None = _setting("NATS_TLS_CA", None, "CA bundle to verify the NATS server")
    nats_tls_cert: str | None = _setting("NATS_TLS_CERT", None, "client certificate for NATS mutual TLS")
    nats_tls_key: str | None = _setting("NATS_TLS_KEY", None, "client key for NATS mutual TLS")
    kv_bucket: str = _setting("KRYTEN_KV_BUCKET", "kryten_playlist_snapshot", "NATS KV bucket")
    kv_replicas: int = _setting(
        "KRYTEN_KV_REPLICAS", 1, "replicas of the KV and Object Store buckets when they are created (3 or 5 on a "
        "NATS cluster; 1 on a single server)", ge=1)
    object_bucket: str = _setting(
        "KRYTEN_OBJECT_BUCKET", "kryten_playlist_snapshot_files",
        "NATS Object Store bucket holding every published snapshot file (what `follow` installs)")
    max_reject_ratio: float = _setting(
        "KRYTEN_MAX_REJECT_RATIO", 0.05, "fail if more than this share of rows is rejected", ge=0.0, le=1.0)
    min_count_ratio: float = _setting(
        "KRYTEN_MIN_COUNT_RATIO", 0.5, "fail if the item count falls below this fraction of the live snapshot's",
        ge=0.0, le=1.0)
    max_removed_ratio: float = _setting(
        "KRYTEN_MAX_REMOVED_RATIO", 0.2,
        "fail if a refresh would remove more than this share of the live catalog (override per run)", ge=0.0, le=1.0)
    require_https_thumbnails: bool = _setting(
        "KRYTEN_REQUIRE_HTTPS_THUMBNAILS", True,
        "true: a thumbnail_url that is not https is dropped from its item (counted); false: http is kept")
    keep_snapshots: int = _setting(
        "KRYTEN_KEEP_SNAPSHOTS", 3,
        "snapshots kept per namespace for rollback (SQLite files and KV records; never the current one)", ge=1)
    # Automation (schedules, the catalog.updated sensor, refresh triggers).
    refresh_schedule_enabled: bool = _setting(
        "KRYTEN_REFRESH_SCHEDULE_ENABLED", False,
        "true: the daily refresh schedule starts RUNNING under dagster (else STOPPED until started in the UI)")
    refresh_cron: str = _setting(
        "KRYTEN_REFRESH_CRON", "0 3 * * *", "cron of the refresh schedule (refreshes every registered namespace)")
    refresh_timezone: str = _setting("KRYTEN_REFRESH_TIMEZONE", "UTC", "IANA timezone of KRYTEN_REFRESH_CRON")
    drift_check_cron: str = _setting(
        "KRYTEN_DRIFT_CHECK_CRON", "*/15 * * * *",
        "cron of the kv_current_matches_sqlite drift check (every registered namespace)")
    code_git_url: str | None = _setting(
        "KRYTEN_CODE_GIT_URL", None, "repository URL (e.g. https://github.com/org/kryten-pipeline): the Dagster UI "
        "links each asset to its source lines there; unset: local file paths")
    code_git_branch: str = _setting("KRYTEN_CODE_GIT_BRANCH", "main", "branch or commit those links point at")
    redis_url: str | None = _setting(
        "REDIS_URL", None, "Redis with the catalog.updated stream (redis://, rediss://); unset: the event sensor skips",
        secret=True)
    catalog_event_stream_key: str = _setting(
        "CATALOG_EVENT_STREAM_KEY", "catalog:events", "Redis Stream the catalog.updated events are read from")
    event_group: str = _setting(
        "KRYTEN_EVENT_GROUP", "kryten-pipeline",
        "consumer group of the event sensor on that stream (created if absent)")
    event_consumer: str = _setting("KRYTEN_EVENT_CONSUMER", "dagster-sensor", "consumer name of the event sensor")
    event_debounce_s: int = _setting(
        "KRYTEN_EVENT_DEBOUNCE_S", 30, "refresh a namespace once this many seconds passed without a new event for it",
        ge=0)
    event_batch_size: int = _setting(
        "KRYTEN_EVENT_BATCH_SIZE", 500, "stream entries read per sensor tick at most", ge=1)
    event_claim_idle_s: int = _setting(
        "KRYTEN_EVENT_CLAIM_IDLE_S", 900,
        "entries unacknowledged this long (failed run, dead consumer) are reclaimed and retried", ge=1)
    nats_subject_prefix: str = _setting(
        "KRYTEN_NATS_SUBJECT_PREFIX", "kryten",
        "prefix of the refresh command subject {prefix}.playlist.cmd.catalog_refresh")
    admin_token: str | None = _setting(
        "KRYTEN_ADMIN_TOKEN", None, "bearer token of the admin HTTP endpoint (it refuses to start without one)",
        secret=True)
    admin_bind: str = _setting("KRYTEN_ADMIN_BIND", "127.0.0.1", "address the admin HTTP endpoint listens on")
    admin_port: int = _setting("KRYTEN_ADMIN_PORT", 8787, "port of the admin HTTP endpoint", ge=0)
    admin_tls_cert: str | None = _setting(
        "KRYTEN_ADMIN_TLS_CERT", None,
        "PEM certificate (chain) the admin endpoint serves HTTPS with; with KRYTEN_ADMIN_TLS_KEY")
    admin_tls_key: str | None = _setting("KRYTEN_ADMIN_TLS_KEY", None, "PEM private key of KRYTEN_ADMIN_TLS_CERT")

    @field_validator("namespaces", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        return parse_namespaces(value) if isinstance(value, str) else value

    @field_validator("namespaces")
    @classmethod
    def _valid_namespaces(cls, value: list[str]) -> list[str]:
        return parse_namespaces(",".join(value))

    @field_validator("source")
    @classmethod
    def _known_source(cls, value: str) -> str:
        if value not in SOURCES:
            raise ValueError(f"unknown source {value!r}; expected one of {', '.join(SOURCES)}")
        return value

    @field_validator("refresh_timezone")
    @classmethod
    def _iana_timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {value!r} (expected an IANA name like UTC or Europe/Berlin)") from None
        return value

    @field_validator("nats_subject_prefix")
    @classmethod
    def _subject_prefix(cls, value: str) -> str:
        # NATS subject tokens: no wildcards or whitespace, no empty tokens.
        if any(ch in value for ch in " \t\r\n*>") or any(not token for token in value.split(".")):
            raise ValueError(f"{value!r} is not a valid NATS subject prefix")
        return value

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Settings:
        """Settings from field name → value (text as in the environment, or typed); a missing, ``None`` or blank
        value takes the default. Names that are not settings are ignored."""
        given = {}
        for name, value in values.items():
            if name not in cls.model_fields or value is None:
                continue
            if isinstance(value, str):
                value = value.strip()
                if not value:
                    continue
            given[name] = value
        try:
            return cls.model_validate(given)
        except ValidationError as exc:
            raise configuration_error(exc) from None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from the environment (``os.environ`` unless given); call ``load_dotenv_file`` first for ``.env``."""
        env = os.environ if environ is None else environ
        return cls.from_mapping({spec.field: env.get(spec.env) for spec in SETTINGS})


@dataclass(frozen=True, slots=True)
class SettingSpec:
    """A setting as the CLI, the resources and the README table show it: ``default`` is its text form."""

    env: str
    field: str
    default: str | None
    help: str
    secret: bool = False


def setting_text(value: Any) -> str | None:
    """A setting's value as the environment spells it (``None``: unset)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def _spec(name: str) -> SettingSpec:
    info = Settings.model_fields[name]
    extra = info.json_schema_extra
    assert isinstance(extra, dict), name
    return SettingSpec(str(extra["env"]), name, setting_text(info.default), info.description or "",
                       bool(extra["secret"]))


SETTINGS: tuple[SettingSpec, ...] = tuple(_spec(name) for name in Settings.model_fields)
SPEC_BY_FIELD = {spec.field: spec for spec in SETTINGS}
# A pydantic error names a field by its variable (input from the environment) or by its name (typed input).
_SPEC_BY_NAME = SPEC_BY_FIELD | {spec.env: spec for spec in SETTINGS}


def configuration_error(exc: ValidationError) -> ConfigurationError:
    """One ``ConfigurationError`` for every value pydantic refused, each named by its variable."""
    problems: list[tuple[str, str]] = []
    for error in exc.errors():
        name = str((error.get("loc") or ("",))[0])
        spec = _SPEC_BY_NAME.get(name)
        problems.append((spec.env if spec else name, _message(error, spec)))
    if len(problems) == 1:
        env, message = problems[0]
        return ConfigurationError(message, setting=env)
    return ConfigurationError("; ".join(f"{env}: {message}" for env, message in problems), setting=problems[0][0])


def _message(error: Any, spec: SettingSpec | None) -> str:
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    if kind in ("int_parsing", "int_from_float", "int_type"):
        return f"{value!r} is not an integer"
    if kind in ("float_parsing", "float_type", "finite_number"):
        return f"{value!r} is not a number"
    if kind in ("bool_parsing", "bool_type"):
        return f"{value!r} is not true/false (use true/false, yes/no, on/off or 1/0)"
    if kind in ("greater_than_equal", "less_than_equal") and spec is not None:
        bounds = {type(item).__name__: item for item in Settings.model_fields[spec.field].metadata}
        if "Ge" in bounds and "Le" in bounds:
            return f"must be between {bounds['Ge'].ge:g} and {bounds['Le'].le:g}, got {value}"
        if "ge" in ctx:
            return f"must be at least {ctx['ge']}, got {value}"
        return f"must be at most {ctx['le']}, got {value}"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    if kind == "extra_forbidden":
        return "is not a setting"
    return str(error["msg"])


def load_dotenv_file(path: str | os.PathLike[str] = ".env") -> None:
    """Load ``.env`` from the working directory into the environment, never overriding a variable already set.

    Into the environment rather than only into ``Settings``: the Dagster resources bind their fields to
    ``EnvVar``s, which Dagster resolves from ``os.environ`` in whichever process runs the step."""
    from dotenv import load_dotenv

    before = set(os.environ)
    load_dotenv(path, override=False)
    _FROM_DOTENV.update(set(os.environ) - before)


_FROM_DOTENV: set[str] = set()


def loaded_from_dotenv() -> frozenset[str]:
    """The variables ``load_dotenv_file`` set in this process (those the environment did not have)."""
    return frozenset(_FROM_DOTENV)


def parse_namespaces(raw: str) -> list[str]:
    from kryten_pipeline.namespaces import validate_namespace

    names = [part.strip() for part in raw.split(",") if part.strip()]
    if not names:
        raise ConfigurationError("no namespace configured", setting="KRYTEN_NAMESPACES")
    for name in names:
        validate_namespace(name)
    return list(dict.fromkeys(names))
