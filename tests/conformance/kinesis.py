"""The Kinesis harness: a stream per test on moto (server mode), its lease table in moto's DynamoDB.

A partition of the scenarios is a shard (shardId-00000000000N), reached by putting records with the ExplicitHashKey
of its hash range; the checkpoints are the lease table's (the last sequence number handled), turned into counts
with the sequence numbers the puts returned. Dead letters go to a memory destination (any destination serves any
source). Shard ends cannot be expressed: moto's closed shards never end (no null NextShardIterator) and it writes a
split parent's keys into the parent, not its children.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import boto3
import orjson

from conformance.harness import Letter, Put
from conformance.shards import LEASE_DURATION_SECONDS, READERS, REGION, LeaseTableStream, keep
from streamfn.connectors.kinesis import KinesisSource
from streamfn.connectors.memory import MemoryDestination
from streamfn.connectors.shards.reader import ShardReader

_streams = itertools.count()


class HarnessKinesisSource(KinesisSource):
    """A KinesisSource that keeps its readers, so that the harness can ask them what they were refused."""

    def reader(self, *, group_id: str) -> ShardReader:
        return keep(group_id, super().reader(group_id=group_id))


@dataclass
class KinesisHarnessStream(LeaseTableStream):
    endpoint: str = ""
    name: str = ""
    hash_keys: list[str] = field(default_factory=list)
    """The starting hash key of each shard (records put with it land in that shard)."""
    on_failure: MemoryDestination = field(default_factory=lambda: MemoryDestination("dlq"))

    def __post_init__(self) -> None:
        self.kinesis = boto3.client("kinesis", endpoint_url=self.endpoint, region_name=REGION)

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

    async def letters(self) -> list[Letter]:
        return [
            Letter(
                self.shards.index(str(letter.partition.partition)),
                orjson.loads(letter.value or b"")["id"],
                letter.condition,
            )
            for letter in self.on_failure.letters
        ]


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
            boto3.client("dynamodb", endpoint_url=self.endpoint, region_name=REGION),
            [s["ShardId"] for s in shards],
            f"leases-{name}",
            endpoint=self.endpoint,
            name=name,
            hash_keys=[s["HashKeyRange"]["StartingHashKey"] for s in shards],
            on_failure=MemoryDestination(f"dlq-{name}"),
        )
        self.streams.append(made)
        return made

    async def close(self) -> None:
        for made in self.streams:
            made.kinesis.delete_stream(StreamName=made.name)
            READERS.pop(made.group, None)
