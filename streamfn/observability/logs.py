"""Structured logs: every line says which function, partition, offsets and invocation it is about.

The fields live in a context variable, bound where the work is: a lane binds its function and partition (each
asyncio task has its own context), an invocation adds its offsets and request id, and a sync handler's thread
gets a copy of the invoking context. A filter on the handlers copies them onto each log record, so engine lines,
a handler's `context.logger` lines and a handler's own loggers carry the same fields without passing them around.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Literal

import orjson

LogFormat = Literal["text", "json"]

_NONE: Mapping[str, Any] = MappingProxyType({})
_FIELDS: ContextVar[Mapping[str, Any]] = ContextVar("streamfn_log_fields", default=_NONE)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def bind(**fields: Any) -> Token[Mapping[str, Any]]:
    """Add fields to the lines logged from here on in this context (task, thread); `unbind` with the token."""
    return _FIELDS.set({**_FIELDS.get(), **fields})


def unbind(token: Token[Mapping[str, Any]]) -> None:
    _FIELDS.reset(token)


class ContextFields(logging.Filter):
    """Copies the bound fields onto each record (as `record.fields`) for the formatters."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.fields = _FIELDS.get()
        return True


class TextFormatter(logging.Formatter):
    """The usual line, then the bound fields in brackets: `... [function=enrich topic=orders partition=0 ...]`."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        bound: Mapping[str, Any] = getattr(record, "fields", _NONE)
        if not bound:
            return line
        return f"{line} [{' '.join(f'{name}={value}' for name, value in bound.items())}]"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the bound fields, and the exception if any."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **getattr(record, "fields", _NONE),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def configure(level: str, log_format: LogFormat, handler: logging.Handler | None = None) -> logging.Handler:
    """Route every logger through one handler (stderr by default) in the chosen format; returns the handler."""
    handler = handler or logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFields())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler
