"""Sensors of the code location."""

from __future__ import annotations

import dagster as dg

from kryten_pipeline.dagster_defs.partitions import configured_namespaces, register_namespaces
from kryten_pipeline.errors import KrytenError


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
