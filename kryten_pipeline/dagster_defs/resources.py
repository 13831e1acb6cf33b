"""Dagster resources: the settings of ``kryten_pipeline.settings``, one typed field each (``setting_fields``).

``configured_resources`` fills them from the environment: a text field is bound to ``EnvVar(NAME)`` when that
variable is set, so the UI shows which variable feeds it and secrets never appear as values; a number or flag
takes the variable's parsed value (an invalid one stops the load with a message naming the variable); unset
variables take the documented default.
"""


import contextlib
import os
from collections.abc import Iterator
from typing import Any

import dagster as dg
from pydantic import ValidationError

from kryten_pipeline.dagster_defs.automation_resources import AutomationResource, CatalogEventsResource
from kryten_pipeline.dagster_defs.io_manager import CatalogIOManager
from kryten_pipeline.dagster_defs.run_liveness import fail_runs_of_dead_processes, run_owner_record
from kryten_pipeline.dagster_defs.setting_fields import SettingsResource, setting
from kryten_pipeline.errors import ConfigurationError
from kryten_pipeline.settings import SPEC_BY_FIELD, Settings, load_dotenv_file
from kryten_pipeline.snapshot.files import namespace_lock

PARTITION_TAG = "dagster/partition"


class PipelineResource(SettingsResource):
    """Where snapshots live, which namespaces exist, and the publish guards.

    While a run of one namespace partition uses it, it holds that namespace's refresh lock, so two
    refreshes of one namespace never interleave, whichever way they were launched (UI, CLI, sensor).
    """

    namespaces: str = setting("namespaces")
    data_dir: str = setting("data_dir")
    manifest_base_url: str | None = setting("manifest_base_url")
    max_reject_ratio: float = setting("max_reject_ratio")
    min_count_ratio: float = setting("min_count_ratio")
    keep_snapshots: int = setting("keep_snapshots")
    max_removed_ratio: float = setting("max_removed_ratio")
    require_https_thumbnails: bool = setting("require_https_thumbnails")

    @contextlib.contextmanager
    def yield_for_execution(self, context: dg.InitResourceContext) -> Iterator["PipelineResource"]:
        namespace = context.run.tags.get(PARTITION_TAG) if context.run else None
        if not namespace:
            yield self
            return
        data_dir = Settings.from_mapping(_fields(self)).data_dir
        log = context.log

        def waiting() -> None:
            if log is not None:
                log.info(f"waiting for another refresh of namespace {namespace!r} to finish")

        run_id = context.run.run_id if context.run else context.run_id
        # Whichever process executes the run (the CLI's, a daemon's run worker) records itself as its owner.
        with run_owner_record(data_dir, run_id, namespace), \
                namespace_lock(data_dir, namespace, "refresh", timeout=None, on_wait=waiting):
            # Holding the lock, no other refresh of the namespace runs: a run still "started" by a process of
            # this host that is gone (the holder we waited for, killed) is marked failed now, not at some later
            # refresh, so the run queue does not wait on it.
            repaired = fail_runs_of_dead_processes(context.instance, data_dir, namespace) if context.instance else []
            if repaired and log is not None:
                log.warning(f"marked {len(repaired)} run(s) of a killed process failed: {', '.join(repaired)}")
            yield self


class CatalogSourceResource(SettingsResource):
    """Which catalog source to read (``KRYTEN_SOURCE``) and its connection settings."""

    source: str = setting("source")
    export_path: str | None = setting("export_path")
    fake_items: int = setting("fake_items")
    fake_fail_after: int | None = setting("fake_fail_after")
    mediacms_url: str | None = setting("mediacms_url")
    mediacms_token: str | None = setting("mediacms_token")
    mediacms_username: str | None = setting("mediacms_username")
    mediacms_password: str | None = setting("mediacms_password")
    mediacms_playable: str = setting("mediacms_playable")
    mediacms_concurrency: int = setting("mediacms_concurrency")
    mediacms_timeout: int = setting("mediacms_timeout")
    mediacms_retries: int = setting("mediacms_retries")
    mediacms_db_url: str | None = setting("mediacms_db_url")
    mediacms_db_password: str | None = setting("mediacms_db_password")
    mediacms_db_statement_timeout_s: int = setting("mediacms_db_statement_timeout_s")
    mediacms_db_batch_size: int = setting("mediacms_db_batch_size")
    content_service_addr: str | None = setting("content_service_addr")
    service_auth_token: str | None = setting("service_auth_token")
    content_service_tls_ca: str | None = setting("content_service_tls_ca")
    content_service_tls_cert: str | None = setting("content_service_tls_cert")
    content_service_tls_key: str | None = setting("content_service_tls_key")
    content_service_plaintext: bool = setting("content_service_plaintext")
    content_service_cdn_host: str | None = setting("content_service_cdn_host")
    content_service_chunk_limit: int = setting("content_service_chunk_limit")
    content_service_max_retries: int = setting("content_service_max_retries")
    content_service_idle_timeout_s: int = setting("content_service_idle_timeout_s")


class NatsResource(SettingsResource):
    """Where snapshots are published: metadata in NATS KV, files in the Object Store; no URL → embedded
    nats-server."""

    nats_url: str | None = setting("nats_url")
    nats_user: str | None = setting("nats_user")
    nats_password: str | None = setting("nats_password")
    nats_token: str | None = setting("nats_token")
    nats_creds: str | None = setting("nats_creds")
    nats_tls_ca: str | None = setting("nats_tls_ca")
    nats_tls_cert: str | None = setting("nats_tls_cert")
    nats_tls_key: str | None = setting("nats_tls_key")
    kv_bucket: str = setting("kv_bucket")
    kv_replicas: int = setting("kv_replicas")
    object_bucket: str = setting("object_bucket")


RESOURCE_CLASSES: dict[str, type[dg.ConfigurableResource]] = {
    "pipeline": PipelineResource,
    "catalog_source": CatalogSourceResource,
    "nats": NatsResource,
    "catalog_events": CatalogEventsResource,
    "automation": AutomationResource,
}


def _fields(resource: dg.ConfigurableResource) -> dict[str, Any]:
    return {name: getattr(resource, name) for name in type(resource).model_fields}


def kryten_settings(*resources: dg.ConfigurableResource) -> Settings:
    """Settings from the given resources; settings no resource carries take their defaults."""
    values: dict[str, Any] = {}
    for resource in resources:
        values.update(_fields(resource))
    return Settings.from_mapping(values)


def configured_resources(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """Resources bound to the environment (plus ``.env``) as DESIGN §3 describes, and the IO manager."""
    if environ is None:
        load_dotenv_file()
        environ = dict(os.environ)
    # Every invalid value at once, each named by its variable, as the CLI reports them.
    Settings.from_env(environ)
    built: dict[str, dg.ConfigurableResource] = {}
    for key, cls in RESOURCE_CLASSES.items():
        kwargs: dict[str, Any] = {}
        for name, field in cls.model_fields.items():
            spec = SPEC_BY_FIELD[name]
            raw = environ.get(spec.env, "").strip()
            if not raw:
                continue  # the field's typed default
            kwargs[name] = dg.EnvVar(spec.env) if field.annotation in (str, str | None) else raw
        try:
            built[key] = cls(**kwargs)
        except ValidationError as exc:
            problems = "; ".join(str(error.get("msg", "")).removeprefix("Value error, ") for error in exc.errors())
            raise ConfigurationError(problems) from None
    return {**built, "io_manager": CatalogIOManager()}
