"""DynamoChangelog: a stateful function's changelog in a DynamoDB table, for shard sources (Kinesis Data Streams,
DynamoDB Streams), whose state has no log of its own to live in.

One table per function (by default the lease table's name + "-state"), created PAY_PER_REQUEST when missing; one
item per state key of a source partition:
- `partitionId` (hash key, S): the source partition as "<stream>/<shard>" (a stream name never holds a '/', a shard
  id neither: split at the last one), so a restore is one Query and a shard's children start from nothing while
  their parents' items stay theirs;
- `stateKey` (range key, B): the state key (at most 1,024 bytes, DynamoDB's limit for a range key);
- `stateValue` (B): the serialized value. The table holds the latest value per key, which is what a restore folds
  (no compaction needed). A tombstone is first an item without a value (its `applied` tells a replay after a crash
  that the key's deletion already reflects those records, as the replay rule needs), deleted once the partition's
  metadata entry, written after it, covers it;
- `applied` (S): the checkpoint value the value reflects, in decimal. Kinesis sequence numbers have 56 digits, past
  DynamoDB's 38-digit numbers, so it is text and compared as an int in Python (streamfn.state.store).

A write keeps the replay rule of streamfn.state.store: every entry but the last (the partition's metadata entry)
goes in BatchWriteItem requests of 25 (UnprocessedItems and throttling retried with backoff), and the last one is
written only once all of them were acknowledged. An item over DynamoDB's 400 KB limit fails the whole write before
anything is written (`StateTooLarge`): the commit waits and the error is logged at each attempt. Lambda-style
tumbling windows never get there: a window whose state passes `value_limit` (about 398 KB) ends early, as AWS's
do past 1 MB (docs/behaviour.md); an aggregation's accumulator must stay under it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from streamfn.connectors.shards.aws import AwsAccess, ensure_table, error_code
from streamfn.connectors.shards.table import TABLE_NAME
from streamfn.record import Partition
from streamfn.state.changelog import ChangelogEntry
from streamfn.state.store import META_KEY

log = logging.getLogger("streamfn.shards")

BATCH_ITEMS = 25
"""BatchWriteItem's limit on requests per call."""
ITEM_LIMIT_BYTES = 400 * 1024
"""DynamoDB's limit on an item's size: its attribute names and values."""
RANGE_KEY_LIMIT_BYTES = 1024
RETRY_SECONDS = (0.05, 2.0)
"""First and largest pause (with full jitter) before writing unprocessed or throttled items again."""
GIVE_UP_SECONDS = 60.0
"""How long one write keeps retrying throttled items before it fails (the commit then tries again later)."""
THROTTLED = frozenset(
    {"ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded", "InternalServerError"}
)
_FIXED_BYTES = sum(map(len, ("partitionId", "stateKey", "stateValue", "applied")))


class StateTooLarge(ValueError):
    """A state entry DynamoDB cannot hold in one item (over 400 KB, or a key over 1,024 bytes)."""


def state_table_name(lease_table: str) -> str:
    """The state table next to a lease table: "<lease table>-state", cut to DynamoDB's 255 characters."""
    suffix = "-state"
    return lease_table[: 255 - len(suffix)] + suffix


def partition_id(partition: Partition) -> str:
    return f"{partition.topic}/{partition.partition}"


class DynamoChangelog:
    """The Changelog of streamfn.state.changelog over one DynamoDB table."""

    value_limit: int | None = ITEM_LIMIT_BYTES - 2048
    """What a value may hold beside its item's other attributes (a partition id and key of up to 1 KB each)."""

    def __init__(self, table: str, access: AwsAccess | None = None) -> None:
        if not TABLE_NAME.match(table):
            raise ValueError(f"not a DynamoDB table name (3 to 255 letters, digits, '_', '-', '.'): {table!r}")
        self.table = table
        self._access = access or AwsAccess()
        self._stack = AsyncExitStack()
        self._client: Any = None

    def __str__(self) -> str:
        return f"state table {self.table!r}"

    async def start(self) -> None:
        """Open the client; create the table (PAY_PER_REQUEST) if it does not exist, and wait until it is ACTIVE."""
        self._client = await self._stack.enter_async_context(self._access.client("dynamodb"))
        try:
            await ensure_table(self._client, self.table, [("partitionId", "HASH", "S"), ("stateKey", "RANGE", "B")])
        except BaseException:
            await self.stop()
            raise

    async def restore(self, partition: Partition) -> list[ChangelogEntry]:
        """Every item of `partition`: one Query, read consistently, every page. Tombstones the metadata entry
        covers (left by a write cut short after its metadata entry) are not needed any more: deleted on the way."""
        assert self._client is not None, "started before any restore"
        entries: list[ChangelogEntry] = []
        paginator = self._client.get_paginator("query")
        pages = paginator.paginate(
            TableName=self.table,
            KeyConditionExpression="partitionId = :p",
            ExpressionAttributeValues={":p": {"S": partition_id(partition)}},
            ConsistentRead=True,
        )
        async for page in pages:
            for item in page.get("Items", []):
                value = item.get("stateValue")
                applied = int(item["applied"]["S"])
                entries.append(ChangelogEntry(item["stateKey"]["B"], None if value is None else value["B"], applied))
        floor = next((e.applied for e in entries if e.key == META_KEY), None)
        covered = [e for e in entries if e.value is None and floor is not None and e.applied <= floor]
        try:
            await self._delete(partition_id(partition), covered)
        except (ClientError, BotoCoreError, OSError, TimeoutError) as error:  # tidying only: the next restore retries
            log.warning("%s: %s: deleting %d covered tombstones failed: %r", self, partition, len(covered), error)
        return entries

    async def write(self, partition: Partition, entries: Sequence[ChangelogEntry]) -> None:
        """Every entry but the last in batches, then the last (the metadata entry) once they are acknowledged; then
        the tombstones of this write are deleted, which the metadata entry now covers."""
        assert self._client is not None, "started before any write"
        if not entries:
            return
        owner = partition_id(partition)
        requests = [self._request(partition, owner, entry) for entry in entries]  # checked before anything is written
        *first, last = requests
        for start in range(0, len(first), BATCH_ITEMS):
            await self._batch(first[start : start + BATCH_ITEMS])
        await self._batch([last])
        await self._delete(owner, [entry for entry in entries if entry.value is None])

    async def _delete(self, owner: str, tombstones: Sequence[ChangelogEntry]) -> None:
        requests = [
            {"DeleteRequest": {"Key": {"partitionId": {"S": owner}, "stateKey": {"B": entry.key}}}}
            for entry in tombstones
        ]
        for start in range(0, len(requests), BATCH_ITEMS):
            await self._batch(requests[start : start + BATCH_ITEMS])

    def _request(self, partition: Partition, owner: str, entry: ChangelogEntry) -> dict[str, Any]:
        key = {"partitionId": {"S": owner}, "stateKey": {"B": entry.key}}
        if len(entry.key) > RANGE_KEY_LIMIT_BYTES:
            raise StateTooLarge(
                f"{self}: {partition}: a state key of {len(entry.key)} bytes is over DynamoDB's "
                f"{RANGE_KEY_LIMIT_BYTES}-byte limit for a range key"
            )
        applied = str(entry.applied)
        if entry.value is None:  # a tombstone: an item without a value until the metadata entry covers it
            return {"PutRequest": {"Item": key | {"applied": {"S": applied}}}}
        size = _FIXED_BYTES + len(owner.encode()) + len(entry.key) + len(entry.value) + len(applied)
        if size > ITEM_LIMIT_BYTES:
            raise StateTooLarge(
                f"{self}: {partition}: a state value of {len(entry.value)} bytes makes a {size}-byte item, over "
                f"DynamoDB's {ITEM_LIMIT_BYTES}-byte limit; the state is not written and the commit waits"
            )
        return {"PutRequest": {"Item": key | {"stateValue": {"B": entry.value}, "applied": {"S": applied}}}}

    async def _batch(self, requests: list[dict[str, Any]]) -> None:
        """One BatchWriteItem, then its unprocessed items again (and throttled calls), with backoff and jitter."""
        deadline = time.monotonic() + GIVE_UP_SECONDS
        pause = RETRY_SECONDS[0]
        while requests:
            try:
                answer = await self._client.batch_write_item(RequestItems={self.table: requests})
                requests = answer.get("UnprocessedItems", {}).get(self.table, [])
            except ClientError as error:
                if error_code(error) not in THROTTLED or time.monotonic() > deadline:
                    raise
            if requests:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self}: {len(requests)} items still unprocessed after {GIVE_UP_SECONDS:g} s")
                await asyncio.sleep(random.uniform(0, pause))
                pause = min(pause * 2, RETRY_SECONDS[1])

    async def stop(self) -> None:
        self._client = None
        await self._stack.aclose()
