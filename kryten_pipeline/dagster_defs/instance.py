"""Which Dagster instance the CLI uses: the same one ``dagster dev`` shows (DESIGN §3)."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

INSTANCE_DIR = ".dagster"


def find_project_root(start: Path | None = None) -> Path | None:
    """The nearest directory (cwd or a parent) holding both ``dagster.yaml`` and ``workspace.yaml``."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "dagster.yaml").is_file() and (folder / "workspace.yaml").is_file():
            return folder
    return None


def resolve_dagster_home(data_dir: Path) -> Path:
    """``DAGSTER_HOME`` if set; else the project root; else a private home under the data dir.

    The project's ``dagster.yaml`` keeps instance data in ``.dagster/`` relative to the working
    directory, so callers chdir to the returned home before opening the instance.
    """
    configured = os.environ.get("DAGSTER_HOME", "").strip()
    if configured:
        return Path(configured).resolve()
    root = find_project_root()
    if root is not None:
        return root
    home = (data_dir / ".dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        storage = home / INSTANCE_DIR
        config.write_text(
            "telemetry:\n  enabled: false\n"
            f"storage:\n  sqlite:\n    base_dir: {storage}\n"
            "local_artifact_storage:\n  module: dagster._core.storage.root\n  class: LocalArtifactStorage\n"
            f"  config:\n    base_dir: {storage}\n",
            encoding="utf-8",
        )
    return home


def open_instance(home: Path) -> dg.DagsterInstance:
    os.environ["DAGSTER_HOME"] = str(home)
    return dg.DagsterInstance.get()
