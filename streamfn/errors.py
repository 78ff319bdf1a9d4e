"""Errors users see, and StrictModel, the base of every configuration model, which turns its validation errors
into them. A ConfigError is printed as one line by the CLI (exit code 2, no traceback)."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_pascal

RANGE_ERRORS = frozenset({"greater_than", "greater_than_equal", "less_than", "less_than_equal"})
SECRET_WORDS = ("password", "secret", "token", "_pem", "auth")
"""A field whose name holds one of these may hold a secret: an error about it never shows the value given."""


class Unreachable(Exception):
    """A system a command reads from (a broker) did not answer; the CLI prints the message as one line."""


class Refused(Unreachable):
    """A system answered but refused this client's settings (a failed TLS handshake: an unknown CA, a missing or
    expired client certificate). Waiting does not change that, so start-up does not retry it."""


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
        cls,
        error: ValidationError,
        *,
        owner: str | None,
        known_fields: Iterable[str],
        allowed: Callable[[str], str | None],
    ) -> ConfigError:
        """One readable line from pydantic's structured errors, naming each field as the user spelled it."""
        known = sorted(known_fields)
        prefix = f"{owner}: " if owner else ""
        problems = []
        for item in error.errors(include_url=False):
            field = ".".join(str(part) for part in item["loc"])
            if item["type"] == "extra_forbidden":
                hint = difflib.get_close_matches(field, known, n=1, cutoff=0.6)
                suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
                problems.append(f"{prefix}unknown parameter {field!r}{suggestion}; allowed: {', '.join(known)}")
            elif item["type"] == "missing":
                problems.append(f"{prefix}{field} is required")
            elif not field:  # a rule across fields: its message says it all
                problems.append(f"{prefix}{item['msg'].removeprefix('Value error, ')}")
            else:
                bounds = allowed(str(item["loc"][0])) if item["type"] in RANGE_ERRORS else None
                rule = f"allowed: {bounds}" if bounds else item["msg"].removeprefix("Value error, ")
                shown = "<hidden>" if any(word in field.lower() for word in SECRET_WORDS) else repr(item["input"])
                problems.append(f"{prefix}{field}={shown} is invalid: {rule}")
        return cls("; ".join(problems))


class StrictModel(BaseModel):
    """Unknown parameters are errors (a typo must not silently fall back to a default)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)
    owner: ClassVar[str | None] = None
    """How errors name what was being configured; None for the function's own parameters."""

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as error:
            cls = type(self)
            raise ConfigError.from_validation(
                error, owner=cls.owner, known_fields=cls.model_fields, allowed=cls.allowed
            ) from None

    @classmethod
    def allowed(cls, name: str) -> str | None:
        """The range a numeric parameter accepts, from its declared bounds (by field name or alias)."""
        field = cls.model_fields.get(name) or next(
            (f for n, f in cls.model_fields.items() if to_pascal(n) == name), None
        )
        if field is None:
            return None
        parts = [
            f"{'>' if isinstance(m, Gt) else '>='} {m.gt if isinstance(m, Gt) else m.ge}"
            for m in field.metadata
            if isinstance(m, Ge | Gt)
        ] + [
            f"{'<' if isinstance(m, Lt) else '<='} {m.lt if isinstance(m, Lt) else m.le}"
            for m in field.metadata
            if isinstance(m, Le | Lt)
        ]
        return " and ".join(parts) or None
