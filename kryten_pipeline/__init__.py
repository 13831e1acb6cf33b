"""kryten-pipeline: a time-frozen, searchable snapshot of a video catalog for kryten-playlist.

The plain-Python core (connectors, validation, SQLite build, KV publish) lives in the top-level
modules and ``connectors/``; the Dagster wiring lives in ``dagster_defs/`` and ``definitions.py``.
"""

__version__ = "0.1.0"
