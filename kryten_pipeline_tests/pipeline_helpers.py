"""Helpers to run the real Dagster refresh job against a test data dir and a test NATS bucket."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import dagster as dg

from kryten_pipeline.dagster_defs.assets import kv_published, raw_catalog, sqlite_snapshot, validated_items
from kryten_pipeline.dagster_defs.checks import kv_current_matches_sqlite
from kryten_pipeline.dagster_defs.io_manager import CatalogIOManager
from kryten_pipeline.dagster_defs.jobs import REFRESH_JOB_NAME, drift_check_job, refresh_job
from kryten_pipeline.dagster_defs.partitions import register_namespaces
from kryten_pipeline.dagster_defs.resources import CatalogSourceResource, NatsResource, PipelineResource
from kryten_pipeline.kv.store import CurrentEntry, snapshot_store
from kryten_pipeline.settings import Settings

QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


class PipelineEnv:
    """A data dir + bucket + source configuration, with shortcuts to run the job and read the results."""

    def __init__(self, data_dir: Path, nats_url: str, **source: Any) -> None:
        self.data_dir = data_dir
        self.nats_url = nats_url
        self.bucket = "kv_" + uuid.uuid4().hex[:12]
        self.pipeline_fields: dict[str, Any] = {"data_dir": str(data_dir)}
        self.source_fields: dict[str, Any] = {"source": "fake", "fake_items": "40", **source}
        self.instance = dg.DagsterInstance.ephemeral()
        register_namespaces(self.instance, ["default"])

    @property
    def settings(self) -> Settings:
        return Settings.from_mapping(
            {**self.pipeline_fields, **self.source_fields, "nats_url": self.nats_url, "kv_bucket": self.bucket}
        )

    def definitions(self) -> dg.Definitions:
        return dg.Definitions(
            assets=[raw_catalog, validated_items, sqlite_snapshot, kv_published],
            asset_checks=[kv_current_matches_sqlite],
            jobs=[refresh_job, drift_check_job],
            resources={
                "pipeline": PipelineResource(**self.pipeline_fields),
                "catalog_source": CatalogSourceResource(**self.source_fields),
                "nats": NatsResource(nats_url=self.nats_url, kv_bucket=self.bucket),
                "io_manager": CatalogIOManager(),
            },
            executor=dg.in_process_executor,
        )

    def refresh(self, namespace: str = "default", **source: Any) -> dg.ExecuteInProcessResult:
        self.source_fields.update(source)
        job = self.definitions().resolve_job_def(REFRESH_JOB_NAME)
        return job.execute_in_process(instance=self.instance, partition_key=namespace, raise_on_error=False,
                                      run_config=QUIET)

    def drift_check(self, namespace: str = "default") -> dg.ExecuteInProcessResult:
        job = self.definitions().resolve_job_def(drift_check_job.name)
        return job.execute_in_process(instance=self.instance, partition_key=namespace,
                                      raise_on_error=False, run_config=QUIET)

    def current(self, namespace: str = "default") -> CurrentEntry | None:
        async def read() -> CurrentEntry | None:
            async with snapshot_store(self.settings) as store:
                return await store.read_current(namespace)

        return asyncio.run(read())

    def snapshot_records(self, namespace: str = "default") -> list[dict[str, Any]]:
        async def read() -> list[dict[str, Any]]:
            async with snapshot_store(self.settings) as store:
                return await store.list_snapshots(namespace)

        return asyncio.run(read())


def check_results(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    out: dict[str, bool] = {}
    for event in result.all_events:
        if event.event_type_value == "ASSET_CHECK_EVALUATION":
            out[event.event_specific_data.check_name] = bool(event.event_specific_data.passed)
    return out


def executed_steps(result: dg.ExecuteInProcessResult) -> set[str]:
    return {e.step_key for e in result.all_events if e.event_type_value == "STEP_SUCCESS"}


def failure_descriptions(result: dg.ExecuteInProcessResult) -> list[str]:
    out = []
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE":
            data = event.step_failure_data
            if data.user_failure_data is not None and data.user_failure_data.description:
                out.append(data.user_failure_data.description)
            else:
                out.append(data.error.message if data.error else "")
    return out
