"""Namespace partitions: one run refreshes one namespace; a backfill refreshes several.

Namespaces are dynamic partitions, so one can be added without a code change: the configured ones
(``KRYTEN_NAMESPACES``) are registered by the ``namespace_registry`` sensor and by the CLI before a run,
and ``kryten-pipeline namespaces add NS`` registers another.
"""

from __future__ import annotations

import os

import dagster as dg

from kryten_pipeline.namespaces import validate_namespace
from kryten_pipeline.settings import SPEC_BY_FIELD, load_dotenv_file, parse_namespaces

NAMESPACE_PARTITIONS_NAME = "namespace"

namespace_partitions = dg.DynamicPartitionsDefinition(name=NAMESPACE_PARTITIONS_NAME)


def configured_namespaces() -> list[str]:
    load_dotenv_file()
    spec = SPEC_BY_FIELD["namespaces"]
    return parse_namespaces(os.environ.get(spec.env, "").strip() or str(spec.default))


def registered_namespaces(instance: dg.DagsterInstance) -> list[str]:
    return list(instance.get_dynamic_partitions(NAMESPACE_PARTITIONS_NAME))


def register_namespaces(instance: dg.DagsterInstance, names: list[str]) -> list[str]:
    """Add the namespaces the instance does not know yet; return the ones added."""
    for name in names:
        validate_namespace(name)
    known = set(registered_namespaces(instance))
    missing = [name for name in dict.fromkeys(names) if name not in known]
    if missing:
        instance.add_dynamic_partitions(NAMESPACE_PARTITIONS_NAME, missing)
    return missing
