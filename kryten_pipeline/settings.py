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
    SettingSpec("KRYTEN_MAX_REJECT_RATIO", "max_reject_ratio", "0.05",
                "fail if more than this share of rows is rejected"),
    SettingSpec("KRYTEN_MIN_COUNT_RATIO", "min_count_ratio", "0.5",
                "fail if the item count falls below this fraction of the live snapshot's"),
    SettingSpec("KRYTEN_KEEP_SNAPSHOTS", "keep_snapshots", "3", "snapshot files kept per namespace for rollback"),
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
    max_reject_ratio: float = 0.05
    min_count_ratio: float = 0.5
    keep_snapshots: int = 3

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
            max_reject_ratio=_as_ratio(raw["max_reject_ratio"], "max_reject_ratio"),
            min_count_ratio=_as_ratio(raw["min_count_ratio"], "min_count_ratio"),
            keep_snapshots=_as_int(raw["keep_snapshots"], "keep_snapshots", minimum=1),
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


def _as_bool(value: str | None, name: str) -> bool:
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", "none"):
        return False
    raise ConfigurationError(f"{value!r} is not true/false", setting=SPEC_BY_FIELD[name].env)
