"""Resources of the automation layer: the ``catalog.updated`` event stream and the refresh triggers.

Like the resources in ``resources.py``, each field is the raw string of one setting (``Settings`` parses
it) and ``configured_resources`` binds it to ``EnvVar`` when the variable is set, so the UI shows which
variable feeds a field and never a secret's value.
"""

from __future__ import annotations

import dagster as dg


class CatalogEventsResource(dg.ConfigurableResource):
    """Where the ``catalog.updated`` events come from (a Redis Stream read through a consumer group)."""

    redis_url: str | None = None
    catalog_event_stream_key: str | None = "catalog:events"
    event_group: str | None = "kryten-pipeline"
    event_consumer: str | None = "dagster-sensor"
    event_debounce_s: str | None = "30"
    event_batch_size: str | None = "500"
    event_claim_idle_s: str | None = "900"


class AutomationResource(dg.ConfigurableResource):
    """Schedules and the refresh triggers (NATS command, admin endpoint).

    The schedules read their cron and timezone when the code location loads (a schedule's cron is part
    of its definition); this resource shows those values in the UI next to the other settings.
    """

    refresh_schedule_enabled: str | None = "false"
    refresh_cron: str | None = "0 3 * * *"
    refresh_timezone: str | None = "UTC"
    drift_check_cron: str | None = "*/15 * * * *"
    nats_subject_prefix: str | None = "kryten"
    admin_token: str | None = None
    admin_bind: str | None = "127.0.0.1"
    admin_port: str | None = "8787"
