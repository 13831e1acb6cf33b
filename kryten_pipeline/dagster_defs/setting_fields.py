"""Typed resource fields declared from ``kryten_pipeline.settings``: the launchpad shows each setting with its type,
its default and a description that names the environment variable feeding it.

A field also accepts the setting's text form (``"3"``, ``"true"``), parsed by the very rules of ``Settings`` — an
invalid value is refused with the message the CLI gives, naming the variable.
"""

from __future__ import annotations

import typing
from typing import Any

import dagster as dg
from pydantic import Field, field_validator

from kryten_pipeline.errors import ConfigurationError
from kryten_pipeline.settings import SPEC_BY_FIELD, Settings

_SETTING_TYPES = typing.get_type_hints(Settings)
_DEFAULTS = Settings()


def typed_default(name: str) -> Any:
    """The default of setting ``name`` as its resource field holds it: typed for numbers and flags, else text."""
    if _SETTING_TYPES[name] in (int, float, bool):
        return getattr(_DEFAULTS, name)
    return SPEC_BY_FIELD[name].default


def setting(name: str) -> Any:
    """A resource field for setting ``name``: its default and its help text, led by the variable's name."""
    spec = SPEC_BY_FIELD[name]
    secret = " Secret: bind it to the environment variable, never type it here." if spec.secret else ""
    return Field(default=typed_default(name), description=f"{spec.env}: {spec.help}.{secret}")


class SettingsResource(dg.ConfigurableResource):
    """A resource whose fields are settings (see ``setting``)."""

    @field_validator("*", mode="before")
    @classmethod
    def _parse_setting_text(cls, value: Any, info: Any) -> Any:
        name = info.field_name
        if not isinstance(value, str) or _SETTING_TYPES.get(name) not in (int, float, bool, int | None):
            return value
        if not value.strip():
            return typed_default(name)
        try:
            return getattr(Settings.from_mapping({name: value}), name)
        except ConfigurationError as exc:
            raise ValueError(str(exc)) from None
