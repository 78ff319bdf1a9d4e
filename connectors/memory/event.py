"""The Lambda event of a memory batch: Kinesis's shape (records under `Records`, base64 `data`), kept apart so it
can move behind the source's dialect."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

from streamfn.record import Partition, Record, SourceRecord

REGION = "us-east-1"


def kinesis_event(
    partition: Partition, records: Sequence[SourceRecord], decoded: Sequence[Record] = ()
) -> dict[str, Any]:
    arn = f"arn:aws:kinesis:{REGION}:000000000000:stream/{partition.topic}"
    return {
        "Records": [
            {
                "kinesis": {
                    "kinesisSchemaVersion": "1.0",
                    "partitionKey": "" if r.key is None else r.key.decode(errors="replace"),
                    "sequenceNumber": str(r.offset),
                    "data": base64.b64encode(r.value or b"").decode(),
                    "approximateArrivalTimestamp": r.timestamp / 1000,
                },
                "eventSource": "aws:kinesis",
                "eventVersion": "1.0",
                "eventID": f"{shard_id(partition)}:{r.offset}",
                "eventName": "aws:kinesis:record",
                "awsRegion": REGION,
                "eventSourceARN": arn,
            }
            for r in records
        ]
    }


def shard_id(partition: Partition) -> str:
    """Kinesis's spelling of a shard id: "shardId-000000000001"."""
    shard = partition.partition
    return f"shardId-{shard:012d}" if isinstance(shard, int) else shard
