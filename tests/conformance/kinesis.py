"""The Kinesis harness: a stream per test on moto (server mode), its lease table in moto's DynamoDB.

A partition of the scenarios is a shard (shardId-00000000000N), reached by putting records with the ExplicitHashKey
of its hash range; the checkpoints are the lease table's (the last sequence number handled), turned into counts
with the sequence numbers the puts returned. Dead letters go to a memory destination (any destination serves any
source). Shard ends cannot be expressed: moto's closed shards never end (no null NextShardIterator) and it writes a
split parent's keys into the parent, not its children.
"""

from __future__ import annotations

import itertools
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import boto3
import orjson

from conformance.harness import Letter, Put
from streamfn.connectors.kinesis import KinesisSource
from streamfn.connectors.memory import MemoryDestination
from streamfn.connectors.shards.reader import ShardReader

REGION = "us-east-1"
LEASE_DURATION_SECONDS = 1.0
"""Short, so that a lease taken by another worker is found lost within a renew period (a third of it)."""
_streams = itertools.count()


class HarnessKinesisSource(KinesisSource):
    """A KinesisSource that keeps its readers, so that the harness can ask them what they were refused."""

    def reader(self, *, group_id: str) -> ShardReader:
        made = super().reader(group_id=group_id)
        READERS.setdefault(group_id, []).append(made)
        return made


READERS: dict[str, list[ShardReader]] = {}


@dataclass
class KinesisHarnessStream:
    endpoint: str
    name: str
    shards: list[str]
    """Shard ids by partition index."""
    hash_keys: list[str]
    """The starting hash key of each shard (records put with it land in that shard)."""
    on_failure: MemoryDestination
    group: str
    sequences: dict[int, list[int]] = field(default_factory=dict)
    """Per partition, the sequence numbers of the records put, in order."""

    def __post_init__(self) -> None:
        self.kinesis = boto3.client("kinesis", endpoint_url=self.endpoint, region_name=REGION)
        self.dynamodb = boto3.client("dynamodb", endpoint_url=self.endpoint, region_name=REGION)

    async def put(self, records: Sequence[Put]) -> None:
        for start in range(0, len(records), 500):
            chunk = records[start : start + 500]
            entries = [
                {
                    "Data": r.value,
                    "PartitionKey": (r.key or b"none").decode(),
                    "ExplicitHashKey": self.hash_keys[r.partition],
                }
                for r in chunk
            ]
            answer = self.kinesis.put_records(StreamName=self.name, Records=entries)
            for r, result in zip(chunk, answer["Records"], strict=True):
                self.sequences.setdefault(r.partition, []).append(int(result["SequenceNumber"]))

    def source(self, group: str) -> KinesisSource:
        return HarnessKinesisSource(
            stream=self.name,
            endpoint_url=self.endpoint,
            region_name=REGION,
            lease_table=group,
            lease_duration_seconds=LEASE_DURATION_SECONDS,
        )

    def _leases(self, group: str) -> list[dict[str, Any]]:
        try:
            return list(self.dynamodb.scan(TableName=group, ConsistentRead=True)["Items"])
        except self.dynamodb.exceptions.ResourceNotFoundException:
            return []

    async def covered(self, group: str) -> dict[int, int]:
        checkpoints = {item["leaseKey"]["S"]: item["checkpoint"]["S"] for item in self._leases(group)}
        covered = {}
        for index, shard in enumerate(self.shards):
            checkpoint = checkpoints.get(shard, "")
            value = int(checkpoint) if checkpoint.isdigit() else 0
            covered[index] = bisect_right(self.sequences.get(index, []), value)
        return covered

    async def letters(self) -> list[Letter]:
        return [
            Letter(
                self.shards.index(str(letter.partition.partition)),
                orjson.loads(letter.value or b"")["id"],
                letter.condition,
            )
            for letter in self.on_failure.letters
        ]

    def take(self, group: str, partition: int) -> None:
        """Another worker takes the shard's lease, as the lease table's take does (a conditional write on the
        counter, which the holder's next renew then finds changed)."""
        shard = self.shards[partition]
        [item] = [item for item in self._leases(group) if item["leaseKey"]["S"] == shard]
        self.dynamodb.update_item(
            TableName=group,
            Key={"leaseKey": {"S": shard}},
            UpdateExpression="SET leaseOwner = :owner, leaseCounter = leaseCounter + :one",
            ConditionExpression="leaseCounter = :counter",
            ExpressionAttributeValues={
                ":owner": {"S": "another-worker"},
                ":one": {"N": "1"},
                ":counter": item["leaseCounter"],
            },
        )

    def refused(self, group: str) -> list[Any]:
        return [refusal for reader in READERS.get(group, []) for refusal in reader.refused]


@dataclass
class KinesisHarness:
    endpoint: str
    name = "kinesis"
    servers = None
    leases = True
    shard_ends = False  # moto's closed shards never end, and a split parent keeps receiving its keys' records
    streams: list[KinesisHarnessStream] = field(default_factory=list)

    async def stream(self, partitions: int) -> KinesisHarnessStream:
        n = next(_streams)
        name = f"conformance-{n}-{id(self):x}"
        kinesis = boto3.client("kinesis", endpoint_url=self.endpoint, region_name=REGION)
        kinesis.create_stream(StreamName=name, ShardCount=partitions)
        shards = sorted(kinesis.list_shards(StreamName=name)["Shards"], key=lambda s: s["ShardId"])
        made = KinesisHarnessStream(
            self.endpoint,
            name,
            [s["ShardId"] for s in shards],
            [s["HashKeyRange"]["StartingHashKey"] for s in shards],
            MemoryDestination(f"dlq-{name}"),
            f"leases-{name}",
        )
        self.streams.append(made)
        return made

    async def close(self) -> None:
        for made in self.streams:
            made.kinesis.delete_stream(StreamName=made.name)
            READERS.pop(made.group, None)
