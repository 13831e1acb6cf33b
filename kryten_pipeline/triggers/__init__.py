"""What starts a refresh besides the UI and the schedules: the launcher and the NATS command (``refresh``), the
admin HTTP endpoint (``admin_app``), the ``serve`` commands running both (``serving``) and the ``catalog.updated``
events read from a Redis Stream (``catalog_events``)."""
