"""Errors that are part of the interface: each says what happened and which setting to look at."""

from __future__ import annotations


class KrytenError(Exception):
    """Base class. ``setting`` names the configuration variable a user should check, if any."""

    def __init__(self, message: str, *, setting: str | None = None) -> None:
        self.setting = setting
        if setting and setting not in message:
            message = f"{message} (check {setting})"
        super().__init__(message)


class ConfigurationError(KrytenError):
    """A setting is missing, malformed or points at something that cannot work."""


class SourceError(KrytenError):
    """The catalog source could not be read completely; nothing is published."""


class ValidationThresholdError(KrytenError):
    """Too many rejected rows, or the catalog shrank suspiciously: the snapshot is not published."""


class SnapshotBuildError(KrytenError):
    """The SQLite snapshot could not be built or failed verification; the live file is untouched."""


class StaleSnapshotError(KrytenError):
    """A newer snapshot is already live or current; an older one is never moved over it."""


class PublishError(KrytenError):
    """A NATS KV write failed or could not be confirmed."""


class NatsUnavailableError(KrytenError):
    """NATS could not be reached (or the embedded server could not be started)."""


class EventStreamError(KrytenError):
    """The catalog event stream (Redis) could not be read or acknowledged."""


class DeliveryError(KrytenError):
    """A snapshot file could not be stored, fetched, verified or installed; what was installed stays as it was."""
