"""Which Dagster instance the CLI uses: the same one ``dagster dev`` shows (DESIGN §3)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import dagster as dg

from kryten_pipeline.snapshot.files import ensure_dir

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
    ensure_dir(home.parent)  # the data dir: no world access
    home.mkdir(mode=0o700, exist_ok=True)  # run history and event logs
    config = home / "dagster.yaml"
    if not config.exists():
        storage = home / INSTANCE_DIR
        tmp = config.with_name(f".dagster.yaml.{os.getpid()}.tmp")  # written whole, then renamed: never read half
        tmp.write_text(
            "telemetry:\n  enabled: false\n"
            f"storage:\n  sqlite:\n    base_dir: {storage}\n"
            "local_artifact_storage:\n  module: dagster._core.storage.root\n  class: LocalArtifactStorage\n"
            f"  config:\n    base_dir: {storage}\n",
            encoding="utf-8",
        )
        os.replace(tmp, config)
    return home


def open_instance(home: Path) -> dg.DagsterInstance:
    """The instance of ``home``. Opening is serialized across processes: two CLI commands started together on
    a new home would otherwise both create its SQLite tables ("table runs already exists")."""
    os.environ["DAGSTER_HOME"] = str(home)
    lock_dir = Path(home) / INSTANCE_DIR
    lock_dir.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(lock_dir / "kryten-open.lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return dg.DagsterInstance.get()
    finally:
        os.close(fd)  # releases the lock
