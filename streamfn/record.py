"""What flows through the engine: partitions, the raw records sources deliver, and the records native handlers get.

Sources deliver records in the shape of aiokafka's ConsumerRecord (the `SourceRecord` protocol), so the Kafka
connector hands them over without copying, and other sources (Kinesis, DynamoDB Streams) adapt theirs to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

Position = Any
"""A record's position in its partition, or a checkpoint value: opaque to the engine, defined by the source and
totally ordered (Kafka: the integer offset; Kinesis: the sequence number as an int). The engine compares positions
(`<`, `<=`, `==`, `max`) and never computes with them: the source's reader says what checkpoint covers a record
(`SourceReader.position_after`) and how far behind a partition is (`SourceReader.lag`)."""

TIMESTAMP_TYPES = ("CREATE_TIME", "LOG_APPEND_TIME")
"""Kafka's timestamp types by number, as Lambda's event and `Record.timestamp_type` name them."""


class Partition(NamedTuple):
    """A Kafka topic-partition or a stream's shard: the unit of ordering, batching and checkpointing."""

    topic: str
    partition: int | str
    """Kafka: the partition number; a stream's shard: its id (Kinesis: "shardId-000000000001")."""

    def __str__(self) -> str:
        # Lambda's key in event["records"] and in partial batch responses: "<topic>-<partition>".
        return f"{self.topic}-{self.partition}"


class SourceRecord(Protocol):
    """The record shape the engine reads (aiokafka's ConsumerRecord satisfies it)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int | str: ...
    @property
    def offset(self) -> Position: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def timestamp_type(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...
    @property
    def serialized_key_size(self) -> int: ...
    @property
    def serialized_value_size(self) -> int: ...


@dataclass(frozen=True, slots=True)
class RawRecord:
    """A record in the SourceRecord shape, for sources whose client does not give one (the memory source, Kinesis:
    the shard as partition, the sequence number as position) and for outputs handed to a chained function."""

    topic: str
    partition: int | str
    offset: Position
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()
    timestamp_type: int = 0
    """Kafka's numbering (TIMESTAMP_TYPES): 0 create time, 1 log-append time (a stream's arrival time)."""

    @property
    def serialized_key_size(self) -> int:
        return -1 if self.key is None else len(self.key)

    @property
    def serialized_value_size(self) -> int:
        return -1 if self.value is None else len(self.value)


@dataclass(slots=True)
class Record:
    """A record as a native handler receives it: the value decoded per the source's `value_format` (and validated
    into the function's `value_model`, if any)."""

    topic: str
    partition: int | str
    offset: Position
    timestamp: int
    """Epoch milliseconds."""
    key: Any
    """Bytes, unless the source declares a `key_format`."""
    value: Any
    headers: Sequence[tuple[str, bytes]]
    timestamp_type: str = "CREATE_TIME"
