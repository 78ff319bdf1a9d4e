"""Sinks: where a function's outputs go (`@app.function(outputs=[...])`), as a small interface connectors implement.

A handler's outputs are written to every sink of its function before the input offsets are committed, so an
output is never lost: a crash before the write completes replays the batch (at-least-once; sinks that upsert by a
key, like `Table`, turn that into exactly one row). The engine retries a failed `write` with capped exponential
backoff (tenacity) per the sink's `retry`; meanwhile the lane takes no new batch, so its partition's buffer fills
and the partition is paused: a sink that is down holds its partitions, it never grows memory. When the retries
are exhausted, the input records go to the function's `on_failure` destination and only then is the offset
committed.

Declared sinks are configuration, shared freely; `open()` gives each function its own writer (client, pool).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from pydantic import BaseModel, Field

from streamfn.errors import StrictModel
from streamfn.record import Partition, Position, SourceRecord

SOURCE_HEADER_PREFIX = "streamfn.source."
"""The provenance headers of an output (and of a dead letter)."""


@dataclass(frozen=True, slots=True)
class Output:
    """One item a native handler emits with a key or headers; plain values (dict, str, model...) need no wrapper."""

    value: Any
    key: str | bytes | None = None
    headers: Mapping[str, str | bytes] | Sequence[tuple[str, str | bytes]] | None = None


@dataclass(frozen=True, slots=True)
class Delete:
    """An output that removes the item with this key from a sink that deletes by key (`deletes = True`:
    DynamoDBTable), where a dict or model output would put it. `key` holds at least the key's attributes (others,
    e.g. a whole old image, are ignored). Every other sink rejects a batch holding one before writing anything
    (OutputDeliveryFailed, with the reason), rather than writing the deletion as if it were a value."""

    key: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Provenance:
    """The invocation an output came from: its function and the source records it was invoked with."""

    function: str
    topic: str
    partition: int | str
    first_offset: Position
    last_offset: Position
    step: str = ""
    """What emitted it besides an invocation with these records (a window's "final" invocation), for its id."""
    covers: Position | None = None
    """The source's checkpoint value covering `last_offset` (`SourceReader.position_after`), which exactly-once
    sinks store; None for outputs of a function fed by another (`Function(...)`), which has no source of its own."""

    def __str__(self) -> str:
        where = f"{self.function}/{self.topic}-{self.partition}/{self.first_offset}-{self.last_offset}"
        return f"{where}/{self.step}" if self.step else where


@dataclass(frozen=True, slots=True)
class Emitted:
    """An output as sinks receive it: the value as the handler gave it, the key and headers as bytes.

    `headers` holds the handler's headers, then the provenance of the invocation that emitted it
    (`streamfn.source.function`, `.topic`, `.partition`, `.offsets` as "first-last") and the W3C trace context
    (`traceparent`, `tracestate`) of its input, so a chain of functions can be followed across sinks.
    """

    value: Any
    key: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    source: Provenance
    index: int
    """Position among the outputs of its invocation."""

    @property
    def id(self) -> str:
        """Stable while the same batch is replayed: a deduplication id (SQS FIFO) or an idempotency key (HTTP)."""
        return f"{self.source}/{self.index}"


class RejectedOutput(Exception):
    """The sink can never write this output (wrong shape for it, refused as invalid): not retried, its input
    records go to `on_failure` at once."""


class SinkRetry(StrictModel):
    """How long a sink's write is retried before the input records go to `on_failure`."""

    owner = "SinkRetry"

    max_attempts: int = Field(10, ge=-1, le=10_000)
    """Attempts of one write, the first included; -1 retries for ever (the partition stays paused meanwhile)."""
    initial_seconds: float = Field(0.5, gt=0, le=60)
    max_seconds: float = Field(30.0, gt=0, le=3600)


@dataclass(frozen=True, slots=True)
class SinkContext:
    """What a sink learns about the function whose outputs it writes, when it is opened."""

    function: str
    chain: Callable[[Callable[..., Any], str], Awaitable[Callable[[Sequence[SourceRecord]], Awaitable[None]]]]
    """Opens another function of the same app, by its handler and value format, as a call that runs a batch of
    records through it (its own retries, bisection, outputs and on_failure); used by the `Function` sink."""
    group: str = ""
    """The function's consumer group (its checkpoint namespace); empty for a function without a source."""
    exactly_once: bool = False
    """processing_guarantee="exactly_once": the writer stores, with the outputs and in the same transaction, the
    source offsets they cover, skips outputs a replayed batch emits again, and reports its positions."""
    connection: Any = None
    """Where the function's source is and how it is reached (SourceReader.connection, opaque; Kafka: its
    KafkaConnection, with the bootstrap servers): a sink on the same system that names no address of its own
    (a KafkaTopic) is reached the same way."""


class SinkWriter(Protocol):
    """An open sink of one function."""

    async def write(self, outputs: Sequence[Emitted]) -> None:
        """Write all `outputs` (in order) and return only once the system has acknowledged every one.

        Raise on any failure: the engine retries the whole write, so a sink must tolerate seeing an output again
        (upsert by key, or document duplicates). Raise RejectedOutput for what no retry can fix."""

    async def close(self) -> None: ...


class OffsetStoringWriter(SinkWriter, Protocol):
    """A writer that can serve processing_guarantee="exactly_once" (its sink declares `stores_offsets = True`).

    Opened with `SinkContext.exactly_once`, each `write` stores, in the same transaction as the outputs, the
    source's checkpoint value covering the last source record they come from, per source partition (each output's
    `source.covers`), under the context's consumer `group`; outputs whose offsets are already
    covered by what is stored (a batch replayed after a crash, or written late by a worker that lost the
    partition) are skipped, not written again."""

    async def positions(self, partitions: Sequence[Partition]) -> dict[Partition, int]:
        """Per source partition, the checkpoint value covering the records whose outputs are stored (absent if
        none)."""


class Sink(Protocol):
    """A sink as the user declares it in `outputs=[...]`."""

    @property
    def retry(self) -> SinkRetry: ...

    def check(self, source_topics: Sequence[str]) -> None:
        """Raise ConfigError if this sink cannot serve a function reading `source_topics` (e.g. a loop)."""

    async def open(self, context: SinkContext) -> SinkWriter: ...


class Delivered:
    """The ids a writer delivered lately (bounded): a write the engine retries after it failed half-way skips them,
    so a sink without idempotence of its own sees duplicates only after a restart or rebalance."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, output_id: object) -> bool:
        return output_id in self._ids

    def add(self, output_id: str) -> None:
        self._ids[output_id] = None
        if len(self._ids) > self._capacity:
            self._ids.popitem(last=False)


def plain(value: Any) -> Any:
    """A value with pydantic models turned into dicts of Python values (for rows)."""
    return value.model_dump() if isinstance(value, BaseModel) else value


def _default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def encode_json(value: Any) -> bytes:
    """JSON bytes of any output value (pydantic models included), with orjson."""
    return orjson.dumps(value, default=_default)


def encode(value: Any) -> bytes:
    """An output value as message bytes: bytes as they are, str as UTF-8, anything else as JSON."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return encode_json(value)
