"""KinesisStream: a Kinesis data stream as a function's output, written with PutRecords.

Limits (Kinesis's PutRecords API reference): at most 500 records and 5 MiB per request, 1 MiB per record counting
its data and its partition key (UTF-8), a partition key of 1 to 256 characters.

Why these choices:
- The data is `encode(value)` (bytes as they are, str as UTF-8, anything else as JSON); the partition key is
  `partition_key` (a fixed text, or a function of the value), else the output's key, else the SHA-256 of the data,
  so equal outputs land on one shard and distinct ones spread. A key that is not 1 to 256 characters of UTF-8 text
  is replaced by its SHA-256 (hex), so it still picks one shard, always the same. Kinesis records have no headers:
  an output's headers (provenance, trace context) are not written.
- A record over 1 MiB is a RejectedOutput: no retry could write it, so the write fails at once and its input
  records go to on_failure (OutputDeliveryFailed, with the reason), before any request is sent.
- Requests go one at a time, in order, of consecutive outputs. PutRecords accepts some entries of a request and not
  others (ProvisionedThroughputExceeded, InternalFailure, per entry): the write then fails after that request, the
  writer remembers the entries Kinesis acknowledged, and the engine's retry of the write (the sink's SinkRetry
  backoff) sends only the rest, so nothing is written twice by a retry (a crash before the batch is committed
  replays it: at-least-once, as every sink).
- Order: outputs of one partition key reach their shard in the handler's order as long as no entry fails. When an
  entry fails and later entries of its key in the same request were written, its retry lands after them:
  PutRecords has no SequenceNumberForOrdering (only PutRecord has). `strict_order=True` puts at most one record of a
  key in each request, so a failed entry's successors are never sent before it: strict per-key order, at the cost
  of a request per record when every output has the same key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import AliasChoices, Field, field_validator, model_validator

from streamfn.connectors.kinesis.source import (
    _STREAM_NAME,
    checked_stream_arn,
    stream_name,
    stream_region,
)
from streamfn.connectors.shards import AwsAccess
from streamfn.connectors.shards.aws import AwsAddress
from streamfn.errors import ConfigError
from streamfn.outputs.sink import Delivered, Emitted, RejectedOutput, SinkContext, SinkRetry, encode

MAX_RECORD_BYTES = 1_048_576
"""1 MiB: a record's data and partition key together."""
MAX_REQUEST_BYTES = 5 * 1_048_576
"""5 MiB: one PutRecords request, every record's data and partition key."""
MAX_REQUEST_RECORDS = 500
MAX_KEY_CHARACTERS = 256
REMEMBERED_OUTPUTS = 10_000
"""Acknowledged output ids a writer remembers, to skip them when a failed write is retried."""


class KinesisDeliveryError(Exception):
    """A write Kinesis did not acknowledge in full but may on another attempt (throttled entries, unreachable)."""


class KinesisStream(AwsAddress):
    """A Kinesis data stream, by name (`stream`) or ARN (`stream_arn`); each output becomes one record.

    Region, endpoint and credentials as KinesisSource takes them (else the AWS configuration chain)."""

    owner = "KinesisStream"

    stream: str | None = Field(None, pattern=_STREAM_NAME.pattern)
    stream_arn: str | None = Field(None, validation_alias=AliasChoices("stream_arn", "StreamARN"))
    partition_key: str | Callable[[Any], str] | None = None
    """A fixed partition key, or a function of the output's value giving it; by default the output's key, else the
    SHA-256 of the data."""
    strict_order: bool = False
    """True: at most one record per partition key in each request, so a retried entry never lands after a later
    record of its key (see the module docstring)."""
    retry: SinkRetry = Field(default_factory=SinkRetry)

    def __init__(self, stream: str | None = None, /, **values: Any) -> None:
        super().__init__(**({"stream": stream} if stream is not None else {}), **values)

    def __str__(self) -> str:
        return f"KinesisStream({self.stream_name!r})"

    _arn = field_validator("stream_arn")(checked_stream_arn)

    @field_validator("partition_key")
    @classmethod
    def _key(cls, value: Any) -> Any:
        if isinstance(value, str) and not 1 <= len(value) <= MAX_KEY_CHARACTERS:
            raise ValueError(f"must be 1 to {MAX_KEY_CHARACTERS} characters (Kinesis's partition key)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> KinesisStream:
        if (self.stream is None) == (self.stream_arn is None):
            raise ValueError("give the stream's name (stream=) or its ARN (stream_arn=): one of them")
        return self

    @property
    def stream_name(self) -> str:
        return stream_name(self.stream, self.stream_arn)

    def access(self) -> AwsAccess:
        return self.aws_access(stream_region(self.stream_arn))

    def check(self, source_topics: Sequence[str]) -> None:
        if self.stream_name in source_topics:
            raise ConfigError(
                f"{self} is the function's own source stream: what it writes there would be read again by the same "
                "function; use another stream"
            )

    async def open(self, context: SinkContext) -> StreamWriter:
        stack = AsyncExitStack()
        client = await stack.enter_async_context(self.access().client("kinesis"))
        return StreamWriter(client, stack, self.stream_name, self.partition_key, self.strict_order)


@dataclass(frozen=True, slots=True)
class Entry:
    """One PutRecords entry and the bytes it counts for against the record and request limits."""

    output: Emitted
    data: bytes
    key: str
    size: int


def _hashed(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def partition_key(output: Emitted, data: bytes, configured: str | Callable[[Any], str] | None) -> str:
    """The partition key of an output: configured (text, or a function of the value), else its key, else the SHA-256
    of its data; a key Kinesis would refuse (empty, over 256 characters, not UTF-8) becomes its SHA-256."""
    if isinstance(configured, str):
        return configured
    if configured is not None:
        key: str | bytes = configured(output.value)
    elif output.key is not None:
        key = output.key
    else:
        return _hashed(data)
    raw = key.encode(errors="surrogateescape") if isinstance(key, str) else bytes(key)
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        return _hashed(raw)
    return text if 1 <= len(text) <= MAX_KEY_CHARACTERS else _hashed(raw)


def entry(output: Emitted, configured: str | Callable[[Any], str] | None) -> Entry:
    """The PutRecords entry of `output`, or RejectedOutput when Kinesis could never take it (over 1 MiB)."""
    try:
        data = encode(output.value)
    except TypeError as error:  # orjson's JSONEncodeError is a TypeError
        raise RejectedOutput(f"output {output.id}: cannot be a Kinesis record ({error})") from None
    key = partition_key(output, data, configured)
    size = len(data) + len(key.encode())
    if size > MAX_RECORD_BYTES:
        raise RejectedOutput(
            f"output {output.id}: {size} bytes as a Kinesis record (data and partition key), over Kinesis's limit "
            f"of {MAX_RECORD_BYTES} bytes per record"
        )
    return Entry(output, data, key, size)


def requests(entries: Sequence[Entry], strict_order: bool) -> Iterator[list[Entry]]:
    """Consecutive runs of at most 500 entries and 5 MiB: one PutRecords request each; with `strict_order`, a run
    also ends before a second entry of a partition key."""
    request: list[Entry] = []
    size = 0
    keys: set[str] = set()
    for item in entries:
        full = len(request) == MAX_REQUEST_RECORDS or size + item.size > MAX_REQUEST_BYTES
        if request and (full or (strict_order and item.key in keys)):
            yield request
            request, size, keys = [], 0, set()
        request.append(item)
        size += item.size
        keys.add(item.key)
    if request:
        yield request


class StreamWriter:
    """Puts one function's outputs on one stream with its own aiobotocore client."""

    def __init__(
        self,
        client: Any,
        stack: AsyncExitStack,
        stream: str,
        configured_key: str | Callable[[Any], str] | None,
        strict_order: bool,
    ) -> None:
        self._client = client
        self._stack = stack
        self._stream = stream
        self._configured_key = configured_key
        self._strict_order = strict_order
        self._delivered = Delivered(REMEMBERED_OUTPUTS)

    def __str__(self) -> str:
        return f"KinesisStream({self._stream!r})"

    async def write(self, outputs: Sequence[Emitted]) -> None:
        pending = [entry(o, self._configured_key) for o in outputs if o.id not in self._delivered]
        for request in requests(pending, self._strict_order):
            await self._put(request)

    async def _put(self, request: list[Entry]) -> None:
        records = [{"Data": item.data, "PartitionKey": item.key} for item in request]
        try:
            response = await self._client.put_records(StreamName=self._stream, Records=records)
        except (ClientError, BotoCoreError, OSError, TimeoutError) as error:
            raise KinesisDeliveryError(f"{self}: PutRecords of {len(request)} records failed: {error}") from error
        failed: dict[str, int] = {}
        for item, result in zip(request, response["Records"], strict=True):
            code = result.get("ErrorCode")
            if code:
                failed[code] = failed.get(code, 0) + 1
            else:
                self._delivered.add(item.output.id)
        if failed:
            codes = ", ".join(f"{count} {code}" for code, count in sorted(failed.items()))
            raise KinesisDeliveryError(
                f"{self}: Kinesis did not accept {sum(failed.values())} of {len(request)} records ({codes}); "
                "only those are sent again"
            )

    async def close(self) -> None:
        await self._stack.aclose()
