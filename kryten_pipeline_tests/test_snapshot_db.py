"""The SQLite snapshot: schema contract, FTS, verification, atomic swap, retention, crash leftovers."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kryten_pipeline.errors import SnapshotBuildError, StaleSnapshotError
from kryten_pipeline.snapshot.build import build_snapshot_db
from kryten_pipeline.snapshot.files import (
    REQUIRED_META_KEYS,
    install_kept_snapshot,
    install_snapshot,
    list_kept_snapshots,
    live_db_path,
    open_readonly,
    prune_kept_snapshots,
    read_snapshot_meta,
    remove_stale_temp_files,
    verify_snapshot_db,
)

CREATED = "2025-12-18T12:34:56Z"


def rows(n: int, prefix: str = "v") -> Iterator[tuple[Any, ...]]:
    for i in range(n):
        categories = [["Music", "Live"], [], ["Anime"]][i % 3]
        yield (f"{prefix}{i:05d}", f"Title {i} café ünïcode", categories, None if i % 4 == 0 else i * 10,
               None, f"https://m.example/api/v1/media/cytube/{prefix}{i:05d}.json?format=json")


def build(data_dir: Path, snapshot_id: str, n: int = 30, **kwargs: Any) -> Any:
    return build_snapshot_db(rows(n), data_dir=data_dir, namespace="default", snapshot_id=snapshot_id,
                             created_at=CREATED, source="test", **kwargs)


def columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]


def test_schema_contract_and_meta(tmp_path: Path) -> None:
    built = build(tmp_path, "20251218T123456Z-aaaaaa", extra_meta={"rejected_count": 2})
    install_snapshot(built, data_dir=tmp_path, keep=3)
    conn = open_readonly(live_db_path(tmp_path, "default"))
    assert columns(conn, "catalog_item") == ["video_id", "title", "categories_json", "manifest_url",
                                             "duration_seconds", "thumbnail_url", "snapshot_id", "created_at"]
    assert columns(conn, "catalog_category") == ["category"]
    assert columns(conn, "catalog_item_category") == ["video_id", "category"]
    indexes = {row[1] for row in conn.execute("PRAGMA index_list(catalog_item)")}
    assert {"idx_catalog_title", "idx_catalog_snapshot"} <= indexes  # the names the kryten spec gives
    title_index = conn.execute("PRAGMA index_info(idx_catalog_title)").fetchall()
    assert [row[2] for row in title_index] == ["title"]
    assert [row[2] for row in conn.execute("PRAGMA index_info(idx_catalog_snapshot)")] == ["snapshot_id"]
    foreign = {(row[2], row[3], row[4]) for row in conn.execute("PRAGMA foreign_key_list(catalog_item_category)")}
    assert foreign == {("catalog_item", "video_id", "video_id"), ("catalog_category", "category", "category")}
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    meta = dict(conn.execute("SELECT key, value FROM snapshot_meta"))
    assert set(REQUIRED_META_KEYS) <= set(meta)
    assert meta["snapshot_id"] == "20251218T123456Z-aaaaaa" and meta["item_count"] == "30"
    assert meta["schema_version"] == "1" and meta["namespace"] == "default" and meta["rejected_count"] == "2"
    assert conn.execute("SELECT count(*) FROM catalog_category").fetchone()[0] == 3
    assert conn.execute("SELECT count(*) FROM catalog_item_category").fetchone()[0] == 30  # 10×2 + 10×1
    row = conn.execute("SELECT categories_json, snapshot_id, created_at FROM catalog_item WHERE video_id='v00000'")
    assert row.fetchone() == ('["Music", "Live"]', "20251218T123456Z-aaaaaa", CREATED)
    # FTS5 over title and categories, diacritics folded.
    hits = conn.execute("SELECT video_id FROM catalog_fts WHERE catalog_fts MATCH 'cafe AND live'").fetchall()
    assert len(hits) == 10
    assert conn.execute("SELECT count(*) FROM catalog_fts").fetchone()[0] == 30
    conn.close()
    assert built.sha256 and len(built.sha256) == 64


def test_fts_build_settings_are_put_back_and_every_row_is_indexed(tmp_path: Path) -> None:
    built = build(tmp_path, "20251218T123456Z-aaaaaa", n=5000)
    conn = open_readonly(built.path)
    config = dict(conn.execute("SELECT k, v FROM catalog_fts_config"))
    assert config["hashsize"] == 1024 * 1024  # the FTS5 default, for anyone who writes to the file later
    assert conn.execute("SELECT count(*) FROM catalog_fts WHERE catalog_fts MATCH 'title'").fetchone()[0] == 5000
    assert conn.execute("SELECT count(*) FROM catalog_fts WHERE catalog_fts MATCH 'caf*'").fetchone()[0] == 5000
    conn.close()


def test_verification_catches_a_tampered_file(tmp_path: Path) -> None:
    built = build(tmp_path, "20251218T123456Z-aaaaaa")
    assert verify_snapshot_db(built.path).passed
    conn = sqlite3.connect(built.path)
    conn.execute("DELETE FROM catalog_fts WHERE rowid = 1")
    conn.execute("UPDATE snapshot_meta SET value = '999' WHERE key = 'item_count'")
    conn.commit()
    conn.close()
    report = verify_snapshot_db(built.path)
    assert not report.passed
    assert any("FTS rows" in p for p in report.problems)
    assert any("item_count" in p for p in report.problems)


def test_reader_of_the_old_file_keeps_reading_it_across_the_swap(tmp_path: Path) -> None:
    install_snapshot(build(tmp_path, "20251218T120000Z-aaaaaa", n=10), data_dir=tmp_path, keep=3)
    reader = open_readonly(live_db_path(tmp_path, "default"))
    assert reader.execute("SELECT count(*) FROM catalog_item").fetchone()[0] == 10
    installed = install_snapshot(build(tmp_path, "20251218T130000Z-bbbbbb", n=20), data_dir=tmp_path, keep=3)
    assert installed.previous_snapshot_id == "20251218T120000Z-aaaaaa"
    # The open reader still sees its complete old snapshot; a reopen sees the new one.
    assert reader.execute("SELECT count(*) FROM catalog_item").fetchone()[0] == 10
    assert reader.execute("SELECT value FROM snapshot_meta WHERE key='snapshot_id'").fetchone()[0] == (
        "20251218T120000Z-aaaaaa")
    reader.close()
    assert read_snapshot_meta(live_db_path(tmp_path, "default"))["snapshot_id"] == "20251218T130000Z-bbbbbb"


def test_failed_build_leaves_the_live_file_byte_identical(tmp_path: Path) -> None:
    install_snapshot(build(tmp_path, "20251218T120000Z-aaaaaa"), data_dir=tmp_path, keep=3)
    live = live_db_path(tmp_path, "default")
    before = live.read_bytes()

    def broken() -> Iterator[tuple[Any, ...]]:
        yield from rows(5)
        raise OSError(28, "No space left on device")

    with pytest.raises(SnapshotBuildError) as info:
        build_snapshot_db(broken(), data_dir=tmp_path, namespace="default", snapshot_id="20251218T130000Z-bbbbbb",
                          created_at=CREATED, source="test")
    assert "disk full" in str(info.value)
    with pytest.raises(SnapshotBuildError):  # duplicate primary key → sqlite error → clean failure
        build_snapshot_db(list(rows(3)) * 2, data_dir=tmp_path, namespace="default",
                          snapshot_id="20251218T130000Z-cccccc", created_at=CREATED, source="test")
    assert live.read_bytes() == before
    assert not [p for p in live.parent.iterdir() if ".tmp." in p.name]


def test_an_older_snapshot_never_replaces_a_newer_live_one(tmp_path: Path) -> None:
    older = build(tmp_path, "20251218T120000Z-aaaaaa")
    install_snapshot(build(tmp_path, "20251218T130000Z-bbbbbb"), data_dir=tmp_path, keep=3)
    with pytest.raises(StaleSnapshotError):
        install_snapshot(older, data_dir=tmp_path, keep=3)
    assert read_snapshot_meta(live_db_path(tmp_path, "default"))["snapshot_id"] == "20251218T130000Z-bbbbbb"
    assert not older.path.exists()


def test_retention_keeps_the_newest_n_and_rollback_swaps_a_kept_file(tmp_path: Path) -> None:
    ids = [f"20251218T1{h}0000Z-aaaaaa" for h in range(5)]
    for snapshot_id in ids:
        install_snapshot(build(tmp_path, snapshot_id), data_dir=tmp_path, keep=3)
    assert list_kept_snapshots(tmp_path, "default") == ids[-3:]
    install_kept_snapshot(tmp_path, "default", ids[2])
    assert read_snapshot_meta(live_db_path(tmp_path, "default"))["snapshot_id"] == ids[2]
    # The live one is never pruned, even when it is the oldest kept.
    install_snapshot(build(tmp_path, "20251218T200000Z-bbbbbb"), data_dir=tmp_path, keep=1)
    # The previous live one survives the swap (KV current still names it until the publish moves it, and a
    # failed or interrupted publish swaps it back); retention after the publish prunes it.
    assert list_kept_snapshots(tmp_path, "default") == [ids[2], "20251218T200000Z-bbbbbb"]
    assert prune_kept_snapshots(tmp_path, "default", keep=1) == [ids[2]]
    assert list_kept_snapshots(tmp_path, "default") == ["20251218T200000Z-bbbbbb"]


def test_stale_temp_files_of_dead_builds_are_removed(tmp_path: Path) -> None:
    folder = tmp_path / "default"
    folder.mkdir()
    dead = folder / ".catalog.20251218T120000Z-aaaaaa.999999999.tmp.sqlite3"
    dead.write_bytes(b"partial")
    mine = folder / f".catalog.20251218T120000Z-bbbbbb.{os.getpid()}.tmp.sqlite3"
    mine.write_bytes(b"in progress")
    assert remove_stale_temp_files(tmp_path, "default") == [dead.name]
    assert mine.exists() and not dead.exists()


def test_file_permissions_are_restrictive(tmp_path: Path) -> None:
    install_snapshot(build(tmp_path, "20251218T120000Z-aaaaaa"), data_dir=tmp_path, keep=3)
    assert live_db_path(tmp_path, "default").stat().st_mode & 0o007 == 0
    assert (tmp_path / "default").stat().st_mode & 0o007 == 0


def test_the_sqlite_utils_command_reads_a_published_file(tmp_path: Path) -> None:
    """What the README shows a user: ``sqlite-utils`` (installed with the project) on the live, read-only file."""
    import json
    import shutil
    import subprocess
    import sys

    built = build(tmp_path, "20251218T123456Z-cccccc", n=12)
    install_snapshot(built, data_dir=tmp_path, keep=3)
    live = live_db_path(tmp_path, "default")
    assert not os.access(live, os.W_OK) or os.geteuid() == 0  # published files are read-only on disk
    command = shutil.which("sqlite-utils", path=str(Path(sys.executable).parent)) or "sqlite-utils"

    def run(*args: str) -> Any:
        done = subprocess.run([command, *args], capture_output=True, text=True, timeout=60, check=True)
        return json.loads(done.stdout)

    counts = {row["table"]: row["count"] for row in run("tables", str(live), "--counts")}
    assert counts["catalog_item"] == 12 and counts["catalog_item_category"] == 12 and counts["catalog_fts"] == 12
    meta = {row["key"]: row["value"] for row in run("rows", str(live), "snapshot_meta")}
    assert meta["snapshot_id"] == "20251218T123456Z-cccccc" and meta["item_count"] == "12"
    hits = run("query", str(live), "SELECT video_id FROM catalog_fts WHERE catalog_fts MATCH :q ORDER BY rank",
               "-p", "q", "cafe live")
    assert [hit["video_id"] for hit in hits] == ["v00000", "v00003", "v00006", "v00009"]
    indexes = {row["index_name"] for row in run("indexes", str(live))}
    assert {"idx_catalog_title", "idx_catalog_snapshot", "idx_catalog_item_category_category"} <= indexes
    # `sqlite-utils search` on the FTS table itself: its words, ranked as `kryten-pipeline search` ranks them.
    searched = run("search", str(live), "catalog_fts", "cafe live", "-c", "video_id", "-c", "title")
    assert [hit["video_id"] for hit in searched] == [hit["video_id"] for hit in hits]
    assert all("café" in hit["title"] for hit in searched), searched  # "cafe" finds it: diacritics removed
