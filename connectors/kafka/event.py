"""Lambda's self-managed Kafka event, built from fetched records.

Shape (AWS docs, "Using Lambda with self-managed Apache Kafka"): records keyed "<topic>-<partition>", key and
value base64, timestamp in epoch ms, headers as single-key objects whose value is the list of byte values.
A null key is absent, as in Lambda; a null value (tombstone) is absent too (AWS does not document it).
"""

from __future__ import annotations

from base64 import b64encode
from collections.abc import Sequence
from typing import Any

from streamfn.record import TIMESTAMP_TYPES, Partition, SourceRecord

EVENT_SOURCE = "SelfManagedKafka"


def lambda_record(record: SourceRecord) -> dict[str, Any]:
    item: dict[str, Any] = {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": record.timestamp,
        "timestampType": TIMESTAMP_TYPES[record.timestamp_type],
    }
    if record.key is not None:
        item["key"] = b64encode(record.key).decode("ascii")
    if record.value is not None:
        item["value"] = b64encode(record.value).decode("ascii")
    item["headers"] = [{name: list(value or b"")} for name, value in record.headers]
    return item


def lambda_event(servers: str, partition: Partition, records: Sequence[SourceRecord]) -> dict[str, Any]:
    return {
        "eventSource": EVENT_SOURCE,
        "bootstrapServers": servers,
        "records": {str(partition): [lambda_record(r) for r in records]},
    }
