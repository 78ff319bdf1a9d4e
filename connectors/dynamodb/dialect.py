"""A stand-in for Lambda's DynamoDB Streams dialect (helper D2's connectors/dynamodb/dialect.py replaces this
file): Kinesis's rules (filters, defaults, lag), the event and failure records built from the value's record."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from streamfn.connectors.dynamodb.location import TableStreamLocation
from streamfn.connectors.kinesis.dialect import DEFAULTS, ITERATOR_AGE, RECORD_FIELDS, arrival, failed_sequence_number
from streamfn.failures.model import BatchInfo, FailedItem, FailedRecord, LambdaEvent
from streamfn.formats.codec import Codec
from streamfn.record import Partition, Record, SourceRecord


class DynamoDBDialect:
    defaults = DEFAULTS
    filter_fields = RECORD_FIELDS
    lag_metric = ITERATOR_AGE

    @property
    def failed_item(self) -> FailedItem:
        return failed_sequence_number

    def lambda_event(self, connection: TableStreamLocation, value_codec: Codec, key_codec: Codec | None) -> LambdaEvent:
        def event(partition: Partition, records: Sequence[SourceRecord], decoded: Sequence[Record] = ()) -> Any:
            arn = connection.stream_arn(partition.topic)
            extra = {"eventSource": "aws:dynamodb", "awsRegion": connection.region, "eventSourceARN": arn}
            return {"Records": [orjson.loads(r.value or b"{}") | extra for r in records]}

        return event

    def batch_info(self, connection: TableStreamLocation) -> BatchInfo:
        def info(failure: FailedRecord, payload_size: int) -> tuple[str, dict[str, Any]]:
            record = failure.record
            return "DDBStreamBatchInfo", {
                "shardId": str(failure.partition.partition),
                "startSequenceNumber": str(record.offset),
                "endSequenceNumber": str(record.offset),
                "approximateArrivalOfFirstRecord": arrival(record.timestamp),
                "approximateArrivalOfLastRecord": arrival(record.timestamp),
                "batchSize": 1,
                "streamArn": connection.stream_arn(failure.partition.topic),
            }

        return info

    def window_fields(self, connection: TableStreamLocation, partition: Partition) -> dict[str, Any]:
        return {"shardId": str(partition.partition), "eventSourceARN": connection.stream_arn(partition.topic)}


DIALECT = DynamoDBDialect()
