"""Kinesis Data Streams as the shard reader sees it (connectors/shards/reader.py's ShardApi): ListShards,
GetShardIterator, GetRecords (10,000 records a call, MillisBehindLatest, ChildShards at a shard's end).

Kinesis's own facts: a caught-up shard is polled about once a second (Lambda's base rate); ProvisionedThroughput-
Exceeded, LimitExceeded and the KMS/service throttles are backed off; an emulator may never end a closed shard
(moto) and names no ChildShards (then the listing says which shards name it as ParentShardId or
AdjacentParentShardId).
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any

from streamfn.connectors.kinesis.dialect import StreamLocation
from streamfn.connectors.shards import AT_TIMESTAMP, AwsAccess, Shard
from streamfn.connectors.shards.reader import MAX_LISTING_PAGES, Page
from streamfn.record import RawRecord


def kinesis_record(stream: str, shard: str, item: dict[str, Any]) -> RawRecord:
    """A Kinesis record in the SourceRecord shape: the shard as partition, the sequence number as position, the
    partition key (UTF-8) as key, the approximate arrival time as timestamp (epoch milliseconds; Kafka's
    LOG_APPEND_TIME: set by the stream on arrival)."""
    arrival: datetime = item["ApproximateArrivalTimestamp"]
    return RawRecord(
        stream,
        shard,
        int(item["SequenceNumber"]),
        round(arrival.timestamp() * 1000),
        item["PartitionKey"].encode(),
        bytes(item["Data"]),
        timestamp_type=1,
    )


class KinesisApi:
    """One Kinesis data stream, for one ShardReader."""

    service = "kinesis"
    missing = "no such stream"
    max_records: int = 10_000
    poll_interval: float = 1.0
    throttles: frozenset[str] = frozenset(
        {
            "ProvisionedThroughputExceededException",
            "LimitExceededException",
            "ThrottlingException",
            "KMSThrottlingException",
        }
    )
    expired: frozenset[str] = frozenset({"ExpiredIteratorException"})
    gone: frozenset[str] = frozenset({"ResourceNotFoundException"})

    def __init__(self, stream: str, access: AwsAccess, *, starting_timestamp: float | None) -> None:
        self.topic = stream
        self.access = access
        self._starting_timestamp = starting_timestamp
        self.description = access.described(f"Kinesis stream {stream}")
        self.connection = StreamLocation(region=access.region_name or "", account="", identity_arn="")
        """Filled in by `connect` (the stream's ARN names its account and region)."""
        self.state = ""
        """The stream's status, from `connect`."""
        self.client: Any = None
        self._stack = AsyncExitStack()

    async def connect(self) -> None:
        if self.client is None:
            self.client = await self._stack.enter_async_context(self.access.client("kinesis"))
        summary = (await self.client.describe_stream_summary(StreamName=self.topic))["StreamDescriptionSummary"]
        async with self.access.client("sts") as sts:
            identity = await sts.get_caller_identity()
        _, _, _, region, account, _ = summary["StreamARN"].split(":", 5)
        self.connection.region, self.connection.account = region, account
        self.connection.identity_arn = identity["Arn"]
        self.state = str(summary["StreamStatus"])

    async def shards(self) -> list[Shard]:
        """The stream's shards now (ListShards, every page), with their parents."""
        listed: list[Shard] = []
        arguments: dict[str, Any] = {"StreamName": self.topic}
        for _ in range(MAX_LISTING_PAGES):
            page = await self.client.list_shards(**arguments)
            listed += [Shard.described(shard) for shard in page.get("Shards", [])]
            token = page.get("NextToken")
            if not token:
                break
            arguments = {"NextToken": token}
        return listed

    async def iterator(self, shard: str, after: int | None, start: str) -> str:
        arguments: dict[str, Any] = {"StreamName": self.topic, "ShardId": shard}
        if after is not None:
            arguments |= {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "StartingSequenceNumber": str(after)}
        elif start == AT_TIMESTAMP:
            timestamp = datetime.fromtimestamp(self._starting_timestamp or 0, UTC)
            arguments |= {"ShardIteratorType": AT_TIMESTAMP, "Timestamp": timestamp}
        else:
            arguments["ShardIteratorType"] = start
        response = await self.client.get_shard_iterator(**arguments)
        return str(response["ShardIterator"])

    async def records(self, shard: str, iterator: str, limit: int | None = None) -> Page:
        response = await self.client.get_records(ShardIterator=iterator, Limit=limit or self.max_records)
        children = [
            Shard(child["ShardId"], tuple(child.get("ParentShards", ()))) for child in response.get("ChildShards", ())
        ]
        return Page(
            [kinesis_record(self.topic, shard, item) for item in response.get("Records", [])],
            response.get("NextShardIterator"),
            int(response.get("MillisBehindLatest", 0)),
            children,
        )

    async def close(self) -> None:
        await self._stack.aclose()
        self.client = None
