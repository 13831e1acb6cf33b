"""Namespace partitions: one run refreshes one namespace; a backfill refreshes several."""

from __future__ import annotations

import os

import dagster as dg

from kryten_pipeline.settings import SPEC_BY_FIELD, load_dotenv_file, parse_namespaces


def configured_namespaces() -> list[str]:
    load_dotenv_file()
    spec = SPEC_BY_FIELD["namespaces"]
    return parse_namespaces(os.environ.get(spec.env, "").strip() or str(spec.default))


namespace_partitions = dg.StaticPartitionsDefinition(configured_namespaces())
