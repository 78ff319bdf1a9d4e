"""DynamoDBTable as an output, against moto in server mode, with pipelines on the in-memory source: what the table
holds after upserts and deletes (read back with boto3, never through the sink), that a replay leaves each item once,
that with a position attribute an older change never overwrites a newer one, what reaches on_failure and why, and
that throttling and unprocessed items (injected by an HTTP proxy in front of moto: moto never throttles) are
survived with every item sent to the table exactly once."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import aiohttp
import boto3
import orjson
import pytest
from aiohttp import web
from conftest import run_worker
from pydantic import BaseModel

from streamfn import App, Delete, Output, Record
from streamfn.connectors.dynamodb import DynamoDBTable
from streamfn.connectors.dynamodb.item import MAX_ITEM_BYTES
from streamfn.connectors.kafka.embedded import free_port
from streamfn.connectors.memory import MemorySource, MemoryStream
from streamfn.connectors.memory.destination import MemoryDestination
from streamfn.errors import ConfigError
from streamfn.outputs.sink import Emitted, Provenance, SinkContext, SinkRetry

REGION = "us-east-1"
GROUP = "g"
FAST_RETRY = SinkRetry(max_attempts=20, initial_seconds=0.01, max_seconds=0.05)
_names = itertools.count()


def _no_chain(*args: Any) -> Any:
    raise AssertionError("a DynamoDB table never chains to another function")


def resource(endpoint: str) -> Any:
    return boto3.resource("dynamodb", endpoint_url=endpoint, region_name=REGION)


@pytest.fixture
def table(aws: str) -> Iterator[Callable[..., str]]:
    """Tables made for one test (by default keyed by `id`, a string), deleted after it."""
    made: list[str] = []

    def make(key: Sequence[tuple[str, str, str]] = (("id", "HASH", "S"),)) -> str:
        name = f"items-{next(_names)}"
        resource(aws).create_table(
            TableName=name,
            KeySchema=[{"AttributeName": a, "KeyType": k} for a, k, _ in key],
            AttributeDefinitions=[{"AttributeName": a, "AttributeType": t} for a, _, t in key],
            BillingMode="PAY_PER_REQUEST",
        )
        made.append(name)
        return name

    yield make
    for name in made:
        resource(aws).Table(name).delete()


def contents(endpoint: str, name: str, key: Callable[[dict[str, Any]], Any] = lambda i: i["id"]) -> list[Any]:
    """Every item of the table (plain Python values, numbers as Decimal), in key order."""
    return sorted(resource(endpoint).Table(name).scan(ConsistentRead=True)["Items"], key=key)


def sink(endpoint: str, name: str, **kw: Any) -> DynamoDBTable:
    return DynamoDBTable(name, endpoint_url=endpoint, region_name=REGION, retry=FAST_RETRY, **kw)


def put(stream: MemoryStream, values: Sequence[Any], shard: int = 0) -> list[int]:
    return [stream.put(shard, orjson.dumps(v)) for v in values]


async def run_until_committed(app: App, stream: MemoryStream, positions: dict[int, int], group: str = GROUP) -> None:
    def done() -> bool:
        return stream.committed(group) == {stream.partition(s): p for s, p in positions.items()}

    await run_worker(app, None, done, timeout=40)


class Reading(BaseModel):
    pk: str
    sk: int
    celsius: float
    tags: set[str]
    at: datetime


async def test_outputs_are_upserted_by_the_tables_key_and_delete_outputs_remove_items(
    aws: str, table: Callable[..., str]
) -> None:
    """Dicts and pydantic models become items by the table's composite key (a later output of a key replaces the
    item, in the same batch or a later one), values converted (floats as the Decimal of their text, tuples as
    lists, sets, bytes, nested maps, None, datetimes as ISO 8601 text); `Delete` removes an item (its other
    attributes ignored), and deleting an item that does not exist is no error."""
    name = table((("pk", "HASH", "S"), ("sk", "RANGE", "N")))
    stream = MemoryStream("orders")
    last = put(
        stream,
        [
            {"op": "put", "pk": "a", "sk": 1, "v": 0.1},
            {"op": "put", "pk": "a", "sk": 2, "v": 2.5},
            {"op": "put", "pk": "b", "sk": 1, "v": 3},
            {"op": "put", "pk": "a", "sk": 1, "v": 1.25},  # replaces (a, 1) in the same batch
            {"op": "delete", "pk": "a", "sk": 2},
            {"op": "delete", "pk": "zz", "sk": 9},  # nothing to delete
            {"op": "put", "pk": "b", "sk": 1, "v": 4},  # replaces (b, 1)
            {"op": "model"},
        ],
    )[-1]
    app = App("ddb")

    @app.function(source=MemorySource(stream, group_id=GROUP), batch_size=5, outputs=[sink(aws, name)])
    async def handler(records: list[Record]) -> list[Any]:
        out: list[Any] = []
        for r in records:
            v = r.value
            if v["op"] == "put":
                out.append({"pk": v["pk"], "sk": v["sk"], "v": v["v"], "seen": (v["sk"], None), "raw": b"\x00\x01"})
            elif v["op"] == "delete":
                out.append(Delete({"pk": v["pk"], "sk": v["sk"], "ignored": set()}))  # a whole old image, say
            else:
                out.append(
                    Reading(pk="m", sk=0, celsius=21.5, tags={"x", "y"}, at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
                )
                nested = {"pk": "n", "sk": Decimal("1.5"), "nested": {"m": {"deep": [1, 2.0, "t"]}}, "flag": True}
                out.append(Output(nested, key="n"))
        return out

    await run_until_committed(app, stream, {0: last})
    items = contents(aws, name, key=lambda i: (i["pk"], i["sk"]))
    assert items == [
        {
            "pk": "a",
            "sk": Decimal(1),
            "v": Decimal("1.25"),
            "seen": [Decimal(1), None],
            "raw": boto3_binary(b"\x00\x01"),
        },
        {"pk": "b", "sk": Decimal(1), "v": Decimal(4), "seen": [Decimal(1), None], "raw": boto3_binary(b"\x00\x01")},
        {
            "pk": "m",
            "sk": Decimal(0),
            "celsius": Decimal("21.5"),
            "tags": {"x", "y"},
            "at": "2026-01-02T03:04:05+00:00",
        },
        {"pk": "n", "sk": Decimal("1.5"), "nested": {"m": {"deep": [Decimal(1), Decimal("2.0"), "t"]}}, "flag": True},
    ]


def boto3_binary(value: bytes) -> Any:
    from boto3.dynamodb.types import Binary

    return Binary(value)


async def test_a_replay_from_the_start_leaves_each_item_once_with_its_last_value(
    aws: str, table: Callable[..., str]
) -> None:
    """The same records run again by a second group (a replay after a crash, from scratch) upsert the same items:
    the table holds each once, as after the first run."""
    name = table()
    stream = MemoryStream("events", shards=2)
    last = {s: put(stream, [{"id": f"k{n % 7}", "n": n} for n in range(s, 60, 2)], shard=s)[-1] for s in (0, 1)}

    def app_for(group: str) -> App:
        app = App("ddb")

        @app.function(source=MemorySource(stream, group_id=group), batch_size=8, outputs=[sink(aws, name)])
        async def handler(records: list[Record]) -> list[dict[str, Any]]:
            return [{"id": f"{r.value['id']}-{r.partition}", "n": r.value["n"]} for r in records]

        return app

    expected = sorted(
        [
            {"id": f"k{k}-{s}", "n": Decimal(max(n for n in range(s, 60, 2) if n % 7 == k))}
            for s in (0, 1)
            for k in range(7)
        ],
        key=lambda i: i["id"],
    )
    await run_until_committed(app_for("first"), stream, last, "first")
    assert contents(aws, name) == expected
    await run_until_committed(app_for("replay"), stream, last, "replay")
    assert contents(aws, name) == expected


async def test_with_a_position_attribute_an_older_change_never_overwrites_a_newer_one(
    aws: str, table: Callable[..., str]
) -> None:
    """Each item records the source partition and position of its change; a replayed (or late) batch of older
    positions leaves newer items as they are, writes items it is the newest for, and a Delete is conditional the
    same way. Without the attribute, the same replay overwrites the newer item."""
    guarded, plain = table(), table()
    stream = MemoryStream("orders")
    positions = put(stream, [{"id": "a", "v": 1}, {"id": "b", "v": 1}, {"id": "a", "v": 2}, {"id": "b", "v": 2}])
    # The same partition ("orders-0") read again from an older copy: the first two changes, then a Delete of b at
    # an old position, then a new key.
    replayed = MemoryStream("orders")
    put(replayed, [{"id": "a", "v": "old"}, {"id": "b", "v": "old"}, {"id": "b", "delete": True}, {"id": "c", "v": 1}])

    def app_for(source: MemoryStream, group: str) -> App:
        app = App("ddb")

        @app.function(
            source=MemorySource(source, group_id=group),
            batch_size=1,
            outputs=[sink(aws, guarded, position_attribute="_position"), sink(aws, plain)],
        )
        async def handler(records: list[Record]) -> list[Any]:
            return [Delete(r.value) if r.value.get("delete") else r.value for r in records]

        return app

    await run_until_committed(app_for(stream, "live"), stream, {0: positions[-1]}, "live")
    assert contents(aws, guarded) == [
        {"id": "a", "v": 2, "_position": {"partition": "orders-0", "position": str(positions[2])}},
        {"id": "b", "v": 2, "_position": {"partition": "orders-0", "position": str(positions[3])}},
    ]

    await run_until_committed(app_for(replayed, "replay"), replayed, {0: positions[-1]}, "replay")
    assert contents(aws, guarded) == [
        {"id": "a", "v": 2, "_position": {"partition": "orders-0", "position": str(positions[2])}},
        {"id": "b", "v": 2, "_position": {"partition": "orders-0", "position": str(positions[3])}},
        {"id": "c", "v": 1, "_position": {"partition": "orders-0", "position": str(positions[3])}},
    ]
    assert contents(aws, plain) == [{"id": "a", "v": "old"}, {"id": "c", "v": 1}]  # overwritten, b deleted


def emitted(partition: int | str, covers: int, *values: Any) -> list[Emitted]:
    source = Provenance("f", "orders", partition, covers, covers, covers=covers)
    return [Emitted(value=v, key=None, headers=(), source=source, index=i) for i, v in enumerate(values)]


async def test_positions_compare_as_integers_of_any_size_within_one_source_partition(
    aws: str, table: Callable[..., str]
) -> None:
    """Sequence numbers past DynamoDB's 38 digits and of different lengths compare as the integers they are (the
    same position again is not newer: a replayed batch never rewrites its items, even with other values); a
    change from another source partition is not ordered against them and writes over (last writer wins)."""
    name = table()
    context = SinkContext("f", _no_chain, group=GROUP)
    big = 10**45
    changes = [(999, "first"), (big + 7, "40+ digits"), (big + 6, "older"), (1000, "shorter, older")]
    changes.append((big + 7, "the same position again"))  # a batch replayed after a restart, another value: skipped
    for covers, value in changes:
        writer = await sink(aws, name, position_attribute="at").open(context)  # a new writer: nothing remembered
        try:
            await writer.write(emitted("shardId-1", covers, {"id": "k", "v": value}))
        finally:
            await writer.close()
    assert [(i["v"], i["at"]["position"]) for i in contents(aws, name)] == [("40+ digits", str(big + 7))]
    writer = await sink(aws, name, position_attribute="at").open(context)
    try:
        await writer.write(emitted("shardId-2", 5, {"id": "k", "v": "other shard"}))
    finally:
        await writer.close()
    assert [(i["v"], i["at"]) for i in contents(aws, name)] == [
        ("other shard", {"partition": "orders-shardId-2", "position": "5"})
    ]


async def test_items_dynamodb_could_never_store_go_to_on_failure_with_the_reason(
    aws: str, table: Callable[..., str]
) -> None:
    """Over 400 KB, an empty set, no key, a key of the wrong type or empty, a NaN, a number past 38 digits, not a
    dict: each output's input record is a dead letter (OutputDeliveryFailed) naming why, never retried; the
    others are items."""
    name = table()
    stream = MemoryStream("in")
    bad = {
        "big": {"id": "big", "blob": "x" * MAX_ITEM_BYTES},
        "empty-set": {"id": "empty-set", "tags": set()},
        "no-key": {"name": "no-key"},
        "key-type": {"id": 7},
        "key-empty": {"id": ""},
        "nan": {"id": "nan", "v": float("nan")},
        "digits": {"id": "digits", "v": 10**40 + 1},
        "not-a-dict": ["id", "x"],
        "delete-no-key": Delete({"name": "x"}),
        # Under AWS's 400 KB (409,600 bytes) but over moto's own limit (405,000): what DynamoDB refuses although
        # the checks let it through (a ValidationException) is not retried either.
        "refused": {"id": "refused", "blob": "x" * 406_000},
    }
    reasons = {
        "big": f"bytes as a DynamoDB item, over DynamoDB's limit of {MAX_ITEM_BYTES} bytes",
        "empty-set": "has attribute 'tags', an empty set: DynamoDB stores no empty set",
        "no-key": "has no key attribute 'id' (the table's key: id (S))",
        "key-type": "has key attribute 'id' that is not a string (the table's key: id (S))",
        "key-empty": "has key attribute 'id' empty: DynamoDB keys are never empty",
        "nan": "has attribute 'v' = nan: DynamoDB numbers are finite",
        "digits": "has attribute 'v' holding a number DynamoDB cannot store (at most 38 significant digits",
        "not-a-dict": "is a list: the output must be a dict or a pydantic model",
        "delete-no-key": "has no key attribute 'id' (the table's key: id (S))",
        "refused": "(ValidationException) when calling the BatchWriteItem operation: Item size has exceeded the",
    }
    names = ["ok-1", *bad, "ok-2"]
    positions = dict(zip(names, put(stream, names), strict=True))
    dlq = MemoryDestination("ddb-invalid")
    app = App("ddb")

    @app.function(source=MemorySource(stream, group_id=GROUP), batch_size=1, outputs=[sink(aws, name)], on_failure=dlq)
    async def handler(records: list[Record]) -> list[Any]:
        return [bad.get(r.value, {"id": r.value}) for r in records]

    await run_until_committed(app, stream, {0: positions["ok-2"]})
    assert contents(aws, name) == [{"id": "ok-1"}, {"id": "ok-2"}]
    assert [(letter.offset, letter.condition, letter.invoke_count) for letter in dlq.letters] == [
        (positions[n], "OutputDeliveryFailed", 1) for n in bad
    ]
    for n, letter in zip(bad, dlq.letters, strict=True):
        assert letter.error is not None and "RejectedOutput" in letter.error and reasons[n] in letter.error, letter


async def test_a_delete_output_for_a_sink_that_cannot_delete_rejects_the_batch_before_any_write(
    aws: str, table: Callable[..., str]
) -> None:
    """A Delete is not a value: a sink without deletes refuses it, and no sink of the function writes the batch."""
    name = table()
    stream = MemoryStream("in")
    positions = put(stream, [{"id": "a"}, {"id": "b", "delete": True}])
    dlq = MemoryDestination("ddb-cannot-delete")
    written: list[Any] = []

    class Recording:
        retry = SinkRetry()

        def __str__(self) -> str:
            return "Recording()"

        def check(self, topics: Sequence[str]) -> None: ...

        async def open(self, context: SinkContext) -> Recording:
            return self

        async def write(self, outputs: Sequence[Emitted]) -> None:
            written.extend(o.value for o in outputs)

        async def close(self) -> None: ...

    app = App("ddb")

    @app.function(
        source=MemorySource(stream, group_id=GROUP),
        batch_size=1,
        outputs=[sink(aws, name), Recording()],
        on_failure=dlq,
    )
    async def handler(records: list[Record]) -> list[Any]:
        return [Delete(r.value) if r.value.get("delete") else r.value for r in records]

    await run_until_committed(app, stream, {0: positions[-1]})
    assert written == [{"id": "a"}] and contents(aws, name) == [{"id": "a"}]
    [letter] = dlq.letters
    assert (letter.offset, letter.condition) == (positions[1], "OutputDeliveryFailed")
    assert letter.error is not None
    assert "is Delete(key={'id': 'b', 'delete': True}), and Recording() cannot delete" in letter.error


# --- throttling, injected by an HTTP proxy in front of moto -------------------------------------------------------

THROTTLED = orjson.dumps(
    {
        "__type": "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
        "message": "The level of configured provisioned throughput for the table was exceeded.",
    }
)


class ThrottlingProxy:
    """Relays DynamoDB's JSON API to moto, except: the first `throttled` write calls (BatchWriteItem, PutItem,
    DeleteItem) are answered ProvisionedThroughputExceededException without reaching moto, and the next
    `unprocessed` BatchWriteItem calls reach moto with only the first half of their items, the rest answered as
    UnprocessedItems (as DynamoDB does under load). It counts, per key, the writes moto received."""

    def __init__(self, target: str, throttled: int, unprocessed: int) -> None:
        self._target = target
        self.throttled = throttled
        self.unprocessed = unprocessed
        self.received: Counter[str] = Counter()
        """Writes of each item id that reached moto."""
        self.answered: Counter[str] = Counter()
        """Calls by how they were answered: throttled, unprocessed, relayed."""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        operation = request.headers.get("X-Amz-Target", "").rpartition(".")[2]
        held: dict[str, list[Any]] = {}
        if operation in ("BatchWriteItem", "PutItem", "DeleteItem"):
            if self.throttled:
                self.throttled -= 1
                self.answered["throttled"] += 1
                return web.Response(status=400, body=THROTTLED, content_type="application/x-amz-json-1.0")
            payload = orjson.loads(body)
            if operation == "BatchWriteItem" and self.unprocessed:
                self.unprocessed -= 1
                self.answered["unprocessed"] += 1
                for name, entries in payload["RequestItems"].items():
                    half = (len(entries) + 1) // 2
                    payload["RequestItems"][name], held[name] = entries[:half], entries[half:]
                body = orjson.dumps(payload)
            self.received.update(_ids(payload, operation))
        self.answered["relayed"] += 1
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with aiohttp.ClientSession() as session, session.post(self._target, data=body, headers=headers) as answer:
            answered = await answer.read()
            status = answer.status
        if held and status == 200:
            result = orjson.loads(answered)
            result["UnprocessedItems"] = {name: entries for name, entries in held.items() if entries}
            answered = orjson.dumps(result)
        # No x-amz-crc32: the body may have changed, and botocore checks the header only when present.
        return web.Response(status=status, body=answered, content_type="application/x-amz-json-1.0")


def _ids(payload: dict[str, Any], operation: str) -> list[str]:
    if operation == "BatchWriteItem":
        return [
            (entry["PutRequest"]["Item"] if "PutRequest" in entry else entry["DeleteRequest"]["Key"])["id"]["S"]
            for entries in payload["RequestItems"].values()
            for entry in entries
        ]
    return [(payload.get("Item") or payload["Key"])["id"]["S"]]


@asynccontextmanager
async def throttling_proxy(target: str, throttled: int, unprocessed: int) -> AsyncIterator[tuple[str, ThrottlingProxy]]:
    proxy = ThrottlingProxy(target, throttled, unprocessed)
    server = web.Application()
    server.router.add_route("*", "/{tail:.*}", proxy.handle)
    runner = web.AppRunner(server)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", proxy
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("position_attribute", "throttled"),
    # Conditional writes go 25 at a time: enough throttled calls that some outlast botocore's own 3 attempts.
    [(None, 4), ("_position", 40)],
    ids=["batch", "conditional"],
)
async def test_throttling_and_unprocessed_items_are_survived_and_every_item_is_written_exactly_once(
    aws: str, table: Callable[..., str], position_attribute: str | None, throttled: int
) -> None:
    """DynamoDB throttles the first write calls and then leaves half of each BatchWriteItem unprocessed: the
    writer sends what was not taken again (after backoff), and only that, so moto receives each item's write
    exactly once and the table ends complete; the source commits past every record, nothing is dead-lettered."""
    name = table()
    stream = MemoryStream("in")
    positions = put(stream, [{"n": n} for n in range(120)])
    dlq = MemoryDestination("ddb-throttled")
    async with throttling_proxy(aws, throttled=throttled, unprocessed=3) as (endpoint, proxy):
        app = App("ddb")

        @app.function(
            source=MemorySource(stream, group_id=GROUP),
            batch_size=60,
            outputs=[sink(endpoint, name, position_attribute=position_attribute)],
            on_failure=dlq,
        )
        async def handler(records: list[Record]) -> list[dict[str, Any]]:
            return [{"id": f"k{r.value['n']}", "n": r.value["n"]} for r in records]

        await run_until_committed(app, stream, {0: positions[-1]})

    assert [(i["id"], i["n"]) for i in contents(aws, name)] == sorted((f"k{n}", Decimal(n)) for n in range(120))
    assert proxy.received == {f"k{n}": 1 for n in range(120)}
    assert proxy.answered["throttled"] == throttled
    assert proxy.answered["unprocessed"] == (3 if position_attribute is None else 0)
    assert dlq.letters == []


# --- configuration ----------------------------------------------------------------------------------------------


async def test_a_missing_table_stops_the_worker_with_a_one_line_config_error_naming_the_function(aws: str) -> None:
    stream = MemoryStream("in")
    put(stream, [{"id": "a"}])
    app = App("ddb")

    @app.function(source=MemorySource(stream, group_id=GROUP), outputs=[sink(aws, "no-such-table")])
    async def handler(records: list[Record]) -> list[Any]:
        return [r.value for r in records]

    with pytest.raises(ConfigError) as raised:
        await run_worker(app, None, lambda: False, timeout=30)
    assert str(raised.value) == (
        f"function 'handler': DynamoDBTable('no-such-table'): there is no table 'no-such-table' in region {REGION} "
        f"at {aws}"
    )
    assert stream.committed(GROUP) == {}


async def test_the_position_attribute_cannot_be_a_key_attribute(aws: str, table: Callable[..., str]) -> None:
    name = table()
    with pytest.raises(ConfigError, match=r"position_attribute='id' is an attribute of the table's key \(id \(S\)\)"):
        await sink(aws, name, position_attribute="id").open(SinkContext("f", _no_chain, group=GROUP))


async def test_a_declared_key_that_is_not_the_tables_stops_the_worker_naming_the_function_and_the_right_key(
    aws: str, table: Callable[..., str]
) -> None:
    """`key=` is checked against DescribeTable when the sink opens, names and types, the partition key first: the
    outputs were made for the declared key, so another one is a ConfigError saying how to declare the table's."""
    name = table((("pk", "HASH", "S"), ("sk", "RANGE", "N")))
    matching = await sink(aws, name, key=("pk", "sk:N")).open(SinkContext("f", _no_chain, group=GROUP))
    await matching.close()
    for declared in ("pk", ("pk", "sk"), ("sk:N", "pk")):
        stream = MemoryStream("orders")
        put(stream, [{"pk": "a", "sk": 1}])
        app = App("ddb")

        @app.function(source=MemorySource(stream, group_id=GROUP), outputs=[sink(aws, name, key=declared)])
        async def handler(records: list[Record]) -> list[Any]:
            return [r.value for r in records]

        with pytest.raises(ConfigError) as raised:
            await run_worker(app, None, lambda: False, timeout=30)
        assert str(raised.value) == (
            f"function 'handler': DynamoDBTable({name!r}): key={declared!r} is not the table's key, which is pk (S), "
            f"sk (N) in region {REGION} at {aws}: declare key=('pk', 'sk:N')"
        )
        assert stream.committed(GROUP) == {}
        assert contents(aws, name, key=lambda i: (i["pk"], i["sk"])) == []


async def test_on_the_embedded_server_a_missing_table_is_created_with_the_declared_key_never_elsewhere(
    aws: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With `key=` and `run --local aws`'s LOCAL_ENV, the sink creates its missing table (PAY_PER_REQUEST, the
    declared key and types) and writes to it; without LOCAL_ENV (AWS) a missing table stays a ConfigError, and on
    the embedded server without `key=` the error says to declare it."""
    from streamfn.connectors.shards.local import LOCAL_ENV

    name = f"made-{next(_names)}"
    stream = MemoryStream("orders")
    last = put(stream, [{"customer": "ana", "day": 1, "n": 2}, {"customer": "ben", "day": 1, "n": 0.5}])[-1]

    def pipeline(key: tuple[str, str] | None) -> App:
        app = App("ddb")

        @app.function(source=MemorySource(stream, group_id=GROUP), outputs=[sink(aws, name, key=key)])
        async def handler(records: list[Record]) -> list[Any]:
            return [r.value for r in records]

        return app

    with pytest.raises(ConfigError) as raised:
        await run_worker(pipeline(("customer", "day:N")), None, lambda: False, timeout=30)
    assert str(raised.value).endswith(f"there is no table {name!r} in region {REGION} at {aws}")
    monkeypatch.setenv(LOCAL_ENV, aws)
    with pytest.raises(ConfigError) as raised:
        await run_worker(pipeline(None), None, lambda: False, timeout=30)
    assert str(raised.value) == (
        f"function 'handler': DynamoDBTable({name!r}): there is no table {name!r} on the embedded server (in region "
        f"{REGION} at {aws}): declare its key, key='attr' or key=('hash', 'range'), for the sink to create it there"
    )
    assert name not in resource(aws).meta.client.list_tables()["TableNames"]

    try:
        await run_until_committed(pipeline(("customer", "day:N")), stream, {0: last})
        described = resource(aws).meta.client.describe_table(TableName=name)["Table"]
        assert described["KeySchema"] == [
            {"AttributeName": "customer", "KeyType": "HASH"},
            {"AttributeName": "day", "KeyType": "RANGE"},
        ]
        assert sorted(map(tuple, (d.values() for d in described["AttributeDefinitions"]))) == [
            ("customer", "S"),
            ("day", "N"),
        ]
        assert described["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
        assert "StreamSpecification" not in described  # a sink's table needs no stream
        assert contents(aws, name, key=lambda i: i["customer"]) == [
            {"customer": "ana", "day": 1, "n": 2},
            {"customer": "ben", "day": 1, "n": Decimal("0.5")},
        ]
    finally:
        resource(aws).Table(name).delete()


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("ab",), {}, "DynamoDBTable: table='ab' is invalid: String should match pattern"),
        ((), {}, "DynamoDBTable: table is required"),
        (("t-1",), {"position_attribute": ""}, "DynamoDBTable: position_attribute='' is invalid"),
        (("t-1",), {"aws_access_key_id": "k"}, "aws_access_key_id and aws_secret_access_key go together"),
        (("t-1",), {"endpoint_url": "ftp://x"}, "DynamoDBTable: endpoint_url='ftp://x' is invalid"),
        (("t-1",), {"key": ("a", "b", "c")}, "DynamoDBTable: key=('a', 'b', 'c') is invalid: must be 'attr' or ("),
        (("t-1",), {"key": ":N"}, "DynamoDBTable: key=':N' is invalid: must be 'attr' or ('hash', 'range')"),
    ],
)
def test_config_errors_are_one_line(args: Sequence[str], kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        DynamoDBTable(*args, **kwargs)
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_a_function_writing_to_the_table_whose_stream_it_reads_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"DynamoDBTable\('orders'\) is the table whose stream the function reads"):
        DynamoDBTable("orders").check(["orders"])
