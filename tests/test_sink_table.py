"""The Table sink against real databases: SQLite files and a throwaway PostgreSQL server.

Every test that means the same for both databases runs once per dialect; what it asserts is read back with the
plain drivers (sqlite3, asyncpg), never through the sink.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import signal
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from conftest import (
    SESSION_MS,
    committed,
    create_topic,
    produce_values,
    read_handled,
    read_topic,
    run_worker,
    source,
    start_cli,
    wait_for,
    write_pipeline,
)
from pydantic import BaseModel

from streamfn import App, Record
from streamfn.connectors.kafka import KafkaTopic
from streamfn.connectors.table import Table
from streamfn.errors import ConfigError
from streamfn.outputs.sink import Emitted, OffsetStoringWriter, Provenance, RejectedOutput, SinkContext
from streamfn.record import Partition

_tables = itertools.count()


def _no_chain(*args: Any) -> Any:
    raise AssertionError("a table never chains to another function")


CONTEXT = SinkContext(function="load", chain=_no_chain)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database of each dialect (PostgreSQL's server is started by the first test that needs it)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/sink.db"
    server: str = request.getfixturevalue("postgresql")
    return server


@pytest.fixture
def table() -> str:
    """A fresh table name (the PostgreSQL database is shared by the session)."""
    return f"rows_{next(_tables)}"


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite:///")


async def select(url: str, sql: str) -> list[tuple[Any, ...]]:
    if is_sqlite(url):
        with closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as connection:
            return connection.execute(sql).fetchall()
    connection = await asyncpg.connect(url)
    try:
        return [tuple(row) for row in await connection.fetch(sql)]
    finally:
        await connection.close()


async def execute(url: str, sql: str) -> None:
    if is_sqlite(url):
        with closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as connection:
            connection.execute(sql)
            connection.commit()
        return
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


async def column_types(url: str, table: str) -> dict[str, str]:
    if is_sqlite(url):
        return {name: kind for name, kind in await select(url, f"SELECT name, type FROM pragma_table_info('{table}')")}
    query = (
        "SELECT column_name, data_type FROM information_schema.columns "
        f"WHERE table_name = '{table}' ORDER BY ordinal_position"
    )
    return {name: kind for name, kind in await select(url, query)}


def emitted(*values: Any) -> list[Emitted]:
    """Outputs as the engine hands them over: of one invocation, in order."""
    source = Provenance("load", "in", 0, 100, 100 + len(values) - 1, covers=100 + len(values))
    return [Emitted(value=v, key=None, headers=(), source=source, index=i) for i, v in enumerate(values)]


@asynccontextmanager
async def opened(sink: Table, context: SinkContext = CONTEXT) -> AsyncIterator[OffsetStoringWriter]:
    writer = await sink.open(context)
    try:
        yield writer
    finally:
        await writer.close()


# --- round trips ---------------------------------------------------------------------------------------------------


async def test_rows_round_trip_into_a_table_made_from_the_first_write(url: str, table: str) -> None:
    async with opened(Table(url, table, key="id")) as writer:
        await writer.write(
            emitted(
                {"id": 1, "name": "ada", "score": 1.5, "active": True, "tags": ["x", "y"], "meta": {"k": 1}},
                {"id": 2, "name": "bob", "score": 2, "active": False, "tags": [], "meta": None},
            )
        )

    rows = await select(url, f"SELECT id, name, score, active, tags, meta FROM {table} ORDER BY id")
    assert [(i, n, s, bool(a), json.loads(t), m and json.loads(m)) for i, n, s, a, t, m in rows] == [
        (1, "ada", 1.5, True, ["x", "y"], {"k": 1}),
        (2, "bob", 2.0, False, [], None),
    ]
    assert isinstance(rows[1][2], float)  # the int 2 went into the float column as 2.0
    expected = (
        {"id": "INTEGER", "name": "TEXT", "score": "REAL", "active": "INTEGER", "tags": "TEXT", "meta": "TEXT"}
        if is_sqlite(url)
        else {
            "id": "bigint",
            "name": "text",
            "score": "double precision",
            "active": "boolean",
            "tags": "jsonb",
            "meta": "jsonb",
        }
    )
    assert await column_types(url, table) == expected


class Position(BaseModel):
    lat: float
    lon: float


class Reading(BaseModel):
    id: int
    sensor: str
    value: float
    valid: bool
    at: datetime
    note: str | None = None
    labels: dict[str, str] = {}
    position: Position


async def test_a_model_makes_the_table_at_open_with_its_types(url: str, table: str) -> None:
    at = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
    async with opened(Table(url, table, key="id", model=Reading)) as writer:
        expected_types = (
            dict.fromkeys(["id", "valid"], "INTEGER")
            | dict.fromkeys(["sensor", "at", "note", "labels", "position"], "TEXT")
            | {"value": "REAL"}
            if is_sqlite(url)
            else {
                "id": "bigint",
                "sensor": "text",
                "value": "double precision",
                "valid": "boolean",
                "at": "timestamp with time zone",
                "note": "text",
                "labels": "jsonb",
                "position": "jsonb",
            }
        )
        types = await column_types(url, table)
        assert list(types) == list(Reading.model_fields)  # created before any write, in field order
        assert types == expected_types
        await writer.write(
            emitted(
                Reading(
                    id=7, sensor="s1", value=0.5, valid=True, at=at, labels={"a": "b"}, position=Position(lat=1, lon=2)
                )
            )
        )

    [(id_, sensor, value, valid, stored_at, note, labels, position)] = await select(url, f"SELECT * FROM {table}")
    assert (id_, sensor, value, bool(valid), note) == (7, "s1", 0.5, True, None)
    assert (json.loads(labels), json.loads(position)) == ({"a": "b"}, {"lat": 1.0, "lon": 2.0})
    assert stored_at == (at.isoformat() if is_sqlite(url) else at)


async def test_a_composite_key_upserts_by_all_its_columns(url: str, table: str) -> None:
    async with opened(Table(url, table, key=["region", "id"])) as writer:
        await writer.write(
            emitted(
                {"region": "eu", "id": 1, "v": "a"},
                {"region": "us", "id": 1, "v": "b"},
                {"region": "eu", "id": 2, "v": "c"},
            )
        )
        await writer.write(emitted({"region": "us", "id": 1, "v": "B"}))

    assert await select(url, f"SELECT region, id, v FROM {table} ORDER BY region, id") == [
        ("eu", 1, "a"),
        ("eu", 2, "c"),
        ("us", 1, "B"),
    ]


async def test_names_are_quoted_so_any_name_is_just_a_name(url: str, table: str) -> None:
    odd = f'{table} "odd"; DROP TABLE x; --'
    async with opened(Table(url, odd, key="user-id")) as writer:
        await writer.write(emitted({"user-id": 1, "First Name": "Ada", "select": "x"}))

    quoted = '"' + odd.replace('"', '""') + '"'
    assert await select(url, f'SELECT "user-id", "First Name", "select" FROM {quoted}') == [(1, "Ada", "x")]


async def test_a_schema_qualified_table(url: str, table: str) -> None:
    schema = "main" if is_sqlite(url) else "analytics"
    if not is_sqlite(url):
        await execute(url, "CREATE SCHEMA IF NOT EXISTS analytics")
    async with opened(Table(url, f"{schema}.{table}", key="id")) as writer:
        await writer.write(emitted({"id": 1, "v": "a"}))
        await writer.write(emitted({"id": 1, "v": "b"}))

    assert await select(url, f"SELECT id, v FROM {schema}.{table}") == [(1, "b")]


# --- upserts -------------------------------------------------------------------------------------------------------


async def test_writing_the_same_keys_again_updates_and_never_duplicates(url: str, table: str) -> None:
    batch = emitted(*({"id": i, "v": f"first {i}"} for i in range(50)))
    async with opened(Table(url, table, key="id")) as writer:
        await writer.write(batch)
        await writer.write(batch)  # a replayed batch: the same rows again
        await writer.write(emitted({"id": 3, "v": "second"}, {"id": 50, "v": "new"}))

    assert await select(url, f"SELECT count(*) FROM {table}") == [(51,)]
    assert await select(url, f"SELECT id, v FROM {table} WHERE id IN (2, 3, 50) ORDER BY id") == [
        (2, "first 2"),
        (3, "second"),
        (50, "new"),
    ]


async def test_a_key_twice_in_one_write_keeps_the_last_row(url: str, table: str) -> None:
    async with opened(Table(url, table, key="id")) as writer:
        await writer.write(emitted({"id": 1, "v": "a"}, {"id": 2, "v": "b"}, {"id": 1, "v": "c"}))

    assert await select(url, f"SELECT id, v FROM {table} ORDER BY id") == [(1, "c"), (2, "b")]


async def test_a_column_a_row_leaves_out_keeps_its_value(url: str, table: str) -> None:
    async with opened(Table(url, table, key="id")) as writer:
        await writer.write(emitted({"id": 1, "v": "a", "note": "kept"}))
        await writer.write(emitted({"id": 1, "v": "b"}, {"id": 2, "note": "only a note"}))

    assert await select(url, f"SELECT id, v, note FROM {table} ORDER BY id") == [
        (1, "b", "kept"),
        (2, None, "only a note"),
    ]


async def test_concurrent_writes_of_one_writer_all_land(url: str, table: str) -> None:
    """The engine writes the batches of a function's partitions concurrently through one writer."""
    async with opened(Table(url, table, key="id")) as writer:
        await writer.write(emitted({"id": -1, "v": "creates the table"}))
        await asyncio.gather(
            *(writer.write(emitted(*({"id": b * 100 + i, "v": "x"} for i in range(100)))) for b in range(8))
        )

    assert await select(url, f"SELECT count(*), min(id), max(id) FROM {table}") == [(801, -1, 799)]


async def test_two_writers_share_one_table(url: str, table: str) -> None:
    """Two functions (or two worker processes: SQLite locks the file, not the connection) write the same table."""
    sink = Table(url, table, key="id")
    async with opened(sink) as first, opened(sink) as second:
        await asyncio.gather(
            *(
                writer.write(emitted(*({"id": b * 100 + i, "by": n} for i in range(100))))
                for b in range(10)
                for n, writer in enumerate([first, second])
            )
        )

    assert await select(url, f"SELECT count(*) FROM {table}") == [(1000,)]
    assert await select(url, f"SELECT count(*) FROM {table} WHERE by IN (0, 1)") == [(1000,)]


async def test_an_existing_table_is_used_as_it_is(url: str, table: str) -> None:
    await execute(url, f"CREATE TABLE {table} (id BIGINT PRIMARY KEY, v TEXT, source TEXT DEFAULT 'stream')")
    async with opened(Table(url, table, key="id")) as writer:
        await writer.write(emitted({"id": 1, "v": "a"}))

    assert await select(url, f"SELECT id, v, source FROM {table}") == [(1, "a", "stream")]


async def test_a_key_that_is_not_unique_in_an_existing_table_is_a_config_error_at_open(url: str, table: str) -> None:
    await execute(url, f"CREATE TABLE {table} (id BIGINT, v TEXT)")
    with pytest.raises(ConfigError, match=r"key id of table '.*' is not its primary key or a unique index"):
        await Table(url, table, key="id").open(CONTEXT)
    with pytest.raises(ConfigError, match=r"has no key column\(s\) 'nope'; its columns: id, v"):
        await Table(url, table, key="nope").open(CONTEXT)


# --- rejected outputs ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("just text", "is a str, not a row: return a dict or a pydantic model"),
        (["a", "list"], "is a list, not a row"),
        ({"v": "no id"}, "has no value for the key column(s) 'id'"),
        ({"id": None, "v": "null id"}, "has no value for the key column(s) 'id'"),
        (
            {"id": 9, "v": "x", "colour": "red"},
            "has column(s) 'colour' that table '{table}' lacks (its columns: id, v)",
        ),
        ({"id": "not a number", "v": "x"}, "the database refused outputs load/in-0/100-102/0..load/in-0/100-102/2"),
    ],
    ids=["str", "list", "missing-key", "null-key", "unknown-column", "wrong-type"],
)
async def test_a_row_that_can_never_fit_rejects_the_write_and_nothing_of_it_is_written(
    url: str, table: str, value: Any, problem: str
) -> None:
    async with opened(Table(url, table, key="id")) as writer:
        await writer.write(emitted({"id": 1, "v": "before"}))
        outputs = emitted({"id": 1, "v": "changed"}, value, {"id": 2, "v": "new"})
        with pytest.raises(RejectedOutput) as rejected:
            await writer.write(outputs)

    message = str(rejected.value)
    assert message.startswith(f"Table('{url}', '{table}'): ")
    assert problem.format(table=table) in message
    if "refused" not in problem:
        assert f"output {outputs[1].id} " in message  # names the output at fault
    assert await select(url, f"SELECT id, v FROM {table}") == [(1, "before")]  # all or nothing


# --- exactly once: offsets stored with the rows --------------------------------------------------------------------


def exactly_once(group: str) -> SinkContext:
    return SinkContext(function="load", chain=_no_chain, group=group, exactly_once=True)


def batch(partition: int, first: int, last: int, *values: Any) -> list[Emitted]:
    """The outputs of one invocation of the records `first`..`last` of source partition in-`partition` (a Kafka
    topic: the checkpoint value covering `last` is the next offset)."""
    source = Provenance("load", "in", partition, first, last, covers=last + 1)
    return [Emitted(value=v, key=None, headers=(), source=source, index=i) for i, v in enumerate(values)]


P0, P1 = Partition("in", 0), Partition("in", 1)


async def stored(url: str, group: str, schema: str | None = None) -> list[tuple[Any, ...]]:
    """The group's offsets, read with the plain driver: (topic, partition, next_offset). PostgreSQL stores
    partition ids as text (a Kinesis shard's is a str), so Kafka's are cast back to the integers they are."""
    offsets = f"{schema}.streamfn_offsets" if schema else "streamfn_offsets"
    return await select(
        url,
        f"SELECT topic, CAST(partition AS INTEGER), next_offset FROM {offsets} WHERE consumer_group = '{group}' "
        "ORDER BY 1, 2",
    )


async def test_exactly_once_stores_offsets_with_the_rows_and_a_replayed_batch_writes_nothing(
    url: str, table: str
) -> None:
    group = f"g-{table}"
    async with opened(Table(url, table, key="id"), exactly_once(group)) as writer:
        assert await writer.positions([P0]) == {}
        await writer.write(
            batch(0, 0, 9, {"id": 1, "v": "a"}, {"id": 2, "v": "b"}) + batch(1, 5, 7, {"id": 3, "v": "c"})
        )
        assert await stored(url, group) == [("in", 0, 10), ("in", 1, 8)]
        assert await writer.positions([P0, P1, Partition("in", 2), Partition("other", 0)]) == {P0: 10, P1: 8}

        # Replayed after a crash between the write and Kafka's commit; the handler is not deterministic: were the
        # batch upserted again, id 1 would change and id 4 appear.
        await writer.write(batch(0, 0, 9, {"id": 1, "v": "changed"}, {"id": 4, "v": "new"}))
        assert await writer.positions([P0, P1]) == {P0: 10, P1: 8}

    assert await select(url, f"SELECT id, v FROM {table} ORDER BY id") == [(1, "a"), (2, "b"), (3, "c")]
    assert await stored(url, group) == [("in", 0, 10), ("in", 1, 8)]


async def test_exactly_once_skips_a_late_write_per_partition_and_offsets_never_move_back(url: str, table: str) -> None:
    group = f"g-{table}"
    async with opened(Table(url, table, key="id"), exactly_once(group)) as writer:
        await writer.write(batch(0, 0, 19, {"id": 1, "v": "owner"}))
        # A worker that lost partition 0 writes a batch it started before the new owner got ahead of it.
        await writer.write(batch(0, 10, 14, {"id": 1, "v": "zombie"}, {"id": 2, "v": "zombie"}))
        assert await stored(url, group) == [("in", 0, 20)]

        # One write, two partitions: 0's outputs are stale, 1's are new. Id 1 is in both: it gets partition 1's
        # row, although the stale one comes last.
        await writer.write(batch(1, 0, 4, {"id": 1, "v": "p1"}, {"id": 3, "v": "p1"}) + batch(0, 15, 19, {"id": 1}))
        assert await stored(url, group) == [("in", 0, 20), ("in", 1, 5)]

        await writer.write(batch(0, 20, 29, {"id": 4, "v": "next"}))
        assert await writer.positions([P0, P1]) == {P0: 30, P1: 5}

    assert await select(url, f"SELECT id, v FROM {table} ORDER BY id") == [(1, "p1"), (3, "p1"), (4, "next")]


async def test_groups_sharing_a_table_keep_their_own_offsets(url: str, table: str) -> None:
    first, second = f"a-{table}", f"b-{table}"
    sink = Table(url, table, key="id")
    async with opened(sink, exactly_once(first)) as a, opened(sink, exactly_once(second)) as b:
        await a.write(batch(0, 0, 9, {"id": 1, "by": "a"}))
        await b.write(batch(0, 0, 4, {"id": 2, "by": "b"}))  # below a's offset, but b's are its own
        assert (await a.positions([P0]), await b.positions([P0])) == ({P0: 10}, {P0: 5})

    assert (await stored(url, first), await stored(url, second)) == ([("in", 0, 10)], [("in", 0, 5)])
    assert await select(url, f"SELECT id, by FROM {table} ORDER BY id") == [(1, "a"), (2, "b")]


async def test_a_write_the_database_refuses_stores_no_offset(url: str, table: str) -> None:
    await execute(url, f"CREATE TABLE {table} (id BIGINT PRIMARY KEY, v TEXT NOT NULL)")
    group = f"g-{table}"
    async with opened(Table(url, table, key="id"), exactly_once(group)) as writer:
        await writer.write(batch(0, 0, 4, {"id": 1, "v": "a"}))
        with pytest.raises(RejectedOutput, match="the database refused"):
            await writer.write(batch(0, 5, 9, {"id": 2, "v": "b"}, {"id": 3, "v": None}))
        assert await stored(url, group) == [("in", 0, 5)]  # the offset was claimed first, and rolled back
        await writer.write(batch(0, 5, 9, {"id": 2, "v": "b"}, {"id": 3, "v": "c"}))  # so the batch is not skipped

    assert await select(url, f"SELECT id, v FROM {table} ORDER BY id") == [(1, "a"), (2, "b"), (3, "c")]
    assert await stored(url, group) == [("in", 0, 10)]


async def test_of_two_concurrent_first_writes_of_a_partition_one_is_skipped(url: str, table: str) -> None:
    """A worker that lost a partition and its new owner write the same records' outputs at the same moment, with
    nothing stored for the partition yet: one write waits for the other's claim, then skips."""
    context, sink = exactly_once(f"g-{table}"), Table(url, table, key="id")
    async with opened(sink, context) as first, opened(sink, context) as second:
        await first.write(batch(99, 0, 0, {"id": -1, "by": -1}))  # creates the table
        await asyncio.gather(
            *(
                writer.write(batch(partition, 0, 9, {"id": partition * 10 + n, "by": n}))
                for partition in range(8)
                for n, writer in enumerate([first, second])
            )
        )
        assert await first.positions([Partition("in", p) for p in range(8)]) == {
            Partition("in", p): 10 for p in range(8)
        }

    assert await select(url, f"SELECT count(*) FROM {table} WHERE id >= 0") == [(8,)]


async def test_offsets_are_stored_next_to_the_table_and_only_for_exactly_once(url: str, table: str) -> None:
    schema = "main" if is_sqlite(url) else f"s_{table}"
    if not is_sqlite(url):
        await execute(url, f"CREATE SCHEMA {schema}")
    exists = (
        f"SELECT count(*) FROM {schema}.sqlite_master WHERE name = 'streamfn_offsets'"
        if is_sqlite(url)
        else f"SELECT count(*) FROM pg_tables WHERE schemaname = '{schema}' AND tablename = 'streamfn_offsets'"
    )
    sink = Table(url, f"{schema}.{table}", key="id")
    async with opened(sink) as writer:
        await writer.write(batch(0, 0, 9, {"id": 1}))
        assert await writer.positions([P0]) == {}
    assert await select(url, exists) == [(0,)]

    async with opened(sink, exactly_once(f"g-{table}")) as writer:
        await writer.write(batch(0, 0, 9, {"id": 2}))
    assert await select(url, exists) == [(1,)]
    assert await stored(url, f"g-{table}", schema) == [("in", 0, 10)]

    with pytest.raises(ConfigError, match="exactly_once needs the function's consumer group"):
        await sink.open(exactly_once(""))


def shard_batch(shard: str, first: int, last: int, *values: Any) -> list[Emitted]:
    """Like `batch`, for a source whose partition ids are strs and positions 128-bit integers (a Kinesis shard)."""
    source = Provenance("load", "stream", shard, first, last, covers=last + 1)
    return [Emitted(value=v, key=None, headers=(), source=source, index=i) for i, v in enumerate(values)]


async def test_exactly_once_stores_positions_of_up_to_128_bits_and_resumes_from_them(url: str, table: str) -> None:
    """Kinesis sequence numbers are integers of up to 128 bits and its shards are named by strs: stored beside
    Kafka's, compared as integers across SQLite's 64-bit limit, and read back as they were by a later writer."""
    group, shard = f"g-{table}", "shardId-000000000001"
    sink = Table(url, table, key="id")
    big = 2**64 + 4
    async with opened(sink, exactly_once(group)) as writer:
        await writer.write(batch(0, 0, 9, {"id": 1, "v": "small"}) + shard_batch(shard, 2**62, 2**62, {"id": 2}))
        await writer.write(batch(0, 2**63 - 2, big, {"id": 3, "v": "past 2^64"}))
        await writer.write(shard_batch(shard, 2**126, 2**128 - 2, {"id": 4, "v": "128 bits"}))
        # Replays below what is stored: an int below a stored text, a text below a stored text.
        await writer.write(batch(0, 5, 9, {"id": 1, "v": "replayed"}))
        await writer.write(batch(0, 2**63, 2**64 - 1, {"id": 3, "v": "replayed"}))
        await writer.write(shard_batch(shard, 2**127, 2**127, {"id": 4, "v": "replayed"}))

    async with opened(sink, exactly_once(group)) as resumed:
        assert await resumed.positions([P0, Partition("stream", shard)]) == {
            P0: big + 1,
            Partition("stream", shard): 2**128 - 1,
        }
        await resumed.write(batch(0, big + 1, big + 1, {"id": 5, "v": "next"}))
        assert await resumed.positions([P0]) == {P0: big + 2}

    assert await select(url, f"SELECT id, v FROM {table} ORDER BY id") == [
        (1, "small"),
        (2, None),
        (3, "past 2^64"),
        (4, "128 bits"),
        (5, "next"),
    ]


async def test_an_offsets_table_made_for_kafka_alone_keeps_its_offsets_and_takes_any_source(
    url: str, table: str
) -> None:
    """A database whose offsets table has integer partitions and 64-bit offsets (made by streamfn before sources
    other than Kafka): PostgreSQL's is upgraded in place, SQLite's columns already hold every kind of value."""
    schema = "main" if is_sqlite(url) else f"s_{table}"
    offsets_type = "INTEGER" if is_sqlite(url) else "BIGINT"
    if not is_sqlite(url):
        await execute(url, f"CREATE SCHEMA {schema}")
    await execute(
        url,
        f"CREATE TABLE {schema}.streamfn_offsets (consumer_group TEXT NOT NULL, topic TEXT NOT NULL, "
        f"partition INTEGER NOT NULL, next_offset {offsets_type}, PRIMARY KEY (consumer_group, topic, partition))",
    )
    group = f"g-{table}"
    await execute(
        url, f"INSERT INTO {schema}.streamfn_offsets VALUES ('{group}', 'in', 0, 10), ('{group}', 'in', 1, 3)"
    )
    async with opened(Table(url, f"{schema}.{table}", key="id"), exactly_once(group)) as writer:
        assert await writer.positions([P0, P1]) == {P0: 10, P1: 3}
        await writer.write(batch(0, 5, 9, {"id": 1, "v": "replayed"}) + batch(1, 3, 3, {"id": 2, "v": "new"}))
        await writer.write(shard_batch("shardId-0", 2**100, 2**100, {"id": 3, "v": "kinesis"}))
        assert await writer.positions([P0, P1, Partition("stream", "shardId-0")]) == {
            P0: 10,
            P1: 4,
            Partition("stream", "shardId-0"): 2**100 + 1,
        }

    assert await select(url, f"SELECT id, v FROM {schema}.{table} ORDER BY id") == [(2, "new"), (3, "kinesis")]


def test_a_table_declares_that_it_stores_offsets() -> None:
    assert Table("sqlite:///x.db", "t", key="id").stores_offsets is True


# --- configuration -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (
            ("mysql://db/x", "t"),
            {"key": "id"},
            "Table: url='mysql://db/x' is invalid: must be sqlite:///relative/path.db, "
            "sqlite:////absolute/path.db or postgresql://user:password@host:port/database",
        ),
        (("sqlite:///x.db", "t"), {}, "Table: key is required"),
        (("sqlite:///x.db", "t"), {"key": []}, "Table: key=[] is invalid: must name at least one column"),
        (("sqlite:///x.db", ""), {"key": "id"}, "Table: table='' is invalid: must be a non-empty string"),
        (
            ("sqlite:///x.db", "a.b.c"),
            {"key": "id"},
            "Table: table='a.b.c' is invalid: must be a table name or schema.name",
        ),
        (
            ("sqlite:///x.db", "t"),
            {"key": "reading_id", "model": Reading},
            "Table: key column(s) 'reading_id' are not fields of model Reading "
            "(its fields: id, sensor, value, valid, at, note, labels, position)",
        ),
    ],
    ids=["scheme", "no-key", "empty-key", "empty-table", "dotted-table", "key-not-in-model"],
)
def test_config_errors_are_one_line(args: Sequence[str], kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        Table(*args, **kwargs)
    assert str(error.value) == message


def test_the_password_stays_out_of_its_name() -> None:
    sink = Table("postgresql://app:s3cret@db:5432/prod", "orders", key="id")
    assert str(sink) == "Table('postgresql://app:***@db:5432/prod', 'orders')"
    assert "s3cret" not in repr(sink)


# --- through the engine --------------------------------------------------------------------------------------------


def dead_letter_value(letter: dict[str, Any]) -> Any:
    """The JSON value of the one record a dead letter carries (base64 in Lambda's event format)."""
    [record] = next(iter(letter["payload"]["records"].values()))
    return json.loads(base64.b64decode(record["value"]))


def sqlite_rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    """Rows of the SQLite file a worker writes (empty while the table does not exist yet)."""
    if not path.exists():
        return []
    with closing(sqlite3.connect(path, timeout=10)) as connection:
        try:
            return connection.execute(sql).fetchall()
        except sqlite3.OperationalError as error:
            if "no such table" in str(error):
                return []
            raise


async def test_a_function_writes_a_row_per_record_before_committing(broker: str, name: Any, tmp_path: Path) -> None:
    topic, group, db = name("t"), name("g"), tmp_path / "out" / "rows.db"
    await create_topic(broker, topic, 4)
    await produce_values(broker, topic, 400)
    app = App("table")

    @app.function(
        source=source(topic, group),
        maximum_batching_window_in_seconds=0.1,
        outputs=[Table(f"sqlite:///{db}", "readings", key="id")],
    )
    def handler(records: list[Record]) -> list[dict[str, Any]]:
        return [{"id": r.value["n"], "partition": r.partition, "offset": r.offset} for r in records]

    await run_worker(app, broker, lambda: sqlite_rows(db, "SELECT count(*) FROM readings") == [(400,)])

    assert sqlite_rows(db, 'SELECT id, partition, "offset" FROM readings ORDER BY id') == [
        (n, n % 4, n // 4) for n in range(400)
    ]
    assert await committed(broker, group, topic) == {p: 100 for p in range(4)}


async def test_a_rejected_row_sends_its_batch_to_on_failure_and_the_rest_are_rows(
    broker: str, name: Any, tmp_path: Path
) -> None:
    topic, group, dlq, db = name("t"), name("g"), name("dlq"), tmp_path / "rows.db"
    await create_topic(broker, topic, 4)
    await create_topic(broker, dlq, 1)
    await produce_values(broker, topic, 100)
    app = App("table")

    @app.function(
        source=source(topic, group),
        batch_size=5,
        maximum_batching_window_in_seconds=0.1,
        outputs=[Table(f"sqlite:///{db}", "readings", key="id")],
        on_failure=KafkaTopic(dlq),
    )
    def handler(records: list[Record]) -> list[dict[str, Any]]:
        # record 42's output has no key: no retry can write it
        return [{"id": r.value["n"]} if r.value["n"] != 42 else {"note": "no id"} for r in records]

    def rows() -> set[int]:
        return {n for (n,) in sqlite_rows(db, "SELECT id FROM readings")}

    async def letters() -> list[dict[str, Any]]:
        return [json.loads(m.value) for m in await read_topic(broker, dlq, 100 - len(rows()), timeout=1)]

    handled = asyncio.Event()

    async def watch() -> None:
        while len(rows()) + len(await letters()) < 100:
            await asyncio.sleep(0.2)
        handled.set()

    watching = asyncio.create_task(watch())
    await run_worker(app, broker, handled.is_set)
    await watching

    dead_letters = await letters()
    dead = {dead_letter_value(letter)["n"] for letter in dead_letters}
    assert 42 in dead and 42 not in rows()
    assert rows() | dead == set(range(100)) and not rows() & dead  # each record is a row or a dead letter
    assert {letter["requestContext"]["condition"] for letter in dead_letters} == {"OutputDeliveryFailed"}
    assert await committed(broker, group, topic) == {p: 25 for p in range(4)}


PIPELINE = f"""
import asyncio, os
from streamfn import App
from streamfn.connectors.kafka import KafkaSource
from streamfn.connectors.table import Table
from streamfn.outputs.sink import SinkRetry

app = App("table-proc")

class Slow:  # a second sink, slow to acknowledge (a webhook, say): rows are written while the commit waits for it
    retry = SinkRetry()
    def check(self, topics): pass
    async def open(self, context): return self
    async def write(self, outputs): await asyncio.sleep(float(os.environ.get("SLOW", "0")))
    async def close(self): pass

@app.function(
    source=KafkaSource(topics=[os.environ["TOPIC"]], consumer_group_id=os.environ["GROUP"],
                       session_timeout_ms={SESSION_MS}),
    batch_size=10,
    maximum_batching_window_in_seconds=0.1,
    outputs=[Table("sqlite:///" + os.environ["DB"], "readings", key="id"), Slow()],
)
def handler(records):
    with open(os.environ["HANDLED"], "a") as out:  # one write per batch: a kill -9 cannot leave half of it
        out.write("".join(f"{{r.partition}} {{r.offset}}\\n" for r in records))
    return [{{"id": r.value["n"], "partition": r.partition, "offset": r.offset}} for r in records]
"""


@pytest.mark.slow
async def test_kill_9_mid_stream_then_restart_leaves_every_row_exactly_once(
    broker: str, name: Any, tmp_path: Path
) -> None:
    topic, group, db, handled = name("t"), name("g"), tmp_path / "rows.db", tmp_path / "handled.txt"
    await create_topic(broker, topic, 4)
    await produce_values(broker, topic, 2000)
    pipeline = write_pipeline(tmp_path, PIPELINE)

    def launch(**env: str) -> subprocess.Popen[str]:
        log = (tmp_path / f"worker-{time.monotonic_ns()}.log").open("w")
        variables = {"TOPIC": topic, "GROUP": group, "DB": str(db), "HANDLED": str(handled), **env}
        return start_cli(
            "run", str(pipeline), servers=broker, extra_env=variables, stdout=subprocess.DEVNULL, stderr=log
        )

    def count() -> int:
        [(rows,)] = sqlite_rows(db, "SELECT count(*) FROM readings") or [(0,)]
        return int(rows)

    first = launch(SLOW="0.2")
    await wait_for(lambda: count() >= 600, 60, "the first worker to write 600 rows")
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    assert count() < 2000

    second = launch()
    await wait_for(lambda: count() >= 2000, 90, "a row for every record")
    second.send_signal(signal.SIGTERM)
    assert second.wait(30) == 0

    assert sqlite_rows(db, "SELECT count(*), count(DISTINCT id) FROM readings") == [(2000, 2000)]
    assert sqlite_rows(db, 'SELECT id, partition, "offset" FROM readings ORDER BY id') == [
        (n, n % 4, n // 4) for n in range(2000)
    ]
    invocations = read_handled(handled)
    assert set(invocations) == {(p, o) for p in range(4) for o in range(500)}
    # Killed while rows were written but the slow sink held the commit: those batches ran and were written again.
    assert len(invocations) > 2000
    assert await committed(broker, group, topic) == {p: 500 for p in range(4)}
