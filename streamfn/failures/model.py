"""The failure model: what a failed record is, where it goes, and how a partial batch response is read.

Conditions and the response format are Lambda's (event source mapping for Kafka). A destination must have its
write acknowledged before `deliver` returns: the partition's checkpoint moves past a failed record only then,
as Kafka Connect's errant-record reporter does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from streamfn.record import Partition, Position, Record, SourceRecord


class Condition(StrEnum):
    RETRY_ATTEMPTS_EXHAUSTED = "RetryAttemptsExhausted"
    RECORD_AGE_EXCEEDED = "RecordAgeExceeded"
    DESERIALIZATION_ERROR = "DeserializationError"
    OUTPUT_DELIVERY_FAILED = "OutputDeliveryFailed"
    """streamfn's own: the handler succeeded but a sink could not write its outputs within the sink's retries."""
    LATE_RECORD = "LateRecord"
    """streamfn's own: an aggregation's record whose windows had all closed (event time below the watermark)."""
    AGGREGATION_ERROR = "AggregationError"
    """streamfn's own: an aggregation's key, timestamp or fold raised for this record."""
    MAXIMUM_PAYLOAD_SIZE_EXCEEDED = "MaximumPayloadSizeExceeded"
    """The record alone would take the invocation's payload past Lambda's 6 MB: it is not invoked."""


@dataclass(frozen=True, slots=True)
class FailedRecord:
    """One record that reached neither a successful invocation nor (yet) its destination."""

    partition: Partition
    record: SourceRecord
    condition: Condition
    invoke_count: int
    """Invocations that included this record (Lambda's approximateInvokeCount); 0 if it was never invoked."""
    error: BaseException | None
    """The function error of its last invocation; None for a record that was not invoked for its age."""
    batch_size: int
    """Records in the last invocation that included it."""
    window: FailedWindow | None = None
    """A tumbling window whose final invocation failed for good (then `record` stands for its last record)."""
    request_id: str | None = None
    """The aws_request_id of its last invocation (the dead letter's requestContext.requestId); None if never invoked."""


@dataclass(frozen=True, slots=True)
class FailedWindow:
    """What a tumbling window's dead letter carries instead of one record: the final invocation's event (window,
    state, flags) and the offsets of the records the window covered (they were committed with the state)."""

    event: dict[str, Any]
    first_offset: Position
    last_offset: Position


class LambdaEvent(Protocol):
    """Builds the Lambda event of a source's records. `decoded`: the same records as already decoded (by offset)
    for a source whose format has a schema, so that the event does not decode them again."""

    def __call__(
        self, partition: Partition, records: Sequence[SourceRecord], decoded: Sequence[Record] = ()
    ) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class FailureOrigin:
    """What a destination says about where a dead letter came from."""

    function: str
    function_arn: str
    servers: str
    """Where the source is (Kafka: its bootstrap servers)."""
    event: LambdaEvent
    """The Lambda event these records would form, for the dead letter's payload."""


class Destination(Protocol):
    """Where records that still fail go (`on_failure=`): a dead-letter topic, queue or table."""

    def check(self, source_topics: Sequence[str]) -> None:
        """Raise ConfigError if this destination cannot serve a function reading `source_topics`."""

    async def start(self, default_servers: str, default_connection: Any = None) -> None:
        """Before the first delivery; `default_servers`, `default_connection`: how the function's source is
        reached (SourceReader.servers, .connection)."""

    async def deliver(self, origin: FailureOrigin, failures: Sequence[FailedRecord]) -> None:
        """Write every failure and return only once the destination has acknowledged them all."""

    async def stop(self) -> None: ...


@runtime_checkable
class Countable(Protocol):
    """A destination that can say how many dead letters it holds (`streamfn status`); optional for destinations."""

    async def depth(self, default_servers: str | None, default_connection: Any = None) -> int:
        """Records in the destination now (Kafka: over every partition, the true end minus the beginning offset);
        `default_servers`: the function's source servers. Raises streamfn.errors.Unreachable if it does not
        answer."""


class StopProcessing(BaseException):
    """Not a failure: the partition is being revoked or the worker is shutting down; leave the batch uncommitted.

    A BaseException, so that no handler of function errors or sink retry mistakes it for one."""


class PartialFailure(Exception):
    """The handler reported failed items: a function error with status 200 (no exception), as Lambda's."""


class PayloadSizeExceeded(Exception):
    """A record whose event alone would pass the invocation payload limit: it is routed without an invocation."""


class InvalidResponse(Exception):
    """A partial batch response that does not name records of the batch: the whole batch failed (as Lambda)."""


class BatchItemFailures(Exception):
    """Raised or returned by a native handler: these records failed, the others succeeded.

    Items are `Record`s of the batch or their offsets; the lowest becomes the checkpoint and the retry restarts
    from it, as with a Lambda-style `{"batchItemFailures": [...]}` response.
    """

    def __init__(self, failed: Sequence[Any]) -> None:
        super().__init__(f"{len(failed)} records failed")
        self.offsets = [getattr(item, "offset", item) for item in failed]


def error_type(error: BaseException) -> str:
    """Lambda's errorType of a function error: its class name, or the runtime's own name for errors Lambda's
    runtime reports itself (`error_type`: Runtime.ExitError, Runtime.MarshalError)."""
    return getattr(error, "error_type", None) or type(error).__name__


def first_failed_index(response: Any, partition: Partition, records: Sequence[SourceRecord]) -> int | None:
    """Index in `records` of the lowest failed record of a partial batch response, or None for success.

    Success: None, {}, [], "", or an empty/absent/null "batchItemFailures". Anything else that does not name a
    record of this batch by `{"partition": "<topic>-<n>", "offset": <int>}` is an InvalidResponse.
    """
    if isinstance(response, BatchItemFailures):
        offsets: list[Any] = response.offsets
        if not offsets:
            return None
    else:
        if response is None or response in ({}, [], ""):
            return None
        if not isinstance(response, dict):
            raise InvalidResponse(f"response is a {type(response).__name__}, not an object")
        items = response.get("batchItemFailures")
        if items is None or items == []:
            return None
        if not isinstance(items, list):
            raise InvalidResponse("batchItemFailures is not a list")
        offsets = [_offset(item, partition) for item in items]
    by_offset = {r.offset: i for i, r in enumerate(records)}
    indexes = []
    for offset in offsets:
        if isinstance(offset, bool) or not isinstance(offset, int) or offset not in by_offset:
            raise InvalidResponse(f"offset {offset!r} is not in the batch")
        indexes.append(by_offset[offset])
    return min(indexes)


def _offset(item: Any, partition: Partition) -> Any:
    identifier = item.get("itemIdentifier") if isinstance(item, dict) else None
    if not isinstance(identifier, dict) or not identifier:
        raise InvalidResponse(f"itemIdentifier {identifier!r} is not an object with partition and offset")
    if identifier.get("partition") != str(partition):
        raise InvalidResponse(f"itemIdentifier partition {identifier.get('partition')!r} is not {partition}")
    return identifier.get("offset")
