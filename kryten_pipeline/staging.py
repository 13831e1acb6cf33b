"""Items on their way through a refresh, in batches on disk: what ``raw_catalog`` hands ``validated_items`` and
``validated_items`` hands ``sqlite_snapshot``.

A step writes its items a batch at a time (``BATCH_ROWS`` rows, one pickle frame each) and hands on a small
``StagedFile`` naming the file; the next step reads it back a batch at a time. So at most a batch or two of
items is in memory at once, whatever the catalog's size: a 100k-item refresh no longer holds the whole catalog
as lists of Python objects, then as a frame, then again while pickling it (see README "Benchmarks").

The file is written under a temporary name and renamed when complete, so a reader sees the previous complete
file or the new one; a writer that fails removes its temporary file, and temporary files a killed process left
are removed when the next writer starts. Pickle keeps every value exactly as the source gave it (validation
judges a boolean duration differently from an integer one); the files live in Dagster's own storage
directory, the same trust as its IO-manager pickles.
"""

from __future__ import annotations

import errno
import os
import pickle
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from kryten_pipeline.errors import KrytenError
from kryten_pipeline.processes import pid_alive

BATCH_ROWS = 10_000  # validating 10k rows at a time costs no more time than 100k at once (README "Benchmarks")
SUFFIX = ".batches"


class StagingError(KrytenError):
    """A staging file could not be written or read (a full disk, a file removed under a step)."""


@dataclass(frozen=True, slots=True)
class StagedFile:
    """A complete staging file: ``rows`` rows in ``batches`` batches."""

    path: Path
    rows: int
    batches: int

    def read(self) -> Iterator[Any]:
        """The batches, in the order they were written."""
        try:
            source = open(self.path, "rb")  # noqa: SIM115 - closed by the with below, kept open across yields
        except FileNotFoundError:
            raise StagingError(
                f"the staged items {self.path} are gone (removed, or DAGSTER_HOME changed since they were written): "
                f"materialize the step that wrote them again, or run the whole refresh", setting="DAGSTER_HOME",
            ) from None
        with source:
            for _ in range(self.batches):
                try:
                    yield pickle.load(source)
                except (EOFError, pickle.UnpicklingError) as exc:
                    raise StagingError(f"the staged items {self.path} are damaged ({exc or 'cut short'}): "
                                       f"run the refresh again", setting="DAGSTER_HOME") from None

    def exists(self) -> bool:
        return self.path.is_file()


def staging_path(storage_dir: str | Path, step: str, namespace: str) -> Path:
    """Where ``step`` stages the items of ``namespace``: ``<storage>/staging/<step>/<namespace>.batches``."""
    return Path(os.path.abspath(storage_dir)) / "staging" / step / f"{namespace}{SUFFIX}"


class BatchWriter:
    """Writes batches to ``path`` (atomically, on a clean exit of the ``with`` block); ``staged`` is the result."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self._out: Any = None
        self.rows = 0
        self.batches = 0
        self.staged: StagedFile | None = None

    def __enter__(self) -> BatchWriter:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _remove_abandoned(self.path)
            self._out = open(self._temp, "wb")
        except OSError as exc:
            raise self._error(exc) from exc
        return self

    def write(self, batch: Any, rows: int) -> None:
        """Append one batch holding ``rows`` rows (an empty batch is not written)."""
        if not rows:
            return
        try:
            pickle.dump(batch, self._out, protocol=pickle.HIGHEST_PROTOCOL)
        except OSError as exc:
            raise self._error(exc) from exc
        self.rows += rows
        self.batches += 1

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            self._out.close()
            if kind is None:
                os.replace(self._temp, self.path)  # a reader sees the previous complete file or this one
                self.staged = StagedFile(self.path, self.rows, self.batches)
        except OSError as error:
            raise self._error(error) from error
        finally:
            self._temp.unlink(missing_ok=True)

    def _error(self, exc: OSError) -> StagingError:
        return _disk_error(f"could not stage items in {self.path.parent}", exc, "DAGSTER_HOME")


class RowSpill:
    """Rows a source must hold until it may hand on the first (its whole listing), kept in an anonymous temporary
    file instead of memory: appended in order, read back in the same order, gone when closed or when the process
    ends. ``len()`` counts the rows added."""

    def __init__(self, batch_rows: int) -> None:
        self.batch_rows = batch_rows
        self._pending: list[Any] = []
        self._file: IO[bytes] | None = None
        self._batches = 0
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, row: Any) -> None:
        self._pending.append(row)
        self._count += 1
        if len(self._pending) >= self.batch_rows:
            self._flush()

    def rows(self) -> Iterator[Any]:
        """Every row added, in order. Add none while iterating: a write moves the file position."""
        self._flush()
        if self._file is None:
            return
        try:
            self._file.seek(0)
            for _ in range(self._batches):
                yield from pickle.load(self._file)
        except OSError as exc:
            raise _spill_error(exc) from exc

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._pending = []
        self._batches = self._count = 0

    def _flush(self) -> None:
        if not self._pending:
            return
        try:
            if self._file is None:
                self._file = tempfile.TemporaryFile(prefix="kryten-spill-")  # noqa: SIM115 - closed by close()
            self._file.seek(0, os.SEEK_END)
            pickle.dump(self._pending, self._file, protocol=pickle.HIGHEST_PROTOCOL)
        except OSError as exc:
            raise _spill_error(exc) from exc
        self._batches += 1
        self._pending = []


def _spill_error(exc: OSError) -> StagingError:
    return _disk_error(f"could not keep the listing in a temporary file in {tempfile.gettempdir()}", exc, "TMPDIR")


def _disk_error(doing: str, exc: OSError, setting: str) -> StagingError:
    hint = " (is the disk full?)" if exc.errno == errno.ENOSPC else ""
    return StagingError(f"{doing}: {exc}{hint}", setting=setting)


def _remove_abandoned(path: Path) -> None:
    """Temporary files next to ``path`` whose writer is gone (a killed refresh)."""
    for temp in path.parent.glob(f".{path.name}.*.tmp"):
        pid = temp.name[len(path.name) + 2:-len(".tmp")]
        if pid.isdigit() and not pid_alive(int(pid)):
            temp.unlink(missing_ok=True)
