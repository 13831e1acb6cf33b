"""The refresh and drift-check schedules: one run request per registered namespace, configured by environment."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from kryten_pipeline.dagster_defs.jobs import drift_check_job, refresh_job
from kryten_pipeline.dagster_defs.partitions import register_namespaces
from kryten_pipeline.dagster_defs.schedules import (
    automation_schedules,
    build_drift_check_schedule,
    build_refresh_schedule,
    schedule_settings,
)
from kryten_pipeline.errors import ConfigurationError


@pytest.fixture
def instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dg.DagsterInstance:
    monkeypatch.setenv("KRYTEN_NAMESPACES", "default")
    with dg.instance_for_test(temp_dir=str(tmp_path)) as test_instance:
        register_namespaces(test_instance, ["music", "kids"])
        yield test_instance


def test_schedule_defaults_daily_refresh_stopped_and_drift_check_running() -> None:
    refresh, drift = automation_schedules({})
    assert (refresh.cron_schedule, refresh.execution_timezone) == ("0 3 * * *", "UTC")
    assert refresh.default_status == dg.DefaultScheduleStatus.STOPPED
    assert refresh.job_name == refresh_job.name
    assert drift.cron_schedule == "*/15 * * * *" and drift.default_status == dg.DefaultScheduleStatus.RUNNING
    assert drift.job_name == drift_check_job.name


def test_schedule_settings_come_from_the_environment() -> None:
    settings = schedule_settings({"KRYTEN_REFRESH_CRON": "30 2 * * 1-5", "KRYTEN_REFRESH_TIMEZONE": "Europe/Berlin",
                                  "KRYTEN_REFRESH_SCHEDULE_ENABLED": "true", "KRYTEN_DRIFT_CHECK_CRON": "*/5 * * * *"})
    refresh = build_refresh_schedule(settings)
    assert (refresh.cron_schedule, refresh.execution_timezone) == ("30 2 * * 1-5", "Europe/Berlin")
    assert refresh.default_status == dg.DefaultScheduleStatus.RUNNING
    assert build_drift_check_schedule(settings).cron_schedule == "*/5 * * * *"
    for env, bad in (("KRYTEN_REFRESH_CRON", "every day"), ("KRYTEN_REFRESH_TIMEZONE", "Mars/Olympus"),
                     ("KRYTEN_DRIFT_CHECK_CRON", "* *"), ("KRYTEN_REFRESH_SCHEDULE_ENABLED", "maybe")):
        with pytest.raises(ConfigurationError) as info:
            schedule_settings({env: bad})
        assert env in str(info.value)


def test_refresh_schedule_requests_one_run_per_registered_namespace(instance: dg.DagsterInstance) -> None:
    schedule = build_refresh_schedule(schedule_settings({}))
    moment = datetime(2026, 1, 2, 3, 0, tzinfo=UTC)
    with dg.build_schedule_context(instance=instance, scheduled_execution_time=moment) as context:
        requests = schedule(context)
    assert sorted(r.partition_key for r in requests) == ["default", "kids", "music"]  # configured + registered
    assert all(r.tags["kryten/trigger"] == "schedule" for r in requests)
    assert len({r.run_key for r in requests}) == 3 and all(moment.isoformat() in r.run_key for r in requests)


def test_drift_check_schedule_requests_the_check_job_per_namespace(instance: dg.DagsterInstance) -> None:
    schedule = build_drift_check_schedule(schedule_settings({}))
    with dg.build_schedule_context(instance=instance) as context:
        requests = schedule(context)
    assert sorted(r.partition_key for r in requests) == ["default", "kids", "music"]
    assert all(r.tags["kryten/trigger"] == "drift-schedule" for r in requests)


def test_the_code_location_has_the_automation() -> None:
    from kryten_pipeline.definitions import defs

    repository = defs.get_repository_def()
    assert {s.name for s in repository.schedule_defs} == {"refresh_all_namespaces", "drift_check_all_namespaces"}
    assert {s.name for s in repository.sensor_defs} >= {"namespace_registry", "catalog_updated_events",
                                                       "catalog_events_ack"}
    assert {"refresh_catalog", "check_kv_current_matches_sqlite", "prune_snapshots", "rollback"} <= {
        job.name for job in repository.get_all_jobs()}


def test_the_event_sensors_start_stopped_without_redis_and_say_why(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from kryten_pipeline.definitions import build_definitions

    monkeypatch.chdir(tmp_path)  # no .env here
    monkeypatch.delenv("REDIS_URL", raising=False)
    sensors = {s.name: s for s in build_definitions().get_repository_def().sensor_defs}
    for name in ("catalog_updated_events", "catalog_events_ack"):
        assert sensors[name].default_status == dg.DefaultSensorStatus.STOPPED
        assert "REDIS_URL was not set" in (sensors[name].description or "")
    assert sensors["dead_run_repair"].default_status == dg.DefaultSensorStatus.RUNNING
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    sensors = {s.name: s for s in build_definitions().get_repository_def().sensor_defs}
    assert sensors["catalog_updated_events"].default_status == dg.DefaultSensorStatus.RUNNING
    assert "REDIS_URL was not set" not in (sensors["catalog_updated_events"].description or "")


def test_a_drift_check_tick_evaluated_with_the_repository_requests_valid_runs() -> None:
    """As the daemon evaluates it: with the repository, each run request is resolved against the job (its
    partition validated). The job of a checks-only selection must be partitioned for that to pass."""
    from kryten_pipeline.definitions import defs

    assert defs.resolve_job_def(drift_check_job.name).partitions_def is not None
    with dg.instance_for_test() as instance:
        register_namespaces(instance, ["default", "beta"])
        schedule = defs.get_schedule_def("drift_check_all_namespaces")
        context = dg.build_schedule_context(instance=instance, repository_def=defs.get_repository_def())
        result = schedule.evaluate_tick(context)
    assert result.skip_message is None
    assert sorted(r.partition_key for r in result.run_requests) == ["beta", "default"]
    assert all(r.tags["dagster/partition"] == r.partition_key for r in result.run_requests)
