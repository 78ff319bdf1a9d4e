"""Lambda's rules for a Kinesis Data Streams source, as the engine asks a source's dialect for them
(streamfn.dialect.Dialect). No client library here: the in-memory source speaks this dialect too.

- The event (Lambda's "Using Lambda with Kinesis" page): `{"Records": [...]}`, each record
  `{"kinesis": {kinesisSchemaVersion "1.0", partitionKey, sequenceNumber (text), data (base64),
  approximateArrivalTimestamp (epoch seconds)}, eventSource "aws:kinesis", eventVersion "1.0",
  eventID "<shardId>:<sequenceNumber>", eventName "aws:kinesis:record", invokeIdentityArn, awsRegion,
  eventSourceARN}`.
- A partial batch response names a record by `{"itemIdentifier": "<sequence number>"}`. A null, empty or
  missing identifier, or one that is not a sequence number of the batch, fails the whole batch (AWS's documented
  failure cases); an empty or null `batchItemFailures` (or response) is a success (streamfn.failures.model).
- A failure record's batch-info block is `KinesisBatchInfo` (shardId, start and end sequence number, arrival of
  the first and last record in ISO 8601 with milliseconds, batchSize, streamArn); streamfn sends one per failed
  record, so the start and end are that record's (a tumbling window's: the window's first and last record).
- Filter patterns see `data` (read as JSON when it is a JSON object, else as text) and, as a streamfn choice
  (AWS documents only `data`), the record's `kinesis` metadata at the top level: partitionKey, sequenceNumber,
  approximateArrivalTimestamp, kinesisSchemaVersion.
- The batching window defaults to 0 s; the lag is IteratorAge, in milliseconds behind the stream's tip.

What Lambda's two stream sources share (item identifiers, the batch-info block but for its name and timestamp
precision, tumbling-window fields, defaults, IteratorAge) is `StreamDialect` and `StreamBatchInfo`, which
DynamoDB Streams' dialect (streamfn.connectors.dynamodb.dialect) builds on too.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from streamfn.failures.model import BatchInfo, FailedItem, FailedRecord, InvalidResponse, LambdaEvent
from streamfn.filters.criteria import RecordFields
from streamfn.formats.codec import Codec
from streamfn.observability.metrics import LagMetric
from streamfn.record import Partition, Record, SourceRecord

EVENT_SOURCE: Final = "aws:kinesis"
SCHEMA_VERSION: Final = "1.0"

DEFAULTS: Final[Mapping[str, Any]] = {"maximum_batching_window_in_seconds": 0}
"""Lambda's default batching window for the streams (Kinesis, DynamoDB Streams)."""


def _partition_key(record: SourceRecord) -> str:
    return "" if record.key is None else record.key.decode(errors="replace")


RECORD_FIELDS: Final = RecordFields(
    "a Kinesis record",
    {
        "data": lambda record: record.value,
        "partitionKey": _partition_key,
        "sequenceNumber": lambda record: str(record.offset),
        "approximateArrivalTimestamp": lambda record: record.timestamp / 1000,
        "kinesisSchemaVersion": lambda record: SCHEMA_VERSION,
    },
    payloads=frozenset({"data"}),
    value="data",
)
"""What filter patterns see: `data` as data, and the `kinesis` metadata (a choice: AWS documents `data` only)."""

ITERATOR_AGE: Final = LagMetric(
    "IteratorAge",
    "ms",
    "Milliseconds between the oldest record not yet handled and the shard's tip (0: caught up).",
    "Lambda's IteratorAge metric for stream sources",
)


class StreamArns(Protocol):
    """Where a stream source is, as far as its failure records and window events name it (Kinesis's StreamLocation,
    DynamoDB's TableStreamLocation)."""

    def stream_arn(self, stream: str) -> str:
        """The ARN of the stream a partition's topic names."""


@dataclass(slots=True)
class StreamLocation:
    """Where a function's streams are, as Lambda's events and failure records name them: the region and account of
    the stream ARNs, and the identity the records are read with (the event's `invokeIdentityArn`; on AWS the
    event source mapping's execution role). It is the Kinesis reader's `connection`, which the engine takes
    before the reader connects: the reader fills it in once it has asked AWS (the events read it when built)."""

    region: str
    account: str
    identity_arn: str

    def stream_arn(self, stream: str) -> str:
        return f"arn:aws:kinesis:{self.region}:{self.account}:stream/{stream}"


def shard_id(partition: Partition) -> str:
    """Kinesis's spelling of a shard id: the partition's own, or "shardId-000000000001" for a numbered one."""
    shard = partition.partition
    return f"shardId-{shard:012d}" if isinstance(shard, int) else shard


def failed_sequence_number(item: Any, partition: Partition) -> Any:
    """The position a `batchItemFailures` item names: `{"itemIdentifier": "<sequence number>"}` (checked against
    the batch by the caller). Null, empty or anything but a sequence number: the whole batch failed."""
    identifier = item.get("itemIdentifier") if isinstance(item, dict) else None
    if isinstance(identifier, str) and identifier.isascii() and identifier.isdigit():
        return int(identifier)
    raise InvalidResponse(f"itemIdentifier {identifier!r} is not a sequence number")


def arrival(milliseconds: int) -> str:
    """An arrival time as KinesisBatchInfo writes it: ISO 8601, UTC, milliseconds, `Z`."""
    return datetime.fromtimestamp(milliseconds / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class KinesisEvent:
    """Builds the event of one source's batches (callable as `event(partition, records)`)."""

    def __init__(self, location: StreamLocation) -> None:
        self._location = location

    def __call__(
        self, partition: Partition, records: Sequence[SourceRecord], decoded: Sequence[Record] = ()
    ) -> dict[str, Any]:
        location = self._location
        arn = location.stream_arn(partition.topic)
        shard = shard_id(partition)
        return {
            "Records": [
                {
                    "kinesis": {
                        "kinesisSchemaVersion": SCHEMA_VERSION,
                        "partitionKey": _partition_key(r),
                        "sequenceNumber": str(r.offset),
                        "data": base64.b64encode(r.value or b"").decode("ascii"),
                        "approximateArrivalTimestamp": r.timestamp / 1000,
                    },
                    "eventSource": EVENT_SOURCE,
                    "eventVersion": "1.0",
                    "eventID": f"{shard}:{r.offset}",
                    "eventName": "aws:kinesis:record",
                    "invokeIdentityArn": location.identity_arn,
                    "awsRegion": location.region,
                    "eventSourceARN": arn,
                }
                for r in records
            ]
        }


class StreamBatchInfo:
    """The batch-info block of a failure record from a stream at `location`: `name` (KinesisBatchInfo,
    DDBStreamBatchInfo) with arrival times written by `arrival` (from epoch ms; Kinesis: milliseconds, DynamoDB
    Streams: seconds)."""

    def __init__(self, location: StreamArns, name: str, arrival: Callable[[int], str]) -> None:
        self._location = location
        self._name = name
        self._arrival = arrival

    def __call__(self, failure: FailedRecord, payload_size: int) -> tuple[str, dict[str, Any]]:
        record = failure.record
        window = failure.window
        first, last = (record.offset, record.offset) if window is None else (window.first_offset, window.last_offset)
        arrived = self._arrival(record.timestamp)
        return self._name, {
            "shardId": shard_id(failure.partition),
            "startSequenceNumber": str(first),
            "endSequenceNumber": str(last),
            "approximateArrivalOfFirstRecord": arrived,
            "approximateArrivalOfLastRecord": arrived,
            "batchSize": 1,
            "streamArn": self._location.stream_arn(failure.partition.topic),
        }


class StreamDialect:
    """What Lambda's stream sources (Kinesis, DynamoDB Streams) share: a 0 s batching window, sequence numbers as
    item identifiers, `shardId` and `eventSourceARN` in tumbling-window events, and the IteratorAge lag (unless a
    source measures its lag otherwise: the in-memory source counts records)."""

    defaults: Mapping[str, Any] = DEFAULTS

    def __init__(self, lag_metric: LagMetric = ITERATOR_AGE) -> None:
        self.lag_metric = lag_metric

    @property
    def failed_item(self) -> FailedItem:
        return failed_sequence_number

    def window_fields(self, connection: StreamArns, partition: Partition) -> dict[str, Any]:
        return {"shardId": shard_id(partition), "eventSourceARN": connection.stream_arn(partition.topic)}


class KinesisDialect(StreamDialect):
    """A Kinesis source's dialect."""

    filter_fields: RecordFields = RECORD_FIELDS

    def lambda_event(self, connection: StreamLocation, value_codec: Codec, key_codec: Codec | None) -> LambdaEvent:
        return KinesisEvent(connection)

    def batch_info(self, connection: StreamLocation) -> BatchInfo:
        return StreamBatchInfo(connection, "KinesisBatchInfo", arrival)
