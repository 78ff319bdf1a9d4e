"""A source's dialect: the rules Lambda applies differently to each kind of event source, in one place per source.

Lambda runs the same event source mapping over Kafka, Kinesis and DynamoDB Streams, but each speaks its own
dialect of it: the event a batch becomes, how a partial batch response names a record, the batch-info block of a
failure record, what filter patterns see, some parameter defaults and the lag metric. The engine asks the
function's source for its dialect (`Source.dialect`) and calls it; it never knows which source it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from streamfn.failures.model import BatchInfo, FailedItem, LambdaEvent
from streamfn.filters.criteria import RecordFields
from streamfn.formats.codec import Codec
from streamfn.observability.metrics import LagMetric
from streamfn.record import Partition


class Dialect(Protocol):
    @property
    def defaults(self) -> Mapping[str, Any]:
        """Parameters whose default is the source's, by name (Kafka: maximum_batching_window_in_seconds 0.5;
        Kinesis and DynamoDB Streams: 0). A value the user sets is kept; AWS's ranges apply either way."""

    @property
    def filter_fields(self) -> RecordFields:
        """What filter patterns see of a record (Kafka: topic, partition, ..., `value`; Kinesis: `data`)."""

    @property
    def lag_metric(self) -> LagMetric:
        """The name and unit of the partitions' lag (Kafka: OffsetLag, records)."""

    @property
    def failed_item(self) -> FailedItem:
        """How a partial batch response (`batchItemFailures`) names a record: its `itemIdentifier` read as the
        record's position (Kafka: partition and offset; Kinesis and DynamoDB Streams: the sequence number)."""

    def lambda_event(self, connection: Any, value_codec: Codec, key_codec: Codec | None) -> LambdaEvent:
        """The event a Lambda-style handler receives for a batch (Kafka: `eventSource`, `bootstrapServers`,
        records by partition) of a source reached through `connection` (SourceReader.connection) whose values
        and keys are in these formats."""

    def batch_info(self, connection: Any) -> BatchInfo:
        """The batch-info block of the failure records of a source reached through `connection` (Kafka:
        `KafkaBatchInfo`; Kinesis: `KinesisBatchInfo`; DynamoDB Streams: `DDBStreamBatchInfo`)."""

    def window_fields(self, connection: Any, partition: Partition) -> dict[str, Any]:
        """What a tumbling-window event says of its partition beside the window's own fields (Kinesis and DynamoDB
        Streams: `shardId`, `eventSourceARN`, as Lambda's; Kafka, which has no tumbling windows on AWS: nothing)."""
