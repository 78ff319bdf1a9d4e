"""The DynamoDB Streams harness: a table per test on moto (its lease table too), its stream on the shard-rolling
double (tests/ddb_streams_double.py; AWS_ENDPOINT_URL_DYNAMODB_STREAMS points there), which puts a record into a
given shard and splits shards as DynamoDB does when a table's partition splits.

A partition of the scenarios is a shard; a record is an INSERT of the item {pk: the Put's key (or "none"), id},
NEW_IMAGE. The harness's source reads the id back from the new image and the key from the item's Keys, so the
scenarios see `{"id": n}` and their own key as for every source. Merges cannot be expressed: a DynamoDB Streams
shard has one parent (tables' partitions split, never merge).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import boto3
import orjson
import pytest
from ddb_streams_double import StreamsDouble

from conformance.harness import Letter, Put
from conformance.shards import LEASE_DURATION_SECONDS, READERS, REGION, LeaseTableStream, keep
from streamfn.connectors.dynamodb import DynamoDBStreamSource
from streamfn.connectors.memory import MemoryDestination
from streamfn.connectors.shards.reader import ShardReader
from streamfn.formats.codec import Codec, PlainCodec

_tables = itertools.count()


def scenario_value(data: bytes | None) -> Any:
    """The scenario's value, `{"id": n}`, from a stream record's new image."""
    return {"id": int(orjson.loads(data or b"")["dynamodb"]["NewImage"]["id"]["N"])}


def scenario_key(data: bytes | None) -> Any:
    """The scenario's key (bytes) from the item's Keys."""
    return orjson.loads(data or b"")["pk"]["S"].encode()


class HarnessDynamoDBSource(DynamoDBStreamSource):
    """A DynamoDBStreamSource that keeps its readers (to ask what they were refused) and decodes values and keys
    into the scenarios' own."""

    def reader(self, *, group_id: str) -> ShardReader:
        return keep(group_id, super().reader(group_id=group_id))

    def codecs(self) -> tuple[Codec, Codec | None]:
        return PlainCodec("json", scenario_value), PlainCodec("bytes", scenario_key)


@dataclass
class DynamoDBHarnessStream(LeaseTableStream):
    double: StreamsDouble | None = None
    table: str = ""
    arn: str = ""
    on_failure: MemoryDestination = field(default_factory=lambda: MemoryDestination("dlq"))

    async def put(self, records: Sequence[Put]) -> None:
        assert self.double is not None
        for r in records:
            keys = {"pk": {"S": (r.key or b"none").decode()}}
            _, sequence = self.double.put(
                self.arn, keys, new_image=keys | {"id": {"N": str(r.id)}}, shard=self.shards[r.partition]
            )
            self.sequences.setdefault(r.partition, []).append(sequence)

    def source(self, group: str) -> DynamoDBStreamSource:
        return HarnessDynamoDBSource(
            table=self.table, region_name=REGION, lease_table=group, lease_duration_seconds=LEASE_DURATION_SECONDS
        )

    async def letters(self) -> list[Letter]:
        return [
            Letter(
                self.shards.index(str(letter.partition.partition)), scenario_value(letter.value)["id"], letter.condition
            )
            for letter in self.on_failure.letters
        ]

    def split(self, partition: int) -> tuple[int, int]:
        assert self.double is not None
        self.shards += self.double.split(self.arn, self.shards[partition])
        return len(self.shards) - 2, len(self.shards) - 1

    def merge(self, a: int, b: int) -> int:
        pytest.skip("dynamodb cannot express this: a DynamoDB Streams shard has one parent (no merge)")


@dataclass
class DynamoDBHarness:
    double: StreamsDouble
    endpoint: str
    """moto's (tables, the lease table)."""
    name = "dynamodb"
    servers = None
    leases = True
    shard_ends = True
    streams: list[DynamoDBHarnessStream] = field(default_factory=list)

    async def stream(self, partitions: int) -> DynamoDBHarnessStream:
        table = f"conformance-{next(_tables)}-{id(self):x}"
        dynamodb = boto3.client("dynamodb", endpoint_url=self.endpoint, region_name=REGION)
        arn = dynamodb.create_table(
            TableName=table,
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
            StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_IMAGE"},
        )["TableDescription"]["LatestStreamArn"]
        shards = self.double.create(arn, table, view_type="NEW_IMAGE", shards=partitions)
        made = DynamoDBHarnessStream(
            dynamodb,
            shards,
            f"leases-{table}",
            double=self.double,
            table=table,
            arn=arn,
            on_failure=MemoryDestination(f"dlq-{table}"),
        )
        self.streams.append(made)
        return made

    async def close(self) -> None:
        for made in self.streams:
            made.dynamodb.delete_table(TableName=made.table)
            READERS.pop(made.group, None)
