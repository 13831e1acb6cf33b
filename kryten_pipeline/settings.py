"""The one place that reads configuration: environment variables (and a ``.env`` file).

Every setting is listed once in ``SETTINGS``; the Dagster resources, the CLI and the README table are
built from that list, so a name or a default is never spelled twice.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kryten_pipeline.errors import ConfigurationError

SOURCES = ("export", "mediacms", "mediacms-db", "content-service", "fake")


@dataclass(frozen=True, slots=True)
class SettingSpec:
    env: str
    field: str
    default: str | None
    help: str
    secret: bool = False


SETTINGS: tuple[SettingSpec, ...] = (
    SettingSpec("KRYTEN_NAMESPACES", "namespaces", "default", "comma-separated namespaces (Dagster partitions)"),
    SettingSpec("KRYTEN_DATA_DIR", "data_dir", "./data", "where snapshots, rejects and the embedded NATS store live"),
    SettingSpec("KRYTEN_SOURCE", "source", "export", "catalog source: " + ", ".join(SOURCES)),
    SettingSpec("KRYTEN_EXPORT_PATH", "export_path", None, "export file (JSON, JSONL, CSV); default: shipped sample"),
    SettingSpec("KRYTEN_FAKE_ITEMS", "fake_items", "250", "item count of the deterministic fake source"),
    SettingSpec("KRYTEN_FAKE_FAIL_AFTER", "fake_fail_after", None, "make the fake source fail after N items (tests)"),
    SettingSpec("MEDIACMS_URL", "mediacms_url", None, "MediaCMS base URL, e.g. https://media.example.org"),
    SettingSpec("MEDIACMS_TOKEN", "mediacms_token", None, "MediaCMS API token (editor token lists everything)", True),
    SettingSpec("MEDIACMS_USERNAME", "mediacms_username", None, "MediaCMS user (alternative to a token)"),
    SettingSpec("MEDIACMS_PASSWORD", "mediacms_password", None, "MediaCMS password", True),
    SettingSpec("MEDIACMS_PLAYABLE", "mediacms_playable", "listable",
                "what the playlist may play: listable (public, reviewed, encoded videos) plus any of "
                "unlisted, private, unreviewed, unencoded, audio, image, pdf; or all"),
    SettingSpec("MEDIACMS_CONCURRENCY", "mediacms_concurrency", "4", "MediaCMS API requests in flight at once"),
    SettingSpec("MEDIACMS_TIMEOUT", "mediacms_timeout", "30", "seconds before a MediaCMS API request times out"),
    SettingSpec("MEDIACMS_RETRIES", "mediacms_retries", "4",
                "retries of a MediaCMS API request after a network error, 429 or 5xx (with backoff)"),
    SettingSpec("MEDIACMS_DB_URL", "mediacms_db_url", None,
                "MediaCMS PostgreSQL as a libpq URL or DSN (source mediacms-db), e.g. postgresql://kryten@db/mediacms"),
    SettingSpec("MEDIACMS_DB_PASSWORD", "mediacms_db_password", None,
                "password for MEDIACMS_DB_URL (else PGPASSWORD or ~/.pgpass)", True),
    SettingSpec("MEDIACMS_DB_STATEMENT_TIMEOUT_S", "mediacms_db_statement_timeout_s", "300",
                "statement_timeout of the read-only MediaCMS DB session, seconds (per batch fetch)"),
    SettingSpec("MEDIACMS_DB_BATCH_SIZE", "mediacms_db_batch_size", "2000", "rows per fetch from the DB cursor"),
    SettingSpec("CONTENT_SERVICE_ADDR", "content_service_addr", None,
                "ContentService gRPC address host:port (source content-service)"),
    SettingSpec("SERVICE_AUTH_TOKEN", "service_auth_token", None,
                "ContentService token, sent as 'authorization: Bearer <token>'", True),
    SettingSpec("CONTENT_SERVICE_TLS_CA", "content_service_tls_ca", None,
                "CA bundle to verify ContentService (default: system roots)"),
    SettingSpec("CONTENT_SERVICE_TLS_CERT", "content_service_tls_cert", None, "client certificate for mutual TLS"),
    SettingSpec("CONTENT_SERVICE_TLS_KEY", "content_service_tls_key", None, "client key for mutual TLS"),
    SettingSpec("CONTENT_SERVICE_PLAINTEXT", "content_service_plaintext", "false",
                "true: no TLS (only for a local Envoy sidecar that does mutual TLS)"),
    SettingSpec("CONTENT_SERVICE_CDN_HOST", "content_service_cdn_host", None,
                "host(s) manifest URLs must be on (StreamingService CDN), comma-separated"),
    SettingSpec("CONTENT_SERVICE_CHUNK_LIMIT", "content_service_chunk_limit", "100", "items per streamed chunk"),
    SettingSpec("CONTENT_SERVICE_MAX_RETRIES", "content_service_max_retries", "5",
                "reconnects after a dropped stream without progress before giving up"),
    SettingSpec("CONTENT_SERVICE_IDLE_TIMEOUT_S", "content_service_idle_timeout_s", "60",
                "a stream silent this long (seconds) counts as dropped and is resumed"),
    SettingSpec("KRYTEN_MANIFEST_BASE_URL", "manifest_base_url", None,
                "https base for manifest URLs; default: MEDIACMS_URL with scheme https"),
    SettingSpec("NATS_URL", "nats_url", None, "NATS server URL; unset: start an embedded nats-server"),
    SettingSpec("NATS_USER", "nats_user", None, "NATS user"),
    SettingSpec("NATS_PASSWORD", "nats_password", None, "NATS password", True),
    SettingSpec("NATS_TOKEN", "nats_token", None, "NATS token", True),
    SettingSpec("NATS_CREDS", "nats_creds", None, "NATS credentials (.creds) file"),
    SettingSpec("NATS_TLS_CA", "nats_tls_ca", None, "CA bundle to verify the NATS server"),
    SettingSpec("NATS_TLS_CERT", "nats_tls_cert", None, "client certificate for NATS mutual TLS"),
    SettingSpec("NATS_TLS_KEY", "nats_tls_key", None, "client key for NATS mutual TLS"),
    SettingSpec("KRYTEN_KV_BUCKET", "kv_bucket", "kryten_playlist_snapshot", "NATS KV bucket"),
    SettingSpec("KRYTEN_KV_REPLICAS", "kv_replicas", "1",
                "replicas of the KV and Object Store buckets when they are created (3 or 5 on a NATS cluster; "
                "1 on a single server)"),
    SettingSpec("KRYTEN_OBJECT_BUCKET", "object_bucket", "kryten_playlist_snapshot_files",
                "NATS Object Store bucket holding every published snapshot file (what `follow` installs)"),
    SettingSpec("KRYTEN_MAX_REJECT_RATIO", "max_reject_ratio", "0.05",
                "fail if more than this share of rows is rejected"),
    SettingSpec("KRYTEN_MIN_COUNT_RATIO", "min_count_ratio", "0.5",
                "fail if the item count falls below this fraction of the live snapshot's"),
    SettingSpec("KRYTEN_MAX_REMOVED_RATIO", "max_removed_ratio", "0.2",
                "fail if a refresh would remove more than this share of the live catalog (override per run)"),
    SettingSpec("KRYTEN_REQUIRE_HTTPS_THUMBNAILS", "require_https_thumbnails", "true",
                "true: a thumbnail_url that is not https is dropped from its item (counted); false: http is kept"),
    SettingSpec("KRYTEN_KEEP_SNAPSHOTS", "keep_snapshots", "3",
                "snapshots kept per namespace for rollback (SQLite files and KV records; never the current one)"),
    # Automation (schedules, the catalog.updated sensor, refresh triggers).
    SettingSpec("KRYTEN_REFRESH_SCHEDULE_ENABLED", "refresh_schedule_enabled", "false",
                "true: the daily refresh schedule starts RUNNING under dagster (else STOPPED until started in the UI)"),
    SettingSpec("KRYTEN_REFRESH_CRON", "refresh_cron", "0 3 * * *",
                "cron of the refresh schedule (refreshes every registered namespace)"),
    SettingSpec("KRYTEN_REFRESH_TIMEZONE", "refresh_timezone", "UTC", "IANA timezone of KRYTEN_REFRESH_CRON"),
    SettingSpec("KRYTEN_DRIFT_CHECK_CRON", "drift_check_cron", "*/15 * * * *",
                "cron of the kv_current_matches_sqlite drift check (every registered namespace)"),
    SettingSpec("KRYTEN_CODE_GIT_URL", "code_git_url", None,
                "repository URL (e.g. https://github.com/org/kryten-pipeline): the Dagster UI links each asset to "
                "its source lines there; unset: local file paths"),
    SettingSpec("KRYTEN_CODE_GIT_BRANCH", "code_git_branch", "main", "branch or commit those links point at"),
    SettingSpec("REDIS_URL", "redis_url", None,
                "Redis with the catalog.updated stream (redis://, rediss://); unset: the event sensor skips", True),
    SettingSpec("CATALOG_EVENT_STREAM_KEY", "catalog_event_stream_key", "catalog:events",
                "Redis Stream the catalog.updated events are read from"),
    SettingSpec("KRYTEN_EVENT_GROUP", "event_group", "kryten-pipeline",
                "consumer group of the event sensor on that stream (created if absent)"),
    SettingSpec("KRYTEN_EVENT_CONSUMER", "event_consumer", "dagster-sensor", "consumer name of the event sensor"),
    SettingSpec("KRYTEN_EVENT_DEBOUNCE_S", "event_debounce_s", "30",
                "refresh a namespace once this many seconds passed without a new event for it"),
    SettingSpec("KRYTEN_EVENT_BATCH_SIZE", "event_batch_size", "500", "stream entries read per sensor tick at most"),
    SettingSpec("KRYTEN_EVENT_CLAIM_IDLE_S", "event_claim_idle_s", "900",
                "entries unacknowledged this long (failed run, dead consumer) are reclaimed and retried"),
    SettingSpec("KRYTEN_NATS_SUBJECT_PREFIX", "nats_subject_prefix", "kryten",
                "prefix of the refresh command subject {prefix}.playlist.cmd.catalog_refresh"),
    SettingSpec("KRYTEN_ADMIN_TOKEN", "admin_token", None,
                "bearer token of the admin HTTP endpoint (it refuses to start without one)", True),
    SettingSpec("KRYTEN_ADMIN_BIND", "admin_bind", "127.0.0.1", "address the admin HTTP endpoint listens on"),
    SettingSpec("KRYTEN_ADMIN_PORT", "admin_port", "8787", "port of the admin HTTP endpoint"),
    SettingSpec("KRYTEN_ADMIN_TLS_CERT", "admin_tls_cert", None,
                "PEM certificate (chain) the admin endpoint serves HTTPS with; with KRYTEN_ADMIN_TLS_KEY"),
    SettingSpec("KRYTEN_ADMIN_TLS_KEY", "admin_tls_key", None, "PEM private key of KRYTEN_ADMIN_TLS_CERT"),
)

SPEC_BY_FIELD = {spec.field: spec for spec in SETTINGS}


def load_dotenv_file(path: str | os.PathLike[str] = ".env") -> None:
    """Load ``.env`` from the working directory without overriding the real environment."""
    from dotenv import load_dotenv

    load_dotenv(path, override=False)


def parse_namespaces(raw: str) -> list[str]:
    from kryten_pipeline.namespaces import validate_namespace

    names = [part.strip() for part in raw.split(",") if part.strip()]
    if not names:
        raise ConfigurationError("no namespace configured", setting="KRYTEN_NAMESPACES")
    for name in names:
        validate_namespace(name)
    return list(dict.fromkeys(names))


@dataclass(frozen=True, slots=True)
class Settings:
    namespaces: list[str] = field(default_factory=lambda: ["default"])
    data_dir: Path = Path("./data")
    source: str = "export"
    export_path: str | None = None
    fake_items: int = 250
    fake_fail_after: int | None = None
    mediacms_url: str | None = None
    mediacms_token: str | None = None
    mediacms_username: str | None = None
    mediacms_password: str | None = None
    mediacms_playable: str = "listable"
    mediacms_concurrency: int = 4
    mediacms_timeout: int = 30
    mediacms_retries: int = 4
    mediacms_db_url: str | None = None
    mediacms_db_password: str | None = None
    mediacms_db_statement_timeout_s: int = 300
    mediacms_db_batch_size: int = 2000
    content_service_addr: str | None = None
    service_auth_token: str | None = None
    content_service_tls_ca: str | None = None
    content_service_tls_cert: str | None = None
    content_service_tls_key: str | None = None
    content_service_plaintext: bool = False
    content_service_cdn_host: str | None = None
    content_service_chunk_limit: int = 100
    content_service_max_retries: int = 5
    content_service_idle_timeout_s: int = 60
    manifest_base_url: str | None = None
    nats_url: str | None = None
    nats_user: str | None = None
    nats_password: str | None = None
    nats_token: str | None = None
    nats_creds: str | None = None
    nats_tls_ca: str | None = None
    nats_tls_cert: str | None = None
    nats_tls_key: str | None = None
    kv_bucket: str = "kryten_playlist_snapshot"
    kv_replicas: int = 1
    object_bucket: str = "kryten_playlist_snapshot_files"
    max_reject_ratio: float = 0.05
    min_count_ratio: float = 0.5
    keep_snapshots: int = 3
    require_https_thumbnails: bool = True
    max_removed_ratio: float = 0.2
    refresh_schedule_enabled: bool = False
    refresh_cron: str = "0 3 * * *"
    refresh_timezone: str = "UTC"
    drift_check_cron: str = "*/15 * * * *"
    code_git_url: str | None = None
    code_git_branch: str = "main"
    redis_url: str | None = field(default=None, repr=False)
    catalog_event_stream_key: str = "catalog:events"
    event_group: str = "kryten-pipeline"
    event_consumer: str = "dagster-sensor"
    event_debounce_s: int = 30
    event_batch_size: int = 500
    event_claim_idle_s: int = 900
    nats_subject_prefix: str = "kryten"
    admin_token: str | None = field(default=None, repr=False)
    admin_bind: str = "127.0.0.1"
    admin_port: int = 8787
    admin_tls_cert: str | None = None
    admin_tls_key: str | None = None

    @classmethod
    def from_mapping(cls, values: Mapping[str, str | None]) -> Settings:
        """Build settings from field-name → raw string values (missing or empty → default)."""
        raw: dict[str, str | None] = {}
        for spec in SETTINGS:
            value = values.get(spec.field)
            if value is None or (isinstance(value, str) and value.strip() == ""):
                value = spec.default
            raw[spec.field] = value.strip() if isinstance(value, str) else value
        source = raw["source"] or "export"
        if source not in SOURCES:
            raise ConfigurationError(
                f"unknown source {source!r}; expected one of {', '.join(SOURCES)}", setting="KRYTEN_SOURCE"
            )
        return cls(
            namespaces=parse_namespaces(raw["namespaces"] or "default"),
            data_dir=Path(raw["data_dir"] or "./data"),
            source=source,
            export_path=raw["export_path"],
            fake_items=_as_int(raw["fake_items"], "fake_items", minimum=0),
            fake_fail_after=_optional_int(raw["fake_fail_after"], "fake_fail_after"),
            mediacms_url=raw["mediacms_url"],
            mediacms_token=raw["mediacms_token"],
            mediacms_username=raw["mediacms_username"],
            mediacms_password=raw["mediacms_password"],
            mediacms_playable=raw["mediacms_playable"] or "listable",
            mediacms_concurrency=_as_int(raw["mediacms_concurrency"], "mediacms_concurrency", minimum=1),
            mediacms_timeout=_as_int(raw["mediacms_timeout"], "mediacms_timeout", minimum=1),
            mediacms_retries=_as_int(raw["mediacms_retries"], "mediacms_retries", minimum=0),
            mediacms_db_url=raw["mediacms_db_url"],
            mediacms_db_password=raw["mediacms_db_password"],
            mediacms_db_statement_timeout_s=_as_int(
                raw["mediacms_db_statement_timeout_s"], "mediacms_db_statement_timeout_s", minimum=1
            ),
            mediacms_db_batch_size=_as_int(raw["mediacms_db_batch_size"], "mediacms_db_batch_size", minimum=1),
            content_service_addr=raw["content_service_addr"],
            service_auth_token=raw["service_auth_token"],
            content_service_tls_ca=raw["content_service_tls_ca"],
            content_service_tls_cert=raw["content_service_tls_cert"],
            content_service_tls_key=raw["content_service_tls_key"],
            content_service_plaintext=_as_bool(raw["content_service_plaintext"], "content_service_plaintext"),
            content_service_cdn_host=raw["content_service_cdn_host"],
            content_service_chunk_limit=_as_int(
                raw["content_service_chunk_limit"], "content_service_chunk_limit", minimum=1
            ),
            content_service_max_retries=_as_int(
                raw["content_service_max_retries"], "content_service_max_retries", minimum=0
            ),
            content_service_idle_timeout_s=_as_int(
                raw["content_service_idle_timeout_s"], "content_service_idle_timeout_s", minimum=1
            ),
            manifest_base_url=raw["manifest_base_url"],
            nats_url=raw["nats_url"],
            nats_user=raw["nats_user"],
            nats_password=raw["nats_password"],
            nats_token=raw["nats_token"],
            nats_creds=raw["nats_creds"],
            nats_tls_ca=raw["nats_tls_ca"],
            nats_tls_cert=raw["nats_tls_cert"],
            nats_tls_key=raw["nats_tls_key"],
            kv_bucket=raw["kv_bucket"] or "kryten_playlist_snapshot",
            kv_replicas=_as_int(raw["kv_replicas"], "kv_replicas", minimum=1),
            object_bucket=raw["object_bucket"] or "kryten_playlist_snapshot_files",
            max_reject_ratio=_as_ratio(raw["max_reject_ratio"], "max_reject_ratio"),
            min_count_ratio=_as_ratio(raw["min_count_ratio"], "min_count_ratio"),
            keep_snapshots=_as_int(raw["keep_snapshots"], "keep_snapshots", minimum=1),
            require_https_thumbnails=_as_bool(raw["require_https_thumbnails"], "require_https_thumbnails"),
            max_removed_ratio=_as_ratio(raw["max_removed_ratio"], "max_removed_ratio"),
            refresh_schedule_enabled=_as_bool(raw["refresh_schedule_enabled"], "refresh_schedule_enabled"),
            refresh_cron=raw["refresh_cron"] or "0 3 * * *",
            refresh_timezone=_as_timezone(raw["refresh_timezone"] or "UTC", "refresh_timezone"),
            drift_check_cron=raw["drift_check_cron"] or "*/15 * * * *",
            code_git_url=raw["code_git_url"],
            code_git_branch=raw["code_git_branch"] or "main",
            redis_url=raw["redis_url"],
            catalog_event_stream_key=raw["catalog_event_stream_key"] or "catalog:events",
            event_group=raw["event_group"] or "kryten-pipeline",
            event_consumer=raw["event_consumer"] or "dagster-sensor",
            event_debounce_s=_as_int(raw["event_debounce_s"], "event_debounce_s", minimum=0),
            event_batch_size=_as_int(raw["event_batch_size"], "event_batch_size", minimum=1),
            event_claim_idle_s=_as_int(raw["event_claim_idle_s"], "event_claim_idle_s", minimum=1),
            nats_subject_prefix=_as_subject_prefix(raw["nats_subject_prefix"] or "kryten", "nats_subject_prefix"),
            admin_token=raw["admin_token"],
            admin_bind=raw["admin_bind"] or "127.0.0.1",
            admin_port=_as_int(raw["admin_port"], "admin_port", minimum=0),
            admin_tls_cert=raw["admin_tls_cert"],
            admin_tls_key=raw["admin_tls_key"],
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        return cls.from_mapping({spec.field: env.get(spec.env) for spec in SETTINGS})


def _as_int(value: str | None, name: str, *, minimum: int) -> int:
    try:
        number = int(str(value))
    except ValueError:
        raise ConfigurationError(f"{value!r} is not an integer", setting=SPEC_BY_FIELD[name].env) from None
    if number < minimum:
        raise ConfigurationError(f"must be at least {minimum}, got {number}", setting=SPEC_BY_FIELD[name].env)
    return number


def _optional_int(value: str | None, name: str) -> int | None:
    return None if value is None else _as_int(value, name, minimum=0)


def _as_ratio(value: str | None, name: str) -> float:
    try:
        number = float(str(value))
    except ValueError:
        raise ConfigurationError(f"{value!r} is not a number", setting=SPEC_BY_FIELD[name].env) from None
    if not 0.0 <= number <= 1.0:
        raise ConfigurationError(f"must be between 0 and 1, got {number}", setting=SPEC_BY_FIELD[name].env)
    return number


def _as_timezone(value: str, name: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigurationError(
            f"unknown timezone {value!r} (expected an IANA name like UTC or Europe/Berlin)",
            setting=SPEC_BY_FIELD[name].env,
        ) from None
    return value


def _as_subject_prefix(value: str, name: str) -> str:
    # NATS subject tokens: no wildcards or whitespace, no empty tokens.
    if any(ch in value for ch in " \t\r\n*>") or any(not token for token in value.split(".")):
        raise ConfigurationError(f"{value!r} is not a valid NATS subject prefix", setting=SPEC_BY_FIELD[name].env)
    return value


def _as_bool(value: str | None, name: str) -> bool:
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", "none"):
        return False
    raise ConfigurationError(f"{value!r} is not true/false", setting=SPEC_BY_FIELD[name].env)
