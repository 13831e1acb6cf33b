"""The CLI end to end in a temp dir: embedded nats-server, shipped sample, real Dagster instance."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kryten_pipeline.snapshot.files import live_db_path

SNAPSHOT_LINE = re.compile(r"^snapshot_id: (\d{8}T\d{6}Z-[0-9a-f]{6})$", re.M)


def cli(workdir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("KRYTEN_", "NATS_", "MEDIACMS_"))}
    environ.pop("DAGSTER_HOME", None)
    environ.update({"KRYTEN_DATA_DIR": str(workdir / "data"), **env})
    return subprocess.run(
        [sys.executable, "-m", "kryten_pipeline.cli", *args],
        cwd=workdir, env=environ, capture_output=True, text=True, timeout=240,
    )


def status(workdir: Path, **env: str) -> dict:
    result = cli(workdir, "status", "--json", **env)
    return json.loads(result.stdout)


@pytest.mark.slow
def test_refresh_status_snapshots_rollback(tmp_path: Path) -> None:
    first = cli(tmp_path, "refresh")
    assert first.returncode == 0, first.stderr
    first_id = SNAPSHOT_LINE.search(first.stdout).group(1)
    assert "items: 309 valid of 314 read, 5 rejected, 17 categories; 1 bad thumbnail URL dropped" in first.stdout
    assert "▶ raw_catalog" in first.stderr and "check kv_current_matches_sqlite: passed" in first.stderr
    report = status(tmp_path)
    assert report["consistent"] is True
    assert report["kv"]["current"]["snapshot_id"] == first_id == report["sqlite"]["snapshot_id"]
    # The embedded server is stopped when the last command using it ends.
    assert not (tmp_path / "data" / ".nats" / "server.json").exists()
    # The snapshot file went into the embedded server's Object Store: a follower on this host installs it.
    reader = tmp_path / "reader" / "catalog.sqlite3"
    followed = cli(tmp_path, "follow", "--once", "--to", str(reader))
    assert followed.returncode == 0, followed.stderr
    assert followed.stdout.startswith(f"installed {first_id} (309 items, ")
    assert reader.read_bytes() == live_db_path(tmp_path / "data", "default").read_bytes()
    assert report["object"]["present"] is True

    # Another source replaces every item: the removal guard would refuse it without --allow-removals.
    second = cli(tmp_path, "refresh", "--source", "fake", "--json", "--allow-removals")
    assert second.returncode == 0, second.stderr
    summary = json.loads(second.stdout)
    assert summary["success"] and summary["counts"]["valid"] == 250 and summary["snapshot_id"] > first_id

    listing = json.loads(cli(tmp_path, "snapshots", "--json").stdout)["snapshots"]
    assert [row["snapshot_id"] for row in listing] == [summary["snapshot_id"], first_id]
    assert listing[0]["current"] and listing[0]["live"] and listing[1]["kept_file"]

    rolled = cli(tmp_path, "rollback", "--to", first_id)
    assert rolled.returncode == 0, rolled.stderr
    after = status(tmp_path)
    assert after["consistent"] is True and after["kv"]["current"]["snapshot_id"] == first_id
    assert after["sqlite"]["item_count"] == 309
    # The CLI's runs are in the Dagster instance the UI would show.
    assert (tmp_path / "data" / ".dagster_home" / ".dagster" / "history" / "runs.db").exists()


@pytest.mark.slow
def test_broken_export_fails_cleanly_and_changes_nothing(tmp_path: Path) -> None:
    assert cli(tmp_path, "refresh").returncode == 0
    live = live_db_path(tmp_path / "data", "default")
    before_bytes = live.read_bytes()
    before = status(tmp_path)["kv"]
    broken = tmp_path / "broken.json"
    broken.write_text('[{"video_id": "a1", "title": "One"}, {"video_id": "b2", "ti', encoding="utf-8")
    result = cli(tmp_path, "refresh", KRYTEN_EXPORT_PATH=str(broken))
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "not valid JSON" in last and "KRYTEN_EXPORT_PATH" in last
    assert live.read_bytes() == before_bytes
    assert status(tmp_path)["kv"] == before


def test_configuration_errors_name_the_setting(tmp_path: Path) -> None:
    bad_source = cli(tmp_path, "refresh", KRYTEN_SOURCE="ftp")
    assert bad_source.returncode == 2 and "KRYTEN_SOURCE" in bad_source.stderr
    unknown_ns = cli(tmp_path, "refresh", "--namespace", "other")
    assert unknown_ns.returncode == 2 and "namespaces add other" in unknown_ns.stderr
    bad_name = cli(tmp_path, "status", "--namespace", "../etc")
    assert bad_name.returncode == 2 and "KRYTEN_NAMESPACES" in bad_name.stderr
    bad_nats = cli(tmp_path, "status", NATS_URL="nats://kryten:hunter2@127.0.0.1:1")
    assert bad_nats.returncode == 3 and "NATS_URL" in bad_nats.stderr and "hunter2" not in bad_nats.stderr


def test_status_before_any_refresh_is_inconsistent_not_a_crash(tmp_path: Path) -> None:
    result = cli(tmp_path, "status", "--json")
    assert result.returncode == 1
    assert json.loads(result.stdout)["consistent"] is False


@pytest.mark.slow
def test_namespaces_are_independent_and_can_be_added_without_code_change(tmp_path: Path) -> None:
    assert cli(tmp_path, "namespaces", "add", "staging").returncode == 0
    listed = cli(tmp_path, "namespaces", KRYTEN_NAMESPACES="default,music").stdout.split("\n")
    assert "default" in listed and "music" in listed and any(line.startswith("staging  (registered") for line in listed)
    assert cli(tmp_path, "refresh", "--namespace", "staging", "--source", "fake", "--quiet").returncode == 0
    assert cli(tmp_path, "refresh", "--quiet").returncode == 0
    staging = json.loads(cli(tmp_path, "status", "--json", "--namespace", "staging").stdout)
    assert staging["consistent"] and staging["sqlite"]["item_count"] == 250
    assert status(tmp_path)["sqlite"]["item_count"] == 309


def test_exit_codes_for_configuration_errors_and_unknown_status(tmp_path: Path) -> None:
    missing = cli(tmp_path, "refresh", "--quiet", KRYTEN_EXPORT_PATH=str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 2, missing.stderr
    assert "does not exist" in missing.stderr and "KRYTEN_EXPORT_PATH" in missing.stderr
    directory = cli(tmp_path, "refresh", "--quiet", KRYTEN_EXPORT_PATH=str(tmp_path))
    assert directory.returncode == 2 and "is not a file" in directory.stderr, directory.stderr
    # NATS unreachable: status cannot tell (3), which is not "inconsistent" (1).
    unknown = cli(tmp_path, "status", NATS_URL="nats://127.0.0.1:9")
    assert unknown.returncode == 3, unknown.stderr
    assert unknown.stderr.startswith("error: cannot tell: cannot connect to NATS") and "NATS_URL" in unknown.stderr


@pytest.mark.slow
def test_refresh_draws_live_progress_on_a_terminal_and_plain_lines_elsewhere(tmp_path: Path) -> None:
    """On a terminal (a pseudo-terminal here) the steps are a live rich display; the summary on stdout stays
    plain. In a pipe, each event is one plain line (the other tests read those)."""
    import pty
    import select
    import shutil

    command = shutil.which("kryten-pipeline", path=str(Path(sys.executable).parent))
    assert command
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("KRYTEN_", "NATS_", "MEDIACMS_"))}
    environ.pop("DAGSTER_HOME", None)
    environ.update({"KRYTEN_DATA_DIR": str(tmp_path / "data"), "TERM": "xterm", "COLUMNS": "120"})
    controller, terminal = pty.openpty()
    proc = subprocess.Popen([command, "refresh"], cwd=tmp_path, env=environ, stdout=subprocess.PIPE,
                            stderr=terminal, text=True)
    os.close(terminal)
    drawn = b""
    while True:
        ready, _, _ = select.select([controller], [], [], 240)
        assert ready, "no output from the refresh"
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the terminal closed: the process ended
            break
        if not chunk:
            break
        drawn += chunk
    os.close(controller)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    screen = drawn.decode("utf-8", "replace")
    assert "\x1b[" in screen  # cursor control: a live display, redrawn in place
    assert "✔ raw_catalog" in screen and "✔ kv_published " in screen
    assert "check kv_current_matches_sqlite: passed" in screen
    assert "result: ok" in stdout and "\x1b[" not in stdout


def test_shell_completion_of_commands_and_choices() -> None:
    """What the README's `eval "$(_KRYTEN_PIPELINE_COMPLETE=bash_source kryten-pipeline)"` relies on."""
    import shutil

    command = shutil.which("kryten-pipeline", path=str(Path(sys.executable).parent))
    assert command

    def complete(words: str, index: int) -> list[str]:
        env = {**os.environ, "_KRYTEN_PIPELINE_COMPLETE": "bash_complete", "COMP_WORDS": words,
               "COMP_CWORD": str(index)}
        done = subprocess.run([command], env=env, capture_output=True, text=True, timeout=60, check=True)
        return [line.split(",", 1)[1] for line in done.stdout.splitlines()]

    script = subprocess.run([command], env={**os.environ, "_KRYTEN_PIPELINE_COMPLETE": "bash_source"},
                            capture_output=True, text=True, timeout=60, check=True).stdout
    assert "_kryten_pipeline_completion()" in script
    assert complete("kryten-pipeline ref", 1) == ["refresh"]
    assert complete("kryten-pipeline serve", 1) == ["serve", "serve-admin", "serve-nats"]
    assert complete("kryten-pipeline refresh --source m", 3) == ["mediacms", "mediacms-db"]


def test_config_shows_every_setting_its_origin_and_never_a_secret(tmp_path: Path) -> None:
    command = shutil.which("kryten-pipeline", path=str(Path(sys.executable).parent))
    assert command, "the package's console script is installed"
    (tmp_path / ".env").write_text("KRYTEN_FAKE_ITEMS=12\nMEDIACMS_TOKEN=dotenv-s3cret\n", encoding="utf-8")
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("KRYTEN_", "NATS_", "MEDIACMS_", "REDIS_"))}
    environ |= {"KRYTEN_SOURCE": "fake", "NATS_PASSWORD": "env-s3cret"}

    shown = subprocess.run([command, "config"], cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    rows = {line.split()[0]: line.split()[1:] for line in shown.stdout.splitlines()[1:]}
    assert rows["KRYTEN_SOURCE"] == ["environment", "fake"]
    assert rows["KRYTEN_FAKE_ITEMS"] == [".env", "12"]
    assert rows["KRYTEN_KEEP_SNAPSHOTS"] == ["default", "3"]
    assert rows["MEDIACMS_TOKEN"] == [".env", "(set)"] and rows["NATS_PASSWORD"] == ["environment", "(set)"]
    assert rows["NATS_TOKEN"] == ["default", "-"]
    assert "s3cret" not in shown.stdout + shown.stderr

    as_json = subprocess.run([command, "config", "--json"], cwd=tmp_path, env=environ, capture_output=True,
                             text=True, timeout=60)
    settings = {row["variable"]: row for row in json.loads(as_json.stdout)["settings"]}
    assert settings["KRYTEN_FAKE_ITEMS"] == {"variable": "KRYTEN_FAKE_ITEMS", "value": 12, "secret": False,
                                             "set": True, "from": ".env"}
    assert settings["MEDIACMS_TOKEN"]["value"] is None and settings["MEDIACMS_TOKEN"]["set"] is True
    assert settings["KRYTEN_NAMESPACES"]["value"] == ["default"]

    bad = subprocess.run([command, "config"], cwd=tmp_path, env=environ | {"KRYTEN_KEEP_SNAPSHOTS": "0",
                         "MEDIACMS_CONCURRENCY": "many"}, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stdout == ""
    assert "KRYTEN_KEEP_SNAPSHOTS: must be at least 1, got 0" in bad.stderr
    assert "MEDIACMS_CONCURRENCY: 'many' is not an integer" in bad.stderr
