"""Resharding mid-stream against kinesalite (Kinesis) with the lease table on moto (DynamoDB): a SplitShard and a
MergeShards while records keep coming, and per partition key the handled order is the put order.

moto cannot show this (it writes a split parent's keys into the closed parent and never ends a closed shard);
kinesalite routes writes to the children, ends a drained closed shard with a null NextShardIterator and sends no
ChildShards, so the source finds the children in the listing. Endpoints come from the AWS chain's variables
(AWS_ENDPOINT_URL_KINESIS for kinesalite, AWS_ENDPOINT_URL for the rest), as a user would set them.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import time
from collections import defaultdict
from typing import Any

import boto3
import orjson
from conftest import run_worker, wait_for

from streamfn import App, Record
from streamfn.connectors.kinesis import KinesisSource

REGION = "us-east-1"
LOW, MIDDLE = 2**126, 2**127
"""Shard 0 ([0, 2^127)) is split at 2^126; its upper child and shard 1 ([2^127, 2^128)) are then merged."""
_names = itertools.count()


def keys_in(low: int, high: int, count: int) -> list[str]:
    """`count` partition keys whose hash (MD5, as Kinesis routes them) falls in [low, high)."""
    candidates = (f"key-{n}" for n in itertools.count())
    return list(itertools.islice((k for k in candidates if low <= hash_key(k) < high), count))


def hash_key(key: str) -> int:
    return int.from_bytes(hashlib.md5(key.encode()).digest(), "big")


KEYS = keys_in(0, LOW, 3) + keys_in(LOW, MIDDLE, 3) + keys_in(MIDDLE, 2**128, 3)
"""Keys that stay in the lower child, keys that go through the split and the merge, keys of the merged shard 1."""


def wait_active(kinesis: Any, stream: str) -> None:
    deadline = time.monotonic() + 10
    while kinesis.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]["StreamStatus"] != "ACTIVE":
        assert time.monotonic() < deadline, "the stream did not become ACTIVE"
        time.sleep(0.05)


async def test_per_key_order_holds_across_a_split_and_a_merge_mid_stream(aws: str, kinesalite: str) -> None:
    kinesis = boto3.client("kinesis", endpoint_url=kinesalite, region_name=REGION)
    dynamodb = boto3.client("dynamodb", endpoint_url=aws, region_name=REGION)
    stream, table = f"reshard-{next(_names)}-{time.monotonic_ns()}", f"leases-reshard-{time.monotonic_ns()}"
    kinesis.create_stream(StreamName=stream, ShardCount=2)
    wait_active(kinesis, stream)
    put: dict[str, list[int]] = defaultdict(list)
    ends: dict[str, str] = {}
    count = itertools.count()

    def put_rounds(rounds: int) -> None:
        for _ in range(rounds):
            for key in KEYS:
                n = next(count)
                answer = kinesis.put_record(StreamName=stream, Data=orjson.dumps({"n": n}), PartitionKey=key)
                put[key].append(n)
                ends[answer["ShardId"]] = answer["SequenceNumber"]

    def checkpoints() -> dict[str, str]:
        items = dynamodb.scan(TableName=table, ConsistentRead=True)["Items"]
        return {item["leaseKey"]["S"]: item["checkpoint"]["S"] for item in items}

    handled: dict[str, list[int]] = defaultdict(list)
    shards_of: dict[str, list[str]] = defaultdict(list)
    parents_at_start: dict[str, dict[str, str]] = {}
    parents: dict[str, list[str]] = {}
    app = App("reshard")

    @app.function(source=KinesisSource(stream=stream, lease_table=table, lease_duration_seconds=2), batch_size=5)
    async def native(records: list[Record]) -> None:
        shard = str(records[0].partition)
        if shard not in parents_at_start:  # the shard's first batch: where do its parents' leases stand?
            table_now = await asyncio.to_thread(checkpoints)
            if shard not in parents:  # read before the resharding thread listed it
                await asyncio.to_thread(lineage)
            parents_at_start[shard] = {parent: table_now[parent] for parent in parents.get(shard, [])}
        for r in records:
            key = r.key.decode()
            handled[key].append(r.value["n"])
            if not shards_of[key] or shards_of[key][-1] != shard:
                shards_of[key].append(shard)

    def lineage() -> None:
        for shard in kinesis.list_shards(StreamName=stream)["Shards"]:
            parents[shard["ShardId"]] = [
                p for p in (shard.get("ParentShardId"), shard.get("AdjacentParentShardId")) if p
            ]

    put_rounds(3)
    total = 0

    def reshard() -> None:
        """Split shard 0, put, merge its upper child with shard 1, put: while the worker reads (a thread)."""
        kinesis.split_shard(StreamName=stream, ShardToSplit="shardId-000000000000", NewStartingHashKey=str(LOW))
        wait_active(kinesis, stream)
        lineage()
        put_rounds(3)
        upper = max(s for s, p in parents.items() if p == ["shardId-000000000000"])
        kinesis.merge_shards(StreamName=stream, ShardToMerge=upper, AdjacentShardToMerge="shardId-000000000001")
        wait_active(kinesis, stream)
        lineage()
        put_rounds(3)

    async def reshard_mid_stream() -> None:
        nonlocal total
        await wait_for(lambda: sum(map(len, handled.values())) > 0, 20, "the first records handled")
        await asyncio.to_thread(reshard)
        total = sum(map(len, put.values()))

    resharding = asyncio.create_task(reshard_mid_stream())

    def all_handled() -> bool:
        if not resharding.done():
            return False
        resharding.result()
        closed = {parent for its_parents in parents.values() for parent in its_parents}
        expected = {shard: "SHARD_END" if shard in closed else ends.get(shard) for shard in parents}
        return sum(map(len, handled.values())) >= total and checkpoints() == expected

    await run_worker(app, None, all_handled, timeout=40)
    assert handled == put  # every record once, and per key in the order put
    children = {shard: p for shard, p in parents.items() if p}
    assert len(children) == 3  # two from the split, one from the merge
    for child, its_parents in children.items():  # children start only once all their parents ended
        assert parents_at_start.get(child, {}) == dict.fromkeys(its_parents, "SHARD_END"), child
    middle = KEYS[3:6]
    merged = next(s for s, p in children.items() if len(p) == 2)
    assert all(shards_of[key][-1] == merged for key in middle)
    assert all(len(shards_of[key]) == 3 for key in middle), dict(shards_of)  # parent, upper child, merged child
    kinesis.delete_stream(StreamName=stream)
