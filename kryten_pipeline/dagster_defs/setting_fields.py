"""Typed resource fields declared from ``kryten_pipeline.settings``: the launchpad shows each setting with its type,
its default and a description that names the environment variable feeding it.

A field also accepts the setting's text form (``"3"``, ``"true"``), parsed by the very rules of ``Settings`` — an
invalid value is refused with the message the CLI gives, naming the variable. A resource class declaring a field
with another type than its setting's fails when the class is defined.
"""

from __future__ import annotations

from typing import Any

import dagster as dg
from pydantic import Field, field_validator

from kryten_pipeline.errors import ConfigurationError
from kryten_pipeline.settings import SPEC_BY_FIELD, Settings

_TYPED = (int, float, bool, int | None, str, str | None)
_DEFAULTS = Settings()


def resource_type(name: str) -> Any:
    """The type a resource field of setting ``name`` has: the setting's own, or text for a path or a list (a
    launchpad field holds them as the environment does)."""
    annotation = Settings.model_fields[name].annotation
    return annotation if annotation in _TYPED else str


def typed_default(name: str) -> Any:
    """The default of setting ``name`` as its resource field holds it: typed for numbers and flags, else text."""
    if resource_type(name) in (int, float, bool):
        return getattr(_DEFAULTS, name)
    return SPEC_BY_FIELD[name].default


def setting(name: str) -> Any:
    """A resource field for setting ``name``: its default and its help text, led by the variable's name."""
    spec = SPEC_BY_FIELD[name]
    secret = " Secret: bind it to the environment variable, never type it here." if spec.secret else ""
    return Field(default=typed_default(name), description=f"{spec.env}: {spec.help}.{secret}")


class SettingsResource(dg.ConfigurableResource):
    """A resource whose fields are settings (see ``setting``)."""

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        for name, field in cls.model_fields.items():
            if name not in SPEC_BY_FIELD:
                raise TypeError(f"{cls.__name__}.{name} is not a setting of kryten_pipeline.settings.Settings")
            if field.annotation != resource_type(name):
                raise TypeError(f"{cls.__name__}.{name} is declared {field.annotation}, its setting is "
                                f"{resource_type(name)}")

    @field_validator("*", mode="before")
    @classmethod
    def _parse_setting_text(cls, value: Any, info: Any) -> Any:
        name = info.field_name
        if not isinstance(value, str) or resource_type(name) not in (int, float, bool, int | None):
            return value
        if not value.strip():
            return typed_default(name)
        try:
            return getattr(Settings.from_mapping({name: value}), name)
        except ConfigurationError as exc:
            raise ValueError(str(exc)) from None
