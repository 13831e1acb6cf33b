"""The SQLite snapshot files: build, verify and swap in (``files``), their ids (``ids``), what changed (``diff``),
search (``search``, ``titles``), what ``status`` reports (``status``, ``consistency``), retention, rollback and the
repair of half-done work (``recovery``). Plain Python: usable and testable without Dagster."""
