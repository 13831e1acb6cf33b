"""Configuration: one table of settings, fully surfaced as Dagster resources and documented in the README."""

from __future__ import annotations

import re
from pathlib import Path

import dagster as dg
import pytest

from kryten_pipeline.dagster_defs.resources import RESOURCE_CLASSES, configured_resources, kryten_settings
from kryten_pipeline.errors import ConfigurationError
from kryten_pipeline.settings import SETTINGS, Settings

README = Path(__file__).resolve().parent.parent / "README.md"


def test_every_setting_is_a_field_of_exactly_one_resource_with_the_same_default() -> None:
    owners: dict[str, list[str]] = {}
    for key, cls in RESOURCE_CLASSES.items():
        for name, field in cls.model_fields.items():
            owners.setdefault(name, []).append(key)
            spec = next(s for s in SETTINGS if s.field == name)
            # Typed as Settings types it (the launchpad shows a number as a number), described by its variable.
            if Settings.model_fields[name].annotation in (int, float, bool, int | None):
                assert field.annotation == Settings.model_fields[name].annotation, name
                assert field.default == getattr(Settings(), name), name
            else:
                assert field.annotation in (str, str | None) and field.default == spec.default, name
            assert field.description and field.description.startswith(f"{spec.env}: "), name
    for spec in SETTINGS:
        assert len(owners.get(spec.field, [])) == 1, f"{spec.env} must be on exactly one resource"


# Settings whose README default names what an unset value means rather than a literal.
DERIVED_DEFAULTS = {"KRYTEN_EXPORT_PATH": "shipped sample", "KRYTEN_MANIFEST_BASE_URL": "`MEDIACMS_URL` as https"}


def readme_configuration_rows() -> dict[str, str]:
    """Variable → its default cell, from the README's configuration table (a row may list several variables,
    e.g. `NATS_TLS_CA` / `NATS_TLS_CERT`, or suffixes of the first one: `CONTENT_SERVICE_TLS_CA` / `_TLS_CERT`)."""
    text = README.read_text(encoding="utf-8")
    table = text[text.index("| variable | default | meaning |"):]
    table = table[: table.index("\n\n")]
    rows: dict[str, str] = {}
    for line in table.splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        names = re.findall(r"`([A-Z0-9_]+)`", cells[0])
        for name in names:
            full = names[0].rsplit(name.split("_", 2)[1], 1)[0].rstrip("_") + name if name.startswith("_") else name
            assert full not in rows, f"{full} has two rows in the README's configuration table"
            rows[full] = cells[1]
    return rows


def test_the_readme_configuration_table_matches_the_declarations() -> None:
    rows = readme_configuration_rows()
    missing = [spec.env for spec in SETTINGS if spec.env not in rows]
    assert not missing, f"the README's configuration table lacks {missing}"
    for spec in SETTINGS:
        cell = rows[spec.env]
        if spec.env in DERIVED_DEFAULTS:
            assert cell == DERIVED_DEFAULTS[spec.env], spec.env
        elif spec.default is None:
            assert cell.startswith("—"), f"{spec.env} has no default, the README says {cell!r}"
        else:
            assert f"`{spec.default}`" in cell, f"{spec.env} defaults to {spec.default!r}, the README says {cell!r}"
    unknown = set(rows) - {spec.env for spec in SETTINGS}
    assert not unknown, f"the README documents variables no setting declares: {sorted(unknown)}"


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
    # Bad values of several resources are all named at once, as the CLI names them.
    with pytest.raises(ConfigurationError) as several:
        configured_resources({"KRYTEN_KEEP_SNAPSHOTS": "0", "MEDIACMS_TIMEOUT": "soon"})
    assert str(several.value) == ("MEDIACMS_TIMEOUT: 'soon' is not an integer; "
                                  "KRYTEN_KEEP_SNAPSHOTS: must be at least 1, got 0")


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


def test_every_setting_is_declared_once_with_its_variable_type_default_help_and_secrecy() -> None:
    envs = [spec.env for spec in SETTINGS]
    assert len(envs) == len(set(envs)) == len(Settings.model_fields)
    for name, info in Settings.model_fields.items():
        extra = info.json_schema_extra
        assert isinstance(extra, dict) and extra["env"] == info.validation_alias, name
        assert info.description and info.annotation is not None, name
        assert info.repr is not extra["secret"], f"{name}: a secret is kept out of repr, nothing else is"
    secrets = {spec.env for spec in SETTINGS if spec.secret}
    assert {"MEDIACMS_TOKEN", "MEDIACMS_PASSWORD", "NATS_PASSWORD", "REDIS_URL", "KRYTEN_ADMIN_TOKEN"} <= secrets
    # Typed values by field name (a resource, a test), text from the environment by variable: the same rules.
    from_env = Settings.from_env({"KRYTEN_KEEP_SNAPSHOTS": " 5 "})
    assert Settings(keep_snapshots=5).keep_snapshots == from_env.keep_snapshots == 5
    assert Settings().data_dir == Path("data") and Settings().namespaces == ["default"]


def test_secrets_never_appear_in_the_settings_repr() -> None:
    values = {spec.env: f"secret-value-{i}" for i, spec in enumerate(SETTINGS) if spec.secret}
    shown = repr(Settings.from_env(values)) + str(Settings.from_env(values))
    assert not [env for env, value in values.items() if value in shown]


def test_every_invalid_value_is_reported_at_once_naming_its_variable() -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({"MEDIACMS_TIMEOUT": "soon", "KRYTEN_MAX_REMOVED_RATIO": "1.5",
                           "KRYTEN_REQUIRE_HTTPS_THUMBNAILS": "maybe", "KRYTEN_REFRESH_TIMEZONE": "Mars/Olympus"})
    message = str(caught.value)
    assert "MEDIACMS_TIMEOUT: 'soon' is not an integer" in message
    assert "KRYTEN_MAX_REMOVED_RATIO: must be between 0 and 1, got 1.5" in message
    assert "KRYTEN_REQUIRE_HTTPS_THUMBNAILS: 'maybe' is not true/false" in message
    assert "KRYTEN_REFRESH_TIMEZONE: unknown timezone 'Mars/Olympus'" in message
    assert caught.value.setting == "MEDIACMS_TIMEOUT"
    with pytest.raises(ConfigurationError, match=r"unknown source 'ftp'.*KRYTEN_SOURCE"):
        Settings.from_env({"KRYTEN_SOURCE": "ftp"})
    with pytest.raises(ValueError, match="keep_snapshot"):
        Settings(keep_snapshot=3)  # a misspelt field is refused, not ignored


def test_a_resource_field_typed_unlike_its_setting_is_refused_when_the_class_is_defined() -> None:
    from kryten_pipeline.dagster_defs.setting_fields import SettingsResource, setting

    with pytest.raises(TypeError, match="keep_snapshots is declared <class 'str'>, its setting is <class 'int'>"):
        class Mistyped(SettingsResource):
            keep_snapshots: str = setting("keep_snapshots")

    with pytest.raises(TypeError, match="not a setting"):
        class Unknown(SettingsResource):
            colour: str = "blue"


def test_invalid_values_stop_the_code_location_from_loading_naming_each_variable(tmp_path: Path) -> None:
    """As the webserver and the daemon load it: Dagster's own validation of the code location."""
    import os
    import shutil
    import subprocess
    import sys

    command = shutil.which("dagster", path=str(Path(sys.executable).parent))
    assert command
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("KRYTEN_", "MEDIACMS_", "DAGSTER_HOME"))}
    environ |= {"KRYTEN_KEEP_SNAPSHOTS": "0", "MEDIACMS_TIMEOUT": "soon", "KRYTEN_DATA_DIR": str(tmp_path / "data")}
    loaded = subprocess.run([command, "definitions", "validate", "-m", "kryten_pipeline.definitions"], cwd=tmp_path,
                            env=environ, capture_output=True, text=True, timeout=120)
    assert loaded.returncode != 0
    assert ("ConfigurationError: MEDIACMS_TIMEOUT: 'soon' is not an integer; KRYTEN_KEEP_SNAPSHOTS: must be at "
            "least 1, got 0") in loaded.stdout + loaded.stderr
