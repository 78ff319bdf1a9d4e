"""DynamoDBStreamSource against moto in server mode (DynamoDB, its streams, and the lease table): the changes of
each stream view type reaching Lambda-style and native handlers exactly, checkpoints in the lease table, how the
stream is found and configuration errors.

moto gives a table's stream one shard that never closes (see tests/ddb_streams_double.py for shards that roll
over, and the tests that need them).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import boto3
import orjson
import pytest
from conftest import run_worker, wait_for
from ddb_streams_double import StreamsDouble
from test_sink_sqs import create_queue, receive

from streamfn import App, Record
from streamfn.connectors.dynamodb import Change, DynamoDBStreamSource
from streamfn.connectors.dynamodb.api import DynamoDBStreamsApi
from streamfn.connectors.shards import reader as shard_reader
from streamfn.connectors.shards.reader import Page, ShardReader
from streamfn.engine.worker import Worker
from streamfn.errors import ConfigError, Unreachable
from streamfn.record import Partition
from streamfn.source import ShardStatus

REGION = "us-east-1"
VIEW_TYPES = ("KEYS_ONLY", "NEW_IMAGE", "OLD_IMAGE", "NEW_AND_OLD_IMAGES")
_names = itertools.count()


class Table:
    """A table with a stream, made for one test on moto, with sync clients to change items and read the stream and
    the lease table."""

    def __init__(self, endpoint: str, view_type: str | None = "NEW_AND_OLD_IMAGES") -> None:
        self.endpoint = endpoint
        self.name = f"table-{next(_names)}-{id(self):x}"
        self.leases = f"leases-{self.name}"
        self.dynamodb = boto3.client("dynamodb", endpoint_url=endpoint, region_name=REGION)
        self.streams = boto3.client("dynamodbstreams", endpoint_url=endpoint, region_name=REGION)
        stream = {"StreamSpecification": {"StreamEnabled": True, "StreamViewType": view_type}} if view_type else {}
        created = self.dynamodb.create_table(
            TableName=self.name,
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
            AttributeDefinitions=[
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "N"},
            ],
            BillingMode="PAY_PER_REQUEST",
            **stream,
        )["TableDescription"]
        self.arn: str = created.get("LatestStreamArn", "")

    def source(self, **kw: Any) -> DynamoDBStreamSource:
        return DynamoDBStreamSource(
            **({} if {"stream_arn", "EventSourceArn"} & set(kw) else {"table": self.name}),
            endpoint_url=self.endpoint,
            region_name=REGION,
            lease_table=self.leases,
            **kw,
        )

    def stream_records(self) -> list[dict[str, Any]]:
        """Every record of the stream, as the API returns them (boto3: datetimes, binary as bytes)."""
        shards = self.streams.describe_stream(StreamArn=self.arn)["StreamDescription"]["Shards"]
        records = []
        for shard in shards:
            iterator = self.streams.get_shard_iterator(
                StreamArn=self.arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"]
            records += self.streams.get_records(ShardIterator=iterator)["Records"]
        return records

    def checkpoints(self) -> dict[str, str]:
        """The lease table's checkpoint per shard ({} before the table exists)."""
        try:
            items = self.dynamodb.scan(TableName=self.leases, ConsistentRead=True)["Items"]
        except self.dynamodb.exceptions.ResourceNotFoundException:
            return {}
        return {item["leaseKey"]["S"]: item["checkpoint"]["S"] for item in items}

    def owners(self) -> dict[str, str | None]:
        """The lease table's owner per shard ({} before the table exists)."""
        try:
            items = self.dynamodb.scan(TableName=self.leases, ConsistentRead=True)["Items"]
        except self.dynamodb.exceptions.ResourceNotFoundException:
            return {}
        return {item["leaseKey"]["S"]: item.get("leaseOwner", {}).get("S") for item in items}

    def last_sequences(self) -> dict[str, str]:
        """Per shard, the sequence number of its last record: what the lease table holds once all are handled."""
        shards = self.streams.describe_stream(StreamArn=self.arn)["StreamDescription"]["Shards"]
        [shard] = shards  # moto: one shard per stream
        return {shard["ShardId"]: self.stream_records()[-1]["dynamodb"]["SequenceNumber"]}


@pytest.fixture
def table(aws: str) -> Iterator[Callable[..., Table]]:
    made: list[Table] = []

    def make(view_type: str | None = "NEW_AND_OLD_IMAGES") -> Table:
        made.append(Table(aws, view_type))
        return made[-1]

    yield make
    for t in made:
        t.dynamodb.delete_table(TableName=t.name)


def change_an_item(t: Table) -> None:
    """INSERT, MODIFY (an update), REMOVE of one item; the first image has binary attributes (B, BS, in a map)."""
    key = {"pk": {"S": "order-1"}, "sk": {"N": "1"}}
    first = key | {"amount": {"N": "10.5"}, "blob": {"B": b"\x00\xff"}, "tags": {"M": {"bs": {"BS": [b"a"]}}}}
    t.dynamodb.put_item(TableName=t.name, Item=first)
    t.dynamodb.update_item(
        TableName=t.name, Key=key, UpdateExpression="SET amount = :t", ExpressionAttributeValues={":t": {"N": "12"}}
    )
    t.dynamodb.delete_item(TableName=t.name, Key=key)


KEYS = {"pk": {"S": "order-1"}, "sk": {"N": "1"}}
FIRST = KEYS | {"amount": {"N": "10.5"}, "blob": {"B": "AP8="}, "tags": {"M": {"bs": {"BS": ["YQ=="]}}}}
"""The first image as Lambda's event shows it: binary values as base64 text."""
SECOND = KEYS | {"amount": {"N": "12"}, "blob": {"B": "AP8="}, "tags": {"M": {"bs": {"BS": ["YQ=="]}}}}
IMAGES: dict[str, list[dict[str, Any]]] = {
    # per view type, the images of INSERT, MODIFY, REMOVE
    "KEYS_ONLY": [{}, {}, {}],
    "NEW_IMAGE": [{"NewImage": FIRST}, {"NewImage": SECOND}, {}],
    "OLD_IMAGE": [{}, {"OldImage": FIRST}, {"OldImage": SECOND}],
    "NEW_AND_OLD_IMAGES": [{"NewImage": FIRST}, {"NewImage": SECOND, "OldImage": FIRST}, {"OldImage": SECOND}],
}


@pytest.mark.parametrize("view_type", VIEW_TYPES)
async def test_insert_modify_remove_reach_a_lambda_style_handler_as_lambdas_event_and_are_checkpointed(
    table: Callable[..., Table], view_type: str
) -> None:
    """Each view type's INSERT, MODIFY and REMOVE as Lambda's event records, field for field and in Lambda's key
    order, binary values as base64 text; the lease table ends at the last sequence number."""
    t = table(view_type)
    change_an_item(t)
    events: list[dict[str, Any]] = []
    app = App("ddb")

    @app.function(source=t.source(), batch_size=10)
    def handler(event: dict[str, Any], context: Any) -> None:
        events.append(event)

    [summary] = await run_worker(app, None, lambda: t.checkpoints() == t.last_sequences(), timeout=30)
    described = t.stream_records()
    expected = [
        {
            "eventID": item["eventID"],
            "eventName": name,
            "eventVersion": "1.1",
            "eventSource": "aws:dynamodb",
            "awsRegion": REGION,
            "dynamodb": {
                "ApproximateCreationDateTime": item["dynamodb"]["ApproximateCreationDateTime"].timestamp(),
                "Keys": KEYS,
                **images,
                "SequenceNumber": item["dynamodb"]["SequenceNumber"],
                "SizeBytes": item["dynamodb"]["SizeBytes"],
                "StreamViewType": view_type,
            },
            "eventSourceARN": t.arn,
        }
        for item, name, images in zip(described, ["INSERT", "MODIFY", "REMOVE"], IMAGES[view_type], strict=True)
    ]
    records = [r for event in events for r in event["Records"]]
    assert records == expected
    assert [list(r) for r in records] == [list(e) for e in expected]
    assert [list(r["dynamodb"]) for r in records] == [list(e["dynamodb"]) for e in expected]
    [shard] = {sequence for sequence in t.checkpoints()}
    assert t.checkpoints() == {shard: described[-1]["dynamodb"]["SequenceNumber"]}
    assert summary.offsets == {Partition(t.name, shard): int(described[-1]["dynamodb"]["SequenceNumber"])}


async def test_a_native_handler_gets_each_change_as_plain_values_keyed_by_the_item(table: Callable[..., Table]) -> None:
    """A native handler's records: Changes with boto3's plain values (Decimal numbers, bytes, sets), the item's keys
    as the record's key, the sequence number as offset and the creation time as timestamp."""
    t = table("NEW_AND_OLD_IMAGES")
    change_an_item(t)
    handled: list[Record] = []
    app = App("ddb")

    @app.function(source=t.source(), batch_size=10)
    async def native(records: list[Record]) -> None:
        handled.extend(records)

    await run_worker(app, None, lambda: t.checkpoints() == t.last_sequences(), timeout=30)
    described = t.stream_records()
    keys = {"pk": "order-1", "sk": Decimal(1)}
    first = keys | {"amount": Decimal("10.5"), "blob": b"\x00\xff", "tags": {"bs": {b"a"}}}
    second = first | {"amount": Decimal(12)}
    assert [r.value for r in handled] == [
        Change(name, keys, new, old, item["dynamodb"]["SequenceNumber"], "NEW_AND_OLD_IMAGES")
        for item, name, new, old in zip(
            described,
            ["INSERT", "MODIFY", "REMOVE"],
            [first, second, None],
            [None, first, second],
            strict=True,
        )
    ]
    assert [(r.topic, r.offset, r.key) for r in handled] == [
        (t.name, int(item["dynamodb"]["SequenceNumber"]), keys) for item in described
    ]
    assert [r.timestamp for r in handled] == [
        round(item["dynamodb"]["ApproximateCreationDateTime"].timestamp() * 1000) for item in described
    ]


async def test_a_stream_arn_reads_the_same_stream_and_names_the_table_as_topic(table: Callable[..., Table]) -> None:
    t = table("KEYS_ONLY")
    change_an_item(t)
    handled: list[Record] = []
    app = App("ddb")

    @app.function(source=t.source(EventSourceArn=t.arn))
    async def native(records: list[Record]) -> None:
        handled.extend(records)

    await run_worker(app, None, lambda: t.checkpoints() == t.last_sequences(), timeout=30)
    assert [(r.topic, r.value.event_name) for r in handled] == [
        (t.name, "INSERT"),
        (t.name, "MODIFY"),
        (t.name, "REMOVE"),
    ]


async def test_latest_skips_the_changes_made_before_the_first_start(
    table: Callable[..., Table], monkeypatch: pytest.MonkeyPatch
) -> None:
    t = table("NEW_IMAGE")
    t.dynamodb.put_item(TableName=t.name, Item={"pk": {"S": "before"}, "sk": {"N": "1"}})
    polled: list[str] = []
    records = DynamoDBStreamsApi.records

    async def noted(api: DynamoDBStreamsApi, shard: str, iterator: str) -> Page:
        polled.append(shard)
        return await records(api, shard, iterator)

    monkeypatch.setattr(DynamoDBStreamsApi, "records", noted)
    handled: list[Record] = []
    app = App("ddb")

    @app.function(source=t.source(StartingPosition="LATEST"))
    async def native(records: list[Record]) -> None:
        handled.extend(records)

    worker = Worker(app)
    running = asyncio.create_task(worker.run(handle_signals=False))
    try:
        await wait_for(lambda: bool(polled), 20, "the shard read from its LATEST iterator")
        t.dynamodb.put_item(TableName=t.name, Item={"pk": {"S": "after"}, "sk": {"N": "1"}})
        await wait_for(lambda: t.checkpoints() == t.last_sequences(), 20, "the later change checkpointed")
    finally:
        worker.stop()
        await running
    assert [r.value.keys["pk"] for r in handled] == ["after"]


async def test_a_table_without_a_stream_is_one_line_that_says_to_enable_one(table: Callable[..., Table]) -> None:
    t = table(None)
    reader = t.source().reader(group_id=t.leases)
    with pytest.raises(Unreachable) as raised:
        await reader.connect()
    await reader.stop()
    assert str(raised.value) == (
        f"DynamoDB table {t.name} ({REGION}, {t.endpoint}): the table has no stream enabled; enable one "
        f"(StreamSpecification StreamEnabled=true with a StreamViewType, e.g. aws dynamodb update-table --table-name "
        f"{t.name} --stream-specification StreamEnabled=true,StreamViewType=NEW_AND_OLD_IMAGES) or name a stream with "
        "stream_arn="
    )


async def test_a_missing_table_is_one_line(aws: str) -> None:
    source = DynamoDBStreamSource(table="no-such-table", endpoint_url=aws, region_name=REGION, lease_table="x-leases")
    reader = source.reader(group_id="x-leases")
    with pytest.raises(Unreachable) as raised:
        await reader.connect()
    await reader.stop()
    assert str(raised.value) == f"DynamoDB table no-such-table ({REGION}, {aws}): no such table"


def test_at_timestamp_is_refused_with_lambdas_message() -> None:
    arn = "arn:aws:dynamodb:us-east-1:123456789012:table/orders/stream/2026-01-01T00:00:00.000"
    with pytest.raises(ConfigError) as raised:
        DynamoDBStreamSource(stream_arn=arn, starting_position="AT_TIMESTAMP")
    assert str(raised.value) == (
        f"DynamoDBStreamSource: starting_position='AT_TIMESTAMP' is invalid: Unsupported starting position for arn "
        f"type: {arn} (Lambda's answer: DynamoDB Streams start at TRIM_HORIZON or LATEST)"
    )


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({}, "give the table's name (table=) or its stream's ARN (stream_arn= or EventSourceArn=): one of them"),
        (
            {"table": "orders", "stream_arn": "arn:aws:dynamodb:us-east-1:123456789012:table/orders/stream/x"},
            "give the table's name (table=) or its stream's ARN (stream_arn= or EventSourceArn=): one of them",
        ),
        (
            {"EventSourceArn": "arn:aws:kinesis:us-east-1:123456789012:stream/orders"},
            "EventSourceArn='arn:aws:kinesis:us-east-1:123456789012:stream/orders' is invalid: must be a DynamoDB "
            "stream ARN, arn:aws:dynamodb:<region>:<account>:table/<table>/stream/<label>",
        ),
        (
            {"table": "orders", "value_format": "json"},
            "unknown parameter 'value_format'; allowed: aws_access_key_id, aws_secret_access_key, aws_session_token, "
            "endpoint_url, lease_duration_seconds, lease_table, region_name, starting_position, state_table, "
            "stream_arn, table",
        ),
        (
            {"table": "orders", "aws_access_key_id": "AKIA"},
            "aws_access_key_id and aws_secret_access_key go together: give both or neither",
        ),
    ],
)
def test_configuration_errors_are_one_line(given: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        DynamoDBStreamSource(**given)
    assert str(raised.value) == f"DynamoDBStreamSource: {message}"


def test_the_region_comes_from_the_stream_arn_and_destinations_from_sqs_arns() -> None:
    arn = "arn:aws:dynamodb:eu-west-1:123456789012:table/orders/stream/2026-01-01T00:00:00.000"
    source = DynamoDBStreamSource(EventSourceArn=arn)
    assert (source.access().region_name, source.topics, str(source)) == (
        "eu-west-1",
        ["orders"],
        "DynamoDBStreamSource('orders')",
    )
    assert source.group_id("app", "fn") == "streamfn-app-fn"
    with pytest.raises(ConfigError) as raised:
        source.destination("kafka://dlq")
    assert str(raised.value).startswith("allowed for a DynamoDB Streams source: arn:aws:sqs:<region>:<account>:<queue>")


# --- shards that roll over: the DynamoDB Streams double (tests/ddb_streams_double.py); tables and leases on moto ----


READERS: list[ShardReader] = []


class KeptReaders(DynamoDBStreamSource):
    """Keeps the readers it makes (in READERS), to ask which shards each worker believes it holds."""

    def reader(self, *, group_id: str) -> ShardReader:
        READERS.append(super().reader(group_id=group_id))
        return READERS[-1]


def holdings() -> list[int]:
    """How many shards each reader made since the test began holds, as the reader itself knows it."""
    return sorted(len(r.coordinator.held()) for r in READERS if r.coordinator is not None)


class RollingTable:
    """A moto table whose stream is the double's: `shards` open shards to begin with, changes put by the test."""

    def __init__(self, table: Table, double: StreamsDouble, shards: int) -> None:
        self.table, self.double = table, double
        self.shards = double.create(table.arn, table.name, shards=shards)
        self.counts: dict[str, int] = collections.Counter()
        self.ends: dict[str, str] = {}
        """Per shard, the checkpoint once every record is handled: its last sequence number, or SHARD_END."""

    def source(self, **kw: Any) -> DynamoDBStreamSource:
        """Reached through the AWS chain's variables (the double's streams, moto's tables), as a user would."""
        return KeptReaders(table=self.table.name, region_name=REGION, lease_table=self.table.leases, **kw)

    def change(self, keys: Iterable[str]) -> None:
        """A change of each item: its n-th (INSERT first, then MODIFY) with NewImage {n}."""
        for key in keys:
            n = self.counts[key]
            self.counts[key] += 1
            item = {"pk": {"S": key}, "sk": {"N": "1"}}
            shard, sequence = self.double.put(
                self.table.arn, item, "MODIFY" if n else "INSERT", new_image=item | {"n": {"N": str(n)}}
            )
            self.ends[shard] = str(sequence)

    def roll(self) -> None:
        for parent in self.double.roll(self.table.arn):
            self.ends[parent] = "SHARD_END"


@pytest.fixture
def rolling(table: Callable[..., Table], ddb_streams: StreamsDouble) -> Callable[[int], RollingTable]:
    return lambda shards: RollingTable(table(), ddb_streams, shards)


@dataclass(frozen=True)
class Seen:
    shard: str
    key: str
    n: int
    at: float


def seen(records: list[Record]) -> list[Seen]:
    now = time.monotonic()
    return [
        Seen(
            str(r.partition),
            r.value.keys["pk"],
            int(r.value.new_image["n"]),
            now,
        )
        for r in records
    ]


def in_lineage_order(handled: list[Seen], double: StreamsDouble, arn: str) -> list[str]:
    """Children that began before their parent's last record was handled."""
    parents = {
        s["ShardId"]: s.get("ParentShardId")
        for s in double.answer("DescribeStream", {"StreamArn": arn})["StreamDescription"]["Shards"]
    }
    first = {h.shard: h.at for h in reversed(handled)}
    last = {h.shard: h.at for h in handled}
    return [
        child for child, parent in parents.items() if parent in last and child in first and first[child] < last[parent]
    ]


async def test_each_items_changes_are_handled_in_order_across_shard_rollovers(
    rolling: Callable[[int], RollingTable],
) -> None:
    """Two shards roll over four times while items change and the worker reads: every change of each item is
    handled once, in order; a child's first record only after its parent's last; the lease table ends with each
    parent at SHARD_END and each open shard at its last sequence number."""
    r = rolling(2)
    keys = [f"item-{k}" for k in range(6)]
    handled: list[Seen] = []
    app = App("ddb")

    @app.function(source=r.source(lease_duration_seconds=2), batch_size=7)
    async def native(records: list[Record]) -> None:
        handled.extend(seen(records))

    worker = Worker(app)
    running = asyncio.create_task(worker.run(handle_signals=False))
    try:
        for round_ in range(4):
            r.change(keys * 5)
            half = 30 * round_ + 15  # half of this round's changes: the roll comes while the worker reads on
            await wait_for(lambda: len(handled) >= half, 20, "half of the round handled")  # noqa: B023
            r.roll()
        r.change(keys * 2)
        await wait_for(lambda: r.table.checkpoints() == r.ends, 30, "every shard checkpointed at its end")
    finally:
        worker.stop()
        await running
    assert {key: [h.n for h in handled if h.key == key] for key in keys} == {key: list(range(22)) for key in keys}
    assert in_lineage_order(handled, r.double, r.table.arn) == []
    assert len(r.ends) == 10 and list(r.ends.values()).count("SHARD_END") == 8


async def test_two_workers_share_the_shards_and_each_change_is_handled_once(
    rolling: Callable[[int], RollingTable],
) -> None:
    """Two workers of one function on a four-shard stream: each holds two shards (the lease table and each worker
    say so), every change is handled exactly once, and the shards that roll over meanwhile are read by whoever holds
    their lineage once the parent ended."""
    r = rolling(4)
    keys = [f"item-{k}" for k in range(16)]
    handled: dict[str, list[Seen]] = {"a": [], "b": []}
    READERS.clear()
    workers = []
    for name in handled:
        app = App("ddb")

        @app.function(source=r.source(lease_duration_seconds=2), batch_size=10)
        async def native(records: list[Record], into: list[Seen] = handled[name]) -> None:
            into.extend(seen(records))

        workers.append(Worker(app))
    running = [asyncio.create_task(w.run(handle_signals=False)) for w in workers]
    try:
        # Changes only once both workers know the leases balanced: records read by a worker that has not yet
        # learnt its lease was stolen are handled again by the thief (at least once), not what this test is about.
        await wait_for(
            lambda: sorted(collections.Counter(r.table.owners().values()).values()) == [2, 2] and holdings() == [2, 2],
            30,
            "two shards each",
        )
        r.change(keys * 3)
        r.roll()
        r.change(keys * 2)
        await wait_for(lambda: r.table.checkpoints() == r.ends, 30, "every shard checkpointed at its end")
    finally:
        for w in workers:
            w.stop()
        await asyncio.gather(*running)
    everything = handled["a"] + handled["b"]
    assert sorted((h.key, h.n) for h in everything) == sorted((key, n) for key in keys for n in range(5))
    assert handled["a"] and handled["b"]
    assert {h.shard for h in handled["a"]}.isdisjoint({h.shard for h in handled["b"]})


async def test_throttled_get_records_are_backed_off_and_never_reach_the_handler(
    rolling: Callable[[int], RollingTable], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shard_reader, "BACKOFF_BASE_SECONDS", 0.05)
    r = rolling(1)
    r.change(["a", "b", "c"])
    r.double.throttle(4)
    handled: list[Seen] = []
    app = App("ddb")

    @app.function(source=r.source())
    async def native(records: list[Record]) -> None:
        handled.extend(seen(records))

    await run_worker(app, None, lambda: r.table.checkpoints() == r.ends, timeout=30)
    assert [(h.key, h.n) for h in handled] == [("a", 0), ("b", 0), ("c", 0)]


class Assignments:
    """An AssignmentListener that notes what it is told (the engine's part, for a reader driven by hand)."""

    def __init__(self) -> None:
        self.offsets: dict[Partition, Any] = {}

    async def assigned(self, offsets: dict[Partition, Any]) -> None:
        self.offsets |= offsets

    async def revoked(self, partitions: set[Partition]) -> None: ...

    async def lost(self, partitions: set[Partition]) -> None: ...

    async def ended(self, partition: Partition) -> None: ...


async def test_the_lag_is_the_age_of_the_oldest_record_fetched_and_not_committed_and_0_when_caught_up(
    table: Callable[..., Table],
) -> None:
    """DynamoDB Streams says nothing like Kinesis's MillisBehindLatest: IteratorAge is measured from the records."""
    t = table("KEYS_ONLY")
    change_an_item(t)
    reader = t.source().reader(group_id=t.leases)
    await reader.connect()
    try:
        await reader.start(Assignments())
        fetched: dict[Partition, Any] = {}
        deadline = time.monotonic() + 20
        while not fetched and time.monotonic() < deadline:
            fetched = dict(await reader.fetch(0.5))
        [(partition, records)] = fetched.items()
        oldest = records[0].timestamp
        lag = reader.lag(partition, 0)
        now = round(time.time() * 1000)
        assert lag is not None and now - oldest - 1000 <= lag <= now - oldest
        assert reader.lag(partition, records[-1].offset) == 0
        await reader.commit({partition: records[-1].offset})
        assert t.checkpoints() == {str(partition.partition): str(records[-1].offset)}
    finally:
        await reader.stop()


async def test_status_shows_each_shards_lease_lineage_and_lag(rolling: Callable[[int], RollingTable]) -> None:
    r = rolling(1)
    [parent] = r.shards
    r.change(["a", "b", "c"])
    r.roll()
    r.change(["a", "b"])
    [child] = set(r.ends) - {parent}
    source = r.source(lease_duration_seconds=2)

    before = await source.status(group_id=r.table.leases, default_servers=None)
    assert (before.state, before.members, before.connection.arn) == ("ENABLED", (), r.table.arn)
    [first, second] = before.partitions
    assert (first.partition, second.partition) == (Partition(r.table.name, parent), Partition(r.table.name, child))
    assert (first.committed, first.shard) == (None, ShardStatus(None, (), (child,)))
    assert (second.committed, second.shard) == (None, ShardStatus(None, (parent,), ()))
    assert first.end is not None and second.end is None and first.lag >= 1 and second.lag >= 1

    app = App("ddb")

    @app.function(source=source)
    async def native(records: list[Record]) -> None:
        pass

    await run_worker(app, None, lambda: r.table.checkpoints() == r.ends, timeout=30)
    after = await source.status(group_id=r.table.leases, default_servers=None)
    assert [(p.committed, p.lag) for p in after.partitions] == [("SHARD_END", 0), (int(r.ends[child]), 0)]


async def test_status_of_a_table_without_a_stream_says_so(table: Callable[..., Table]) -> None:
    t = table(None)
    found = await t.source().status(group_id=t.leases, default_servers=None)
    assert found.state.startswith("the table has no stream enabled; enable one") and found.partitions == ()


async def test_records_trimmed_before_they_were_handled_are_skipped_with_a_warning_and_reading_goes_on(
    rolling: Callable[[int], RollingTable], caplog: pytest.LogCaptureFixture
) -> None:
    """A checkpoint older than the stream's trim point (24 hours on AWS): GetShardIterator after it answers
    TrimmedDataAccessException; the reader starts again at the oldest record left (TRIM_HORIZON), as Lambda does,
    and says how far it was."""
    r = rolling(1)
    [shard] = r.shards
    r.change(["a", "b"])
    handled: list[Seen] = []
    app = App("ddb")

    @app.function(source=r.source())
    async def native(records: list[Record]) -> None:
        handled.extend(seen(records))

    await run_worker(app, None, lambda: r.table.checkpoints() == r.ends, timeout=30)
    checkpoint = int(r.ends[shard])
    r.change(["c", "d", "e"])
    r.double.trim(r.table.arn, shard, 4)  # a, b, and c, d: never handled
    await run_worker(app, None, lambda: r.table.checkpoints() == r.ends, timeout=30)
    assert [h.key for h in handled] == ["a", "b", "e"]
    warnings = [m for m in caplog.messages if "trimmed" in m]
    assert warnings == [
        f"DynamoDB table {r.table.name} ({REGION}): shard {shard}: the records after sequence number {checkpoint} "
        "were trimmed from the stream (past its 24-hour retention) before they were handled; reading on from the "
        "oldest record left (TRIM_HORIZON)"
    ]


async def test_a_powertools_handler_runs_unchanged_and_its_failed_change_reaches_an_sqs_destination(
    table: Callable[..., Table],
) -> None:
    """On moto's stream end to end: AWS Lambda Powertools' parser model validates each event whole, and
    BatchProcessor(EventType.DynamoDBStreams) with its record models reports the change its handler refuses (the
    MODIFY) by sequence number; with bisection and one retry that change alone goes to the SQS queue named by ARN,
    as Lambda's failure record with DDBStreamBatchInfo, and the lease table ends at the stream's last record."""
    from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
    from aws_lambda_powertools.utilities.parser import parse
    from aws_lambda_powertools.utilities.parser.models import DynamoDBStreamModel, DynamoDBStreamRecordModel

    t = table("NEW_AND_OLD_IMAGES")
    change_an_item(t)
    url = await create_queue(t.endpoint)
    processor = BatchProcessor(event_type=EventType.DynamoDBStreams, model=DynamoDBStreamRecordModel)
    handled: list[str] = []
    responses: list[Any] = []

    def record_handler(record: Any) -> None:
        if record.eventName == "MODIFY":
            raise ValueError("modifications are refused")
        handled.append(record.eventName)

    app = App("ddb")

    @app.function(
        source=t.source(),
        batch_size=10,
        function_response_types=["ReportBatchItemFailures"],
        bisect_batch_on_function_error=True,
        maximum_retry_attempts=1,
        on_failure=f"arn:aws:sqs:{REGION}:123456789012:{url.rsplit('/', 1)[-1]}",
    )
    def handler(event: dict[str, Any], context: Any) -> Any:
        parsed = parse(event=event, model=DynamoDBStreamModel)
        assert {(r.awsRegion, r.eventSource) for r in parsed.Records} == {(REGION, "aws:dynamodb")}
        responses.append(process_partial_response(event, record_handler, processor, context))
        return responses[-1]

    await run_worker(app, None, lambda: t.checkpoints() == t.last_sequences(), timeout=40)
    described = t.stream_records()
    modify = described[1]["dynamodb"]
    assert responses[0] == {"batchItemFailures": [{"itemIdentifier": modify["SequenceNumber"]}]}
    assert handled[:2] == ["INSERT", "REMOVE"]
    [message] = await receive(t.endpoint, url, 1)
    body = orjson.loads(message["Body"])
    arrived = datetime.fromtimestamp(int(modify["ApproximateCreationDateTime"].timestamp()), UTC)
    assert (body["requestContext"]["condition"], body["DDBStreamBatchInfo"]) == (
        "RetryAttemptsExhausted",
        {
            "shardId": next(iter(t.checkpoints())),
            "startSequenceNumber": modify["SequenceNumber"],
            "endSequenceNumber": modify["SequenceNumber"],
            "approximateArrivalOfFirstRecord": arrived.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "approximateArrivalOfLastRecord": arrived.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "batchSize": 1,
            "streamArn": t.arn,
        },
    )
