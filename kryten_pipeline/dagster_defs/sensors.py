"""Sensors of the code location."""

from __future__ import annotations

import os
from collections.abc import Mapping

import dagster as dg

from kryten_pipeline.dagster_defs.automation_resources import CatalogEventsResource
from kryten_pipeline.dagster_defs.jobs import REFRESH_JOB_NAME, refresh_job
from kryten_pipeline.dagster_defs.partitions import configured_namespaces, register_namespaces, registered_namespaces
from kryten_pipeline.dagster_defs.resources import PipelineResource, kryten_settings
from kryten_pipeline.dagster_defs.run_liveness import fail_runs_of_dead_processes
from kryten_pipeline.errors import KrytenError
from kryten_pipeline.settings import SPEC_BY_FIELD, Settings, load_dotenv_file
from kryten_pipeline.triggers.catalog_events import CatalogEventStream, CoalescingState, NamespaceBurst


@dg.sensor(
    name="namespace_registry",
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Registers the namespaces of KRYTEN_NAMESPACES as partitions (adding one needs no code change).",
)
def namespace_registry(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    try:
        names = configured_namespaces()
    except KrytenError as exc:
        return dg.SkipReason(f"KRYTEN_NAMESPACES is invalid: {exc}")
    added = register_namespaces(context.instance, names)
    if added:
        context.log.info(f"registered namespaces: {', '.join(added)}")
        return dg.SkipReason(f"registered {', '.join(added)}")
    return dg.SkipReason("all configured namespaces are registered")


@dg.sensor(
    name="dead_run_repair",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Marks runs failed whose process on this host is gone (a killed CLI refresh, an OOM), so the "
    "one-run-per-namespace queue never waits behind a run that will not finish.",
)
def dead_run_repair(context: dg.SensorEvaluationContext, pipeline: PipelineResource) -> dg.SkipReason:
    try:
        data_dir = kryten_settings(pipeline).data_dir
    except KrytenError as exc:
        return dg.SkipReason(f"configuration error: {exc}")
    repaired = fail_runs_of_dead_processes(context.instance, data_dir)
    if repaired:
        context.log.warning(f"marked runs of killed processes failed: {', '.join(repaired)}")
        return dg.SkipReason(f"marked {len(repaired)} run(s) of killed processes failed: {', '.join(repaired)}")
    return dg.SkipReason("no run of a dead process")


# -- catalog.updated events (seed 004) ---------------------------------------------------------------

TRIGGER_TAG = "kryten/trigger"
EVENT_STREAM_TAG = "kryten/event_stream"
EVENT_GROUP_TAG = "kryten/event_group"
EVENT_FIRST_ID_TAG = "kryten/event_first_id"
EVENT_LAST_ID_TAG = "kryten/event_last_id"
EVENT_COUNT_TAG = "kryten/event_count"
_ACTIVE_STATUSES = [
    dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]
_MALFORMED_LOGGED = 20


def event_batch_tags(settings: Settings, burst: NamespaceBurst) -> dict[str, str]:
    """Run tags naming the entries a refresh covers, compactly: first and last id and the count."""
    return {
        TRIGGER_TAG: "catalog.updated",
        EVENT_STREAM_TAG: settings.catalog_event_stream_key,
        EVENT_GROUP_TAG: settings.event_group,
        EVENT_FIRST_ID_TAG: burst.first_id,
        EVENT_LAST_ID_TAG: burst.last_id,
        EVENT_COUNT_TAG: str(burst.count),
    }


def refresh_in_progress(instance: dg.DagsterInstance, namespace: str) -> bool:
    """A refresh of ``namespace`` is queued or running (a new one would only wait behind it).

    Refreshes run as ``refresh_catalog`` or, launched from the asset graph or a backfill, as the implicit
    asset job.
    """
    records = instance.get_run_records(
        filters=dg.RunsFilter(tags={"dagster/partition": namespace}, statuses=_ACTIVE_STATUSES), limit=20,
    )
    return any(r.dagster_run.job_name in (REFRESH_JOB_NAME, "__ASSET_JOB") for r in records)


def redis_configured(environ: Mapping[str, str] | None = None) -> bool:
    """Whether REDIS_URL is set (in the environment or ``.env``): the event sensors can work at all."""
    if environ is None:
        load_dotenv_file()
        environ = os.environ
    return bool(environ.get(SPEC_BY_FIELD["redis_url"].env, "").strip())


_WITHOUT_REDIS = ("REDIS_URL was not set when the code location loaded, so this sensor starts STOPPED (it would "
                  "only skip); set REDIS_URL and reload the code location, or start it here once it is set.")


def build_catalog_event_sensors(redis_url_set: bool) -> list[dg.SensorDefinition]:
    """The two sensors of the catalog.updated stream: RUNNING by default only when REDIS_URL is set."""
    status = dg.DefaultSensorStatus.RUNNING if redis_url_set else dg.DefaultSensorStatus.STOPPED
    note = "" if redis_url_set else " " + _WITHOUT_REDIS
    events = dg.sensor(
        name="catalog_updated_events",
        job=refresh_job,
        minimum_interval_seconds=10,
        default_status=status,
        description="Reads catalog.updated events from the Redis Stream CATALOG_EVENT_STREAM_KEY (on REDIS_URL) "
        "through a consumer group and requests one refresh per namespace once KRYTEN_EVENT_DEBOUNCE_S passed "
        "without a new event. Entries are acknowledged by catalog_events_ack after the refresh succeeded." + note,
    )(_catalog_updated_events)
    ack = dg.run_status_sensor(
        run_status=dg.DagsterRunStatus.SUCCESS,
        name="catalog_events_ack",
        monitored_jobs=[refresh_job],
        minimum_interval_seconds=10,
        default_status=status,
        description="After a refresh requested by catalog_updated_events succeeded, acknowledges (XACK) the events "
        "of its namespace it covered. Failed runs acknowledge nothing: their entries are reclaimed and retried."
        + note,
    )(_catalog_events_ack)
    return [events, ack]


def _catalog_updated_events(
    context: dg.SensorEvaluationContext, pipeline: PipelineResource, catalog_events: CatalogEventsResource
) -> dg.SensorResult | dg.SkipReason:
    try:
        settings = kryten_settings(pipeline, catalog_events)
    except KrytenError as exc:
        return dg.SkipReason(f"configuration error: {exc}")
    if not settings.redis_url:
        return dg.SkipReason("REDIS_URL is not set: there is no catalog.updated stream to read")
    state = CoalescingState.from_cursor(context.cursor)
    register_namespaces(context.instance, settings.namespaces)
    known = set(registered_namespaces(context.instance))
    with CatalogEventStream.from_settings(settings) as stream:
        read = stream.read_batch(seen_id=state.seen_id, claim_cursor=state.claim_cursor)
        strangers = [event for event in read.events if event.namespace not in known]
        if strangers:
            # An unknown namespace is not retried either: add it (`kryten-pipeline namespaces add`) first.
            stream.ack(event.entry_id for event in strangers)
        now_ms = stream.server_time_ms()
    for entry in read.malformed[:_MALFORMED_LOGGED]:
        context.log.warning(f"malformed catalog event {entry.entry_id} acknowledged: {entry.reason}")
    for event in strangers[:_MALFORMED_LOGGED]:
        context.log.warning(f"catalog event {event.entry_id} names unregistered namespace {event.namespace!r}; "
                            "acknowledged without a refresh")
    state.absorb(read, [event for event in read.events if event.namespace in known])
    hold = [ns for ns in state.bursts if refresh_in_progress(context.instance, ns)]
    due = state.take_due(now_ms, settings.event_debounce_s * 1000, hold=hold)
    run_requests = [
        dg.RunRequest(
            run_key=f"{ns}:{burst.last_id}:{now_ms}",
            partition_key=ns,
            tags=event_batch_tags(settings, burst),
        )
        for ns, burst in due
    ]
    for ns, burst in due:
        context.log.info(f"requesting a refresh of {ns!r} for {burst.count} events {burst.first_id}..{burst.last_id}")
    read_summary = (
        f"read {read.entries} entries ({read.new} new, {read.recovered} recovered, {read.reclaimed} reclaimed; "
        f"{len(read.malformed)} malformed, {len(strangers)} for unregistered namespaces)"
    )
    waiting = ", ".join(
        f"{ns} ({burst.count} events{', a refresh is in progress' if ns in hold else ''})"
        for ns, burst in sorted(state.bursts.items())
    )
    skip = None if run_requests else f"{read_summary}; waiting: {waiting or 'nothing'}"
    return dg.SensorResult(run_requests=run_requests, cursor=state.to_cursor(), skip_reason=skip)


def _catalog_events_ack(
    context: dg.RunStatusSensorContext, pipeline: PipelineResource, catalog_events: CatalogEventsResource
) -> dg.SkipReason:
    run = context.dagster_run
    namespace = run.tags.get("dagster/partition")
    last_id = run.tags.get(EVENT_LAST_ID_TAG)
    if not namespace or not last_id:
        return dg.SkipReason(f"run {run.run_id} was not requested by catalog.updated events")
    settings = kryten_settings(pipeline, catalog_events)
    if not settings.redis_url:
        return dg.SkipReason("REDIS_URL is not set: nothing to acknowledge")
    # Acknowledge on the stream and group the run was requested from, even if the settings changed since.
    settings = settings.model_copy(update={
        "catalog_event_stream_key": run.tags.get(EVENT_STREAM_TAG, settings.catalog_event_stream_key),
        "event_group": run.tags.get(EVENT_GROUP_TAG, settings.event_group),
    })
    with CatalogEventStream.from_settings(settings) as stream:
        acked = stream.ack_namespace_through(namespace, last_id)
    message = (f"run {run.run_id} refreshed {namespace!r}: acknowledged {len(acked)} pending entries "
               f"up to {last_id}")
    context.log.info(message)
    return dg.SkipReason(message)


# The sensors as the environment of this process configures them (tests call them directly).
catalog_updated_events, catalog_events_ack = build_catalog_event_sensors(redis_configured())
