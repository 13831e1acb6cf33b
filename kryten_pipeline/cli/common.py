"""What every command shares: exit codes, the settings and namespace to act on, the project's Dagster instance."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kryten_pipeline.gc_tuning import freeze_survivors
from kryten_pipeline.namespaces import validate_namespace
from kryten_pipeline.settings import SPEC_BY_FIELD, Settings

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CANNOT_TELL = 3  # status: KV could not be read, so consistency is unknown


class ProcessRole:
    """Whether this process is the command itself (``main()`` reading sys.argv), not a caller of ``main([...])``
    such as a test: only then may it freeze the garbage collector's view of what it loaded (gc_tuning)."""

    own_process = False


def freeze_loaded() -> None:
    """Once the command has loaded Dagster and the definitions, keep them out of the collections of its run."""
    if ProcessRole.own_process:
        import kryten_pipeline.definitions  # noqa: F401 - loaded now, so that it is frozen with the rest

        freeze_survivors()


def settings_and_namespace(namespace: str | None) -> tuple[Settings, str]:
    """Settings plus the namespace to act on (default: the first configured one)."""
    settings = Settings.from_env()
    return settings, validate_namespace(namespace) if namespace else settings.namespaces[0]


def open_project_instance(settings: Settings) -> Any:
    """The Dagster instance the UI shows; the working directory becomes its home (see dagster.yaml)."""
    from kryten_pipeline.dagster_defs.instance import open_instance, resolve_dagster_home

    absolutise_paths()
    home = resolve_dagster_home(settings.data_dir.resolve())
    os.chdir(home)
    return open_instance(home)


def absolutise_paths() -> None:
    """Relative paths in the environment keep meaning the caller's directory after we chdir."""
    for name in ("data_dir", "export_path"):
        env = SPEC_BY_FIELD[name].env
        value = os.environ.get(env, "").strip() or (SPEC_BY_FIELD[name].default or "")
        if value:
            os.environ[env] = str(Path(value).expanduser().resolve())


def override_source(source: str | None) -> None:
    """``--source``: this run reads another source than KRYTEN_SOURCE says."""
    if source:
        os.environ[SPEC_BY_FIELD["source"].env] = source
