"""The memory source's dialect: Lambda's rules for a stream source (Kinesis's), so that the engine's tests on the
memory source exercise a dialect other than Kafka's.

- The event is Kinesis's (connectors/memory/event.py): `Records[]`, base64 `data`, `eventID "<shardId>:<seq>"`.
- A partial batch response names a record by `{"itemIdentifier": "<sequence number>"}`.
- A failure record's batch-info block is `KinesisBatchInfo` (shard id, first and last sequence number, arrival
  times, batch size, stream ARN).
- Filter patterns see `data` (decoded when it is JSON) and the record's `partitionKey` and `sequenceNumber`.
- The batching window defaults to 0 s; the lag is counted in records behind the shard's end.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from streamfn.connectors.memory.event import kinesis_event, shard_id, stream_arn
from streamfn.failures.model import BatchInfo, FailedItem, FailedRecord, InvalidResponse, LambdaEvent
from streamfn.filters.criteria import RecordFields
from streamfn.formats.codec import Codec
from streamfn.observability.metrics import LagMetric
from streamfn.record import Partition

DEFAULTS: Final[Mapping[str, Any]] = {"maximum_batching_window_in_seconds": 0}
"""Lambda's default batching window for the streams (Kinesis, DynamoDB Streams)."""

RECORD_FIELDS: Final = RecordFields(
    "a stream record",
    {
        "partitionKey": lambda record: None if record.key is None else record.key.decode(errors="replace"),
        "sequenceNumber": lambda record: str(record.offset),
        "data": lambda record: record.value,
    },
    payloads=frozenset({"data"}),
    value="data",
)

RECORD_LAG: Final = LagMetric(
    "RecordLag", "{event}", "Records in the shard past the checkpoint.", "the memory source's lag"
)


def failed_sequence_number(item: Any, partition: Partition) -> Any:
    """The position a `batchItemFailures` item names: `{"itemIdentifier": "<sequence number>"}` (checked against
    the batch by the caller)."""
    identifier = item.get("itemIdentifier") if isinstance(item, dict) else None
    if not isinstance(identifier, str) or not identifier.isdigit():
        raise InvalidResponse(f"itemIdentifier {identifier!r} is not a sequence number")
    return int(identifier)


def _arrival(milliseconds: int) -> str:
    return datetime.fromtimestamp(milliseconds / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def kinesis_batch_info(failure: FailedRecord, payload_size: int) -> tuple[str, dict[str, Any]]:
    """Lambda's `KinesisBatchInfo` for one failed record (as streamfn sends one letter per record)."""
    record = failure.record
    return "KinesisBatchInfo", {
        "shardId": shard_id(failure.partition),
        "startSequenceNumber": str(record.offset),
        "endSequenceNumber": str(record.offset),
        "approximateArrivalOfFirstRecord": _arrival(record.timestamp),
        "approximateArrivalOfLastRecord": _arrival(record.timestamp),
        "batchSize": 1,
        "streamArn": stream_arn(failure.partition.topic),
    }


class MemoryDialect:
    defaults: Mapping[str, Any] = DEFAULTS
    filter_fields: RecordFields = RECORD_FIELDS
    lag_metric: LagMetric = RECORD_LAG

    @property
    def failed_item(self) -> FailedItem:
        return failed_sequence_number

    def lambda_event(self, connection: Any, value_codec: Codec, key_codec: Codec | None) -> LambdaEvent:
        return kinesis_event

    def batch_info(self, connection: Any) -> BatchInfo:
        return kinesis_batch_info
