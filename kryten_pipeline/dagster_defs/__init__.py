"""The Dagster layer: it wires the plain-Python core into assets, checks, resources and jobs."""
