"""The IO manager of the catalog assets: a pickle file per asset and namespace, handed over in memory within a run.

``raw_catalog`` and ``validated_items`` are large (100k items: tens of MB). Each output is written to
``<base_dir>/<asset>/<namespace>`` — the layout of Dagster's filesystem IO manager — so "re-execute from failure",
a single-asset materialisation and the UI's ``path`` metadata work; but the next step of the *same run* is given
the object just stored instead of unpickling the file. The object is handed over once: the entry is dropped when
the consumer takes it, so nothing outlives its step.

Built on Dagster's public ``ConfigurableIOManager`` API only. It also writes no per-file debug messages into the
event log (each event is a SQLite transaction, ~10–20 ms here): the path is in the materialization's metadata.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import PrivateAttr


class CatalogIOManager(dg.ConfigurableIOManager):
    """Pickle files under ``base_dir`` (default: the instance's storage directory, as ``fs_io_manager``),
    handed over in memory between the steps of one run."""

    base_dir: str | None = None
    _root: Path | None = PrivateAttr(default=None)
    # file path -> object, stored by this run (Dagster sets a resource up once per run: see setup_for_execution)
    _handoff: dict[str, Any] = PrivateAttr(default_factory=dict)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        if self.base_dir is not None:
            root = self.base_dir
        elif context.instance is not None:
            root = context.instance.storage_directory()
        else:
            raise dg.DagsterInvariantViolationError("the catalog IO manager needs a Dagster instance or base_dir")
        # Absolute, so the `path` metadata in the UI names the file wherever the webserver was started.
        self._root = Path(os.path.abspath(root))
        self._handoff = {}

    def _path(self, asset_key: dg.AssetKey, partition: str | None) -> Path:
        if self._root is None:
            raise dg.DagsterInvariantViolationError("the catalog IO manager was used without being set up")
        path = self._root.joinpath(*asset_key.path)
        return path / partition if partition is not None else path

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        partition = context.asset_partition_key if context.has_asset_partitions else None
        path = self._path(context.asset_key, partition)
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(temp, "wb") as out:
                pickle.dump(obj, out, protocol=pickle.HIGHEST_PROTOCOL)
            temp.replace(path)  # a reader never sees half a file
        finally:
            temp.unlink(missing_ok=True)
        self._handoff[str(path)] = obj
        context.add_output_metadata({"path": dg.MetadataValue.path(str(path))})

    def load_input(self, context: dg.InputContext) -> Any:
        partition = context.asset_partition_key if context.has_asset_partitions else None
        path = self._path(context.asset_key, partition)
        if str(path) in self._handoff:
            return self._handoff.pop(str(path))
        try:
            return self.read_file(path)
        except FileNotFoundError:
            raise dg.Failure(
                description=f"{context.asset_key.to_user_string()} of namespace {partition!r} has not been "
                f"materialized yet (no {path}): materialize it first, or run the whole refresh",
                allow_retries=False,
            ) from None

    def read_file(self, path: Path) -> Any:
        """An output stored by an earlier run (a re-execution from a failed step, a single-asset run)."""
        with open(path, "rb") as source:
            return pickle.load(source)
