"""Value formats: how a record's bytes become the value a native handler receives."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import orjson

ValueFormat = Literal["json", "string", "bytes"]


def _bytes(data: bytes | None) -> Any:
    return data


def _string(data: bytes | None) -> Any:
    return None if data is None else data.decode("utf-8")


def _json(data: bytes | None) -> Any:
    return None if data is None else orjson.loads(data)


DECODERS: dict[str, Callable[[bytes | None], Any]] = {"json": _json, "string": _string, "bytes": _bytes}
