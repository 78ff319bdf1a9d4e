"""Lambda's rules for a Kafka source (self-managed Apache Kafka and MSK event source mappings), as the engine asks
a source's dialect for them (streamfn.dialect.Dialect).

- The event: `{"eventSource": "SelfManagedKafka", "bootstrapServers", "records": {"<topic>-<partition>": [...]}}`
  (connectors/kafka/event.py).
- A partial batch response names a record by `{"itemIdentifier": {"partition": "<topic>-<n>", "offset": <int>}}`.
- A failure record's batch-info block is `KafkaBatchInfo` (batch size, bootstrap servers, payload size, the
  record's offset and timestamp; streamfn adds `windowInfo` for a tumbling window's final invocation).
- Filter patterns see the record as the event shows it, with `value` and `key` readable as data (Lambda's
  kafka-filtering page).
- The batching window defaults to 0.5 s; the lag is OffsetLag, in records.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from streamfn.connectors.kafka.connection import KafkaConnection, servers_of
from streamfn.connectors.kafka.event import KafkaEvent
from streamfn.failures.model import BatchInfo, FailedItem, FailedRecord, InvalidResponse
from streamfn.filters.criteria import RecordFields, headers
from streamfn.formats.codec import Codec
from streamfn.observability.metrics import LagMetric
from streamfn.record import TIMESTAMP_TYPES, Partition

DEFAULTS: Final[Mapping[str, Any]] = {"maximum_batching_window_in_seconds": 0.5}
"""Lambda's default batching window for Kafka (and Amazon MQ) event sources; the streams' is 0."""

RECORD_FIELDS: Final = RecordFields(
    "a Kafka record",
    {
        "topic": lambda record: record.topic,
        "partition": lambda record: record.partition,
        "offset": lambda record: record.offset,
        "timestamp": lambda record: record.timestamp,
        "timestampType": lambda record: TIMESTAMP_TYPES[record.timestamp_type],
        "key": lambda record: record.key,
        "value": lambda record: record.value,
        "headers": headers,
    },
    payloads=frozenset({"key", "value"}),
    value="value",
)
"""What filter patterns see: the record as Lambda's Kafka event shows it (headers as text, see `headers`)."""

OFFSET_LAG: Final = LagMetric(
    "OffsetLag", "{event}", "Records past the committed offset, per partition.", "Lambda's KafkaMetrics"
)


def failed_offset(item: Any, partition: Partition) -> Any:
    """The offset a `batchItemFailures` item names: `{"itemIdentifier": {"partition": "<topic>-<n>", "offset": n}}`
    (the offset is checked against the batch by the caller)."""
    identifier = item.get("itemIdentifier") if isinstance(item, dict) else None
    if not isinstance(identifier, dict) or not identifier:
        raise InvalidResponse(f"itemIdentifier {identifier!r} is not an object with partition and offset")
    if identifier.get("partition") != str(partition):
        raise InvalidResponse(f"itemIdentifier partition {identifier.get('partition')!r} is not {partition}")
    return identifier.get("offset")


class KafkaBatchInfo:
    """The `KafkaBatchInfo` block of a failure record from a source on the cluster at `servers`."""

    def __init__(self, servers: str) -> None:
        self._servers = servers

    def __call__(self, failure: FailedRecord, payload_size: int) -> tuple[str, dict[str, Any]]:
        record = failure.record
        info: dict[str, Any] = {
            "batchSize": 1,
            "bootstrapServers": self._servers,
            "payloadSize": payload_size,
            "recordInfo": {"offset": record.offset, "timestamp": record.timestamp},
        }
        if (window := failure.window) is not None:
            info["windowInfo"] = {"firstOffset": window.first_offset, "lastOffset": window.last_offset}
        return "KafkaBatchInfo", info


class KafkaDialect:
    """A Kafka source's dialect; `record_format`: Lambda's EventRecordFormat (JSON or SOURCE) for values in a
    schema registry's wire format."""

    defaults: Mapping[str, Any] = DEFAULTS
    filter_fields: RecordFields = RECORD_FIELDS
    lag_metric: LagMetric = OFFSET_LAG

    def __init__(self, record_format: str = "JSON") -> None:
        self._record_format = record_format

    @property
    def failed_item(self) -> FailedItem:
        return failed_offset

    def lambda_event(self, connection: KafkaConnection, value_codec: Codec, key_codec: Codec | None) -> KafkaEvent:
        return KafkaEvent(servers_of(connection), value_codec, key_codec, self._record_format)

    def batch_info(self, connection: KafkaConnection) -> BatchInfo:
        return KafkaBatchInfo(servers_of(connection))

    def window_fields(self, connection: KafkaConnection, partition: Partition) -> dict[str, Any]:
        return {}
