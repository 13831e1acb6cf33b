"""Schedules: the daily refresh of every namespace, and the drift check on its own (every 15 minutes).

A schedule's cron and timezone are part of its definition, so they are read from the environment
(``KRYTEN_REFRESH_CRON``, ``KRYTEN_REFRESH_TIMEZONE``, ``KRYTEN_DRIFT_CHECK_CRON``) when the code location
loads; a malformed value stops the load with an error naming the variable. Both request one run per
registered namespace (partition), so namespaces refresh side by side, one run per namespace at a time.
"""

import os
from collections.abc import Mapping
from datetime import UTC, datetime

import dagster as dg
from croniter import croniter

from kryten_pipeline.dagster_defs.jobs import drift_check_job, refresh_job
from kryten_pipeline.dagster_defs.partitions import configured_namespaces, register_namespaces, registered_namespaces
from kryten_pipeline.errors import ConfigurationError, KrytenError
from kryten_pipeline.settings import SPEC_BY_FIELD, Settings, load_dotenv_file

REFRESH_SCHEDULE_NAME = "refresh_all_namespaces"
DRIFT_SCHEDULE_NAME = "drift_check_all_namespaces"
SCHEDULE_FIELDS = ("refresh_schedule_enabled", "refresh_cron", "refresh_timezone", "drift_check_cron", "code_git_url",
                   "code_git_branch")


def schedule_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Only the schedule settings from the environment (an unrelated bad setting must not stop the load)."""
    if environ is None:
        load_dotenv_file()
        environ = os.environ
    settings = Settings.from_mapping({name: environ.get(SPEC_BY_FIELD[name].env) for name in SCHEDULE_FIELDS})
    for name in ("refresh_cron", "drift_check_cron"):
        cron = getattr(settings, name)
        if len(cron.split()) != 5 or not croniter.is_valid(cron):
            raise ConfigurationError(f"{cron!r} is not a cron expression (like '0 3 * * *')",
                                     setting=SPEC_BY_FIELD[name].env)
    return settings


def _namespaces(context: dg.ScheduleEvaluationContext) -> list[str]:
    """Every registered namespace, after registering the configured ones (as namespace_registry does)."""
    try:
        register_namespaces(context.instance, configured_namespaces())
    except KrytenError as exc:
        context.log.warning(f"KRYTEN_NAMESPACES is invalid ({exc}); using the registered namespaces")
    return registered_namespaces(context.instance)


def _stamp(context: dg.ScheduleEvaluationContext) -> str:
    """The tick's time, which makes each tick's run keys unique (and a retried tick's the same)."""
    try:
        moment = context.scheduled_execution_time
    except Exception:  # a context built without a time (tests, direct invocation) raises instead of None
        moment = None
    return moment.isoformat() if moment is not None else datetime.now(UTC).isoformat()


def build_refresh_schedule(settings: Settings) -> dg.ScheduleDefinition:
    @dg.schedule(
        name=REFRESH_SCHEDULE_NAME,
        job=refresh_job,
        cron_schedule=settings.refresh_cron,
        execution_timezone=settings.refresh_timezone,
        default_status=(dg.DefaultScheduleStatus.RUNNING if settings.refresh_schedule_enabled
                        else dg.DefaultScheduleStatus.STOPPED),
        description="Refreshes every registered namespace (one run each) on KRYTEN_REFRESH_CRON in "
        "KRYTEN_REFRESH_TIMEZONE. Starts running only with KRYTEN_REFRESH_SCHEDULE_ENABLED=true.",
    )
    def refresh_all_namespaces(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest] | dg.SkipReason:
        names = _namespaces(context)
        if not names:
            return dg.SkipReason("no namespace is registered")
        stamp = _stamp(context)
        return [
            dg.RunRequest(run_key=f"refresh:{ns}:{stamp}", partition_key=ns, tags={"kryten/trigger": "schedule"})
            for ns in names
        ]

    return refresh_all_namespaces


def build_drift_check_schedule(settings: Settings) -> dg.ScheduleDefinition:
    @dg.schedule(
        name=DRIFT_SCHEDULE_NAME,
        job=drift_check_job,
        cron_schedule=settings.drift_check_cron,
        execution_timezone=settings.refresh_timezone,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Runs kv_current_matches_sqlite alone for every registered namespace on KRYTEN_DRIFT_CHECK_CRON, "
        "so a KV current changed behind the pipeline's back shows as a failed check.",
    )
    def drift_check_all_namespaces(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest] | dg.SkipReason:
        names = _namespaces(context)
        if not names:
            return dg.SkipReason("no namespace is registered")
        stamp = _stamp(context)
        return [
            dg.RunRequest(run_key=f"drift:{ns}:{stamp}", partition_key=ns, tags={"kryten/trigger": "drift-schedule"})
            for ns in names
        ]

    return drift_check_all_namespaces


def automation_schedules(environ: Mapping[str, str] | None = None) -> list[dg.ScheduleDefinition]:
    settings = schedule_settings(environ)
    return [build_refresh_schedule(settings), build_drift_check_schedule(settings)]
