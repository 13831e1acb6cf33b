"""The export-file connector: JSON array, JSONL, CSV, aliases, bad rows, broken files."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from kryten_pipeline.catalog_item import CatalogItem
from kryten_pipeline.connectors import make_connector
from kryten_pipeline.connectors.export_file import ExportFileConnector, sample_export_path
from kryten_pipeline.connectors.fake import FakeConnector
from kryten_pipeline.errors import ConfigurationError, SourceError
from kryten_pipeline.settings import Settings


def collect(connector: object) -> list[CatalogItem]:
    async def run() -> list[CatalogItem]:
        return [item async for item in connector.iter_catalog_items()]  # type: ignore[attr-defined]

    return asyncio.run(run())


def test_json_array_with_aliases(tmp_path: Path) -> None:
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps([
        {"video_id": "a1", "title": "One", "categories": ["Music", "Live"], "duration_seconds": 10},
        {"friendly_token": "b2", "title": "Two", "duration": 20, "thumbnail": "https://x/t.jpg"},
        "not an object",
    ]), encoding="utf-8")
    connector = ExportFileConnector(path)
    items = collect(connector)
    assert items == [
        CatalogItem("a1", "One", ["Music", "Live"], 10, None),
        CatalogItem("b2", "Two", [], 20, "https://x/t.jpg"),
    ]
    assert [r.reason for r in connector.source_rejects] == ["item 3: not a JSON object"]
    assert connector.stats["format"] == "json" and connector.stats["records"] == 2


def test_json_envelope_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps({"items": [{"video_id": "a1", "title": "One"}]}), encoding="utf-8")
    assert [i.video_id for i in collect(ExportFileConnector(path))] == ["a1"]


def test_jsonl_with_a_malformed_line_is_a_reject_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "catalog.jsonl"
    path.write_text(
        '{"video_id": "a1", "title": "One"}\n\n{"video_id": "b2", "title": "cut off\n[1, 2]\n'
        '{"video_id": "c3", "title": "Three", "categories": []}\n',
        encoding="utf-8",
    )
    connector = ExportFileConnector(path)
    assert [i.video_id for i in collect(connector)] == ["a1", "c3"]
    reasons = [r.reason for r in connector.source_rejects]
    assert reasons[0].startswith("line 3: invalid JSON")
    assert reasons[1] == "line 4: not a JSON object"


def test_csv_with_pipe_and_json_categories(tmp_path: Path) -> None:
    path = tmp_path / "catalog.csv"
    path.write_text(
        "video_id,title,categories,duration_seconds,thumbnail_url\n"
        'a1,"Rock & Roll, Live",Music|Live,100,https://x/a.jpg\n'
        'b2,Two,"[""Anime"", ""Retro""]",,\n'
        "c3,Three,,abc,\n",
        encoding="utf-8",
    )
    items = collect(ExportFileConnector(path))
    assert items[0] == CatalogItem("a1", "Rock & Roll, Live", ["Music", "Live"], 100, "https://x/a.jpg")
    assert items[1] == CatalogItem("b2", "Two", ["Anime", "Retro"], None, None)
    assert items[2].categories == [] and items[2].duration_seconds == "abc"  # validation rejects it


def test_csv_without_required_header_fails_clearly(tmp_path: Path) -> None:
    path = tmp_path / "catalog.csv"
    path.write_text("name,length\nx,1\n", encoding="utf-8")
    with pytest.raises(SourceError) as info:
        collect(ExportFileConnector(path))
    assert "video_id" in str(info.value) and "KRYTEN_EXPORT_PATH" in str(info.value)


def test_truncated_json_array_fails_the_run(tmp_path: Path) -> None:
    path = tmp_path / "catalog.json"
    path.write_text('[{"video_id": "a1", "title": "One"}, {"video_id": "b2", "ti', encoding="utf-8")
    with pytest.raises(SourceError) as info:
        collect(ExportFileConnector(path))
    assert "not valid JSON" in str(info.value) and "KRYTEN_EXPORT_PATH" in str(info.value)


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as info:
        collect(ExportFileConnector(tmp_path / "nope.jsonl"))
    assert "does not exist" in str(info.value) and "KRYTEN_EXPORT_PATH" in str(info.value)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(SourceError) as info:
        collect(ExportFileConnector(empty))
    assert "no items" in str(info.value)


def test_shipped_sample_is_realistic() -> None:
    connector = ExportFileConnector()
    items = collect(connector)
    assert connector.label == "export:sample/sample_catalog.jsonl"
    assert sample_export_path().exists()
    assert 250 <= len(items) <= 400
    assert any(len(i.categories) >= 3 for i in items)
    assert any(i.categories == [] for i in items)
    assert any(i.duration_seconds is None for i in items)
    assert any(any(ord(ch) > 0x3000 for ch in i.title) for i in items)  # CJK titles
    titles = [i.title.strip() for i in items if isinstance(i.title, str)]
    assert len(titles) > len(set(titles))  # the same video uploaded twice
    assert len(connector.source_rejects) == 1


def test_fake_connector_is_deterministic_and_can_fail_midway() -> None:
    first = collect(FakeConnector(20, seed=3))
    assert first == collect(FakeConnector(20, seed=3))
    assert first != collect(FakeConnector(20, seed=4))
    with pytest.raises(SourceError) as info:
        collect(FakeConnector(20, fail_after=5))
    assert "after 5" in str(info.value)


def test_make_connector_picks_the_configured_source(tmp_path: Path) -> None:
    assert isinstance(make_connector(Settings(source="fake", fake_items=3)), FakeConnector)
    export = make_connector(Settings(source="export", export_path=str(tmp_path / "x.json")))
    assert isinstance(export, ExportFileConnector)
    with pytest.raises(ConfigurationError):
        Settings.from_env({"KRYTEN_SOURCE": "ftp"})


def test_json_nested_too_deeply_is_a_rejected_line_or_one_clear_error(tmp_path: Path) -> None:
    deep = "[" * 1100 + "]" * 1100
    lines = tmp_path / "deep.jsonl"
    lines.write_text('{"video_id": "ok1", "title": "Fine"}\n' + deep + "\n" + '{"x": ' + deep + "}\n", encoding="utf-8")
    connector = ExportFileConnector(lines)
    assert [item.video_id for item in collect(connector)] == ["ok1"]
    assert [r.reason for r in connector.source_rejects] == [
        "line 2: invalid JSON: nested more than 1000 levels deep", "line 3: invalid JSON: nested more than 1000 "
        "levels deep"]
    document = tmp_path / "deep.json"
    document.write_text(deep, encoding="utf-8")
    with pytest.raises(SourceError) as failed:
        collect(ExportFileConnector(document))
    assert "KRYTEN_EXPORT_PATH" in str(failed.value) and "levels deep" in str(failed.value)
    assert "\n" not in str(failed.value)


@pytest.mark.parametrize(("content", "expected"), [
    ("video_id,title\na1,Één\n".encode("utf-16"), "is UTF-16LE, not UTF-8: convert it, e.g. `iconv -f UTF-16LE"),
    ("video_id,title\na1,Één\n".encode("utf-16-be"), "is UTF-16BE, not UTF-8"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "holds binary data (NUL bytes)"),
    ("video_id,title\na1,Caf\xe9\n".encode("latin-1"), "is not UTF-8 text (it holds the byte 0xe9"),
])
def test_an_export_in_another_encoding_fails_with_the_fix(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "catalog.csv"
    path.write_bytes(content)
    with pytest.raises(SourceError) as failed:
        collect(ExportFileConnector(path))
    message = str(failed.value)
    assert expected in message and str(path) in message and "KRYTEN_EXPORT_PATH" in message, message


def test_an_unreadable_export_names_the_file_and_the_setting(tmp_path: Path) -> None:
    path = tmp_path / "catalog.jsonl"
    path.write_text('{"video_id": "a1", "title": "One"}\n', encoding="utf-8")
    connector = ExportFileConnector(path)
    # EIO from the disk while reading: what a failing disk or a network filesystem gives.
    failing = connector._guarded(_raises(OSError(5, "Input/output error")))
    with pytest.raises(SourceError) as failed:
        list(failing)
    assert str(failed.value) == (f"export file '{path}' could not be read: Input/output error (errno 5); the disk or "
                                 "the filesystem failed — nothing was published (check KRYTEN_EXPORT_PATH)")
    denied = connector._read_error(PermissionError(13, "Permission denied"))
    assert isinstance(denied, ConfigurationError) and "permission denied" in str(denied)
    assert "KRYTEN_EXPORT_PATH" in str(denied)


def _raises(exc: BaseException):  # type: ignore[no-untyped-def]
    yield {"video_id": "a1", "title": "One"}
    raise exc
