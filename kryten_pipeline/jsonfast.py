"""JSON decoding for the hot paths (API pages, export lines): orjson, with the standard library as the judge.

orjson parses a MediaCMS page 2–3 times faster than ``json``. Whatever orjson refuses (``NaN``, escaped
lone surrogates, ...) is handed to ``json.loads``, so what is accepted and the error raised for what is not
are the standard library's. One difference remains: an integer beyond 64 bits comes back as a float (no
catalog field holds such a number; validation rejects it as out of range either way).
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(bytes(data) if isinstance(data, memoryview) else data)
