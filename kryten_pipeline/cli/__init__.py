"""``kryten-pipeline``: a thin CLI over the same Dagster definitions the UI shows.

``refresh`` materialises the four assets (and their checks) through Dagster against the project's
instance, so a CLI run appears in the UI's run history exactly like a UI run. ``app`` declares the commands;
``refresh``, ``inspect`` and ``agents`` do their work; ``common`` holds what they share.
"""

from kryten_pipeline.cli.app import app, main
from kryten_pipeline.cli.common import EXIT_CANNOT_TELL, EXIT_FAILED, EXIT_OK, EXIT_USAGE

__all__ = ["EXIT_CANNOT_TELL", "EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "app", "main"]
