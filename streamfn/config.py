"""Validated configuration of a stream function, with AWS's names, ranges and defaults.

The snake_case names are streamfn's; the PascalCase names of CreateEventSourceMapping are accepted as aliases so
an ESM definition copied from CloudFormation or SAM validates as is.
"""

from __future__ import annotations

from typing import Any, ClassVar

from annotated_types import Ge, Gt, Le, Lt
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_pascal

from streamfn.errors import ConfigError

PAYLOAD_LIMIT_BYTES = 6 * 1024 * 1024
"""Lambda's synchronous invocation payload limit, which also caps a batch."""


def _aws_alias(name: str) -> AliasChoices:
    return AliasChoices(name, to_pascal(name))


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


class Backoff(StrictModel):
    """Capped exponential backoff with full jitter between attempts of a failing batch (not an AWS parameter)."""

    owner = "Backoff"

    initial_seconds: float = Field(0.5, gt=0, le=60)
    max_seconds: float = Field(30.0, gt=0, le=3600)


class FunctionConfig(StrictModel):
    """The event source mapping parameters of one function."""

    batch_size: int = Field(100, ge=1, le=10_000, validation_alias=_aws_alias("batch_size"))
    maximum_batching_window_in_seconds: float = Field(
        0.5, ge=0, le=300, validation_alias=_aws_alias("maximum_batching_window_in_seconds")
    )
    timeout: float = Field(
        3.0,
        gt=0,
        le=900,
        validation_alias=_aws_alias("timeout"),
        description="Seconds one invocation may take (Lambda's function timeout, default 3).",
    )
    backoff: Backoff = Field(default_factory=Backoff)

    @field_validator("timeout", mode="before")
    @classmethod
    def _no_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("must be a number of seconds")
        return value
