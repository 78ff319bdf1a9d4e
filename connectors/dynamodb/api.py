"""DynamoDB Streams as the shard reader sees it (connectors/shards/reader.py's ShardApi), over aiobotocore's
`dynamodbstreams` client; and a stream record as a RawRecord.

What AWS documents and this follows:
- The stream: `stream_arn`, else the table's LatestStreamArn (DescribeTable); a table without an enabled stream
  is one Unreachable line that says to enable one.
- The shards: DescribeStream, paged by ExclusiveStartShardId / LastEvaluatedShardId; a shard is closed when its
  SequenceNumberRange has an EndingSequenceNumber, its parent is ParentShardId. Shards roll over on their own
  (about every four hours), so the lineage rules (parents before children) are exercised all the time.
- GetShardIterator names the StreamArn; GetRecords returns at most 1,000 records, no MillisBehindLatest (the lag
  is the age of the oldest record fetched and not committed, 0 when caught up: ShardReader.lag) and no
  ChildShards (the children come from the listing). A closed shard's last page has no NextShardIterator.
- Caught-up shards are polled 4 times a second (Lambda's base rate for DynamoDB Streams).
- Errors: LimitExceededException (too many GetRecords on the stream) and ThrottlingException are backed off;
  ExpiredIteratorException (15 minutes) and TrimmedDataAccessException (the iterator points at records older
  than the 24-hour retention, trimmed since) take a new iterator after the last record fetched; when that
  position itself was trimmed, reading restarts at TRIM_HORIZON with a WARNING (the trimmed records are gone, as
  for Lambda); ResourceNotFoundException on GetRecords: the shard is gone (expired), its end, as KCL treats it.
"""

from __future__ import annotations

import base64
import logging
import re
from contextlib import AsyncExitStack
from datetime import datetime
from typing import Any

import orjson
from botocore.exceptions import ClientError

from streamfn.connectors.dynamodb.location import TableStreamLocation
from streamfn.connectors.shards import TRIM_HORIZON, AwsAccess, Shard
from streamfn.connectors.shards.aws import error_code
from streamfn.connectors.shards.reader import MAX_LISTING_PAGES, Page
from streamfn.errors import Unreachable
from streamfn.record import RawRecord

log = logging.getLogger("streamfn.dynamodb")

STREAM_ARN = re.compile(
    r"^arn:aws[a-z-]*:dynamodb:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):"
    r"table/(?P<table>[a-zA-Z0-9_.-]{3,255})/stream/(?P<label>[^/]+)$"
)
EVENT_VERSION = "1.1"
"""The eventVersion of Lambda's DynamoDB Streams events today (the API's records say "1.0")."""


def _base64(value: Any) -> str:
    """orjson's fallback: binary attribute values (B, BS), which the client decoded, back to base64 text."""
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode("ascii")
    raise TypeError(f"not JSON: {type(value).__name__}")


def stream_record(table: str, shard: str, item: dict[str, Any]) -> RawRecord:
    """A stream record as the engine's RawRecord: the table as topic, the shard as partition, the sequence number
    as position, the creation time (epoch ms) as timestamp; the item's Keys (DynamoDB JSON, sorted keys) as key,
    so per-key parallelism and order follow the item; the value is Lambda's event record (orjson) without what the
    dialect adds from the connection (eventSource, awsRegion, eventSourceARN), attribute values as Lambda shows
    them (binary as base64)."""
    change = item["dynamodb"]
    created: datetime = change["ApproximateCreationDateTime"]
    seconds = created.timestamp()
    dynamodb: dict[str, Any] = {"ApproximateCreationDateTime": seconds, "Keys": change["Keys"]}
    for image in ("NewImage", "OldImage"):
        if image in change:
            dynamodb[image] = change[image]
    dynamodb |= {
        "SequenceNumber": change["SequenceNumber"],
        "SizeBytes": change["SizeBytes"],
        "StreamViewType": change["StreamViewType"],
    }
    value: dict[str, Any] = {
        "eventID": item["eventID"],
        "eventName": item["eventName"],
        "eventVersion": EVENT_VERSION,
        "dynamodb": dynamodb,
    }
    identity = item.get("userIdentity")
    if identity is not None:  # a deletion by TTL
        value["userIdentity"] = {"type": identity.get("Type"), "principalId": identity.get("PrincipalId")}
    return RawRecord(
        table,
        shard,
        int(change["SequenceNumber"]),
        round(seconds * 1000),
        orjson.dumps(change["Keys"], default=_base64, option=orjson.OPT_SORT_KEYS),
        orjson.dumps(value, default=_base64),
        timestamp_type=1,
    )


def table_of(stream_arn: str) -> str:
    """The table a (validated) stream ARN names."""
    found = STREAM_ARN.match(stream_arn)
    assert found is not None, stream_arn
    return found.group("table")


class DynamoDBStreamsApi:
    """One table's stream, for one ShardReader: `stream_arn` if given, else the table's latest stream."""

    service = "dynamodb"
    missing = "no such table or stream"
    max_records: int = 1_000
    poll_interval: float = 0.25
    throttles: frozenset[str] = frozenset({"LimitExceededException", "ThrottlingException"})
    expired: frozenset[str] = frozenset({"ExpiredIteratorException", "TrimmedDataAccessException"})
    gone: frozenset[str] = frozenset({"ResourceNotFoundException"})

    def __init__(
        self,
        access: AwsAccess,
        *,
        table: str | None = None,
        stream_arn: str | None = None,
        location: TableStreamLocation | None = None,
    ) -> None:
        assert (table is None) != (stream_arn is None), "a table or a stream ARN"
        self.access = access
        self.topic = table if table is not None else table_of(stream_arn or "")
        self._stream_arn = stream_arn
        named = f"DynamoDB table {table}" if table is not None else f"DynamoDB stream {stream_arn}"
        self.description = access.described(named)
        self.connection = location if location is not None else TableStreamLocation(region="")
        """Filled in by `connect` (the stream's ARN names its region); the source's own, which its dialect reads."""
        self.connection.region = self.connection.region or access.region_name or ""
        self.state = ""
        """The stream's status, from `connect`."""
        self.client: Any = None
        self._stack = AsyncExitStack()

    async def connect(self) -> None:
        if self.client is None:
            self.client = await self._stack.enter_async_context(self.access.client("dynamodbstreams"))
        arn = self._stream_arn or await self._latest_stream()
        try:
            described = (await self.client.describe_stream(StreamArn=arn, Limit=1))["StreamDescription"]
        except ClientError as error:
            if error_code(error) == "ResourceNotFoundException":
                raise Unreachable(f"{self.description}: no such stream {arn}") from None
            raise
        self.connection.arn = arn
        self.connection.region = arn.split(":")[3]
        self.state = str(described.get("StreamStatus", ""))

    async def _latest_stream(self) -> str:
        """The table's LatestStreamArn (DescribeTable), if its stream is enabled."""
        async with self.access.client("dynamodb") as dynamodb:
            try:
                table = (await dynamodb.describe_table(TableName=self.topic))["Table"]
            except ClientError as error:
                if error_code(error) == "ResourceNotFoundException":
                    raise Unreachable(f"{self.description}: no such table") from None
                raise
        arn = table.get("LatestStreamArn")
        if not table.get("StreamSpecification", {}).get("StreamEnabled") or not arn:
            raise Unreachable(
                f"{self.description}: the table has no stream enabled; enable one (StreamSpecification "
                f"StreamEnabled=true with a StreamViewType, e.g. aws dynamodb update-table --table-name {self.topic} "
                "--stream-specification StreamEnabled=true,StreamViewType=NEW_AND_OLD_IMAGES) or name a stream "
                "with stream_arn="
            )
        return str(arn)

    async def shards(self) -> list[Shard]:
        """The stream's shards now (DescribeStream, every page), with their parents."""
        listed: list[Shard] = []
        arguments: dict[str, Any] = {"StreamArn": self.connection.arn}
        for _ in range(MAX_LISTING_PAGES):
            described = (await self.client.describe_stream(**arguments))["StreamDescription"]
            listed += [Shard.described(shard) for shard in described.get("Shards", [])]
            last = described.get("LastEvaluatedShardId")
            if not last:
                break
            arguments["ExclusiveStartShardId"] = last
        return listed

    async def iterator(self, shard: str, after: int | None, start: str) -> str:
        """After `after`, else at `start` (TRIM_HORIZON, LATEST). A position trimmed from the stream (older than
        24 hours) restarts the shard at TRIM_HORIZON, its oldest record: what lay between is gone."""
        arguments: dict[str, Any] = {"StreamArn": self.connection.arn, "ShardId": shard}
        if after is None:
            arguments["ShardIteratorType"] = start
        else:
            arguments |= {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": str(after)}
        try:
            response = await self.client.get_shard_iterator(**arguments)
        except ClientError as error:
            if after is None or error_code(error) != "TrimmedDataAccessException":
                raise
            log.warning(
                "%s: shard %s: the records after sequence number %d were trimmed from the stream (past its 24-hour "
                "retention) before they were handled; reading on from the oldest record left (TRIM_HORIZON)",
                self.description,
                shard,
                after,
            )
            response = await self.client.get_shard_iterator(
                StreamArn=self.connection.arn, ShardId=shard, ShardIteratorType=TRIM_HORIZON
            )
        return str(response["ShardIterator"])

    async def records(self, shard: str, iterator: str, limit: int | None = None) -> Page:
        response = await self.client.get_records(ShardIterator=iterator, Limit=limit or self.max_records)
        return Page(
            [stream_record(self.topic, shard, item) for item in response.get("Records", [])],
            response.get("NextShardIterator"),
        )

    async def close(self) -> None:
        await self._stack.aclose()
        self.client = None
