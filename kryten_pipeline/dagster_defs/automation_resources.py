"""Resources of the automation layer: the ``catalog.updated`` event stream and the refresh triggers.

Like the resources in ``resources.py``, each field is one setting, typed, with its variable named in its
description; ``configured_resources`` binds a text field to ``EnvVar`` when the variable is set, so the UI
never shows a secret's value.
"""

from __future__ import annotations

from kryten_pipeline.dagster_defs.setting_fields import SettingsResource, setting


class CatalogEventsResource(SettingsResource):
    """Where the ``catalog.updated`` events come from (a Redis Stream read through a consumer group)."""

    redis_url: str | None = setting("redis_url")
    catalog_event_stream_key: str = setting("catalog_event_stream_key")
    event_group: str = setting("event_group")
    event_consumer: str = setting("event_consumer")
    event_debounce_s: int = setting("event_debounce_s")
    event_batch_size: int = setting("event_batch_size")
    event_claim_idle_s: int = setting("event_claim_idle_s")


class AutomationResource(SettingsResource):
    """Schedules and the refresh triggers (NATS command, admin endpoint).

    The schedules read their cron and timezone when the code location loads (a schedule's cron is part
    of its definition); this resource shows those values in the UI next to the other settings.
    """

    refresh_schedule_enabled: bool = setting("refresh_schedule_enabled")
    refresh_cron: str = setting("refresh_cron")
    refresh_timezone: str = setting("refresh_timezone")
    drift_check_cron: str = setting("drift_check_cron")
    nats_subject_prefix: str = setting("nats_subject_prefix")
    admin_token: str | None = setting("admin_token")
    admin_bind: str = setting("admin_bind")
    admin_port: int = setting("admin_port")
    admin_tls_cert: str | None = setting("admin_tls_cert")
    admin_tls_key: str | None = setting("admin_tls_key")
    code_git_url: str | None = setting("code_git_url")
    code_git_branch: str = setting("code_git_branch")
