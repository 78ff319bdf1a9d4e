"""Lambda's rules for a DynamoDB Streams source, as the engine asks a source's dialect for them
(streamfn.dialect.Dialect). No client library here: the in-memory source can speak this dialect too.

A DynamoDB Streams record reaches the engine as a RawRecord whose value is the JSON of Lambda's event record without
what names the stream (`eventID`, `eventName`, `eventVersion`, `dynamodb`, and `userIdentity` for a deletion by
TTL); the dialect adds that from the reader's connection (a TableStreamLocation).

- The event (Lambda's "Using Lambda with DynamoDB" page, key order as AWS sends it): `{"Records": [...]}`, each
  record `{eventID, eventName (INSERT | MODIFY | REMOVE), eventVersion "1.1", eventSource "aws:dynamodb",
  awsRegion, dynamodb {ApproximateCreationDateTime (epoch seconds), Keys, NewImage?, OldImage?, SequenceNumber,
  SizeBytes, StreamViewType}, eventSourceARN, userIdentity?}`, attribute values in DynamoDB's JSON, as the
  stream wrote them.
- A partial batch response names a record by `{"itemIdentifier": "<dynamodb.SequenceNumber>"}`, with Kinesis's
  failure cases (streamfn.connectors.kinesis.dialect): the rules of Lambda's stream sources are shared.
- A failure record's batch-info block is `DDBStreamBatchInfo`: Kinesis's fields, arrival times to the second
  ("2019-11-14T00:13:19Z"), as AWS writes them.
- Filter patterns see the event record's fields: `dynamodb` (Keys, NewImage, OldImage... in DynamoDB's JSON, so a
  pattern names the attribute's type: `{"dynamodb": {"NewImage": {"status": {"S": ["paid"]}}}}`), `eventName`,
  `eventID`, `eventVersion`, `eventSource`, `userIdentity`, and, when the dialect knows the stream's location,
  `awsRegion` and `eventSourceARN`. AWS's guide says DynamoDB mappings filter only on `dynamodb`; AWS's own
  examples (CDK, the TTL guide) filter on `eventName` and `userIdentity` too, so streamfn accepts every field of the
  event record **(choice)**.
- The batching window defaults to 0 s; the lag is IteratorAge.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from streamfn.connectors.dynamodb.location import TableStreamLocation
from streamfn.connectors.kinesis.dialect import StreamBatchInfo, StreamDialect
from streamfn.failures.model import BatchInfo, LambdaEvent
from streamfn.filters.criteria import RecordFields
from streamfn.filters.patterns import MISSING
from streamfn.formats.codec import Codec
from streamfn.record import Partition, Record, SourceRecord

EVENT_SOURCE: Final = "aws:dynamodb"
BATCH_INFO: Final = "DDBStreamBatchInfo"


def arrival(milliseconds: int) -> str:
    """An arrival time as DDBStreamBatchInfo writes it: ISO 8601, UTC, whole seconds, `Z`."""
    return datetime.fromtimestamp(milliseconds // 1000, UTC).isoformat().replace("+00:00", "Z")


def lambda_record(stored: dict[str, Any], region: str, arn: str) -> dict[str, Any]:
    """Lambda's event record of a stream record as the reader stored it (its value, parsed)."""
    record = {
        "eventID": stored["eventID"],
        "eventName": stored["eventName"],
        "eventVersion": stored["eventVersion"],
        "eventSource": EVENT_SOURCE,
        "awsRegion": region,
        "dynamodb": stored["dynamodb"],
        "eventSourceARN": arn,
    }
    if "userIdentity" in stored:
        record["userIdentity"] = stored["userIdentity"]
    return record


class DynamoDBEvent:
    """Builds the event of one source's batches (callable as `event(partition, records)`): one JSON parse per batch,
    then each record's fields in Lambda's order."""

    def __init__(self, location: TableStreamLocation) -> None:
        self._location = location

    def __call__(
        self, partition: Partition, records: Sequence[SourceRecord], decoded: Sequence[Record] = ()
    ) -> dict[str, Any]:
        region, arn = self._location.region, self._location.stream_arn(partition.topic)
        stored = orjson.loads(b"[%b]" % b",".join([r.value or b"null" for r in records]))
        return {"Records": [lambda_record(s, region, arn) for s in stored]}


class _Parsed:
    """The stored event record of the record a filter reads now, parsed once for all the fields its patterns name.

    RecordFilter.matches reads one record's fields one after the other without yielding, so the record asked for is
    either the last one parsed or a new one. A value that is not a JSON object has no fields: a pattern on any of
    them drops the record, as Lambda drops a record whose data is not JSON."""

    __slots__ = ("_event", "_record")

    def __init__(self) -> None:
        self._record: SourceRecord | None = None
        self._event: dict[str, Any] = {}

    def __call__(self, record: SourceRecord) -> dict[str, Any]:
        if record is not self._record:
            try:
                event = orjson.loads(record.value or b"null")
            except orjson.JSONDecodeError:
                event = None
            self._event = event if isinstance(event, dict) else {}
            self._record = record
        return self._event


def record_fields(location: TableStreamLocation | None = None) -> RecordFields:
    """What filter patterns see of a DynamoDB stream record: the fields of Lambda's event record; `awsRegion` and
    `eventSourceARN` only with the stream's `location` (filled in once the reader has connected, before any record
    is filtered)."""
    parsed = _Parsed()

    def stored(name: str) -> Any:
        return lambda record: parsed(record).get(name, MISSING)

    fields = {
        "eventID": stored("eventID"),
        "eventName": stored("eventName"),
        "eventVersion": stored("eventVersion"),
        "eventSource": lambda record: EVENT_SOURCE,
        "dynamodb": stored("dynamodb"),
        "userIdentity": stored("userIdentity"),
    }
    if location is not None:
        fields["awsRegion"] = lambda record: location.region
        fields["eventSourceARN"] = lambda record: location.stream_arn(record.topic)
    return RecordFields("a DynamoDB stream record", fields, payloads=frozenset(), value="dynamodb")


class DynamoDBDialect(StreamDialect):
    """A DynamoDB Streams source's dialect. `location`: the stream's, as the source's readers get it for their
    connection, so that filter patterns may name `awsRegion` and `eventSourceARN` (without it they are refused when
    the function is declared)."""

    def __init__(self, location: TableStreamLocation | None = None) -> None:
        super().__init__()
        self.filter_fields = record_fields(location)

    def lambda_event(self, connection: TableStreamLocation, value_codec: Codec, key_codec: Codec | None) -> LambdaEvent:
        return DynamoDBEvent(connection)

    def batch_info(self, connection: TableStreamLocation) -> BatchInfo:
        return StreamBatchInfo(connection, BATCH_INFO, arrival)


DIALECT: Final = DynamoDBDialect()
"""The dialect of DynamoDB Streams sources whose patterns need not name the region or the stream's ARN."""
