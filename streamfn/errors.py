"""Errors users see. A ConfigError is printed as one line by the CLI (exit code 2, no traceback)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from pydantic import ValidationError


class ConfigError(Exception):
    """A pipeline that cannot run as written. The message names function, field, value and what is allowed."""

    def __init__(self, message: str, *, function: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.function = function

    def __str__(self) -> str:
        return f"function {self.function!r}: {self.message}" if self.function else self.message

    def for_function(self, function: str) -> ConfigError:
        """The same error, attributed to `function` once the caller knows which one it was."""
        return self if self.function else ConfigError(self.message, function=function)

    @classmethod
    def from_validation(
        cls, error: ValidationError, *, owner: str, known_fields: Iterable[str], function: str | None = None
    ) -> ConfigError:
        """One readable line per problem, from pydantic's structured errors."""
        known = list(known_fields)
        lines = []
        for item in error.errors(include_url=False):
            field = ".".join(str(part) for part in item["loc"]) or owner
            if item["type"] == "extra_forbidden":
                hint = difflib.get_close_matches(field, known, n=1, cutoff=0.6)
                suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
                lines.append(f"{owner}: unknown parameter {field!r}{suggestion}; allowed: {', '.join(sorted(known))}")
            elif item["type"] == "missing":
                lines.append(f"{owner}: {field} is required")
            else:
                lines.append(f"{owner}: {field}={item['input']!r} is invalid: {item['msg']}")
        return cls("; ".join(lines), function=function)
