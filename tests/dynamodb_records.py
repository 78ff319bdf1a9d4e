"""DynamoDB stream records as the DynamoDB Streams reader delivers them (a RawRecord each: the item's `Keys` as key,
Lambda's event record without what names the stream as value; docs/behaviour.md, DynamoDB), built here from an
item's keys and images, so that the dialect's tests need no AWS. The reader's own tests check it produces the same.

Attribute values are in DynamoDB's JSON as Lambda's event shows them (binary values as base64 text).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson

from streamfn.connectors.dynamodb.location import TableStreamLocation
from streamfn.connectors.memory import MemoryStream
from streamfn.record import RawRecord

REGION = "eu-west-1"
TABLE = "orders"
STREAM_ARN = f"arn:aws:dynamodb:{REGION}:123456789012:table/{TABLE}/stream/2026-12-03T00:00:00.000"
SHARD = "shardId-00000001764720000000-0a1b2c3d"
CREATED = 1_764_720_000
"""Epoch seconds of the first change (2025-12-03T00:00:00Z); each later one a second after the one before."""

ViewType = Literal["KEYS_ONLY", "NEW_IMAGE", "OLD_IMAGE", "NEW_AND_OLD_IMAGES"]
TTL_IDENTITY = {"type": "Service", "principalId": "dynamodb.amazonaws.com"}


def location() -> TableStreamLocation:
    return TableStreamLocation(REGION, STREAM_ARN)


@dataclass(frozen=True)
class Change:
    """One change of an item, before the stream view type picks what its record carries."""

    event_name: Literal["INSERT", "MODIFY", "REMOVE"]
    keys: dict[str, Any]
    new: dict[str, Any] | None = None
    old: dict[str, Any] | None = None
    ttl: bool = False
    """A REMOVE by time to live (the record then has `userIdentity`)."""


def stored(change: Change, sequence: int, view: ViewType, created: float) -> dict[str, Any]:
    """The value's JSON: Lambda's event record without eventSource, awsRegion and eventSourceARN."""
    stream: dict[str, Any] = {"ApproximateCreationDateTime": created, "Keys": change.keys}
    if change.new is not None and view in ("NEW_IMAGE", "NEW_AND_OLD_IMAGES"):
        stream["NewImage"] = change.new
    if change.old is not None and view in ("OLD_IMAGE", "NEW_AND_OLD_IMAGES"):
        stream["OldImage"] = change.old
    stream["SequenceNumber"] = str(sequence)
    stream["SizeBytes"] = len(orjson.dumps([change.keys, stream.get("NewImage"), stream.get("OldImage")]))
    stream["StreamViewType"] = view
    record: dict[str, Any] = {
        "eventID": f"{sequence:032x}"[-32:],
        "eventName": change.event_name,
        "eventVersion": "1.1",
        "dynamodb": stream,
    }
    if change.ttl:
        record["userIdentity"] = TTL_IDENTITY
    return record


def raw_record(
    change: Change, sequence: int, view: ViewType = "NEW_AND_OLD_IMAGES", created: int = CREATED
) -> RawRecord:
    """The RawRecord of a change: partition the shard, offset the sequence number, timestamp the creation time."""
    return RawRecord(
        TABLE,
        SHARD,
        sequence,
        created * 1000,
        orjson.dumps(change.keys, option=orjson.OPT_SORT_KEYS),
        orjson.dumps(stored(change, sequence, view, created)),
        timestamp_type=1,
    )


def put(stream: MemoryStream, shard: int | str, changes: list[Change], view: ViewType = "NEW_AND_OLD_IMAGES") -> int:
    """Put the changes' records into a memory stream at their sequence numbers (DynamoDB's: 21 digits and more),
    one second apart from CREATED; the last sequence number."""
    last = max(stream.shards[stream.partition(shard)].positions, default=0)
    for index, change in enumerate(changes):
        record = raw_record(change, sequence_number(last, index), view, CREATED + index)
        stream.put(shard, record.value or b"", key=record.key, timestamp=record.timestamp, position=record.offset)
    return int(stream.shards[stream.partition(shard)].positions[-1])


def sequence_number(after: int, index: int) -> int:
    """DynamoDB-like sequence numbers (21 digits, increasing but not contiguous)."""
    return max(after, 100_000_000_000_000_000_000) + 7 * (index + 1)
