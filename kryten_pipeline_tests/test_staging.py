"""Staging files: the batches a refresh step hands the next one (kryten_pipeline.staging)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kryten_pipeline.staging import BatchWriter, RowSpill, StagedFile, StagingError, staging_path


def test_batches_are_read_back_in_order_and_empty_batches_are_not_written(tmp_path: Path) -> None:
    path = staging_path(tmp_path, "raw_catalog", "default")
    assert path == tmp_path / "staging" / "raw_catalog" / "default.batches"
    with BatchWriter(path) as writer:
        writer.write({"video_id": ["a", "b"]}, 2)
        writer.write({"video_id": []}, 0)
        writer.write({"video_id": ["c"], "duration_seconds": [True]}, 1)
    staged = writer.staged
    assert staged == StagedFile(path, rows=3, batches=2)
    assert list(staged.read()) == [{"video_id": ["a", "b"]}, {"video_id": ["c"], "duration_seconds": [True]}]
    assert type(list(staged.read())[1]["duration_seconds"][0]) is bool  # values exactly as the source gave them


def test_a_failed_writer_leaves_the_previous_complete_file(tmp_path: Path) -> None:
    path = staging_path(tmp_path, "validated_items", "default")
    with BatchWriter(path) as first:
        first.write(["old"], 1)
    with pytest.raises(RuntimeError), BatchWriter(path) as second:
        second.write(["new"], 1)
        raise RuntimeError("the source failed halfway")
    assert second.staged is None
    assert list(first.staged.read()) == [["old"]]  # type: ignore[union-attr]
    assert sorted(p.name for p in path.parent.iterdir()) == ["default.batches"]  # no temporary file left


def test_temporary_files_of_a_killed_writer_are_removed_by_the_next(tmp_path: Path) -> None:
    path = staging_path(tmp_path, "raw_catalog", "default")
    path.parent.mkdir(parents=True)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    abandoned = path.with_name(f".{path.name}.{gone.stdout.strip()}.tmp")
    abandoned.write_bytes(b"half a batch")
    alive = path.with_name(f".{path.name}.{os.getppid()}.tmp")  # a writer that still runs keeps its file
    alive.write_bytes(b"in progress")
    with BatchWriter(path) as writer:
        writer.write([1], 1)
    assert not abandoned.exists() and alive.exists()


def test_a_missing_or_damaged_file_fails_with_what_to_do(tmp_path: Path) -> None:
    path = staging_path(tmp_path, "validated_items", "default")
    with BatchWriter(path) as writer:
        writer.write(list(range(1000)), 1000)
        writer.write(list(range(1000)), 1000)
    staged = writer.staged
    assert staged is not None
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # cut short
    with pytest.raises(StagingError, match=r"damaged .*run the refresh again.*DAGSTER_HOME"):
        list(staged.read())
    path.unlink()
    with pytest.raises(StagingError, match=r"are gone .*materialize the step that wrote them again"):
        list(staged.read())


def test_an_unwritable_staging_directory_names_the_setting(tmp_path: Path) -> None:
    blocker = tmp_path / "staging"
    blocker.write_text("a file where the directory should be")
    with (pytest.raises(StagingError, match=r"could not stage items in .*DAGSTER_HOME"),
          BatchWriter(staging_path(tmp_path, "raw_catalog", "default"))):
        pass


def test_a_row_spill_gives_its_rows_back_in_order_with_their_types(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    spill = RowSpill(batch_rows=3)
    assert list(spill.rows()) == [] and len(spill) == 0
    rows = [(f"t{i}", f"title {i}", True if i == 4 else i * 1.5, None) for i in range(8)]
    for row in rows:
        spill.add(row)
    assert len(spill) == 8
    assert list(spill.rows()) == rows  # two full batches on disk and two rows still pending
    assert type(list(spill.rows())[4][2]) is bool  # a boolean duration stays a boolean
    # The file is anonymous: nothing shows in the directory while in use, nothing is left after close().
    assert list(tmp_path.iterdir()) == []
    spill.close()
    assert list(spill.rows()) == [] and len(spill) == 0
    spill.add(("again",))
    assert list(spill.rows()) == [("again",)]
    spill.close()


def test_a_row_spill_that_cannot_write_names_the_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "missing"))
    spill = RowSpill(batch_rows=1)
    with pytest.raises(StagingError) as caught:
        spill.add(("a",))
    assert caught.value.setting == "TMPDIR"
    assert str(tmp_path / "missing") in str(caught.value)
