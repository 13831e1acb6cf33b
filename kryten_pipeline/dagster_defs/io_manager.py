"""The IO manager of the catalog assets: Dagster's pickle files, handed over in memory within a run.

``raw_catalog`` and ``validated_items`` are large (100k items: ~180 MB of Python objects). Dagster's filesystem
IO manager writes each to ``<DAGSTER_HOME>/.dagster/storage/<asset>/<namespace>`` and the next step reads it
back, which costs ~0.6 s per 100k items for the read alone. This manager writes the same files (so
"re-execute from failure", a single-asset materialisation and the UI's ``path`` metadata work as before) but
gives the next step of the *same run* the object it just stored instead of unpickling the file. The object
is handed over once: the entry is dropped when the consumer takes it, so nothing outlives its step.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import dagster as dg
from dagster._core.storage.fs_io_manager import PickledObjectFilesystemIOManager

if TYPE_CHECKING:
    from upath import UPath


class HandoffPickleIOManager(PickledObjectFilesystemIOManager):
    """Pickle files as ``fs_io_manager`` writes them, plus an in-memory hand-over to the same run's next step."""

    def __init__(self, base_dir: str | None = None, **kwargs: Any) -> None:
        super().__init__(base_dir=base_dir, **kwargs)
        # file path -> (run id that stored it, object); an instance serves one run, the run id is a guard
        self._handoff: dict[str, tuple[str, Any]] = {}

    def dump_to_path(self, context: dg.OutputContext, obj: Any, path: UPath) -> None:
        super().dump_to_path(context, obj, path)
        self._handoff[str(path)] = (context.run_id, obj)

    def load_from_path(self, context: dg.InputContext, path: UPath) -> Any:
        entry = self._handoff.pop(str(path), None)
        if entry is not None and entry[0] == _run_id(context):
            return entry[1]
        return super().load_from_path(context, path)


def _run_id(context: dg.InputContext) -> str | None:
    try:
        return context.step_context.run_id
    except Exception:  # an input context built outside a run (direct invocation, tests)
        return None


class CatalogIOManager(dg.ConfigurableIOManagerFactory):
    """Pickle files under ``base_dir`` (default: the instance's storage directory, as ``fs_io_manager``),
    handed over in memory between the steps of one run."""

    base_dir: str | None = None

    def create_io_manager(self, context: dg.InitResourceContext) -> HandoffPickleIOManager:
        base_dir = self.base_dir
        if base_dir is None:
            if context.instance is None:
                raise dg.DagsterInvariantViolationError("the catalog IO manager needs a Dagster instance or base_dir")
            base_dir = context.instance.storage_directory()
        # Absolute, so the `path` metadata in the UI names the file wherever the webserver was started.
        return HandoffPickleIOManager(base_dir=os.path.abspath(base_dir))
