"""Configuration: one table of settings, fully surfaced as Dagster resources and documented in the README."""

from __future__ import annotations

import typing
from pathlib import Path

import dagster as dg
import pytest

from kryten_pipeline.dagster_defs.resources import RESOURCE_CLASSES, configured_resources, kryten_settings
from kryten_pipeline.errors import ConfigurationError
from kryten_pipeline.settings import SETTINGS, Settings

README = Path(__file__).resolve().parent.parent / "README.md"


def test_every_setting_is_a_field_of_exactly_one_resource_with_the_same_default() -> None:
    hints = typing.get_type_hints(Settings)
    owners: dict[str, list[str]] = {}
    for key, cls in RESOURCE_CLASSES.items():
        for name, field in cls.model_fields.items():
            owners.setdefault(name, []).append(key)
            spec = next(s for s in SETTINGS if s.field == name)
            # Typed as Settings types it (the launchpad shows a number as a number), described by its variable.
            if hints[name] in (int, float, bool, int | None):
                assert field.annotation == hints[name], name
                assert field.default == getattr(Settings(), name), name
            else:
                assert field.annotation in (str, str | None) and field.default == spec.default, name
            assert field.description and field.description.startswith(f"{spec.env}: "), name
    for spec in SETTINGS:
        assert len(owners.get(spec.field, [])) == 1, f"{spec.env} must be on exactly one resource"


def test_every_setting_is_documented_in_the_readme() -> None:
    text = README.read_text(encoding="utf-8")
    missing = [spec.env for spec in SETTINGS if spec.env not in text and spec.env.split("_TLS_")[0] not in text]
    assert not missing, f"README lacks {missing}"


def test_resources_take_typed_values_from_the_environment_and_name_a_bad_variable() -> None:
    resources = configured_resources({"KRYTEN_KEEP_SNAPSHOTS": "7", "KRYTEN_MAX_REJECT_RATIO": "0.1",
                                      "KRYTEN_REQUIRE_HTTPS_THUMBNAILS": "false"})
    pipeline = resources["pipeline"]
    assert (pipeline.keep_snapshots, pipeline.max_reject_ratio, pipeline.require_https_thumbnails) == (7, 0.1, False)
    with pytest.raises(ConfigurationError, match="KRYTEN_KEEP_SNAPSHOTS") as caught:
        configured_resources({"KRYTEN_KEEP_SNAPSHOTS": "three"})
    assert "'three' is not an integer" in str(caught.value)
    with pytest.raises(ConfigurationError, match="KRYTEN_MAX_REMOVED_RATIO"):
        configured_resources({"KRYTEN_MAX_REMOVED_RATIO": "1.5"})


def test_resources_bind_set_variables_with_envvar_and_never_hold_secret_values() -> None:
    resources = configured_resources({"KRYTEN_SOURCE": "fake", "MEDIACMS_TOKEN": "s3cret", "KRYTEN_DATA_DIR": "/x"})
    source = resources["catalog_source"]
    assert isinstance(source.mediacms_token, dg.EnvVar) and source.mediacms_token.env_var_name == "MEDIACMS_TOKEN"
    assert source.export_path is None  # unset → default
    assert "s3cret" not in repr(resources)


def test_settings_parse_and_reject_bad_values() -> None:
    settings = Settings.from_env({"KRYTEN_NAMESPACES": "a, b,a", "KRYTEN_KEEP_SNAPSHOTS": "5"})
    assert settings.namespaces == ["a", "b"] and settings.keep_snapshots == 5
    for env, bad in (("KRYTEN_MAX_REJECT_RATIO", "2"), ("KRYTEN_KEEP_SNAPSHOTS", "0"), ("KRYTEN_NAMESPACES", "a/b"),
                     ("KRYTEN_FAKE_ITEMS", "many")):
        with pytest.raises(ConfigurationError) as info:
            Settings.from_env({env: bad})
        assert env in str(info.value)


def test_kryten_settings_merges_resources() -> None:
    resources = configured_resources({"KRYTEN_SOURCE": "fake"})
    settings = kryten_settings(resources["pipeline"], resources["nats"])
    assert settings.kv_bucket == "kryten_playlist_snapshot" and settings.nats_url is None
