"""Time windows: which windows a timestamp falls in, and how windows are named in events and results.

Windows are aligned to the Unix epoch (a 60 s window starts on the minute), as Lambda's tumbling windows and
Kafka Streams' are, so every worker and every replay puts a record in the same windows. Times are epoch
milliseconds throughout the engine; events and results show them as ISO 8601 UTC, as Lambda's `window` does.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cached_property
from typing import Any, NamedTuple

from pydantic import Field, model_validator

from streamfn.errors import StrictModel


class Window(NamedTuple):
    start: int
    """Epoch milliseconds, inclusive."""
    end: int
    """Epoch milliseconds, exclusive."""

    def shown(self) -> dict[str, str]:
        """Lambda's `window` object: `{"start": ISO 8601, "end": ISO 8601}`."""
        return {"start": iso(self.start), "end": iso(self.end)}


def iso(ms: int) -> str:
    """Epoch milliseconds as ISO 8601 UTC, whole seconds as Lambda writes them ("2020-12-09T07:04:00Z")."""
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{ms % 1000:03d}Z" if ms % 1000 else f"{text}Z"


def epoch_ms(value: Any) -> int:
    """A timestamp from a record's value: epoch milliseconds (a number), an ISO 8601 string or a datetime."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a timestamp")
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    if isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return int(moment.timestamp() * 1000)
    raise ValueError(f"{value!r} is not a timestamp: give epoch milliseconds, ISO 8601 text or a datetime")


class Tumbling(StrictModel):
    """Fixed windows of `seconds`, back to back: each record is in exactly one."""

    owner = "Tumbling"

    seconds: float = Field(gt=0, le=31 * 24 * 3600)

    def __init__(self, seconds: float | None = None, /, **values: Any) -> None:
        super().__init__(**({"seconds": seconds} if seconds is not None else {}), **values)

    @cached_property
    def size_ms(self) -> int:
        return int(self.seconds * 1000)

    def windows(self, ts: int) -> tuple[Window, ...]:
        size = self.size_ms
        start = ts - ts % size
        return (Window(start, start + size),)


class Hopping(StrictModel):
    """Windows of `size` seconds starting every `step` seconds: a record is in size/step of them."""

    owner = "Hopping"

    size: float = Field(gt=0, le=31 * 24 * 3600)
    step: float = Field(gt=0, le=31 * 24 * 3600)

    def __init__(self, size: float | None = None, step: float | None = None, /, **values: Any) -> None:
        positional = {name: v for name, v in (("size", size), ("step", step)) if v is not None}
        super().__init__(**positional, **values)

    @model_validator(mode="after")
    def _step_within_size(self) -> Hopping:
        if self.step > self.size:
            raise ValueError(
                f"step={self.step:g} is larger than size={self.size:g}: records between windows would be lost"
            )
        if int(self.size * 1000) % int(self.step * 1000):
            raise ValueError(f"size={self.size:g} must be a whole number of steps (step={self.step:g})")
        return self

    @cached_property
    def size_ms(self) -> int:
        return int(self.size * 1000)

    @cached_property
    def step_ms(self) -> int:
        return int(self.step * 1000)

    def windows(self, ts: int) -> tuple[Window, ...]:
        step, size = self.step_ms, self.size_ms
        last = ts - ts % step
        return tuple(Window(start, start + size) for start in range(last - size + step, last + 1, step))


WindowSpec = Tumbling | Hopping
