"""Extraction strategies behind one protocol; ``make_connector`` picks one from the settings."""

from __future__ import annotations

from kryten_pipeline.catalog_item import CatalogConnector, ProgressCallback
from kryten_pipeline.errors import ConfigurationError
from kryten_pipeline.settings import Settings

__all__ = ["ProgressCallback", "make_connector"]


def make_connector(settings: Settings, *, namespace: str = "default",
                   progress: ProgressCallback | None = None) -> CatalogConnector:
    """Build the connector ``KRYTEN_SOURCE`` names (imports are lazy: each source has its own deps)."""
    source = settings.source
    if source == "export":
        from kryten_pipeline.connectors.export_file import ExportFileConnector

        return ExportFileConnector(settings.export_path)
    if source == "fake":
        from kryten_pipeline.connectors.fake import FakeConnector

        return FakeConnector(settings.fake_items, namespace=namespace, fail_after=settings.fake_fail_after)
    if source == "mediacms":
        from kryten_pipeline.connectors.mediacms import MediaCMSConnector

        return MediaCMSConnector.from_settings(settings, progress=progress)
    if source == "mediacms-db":
        from kryten_pipeline.connectors.mediacms_db import MediaCMSDatabaseConnector

        return MediaCMSDatabaseConnector.from_settings(settings, progress=progress)
    if source == "content-service":
        from kryten_pipeline.connectors.content_service import ContentServiceConnector

        return ContentServiceConnector.from_settings(settings, progress=progress)
    raise ConfigurationError(f"unknown source {source!r}", setting="KRYTEN_SOURCE")
