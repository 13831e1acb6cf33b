"""Dagster resources: the settings of ``kryten_pipeline.settings`` surfaced with ``EnvVar``.

Each field is the raw string of one setting (parsing stays in ``Settings``). ``configured_resources``
binds a field to ``EnvVar(NAME)`` when that variable is set, so the UI shows which variable feeds it
and secrets never appear as values; unset variables take the documented default.
"""


import contextlib
import os
from collections.abc import Iterator
from typing import Any

import dagster as dg

from kryten_pipeline.dagster_defs.automation_resources import AutomationResource, CatalogEventsResource
from kryten_pipeline.dagster_defs.io_manager import CatalogIOManager
from kryten_pipeline.dagster_defs.run_liveness import fail_runs_of_dead_processes
from kryten_pipeline.settings import SPEC_BY_FIELD, Settings, load_dotenv_file
from kryten_pipeline.snapshot_db import namespace_lock

PARTITION_TAG = "dagster/partition"


class PipelineResource(dg.ConfigurableResource):
    """Where snapshots live, which namespaces exist, and the publish guards.

    While a run of one namespace partition uses it, it holds that namespace's refresh lock, so two
    refreshes of one namespace never interleave, whichever way they were launched (UI, CLI, sensor).
    """

    namespaces: str | None = "default"
    data_dir: str | None = "./data"
    manifest_base_url: str | None = None
    max_reject_ratio: str | None = "0.05"
    min_count_ratio: str | None = "0.5"
    keep_snapshots: str | None = "3"
    max_removed_ratio: str | None = "0.2"
    require_https_thumbnails: str | None = "true"

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

        with namespace_lock(data_dir, namespace, "refresh", timeout=None, on_wait=waiting):
            # Holding the lock, no other refresh of the namespace runs: a run still "started" by a process of
            # this host that is gone (the holder we waited for, killed) is marked failed now, not at some later
            # refresh, so the run queue does not wait on it.
            repaired = fail_runs_of_dead_processes(context.instance, namespace) if context.instance else []
            if repaired and log is not None:
                log.warning(f"marked {len(repaired)} run(s) of a killed process failed: {', '.join(repaired)}")
            yield self


class CatalogSourceResource(dg.ConfigurableResource):
    """Which catalog source to read (``KRYTEN_SOURCE``) and its connection settings."""

    source: str | None = "export"
    export_path: str | None = None
    fake_items: str | None = "250"
    fake_fail_after: str | None = None
    mediacms_url: str | None = None
    mediacms_token: str | None = None
    mediacms_username: str | None = None
    mediacms_password: str | None = None
    mediacms_playable: str | None = "listable"
    mediacms_concurrency: str | None = "4"
    mediacms_timeout: str | None = "30"
    mediacms_retries: str | None = "4"
    mediacms_db_url: str | None = None
    mediacms_db_password: str | None = None
    mediacms_db_statement_timeout_s: str | None = "300"
    mediacms_db_batch_size: str | None = "2000"
    content_service_addr: str | None = None
    service_auth_token: str | None = None
    content_service_tls_ca: str | None = None
    content_service_tls_cert: str | None = None
    content_service_tls_key: str | None = None
    content_service_plaintext: str | None = "false"
    content_service_cdn_host: str | None = None
    content_service_chunk_limit: str | None = "100"
    content_service_max_retries: str | None = "5"
    content_service_idle_timeout_s: str | None = "60"


class NatsResource(dg.ConfigurableResource):
    """Where snapshots are published: metadata in NATS KV, files in the Object Store; no URL → embedded
    nats-server."""

    nats_url: str | None = None
    nats_user: str | None = None
    nats_password: str | None = None
    nats_token: str | None = None
    nats_creds: str | None = None
    nats_tls_ca: str | None = None
    nats_tls_cert: str | None = None
    nats_tls_key: str | None = None
    kv_bucket: str | None = "kryten_playlist_snapshot"
    kv_replicas: str | None = "1"
    object_bucket: str | None = "kryten_playlist_snapshot_files"


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
    built: dict[str, dg.ConfigurableResource] = {}
    for key, cls in RESOURCE_CLASSES.items():
        kwargs: dict[str, Any] = {}
        for name in cls.model_fields:
            spec = SPEC_BY_FIELD[name]
            kwargs[name] = dg.EnvVar(spec.env) if environ.get(spec.env, "").strip() else spec.default
        built[key] = cls(**kwargs)
    return {**built, "io_manager": CatalogIOManager()}
