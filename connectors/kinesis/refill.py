"""Putting dead-lettered records back on their Kinesis stream (`streamfn redrive`, streamfn.capabilities.Refill).

Each record goes back with PutRecord, one at a time and acknowledged before the next, so records of one partition
key go back in the order of their letters: the partition key and the data byte for byte; the stream's hash of the
key picks the shard (after a reshard, perhaps not the one it came from), and it gets a new sequence number. A
letter without its payload is read back from its shard at its sequence number (GetShardIterator
AT_SEQUENCE_NUMBER, then GetRecords, past empty pages: connectors/shards/readback.py), while the stream still holds
it (its retention).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from streamfn.connectors.shards import AwsAccess
from streamfn.connectors.shards.readback import record_at
from streamfn.errors import Unreachable

GONE = frozenset({"ResourceNotFoundException", "InvalidArgumentException"})
"""GetShardIterator's answers for a shard or sequence number the stream no longer holds."""


class StreamRefill:
    def __init__(self, kinesis: Any, stream: str) -> None:
        self._kinesis = kinesis
        self._stream = stream

    async def put(self, partition: int | str, key: bytes | None, value: bytes | None) -> None:
        try:
            await self._kinesis.put_record(
                StreamName=self._stream, PartitionKey=(key or b"").decode(errors="replace"), Data=value or b""
            )
        except (ClientError, BotoCoreError, OSError) as error:
            raise Unreachable(f"Kinesis stream {self._stream}: PutRecord failed: {error}") from None

    async def refusal(self, key: bytes | None, value: bytes | None) -> str | None:
        return None  # a stream takes any key and data back

    async def get(self, partition: int | str, offset: int) -> tuple[bytes | None, bytes | None] | None:
        at = {"StreamName": self._stream, "ShardId": str(partition), "StartingSequenceNumber": str(offset)}
        item = await record_at(
            self._kinesis, at, offset, lambda r: r["SequenceNumber"], GONE, f"Kinesis stream {self._stream}"
        )
        return None if item is None else (item["PartitionKey"].encode(), bytes(item["Data"]))


@asynccontextmanager
async def stream_refill(stream: str, access: AwsAccess) -> AsyncIterator[StreamRefill]:
    async with access.client("kinesis") as kinesis:
        yield StreamRefill(kinesis, stream)
