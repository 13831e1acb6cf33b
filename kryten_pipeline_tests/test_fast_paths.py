"""The speed-ups of the refresh keep behaviour: JSON decoding, garbage-collector tuning, progress events."""

from __future__ import annotations

import gc
import json
from types import SimpleNamespace
from typing import Any

import pytest

from kryten_pipeline import jsonfast
from kryten_pipeline.gc_tuning import BULK_THRESHOLD0, bulk_work


@pytest.mark.parametrize("text", [
    b'{"count": 3, "results": [{"title": "caf\\u00e9 \xf0\x9f\x8e\xac"}], "next": null}',
    b'{"duration": NaN}',            # orjson refuses; the standard library accepts
    '"\\ud800"',                    # an escaped lone surrogate: the same
    b'[1.5, -0, 1e3, true, null]',
])
def test_jsonfast_accepts_what_json_accepts(text: Any) -> None:
    expected, got = json.loads(text), jsonfast.loads(text)
    assert json.dumps(got, sort_keys=True) == json.dumps(expected, sort_keys=True)


@pytest.mark.parametrize("text", [b"{bad", b"<html>login</html>", b"\xff\xfe{}", b""])
def test_jsonfast_rejects_with_the_standard_librarys_error(text: bytes) -> None:
    with pytest.raises(ValueError) as expected:
        json.loads(text)
    with pytest.raises(ValueError) as got:
        jsonfast.loads(text)
    assert type(got.value) is type(expected.value) and str(got.value) == str(expected.value)


def test_bulk_work_restores_the_collector_and_still_collects_cycles() -> None:
    before = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    with bulk_work():
        assert gc.get_threshold()[0] == max(before[0], BULK_THRESHOLD0)
        frozen = gc.get_freeze_count()
        assert frozen > 0  # what existed before is left out of collections
        with bulk_work():  # nested: the outer block keeps control
            assert gc.get_freeze_count() == frozen
        assert gc.get_freeze_count() == frozen
        cycle: list[Any] = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
    with pytest.raises(RuntimeError), bulk_work():
        raise RuntimeError("boom")
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


def test_progress_reaches_the_event_log_at_most_once_per_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    from kryten_pipeline.dagster_defs import asset_steps

    lines: list[str] = []
    context = SimpleNamespace(log=SimpleNamespace(info=lines.append))
    clock = [1000.0]
    monkeypatch.setattr(asset_steps.time, "monotonic", lambda: clock[0])
    report = asset_steps.progress_logger(context, interval=3.0)  # type: ignore[arg-type]
    for page in range(1, 101):  # 100 reports over 10 s
        report({"pages": page, "phase": "listing", "nested": {"ignored": 1}})
        clock[0] += 0.1
    assert len(lines) == 4  # at 0, 3, 6 and 9 s
    assert lines[0] == "progress: pages=1, phase=listing" and lines[1].startswith("progress: pages=31,")
