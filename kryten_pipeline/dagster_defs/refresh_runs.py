"""Run the refresh job in this process against an instance, and read back what it did.

One code path for every launcher that runs a refresh itself (the CLI, the admin endpoint, the NATS
command responder): the same job the UI launches, recorded in the same instance.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg

from kryten_pipeline.dagster_defs.partitions import register_namespaces, registered_namespaces
from kryten_pipeline.dagster_defs.run_liveness import fail_runs_of_dead_processes, run_owner_record
from kryten_pipeline.errors import ConfigurationError
from kryten_pipeline.fault_points import fault_point
from kryten_pipeline.settings import Settings


def new_run_id() -> str:
    """A run id as Dagster makes them (a random UUID), chosen before the run starts so progress can follow it."""
    return str(uuid.uuid4())


QUIET_RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


def ensure_namespace_registered(instance: dg.DagsterInstance, settings: Settings, namespace: str) -> None:
    """Register the configured namespaces; refuse one that is neither configured nor registered."""
    register_namespaces(instance, settings.namespaces)
    if namespace not in registered_namespaces(instance):
        raise ConfigurationError(
            f"namespace {namespace!r} is neither configured ({', '.join(settings.namespaces)}) nor registered; "
            f"add it with `kryten-pipeline namespaces add {namespace}`",
            setting="KRYTEN_NAMESPACES",
        )


def execute_refresh(
    instance: dg.DagsterInstance,
    namespace: str,
    *,
    tags: dict[str, str] | None = None,
    progress: Callable[[str], None] | None = None,
    run_id: str | None = None,
    definitions: dg.Definitions | None = None,
) -> dict[str, Any]:
    """Materialise the refresh job for one namespace in this process; return the run's summary.

    ``definitions`` defaults to the code location's (tests pass their own resources).
    """
    from kryten_pipeline.dagster_defs.jobs import REFRESH_JOB_NAME

    if definitions is None:
        from kryten_pipeline.definitions import defs as definitions

    job = definitions.resolve_job_def(REFRESH_JOB_NAME)
    data_dir = pipeline_data_dir(definitions)
    fail_runs_of_dead_processes(instance, data_dir, namespace)  # a killed earlier refresh must not look running
    run_id = run_id or new_run_id()
    reporter = RunProgress(instance, run_id, progress)
    started = time.perf_counter()
    reporter.start()
    try:
        # Recorded from before the run exists, so a kill at any moment leaves a run the next refresh repairs.
        with run_owner_record(data_dir, run_id, namespace):
            result = job.execute_in_process(
                instance=instance, partition_key=namespace, run_id=run_id, raise_on_error=False,
                tags=dict(tags or {}), run_config=QUIET_RUN_CONFIG,
            )
    finally:
        reporter.stop()
    fault_point("run.finished")
    summary = summarize_run(instance, run_id, namespace)
    summary["wall_time_s"] = round(time.perf_counter() - started, 3)
    summary["success"] = bool(result.success)
    return summary


def pipeline_data_dir(definitions: dg.Definitions) -> Path:
    """KRYTEN_DATA_DIR as the definitions' pipeline resource has it (a value, or the variable it is bound to)."""
    resource = (definitions.resources or {}).get("pipeline")
    value = getattr(resource, "data_dir", None)
    if isinstance(value, dg.EnvVar):
        value = value.get_value()
    return Path(value or Settings.from_env().data_dir)


POLL_INTERVAL_S = 0.25


class RunProgress:
    """Reports step progress from the run's event log while the run executes in this process."""

    def __init__(self, instance: Any, run_id: str, sink: Callable[[str], None] | None) -> None:
        self.instance = instance
        self.run_id = run_id
        self.sink = sink
        self.enabled = sink is not None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._cursor: str | None = None
        self._step_started: dict[str, float] = {}

    def start(self) -> None:
        if self.enabled:
            self._thread.start()

    def stop(self) -> None:
        if self.enabled:
            self._stop.set()
            self._thread.join(timeout=5)
            self._drain()

    def _loop(self) -> None:
        while not self._stop.wait(POLL_INTERVAL_S):
            self._drain()

    def _drain(self) -> None:
        # Only the records after the cursor: polling costs the same at the end of a long run as at its start
        # (this thread shares the interpreter with the run it watches).
        try:
            connection = self.instance.get_records_for_run(self.run_id, cursor=self._cursor)
        except Exception:  # the run may not be stored yet
            return
        for record in connection.records:
            line = self._describe(record.event_log_entry)
            if line and self.sink is not None:
                self.sink(line)
        if connection.records:
            self._cursor = connection.cursor

    def _describe(self, record: Any) -> str | None:
        event = record.dagster_event
        if event is None:
            message = record.user_message or ""
            if record.level < logging.INFO or not message:
                return None  # IO-manager chatter is DEBUG; the steps' own messages are INFO and up
            # No step: a resource's message, e.g. "waiting for another refresh of namespace … to finish".
            return f"    {record.step_key}: {message}" if record.step_key else f"  … {message}"
        kind = event.event_type_value
        step = event.step_key or ""
        if kind == "STEP_START":
            self._step_started[step] = record.timestamp
            return f"  ▶ {step}"
        if kind == "STEP_SUCCESS":
            took = record.timestamp - self._step_started.get(step, record.timestamp)
            return f"  ✔ {step} ({took:.2f} s)"
        if kind == "STEP_FAILURE":
            return f"  ✘ {step} failed"
        if kind == "STEP_SKIPPED":
            return f"  ↷ {step} skipped (an upstream step or blocking check failed)"
        if kind == "ASSET_CHECK_EVALUATION":
            evaluation = event.event_specific_data
            state = "passed" if evaluation.passed else "FAILED"
            return f"    check {evaluation.check_name}: {state}"
        return None


def summarize_run(instance: Any, run_id: str, namespace: str) -> dict[str, Any]:
    """What the run did, read back from its event log (the same facts the UI shows)."""
    from dagster import DagsterEventType

    summary: dict[str, Any] = {
        "namespace": namespace, "run_id": run_id, "snapshot_id": None, "error": None, "error_type": None,
        "steps": {}, "checks": {},
    }
    started: dict[str, float] = {}
    check_failures: list[str] = []
    explained_by_step = False
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is None:
            continue
        step = event.step_key or ""
        kind = event.event_type
        if kind == DagsterEventType.STEP_START:
            started[step] = record.timestamp
        elif kind in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE):
            entry = summary["steps"].setdefault(step, {})
            entry["status"] = "ok" if kind == DagsterEventType.STEP_SUCCESS else "failed"
            entry["seconds"] = round(record.timestamp - started.get(step, record.timestamp), 3)
            if kind == DagsterEventType.STEP_FAILURE and summary["error"] is None:
                summary["error"] = _failure_message(event)
                data = event.step_failure_data
                user_failed = data is not None and data.user_failure_data is not None
                explained_by_step = user_failed and bool(data.user_failure_data.description)
                if user_failed:
                    error_type = (data.user_failure_data.metadata or {}).get("error_type")
                    summary["error_type"] = getattr(error_type, "value", error_type)
        elif kind == DagsterEventType.STEP_SKIPPED:
            summary["steps"].setdefault(step, {})["status"] = "skipped"
        elif kind == DagsterEventType.ASSET_MATERIALIZATION:
            materialization = event.event_specific_data.materialization
            # The column schema is for the UI (the CLI's JSON gives the contract's figures, not the DDL).
            metadata = {k: getattr(v, "value", v) for k, v in materialization.metadata.items()
                        if k != "dagster/column_schema"}
            summary["steps"].setdefault(step, {})["metadata"] = _plain(metadata)
            if materialization.asset_key.path[-1] == "sqlite_snapshot":
                summary["snapshot_id"] = metadata.get("snapshot_id")
        elif kind == DagsterEventType.ASSET_CHECK_EVALUATION:
            evaluation = event.event_specific_data
            summary["checks"][evaluation.check_name] = {
                "passed": bool(evaluation.passed), "description": evaluation.description,
            }
            if not evaluation.passed:
                check_failures.append(f"check {evaluation.check_name} failed: {evaluation.description}")
    # A step that failed with its own explanation says best what to do; a bare blocking-check failure is
    # explained by the checks' descriptions.
    if check_failures and not explained_by_step:
        summary["error"] = "; ".join(check_failures)
    steps = summary["steps"]
    raw = steps.get("raw_catalog", {}).get("metadata", {})
    validated = steps.get("validated_items", {}).get("metadata", {})
    built = steps.get("sqlite_snapshot", {}).get("metadata", {})
    summary["source"] = raw.get("source")
    summary["counts"] = {
        "read": validated.get("total_read"),
        "valid": validated.get("dagster/row_count"),
        "rejected": validated.get("rejected_count"),
        "categories": built.get("category_count"),
        "published": steps.get("kv_published", {}).get("metadata", {}).get("dagster/row_count"),
        "thumbnails_dropped": validated.get("thumbnails_dropped"),
    }
    summary["rejects_file"] = validated.get("rejects_file")
    summary["sqlite_path"] = built.get("sqlite_path")
    return summary


def _failure_message(event: Any) -> str:
    data = event.step_failure_data
    if data is None:
        return "step failed"
    if data.user_failure_data is not None and data.user_failure_data.description:
        return data.user_failure_data.description
    error = data.error
    while error is not None and error.cause is not None and "DagsterExecutionStepExecutionError" in error.cls_name:
        error = error.cause
    message = (error.message if error else "step failed").strip()
    return message.splitlines()[-1] if message else "step failed"


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


