"""The engine on the in-memory source: opaque, non-contiguous positions, leases taken away (lost), shards that end
(split, merge) and readers of one group sharing shards, without a broker."""

from __future__ import annotations

import asyncio
import base64
import sqlite3
import threading
from typing import Any

from conftest import wait_for

from streamfn import App, Record
from streamfn.connectors.memory import MemorySource, MemoryStream
from streamfn.connectors.memory.reader import MemoryReader
from streamfn.connectors.table import Table
from streamfn.engine.worker import FunctionSummary, Worker
from streamfn.record import Partition

GROUP = "g"


class Running:
    """A Worker running in this process until stopped."""

    def __init__(self, app: App) -> None:
        self.worker = Worker(app, None)
        self.task = asyncio.create_task(self.worker.run(handle_signals=False))

    @property
    def reader(self) -> MemoryReader:
        reader = self.worker.pollers[0].reader
        assert isinstance(reader, MemoryReader)
        return reader

    async def stop(self) -> list[FunctionSummary]:
        self.worker.stop()
        return await self.task


def recording_app(stream: MemoryStream, handled: list[tuple[Any, int]], **parameters: Any) -> App:
    """An app whose function records (shard, n) of every record it handles, in order."""
    app = App("mem")

    @app.function(source=MemorySource(stream, group_id=GROUP), **parameters)
    async def record(records: list[Record]) -> None:
        handled.extend((r.partition, r.value["n"]) for r in records)

    return app


def put(stream: MemoryStream, shard: int, numbers: range) -> int:
    """Put {"n": i} for each number; the last position."""
    positions = [stream.put(shard, b'{"n": %d}' % n, key=b"k%d" % (n % 5)) for n in numbers]
    return positions[-1]


async def test_every_record_is_handled_and_exactly_the_last_positions_are_committed() -> None:
    stream = MemoryStream("s", shards=2)
    assert [stream.put(0, b'{"n": 0}'), stream.put(0, b'{"n": 1}'), stream.put(1, b'{"n": 2}')] == [10, 20, 10]
    ends = {0: put(stream, 0, range(3, 200)), 1: put(stream, 1, range(200, 300))}
    handled: list[tuple[Any, int]] = []
    running = Running(recording_app(stream, handled, batch_size=7, parallelization_factor=3))
    committed = {Partition("s", shard): end for shard, end in ends.items()}
    await wait_for(lambda: stream.committed(GROUP) == committed, 20, "the last positions committed")
    [summary] = await running.stop()
    assert sorted(n for _, n in handled) == list(range(300))
    assert (stream.committed(GROUP), summary.offsets, summary.committed_records) == (committed, committed, 300)
    assert stream.refused(GROUP) == []


async def test_a_taken_lease_commits_nothing_more_from_its_old_reader() -> None:
    stream = MemoryStream("s")
    gate = threading.Event()
    handled: list[tuple[str, int]] = []
    app = App("mem")

    @app.function(source=MemorySource(stream, group_id=GROUP), batch_size=1)
    def record(records: list[Record]) -> None:  # sync: an invocation cut off by the lost lease still completes
        n = records[0].value["n"]
        if n == 2:
            handled.append(("started", n))
            gate.wait(10)
        handled.append(("handled", n))

    put(stream, 0, range(1, 4))  # positions 10, 20, 30
    old = Running(app)
    await wait_for(lambda: ("started", 2) in handled, 10, "the old owner's invocation of n=2 under way")
    assert stream.committed(GROUP) == {Partition("s", 0): 10}
    new = Running(app)
    await wait_for(lambda: len(stream.group(GROUP).readers) == 2, 10, "the new reader started")
    stream.take(GROUP, 0, by=new.reader)
    await wait_for(lambda: not old.reader.accepted, 10, "the old reader told its engine of the lost lease")
    await wait_for(lambda: handled.count(("started", 2)) == 2, 10, "the new owner's invocation of n=2")
    gate.set()  # both invocations of n=2 complete now: the old one too late
    await wait_for(lambda: stream.committed(GROUP) == {Partition("s", 0): 30}, 10, "the new owner's commit")
    await wait_for(lambda: handled.count(("handled", 2)) == 2, 10, "the old invocation's late completion")
    [old_summary] = await old.stop()
    [new_summary] = await new.stop()
    assert stream.refused(GROUP) == []  # the old reader never even tried to commit after losing the lease
    assert (old_summary.offsets, new_summary.offsets) == ({Partition("s", 0): 10}, {Partition("s", 0): 30})
    assert (old_summary.committed_records, new_summary.committed_records) == (1, 2)
    assert stream.committed(GROUP) == {Partition("s", 0): 30}


async def test_a_split_shard_finishes_and_checkpoints_its_end_before_either_child_starts() -> None:
    stream = MemoryStream("s")
    parent_end = put(stream, 0, range(0, 50))
    left, right = stream.split(0)
    ends = {left: put(stream, 1, range(50, 60)), right: put(stream, 2, range(60, 75))}
    parent = Partition("s", 0)
    seen_at_child_start: list[tuple[dict[Partition, int], set[Partition]]] = []
    handled: list[tuple[Any, int]] = []
    app = App("mem")

    @app.function(source=MemorySource(stream, group_id=GROUP), batch_size=4)
    async def record(records: list[Record]) -> None:
        if records[0].partition != 0 and not seen_at_child_start:
            seen_at_child_start.append((stream.committed(GROUP), stream.finished(GROUP)))
        await asyncio.sleep(0.005)  # the parent's batches take a while: children must wait for them
        handled.extend((r.partition, r.value["n"]) for r in records)

    running = Running(app)
    wanted = {parent: parent_end, **ends}
    await wait_for(lambda: stream.committed(GROUP) == wanted, 20, "every shard committed to its end")
    await running.stop()
    assert [n for shard, n in handled[:50]] == list(range(50)) and {s for s, _ in handled[:50]} == {0}
    assert sorted(n for _, n in handled[50:]) == list(range(50, 75))
    assert [(committed[parent], finished) for committed, finished in seen_at_child_start] == [(parent_end, {parent})]
    assert stream.finished(GROUP) == {parent}


async def test_a_merged_shard_starts_only_once_both_parents_are_finished() -> None:
    stream = MemoryStream("s", shards=2)
    ends = {Partition("s", 0): put(stream, 0, range(0, 30)), Partition("s", 1): put(stream, 1, range(30, 40))}
    child = stream.merge(0, 1)
    ends[child] = put(stream, 2, range(40, 50))
    handled: list[tuple[Any, int]] = []
    seen_at_child_start: list[set[Partition]] = []
    app = App("mem")

    @app.function(source=MemorySource(stream, group_id=GROUP), batch_size=3)
    async def record(records: list[Record]) -> None:
        if records[0].partition == 2 and not seen_at_child_start:
            seen_at_child_start.append(stream.finished(GROUP))
        await asyncio.sleep(0.005)
        handled.extend((r.partition, r.value["n"]) for r in records)

    running = Running(app)
    await wait_for(lambda: stream.committed(GROUP) == ends, 20, "every shard committed to its end")
    await running.stop()
    first_child = next(i for i, (shard, _) in enumerate(handled) if shard == 2)
    assert sorted(n for _, n in handled[:first_child]) == list(range(40))
    assert [n for _, n in handled[first_child:]] == list(range(40, 50))
    assert seen_at_child_start == [{Partition("s", 0), Partition("s", 1)}]


async def test_two_workers_share_the_shards_and_rebalance_when_one_stops() -> None:
    stream = MemoryStream("s", shards=4)
    handled: list[tuple[Any, int]] = []
    app = recording_app(stream, handled, batch_size=5)
    first = Running(app)
    await wait_for(lambda: owners(stream) == {id(first.reader): 4}, 10, "the first worker owning every shard")
    second = Running(app)
    await wait_for(lambda: owners(stream) == {id(first.reader): 2, id(second.reader): 2}, 10, "two shards each")
    for shard in range(4):
        put(stream, shard, range(shard * 100, shard * 100 + 50))
    await wait_for(lambda: len(handled) == 200, 10, "the first records")
    await second.stop()
    await wait_for(lambda: owners(stream) == {id(first.reader): 4}, 10, "the first worker owning every shard again")
    ends = {Partition("s", shard): put(stream, shard, range(shard * 100 + 50, shard * 100 + 100)) for shard in range(4)}
    await wait_for(lambda: stream.committed(GROUP) == ends, 10, "every shard committed to its end")
    await first.stop()
    assert sorted(n for _, n in handled) == sorted(n for s in range(4) for n in range(s * 100, s * 100 + 100))
    assert stream.refused(GROUP) == []


def owners(stream: MemoryStream) -> dict[int, int]:
    """How many shards each reader holds (by the reader's id)."""
    counts: dict[int, int] = {}
    for owner in stream.group(GROUP).owners.values():
        counts[id(owner)] = counts.get(id(owner), 0) + 1
    return counts


async def test_filtered_out_records_are_committed_past_without_any_arithmetic_on_positions() -> None:
    stream = MemoryStream("s")
    end = put(
        stream, 0, range(100)
    )  # the last ten are filtered out (patterns see `data`, as on Kinesis): the commit still reaches the end
    handled: list[tuple[Any, int]] = []
    running = Running(
        recording_app(
            stream,
            handled,
            batch_size=6,
            parallelization_factor=4,
            filter_criteria={"Filters": [{"Pattern": '{"data": {"n": [{"numeric": ["<", 90]}]}}'}]},
        )
    )
    await wait_for(lambda: stream.committed(GROUP) == {Partition("s", 0): end}, 10, "the end committed")
    [summary] = await running.stop()
    assert sorted(n for _, n in handled) == list(range(90))
    assert (summary.stats.filtered_out, summary.committed_records) == (10, 100)


async def test_latest_starts_after_the_records_already_in_the_shard() -> None:
    stream = MemoryStream("s")
    before = put(stream, 0, range(5))
    handled: list[tuple[Any, int]] = []
    app = App("mem")

    @app.function(source=MemorySource(stream, group_id=GROUP, starting_position="LATEST"))
    async def record(records: list[Record]) -> None:
        handled.extend((r.partition, r.value["n"]) for r in records)

    running = Running(app)
    await wait_for(lambda: stream.committed(GROUP) == {Partition("s", 0): before}, 10, "the starting position")
    end = put(stream, 0, range(5, 8))
    await wait_for(lambda: stream.committed(GROUP) == {Partition("s", 0): end}, 10, "the new records committed")
    await running.stop()
    assert handled == [(0, 5), (0, 6), (0, 7)]


async def test_a_lambda_style_handler_gets_kinesis_shaped_records() -> None:
    stream = MemoryStream("s")
    stream.put(0, b'{"n": 1}', key=b"user-1")
    end = stream.put(0, b'{"n": 2}', key=b"user-2")
    events: list[dict[str, Any]] = []
    app = App("mem")

    @app.function(source=MemorySource(stream, group_id=GROUP))
    def record(event: dict[str, Any], context: Any) -> None:
        events.append(event)

    running = Running(app)
    await wait_for(lambda: stream.committed(GROUP) == {Partition("s", 0): end}, 10, "the batch committed")
    await running.stop()
    [event] = events
    assert [r["kinesis"]["sequenceNumber"] for r in event["Records"]] == ["10", "20"]
    assert [r["kinesis"]["partitionKey"] for r in event["Records"]] == ["user-1", "user-2"]
    assert [base64.b64decode(r["kinesis"]["data"]) for r in event["Records"]] == [b'{"n": 1}', b'{"n": 2}']
    assert {r["eventID"] for r in event["Records"]} == {"shardId-000000000000:10", "shardId-000000000000:20"}


async def test_lag_comes_from_the_source_and_until_idle_stops_once_caught_up() -> None:
    stream = MemoryStream("s", shards=2)
    ends = {Partition("s", 0): put(stream, 0, range(40)), Partition("s", 1): put(stream, 1, range(40, 50))}
    handled: list[tuple[Any, int]] = []
    app = recording_app(stream, handled, batch_size=10)
    source = app.functions["record"].source
    assert source is not None
    before = await source.status(group_id=GROUP, default_servers=None)
    assert [(p.committed, p.lag) for p in before.partitions] == [(None, 40), (None, 10)]
    worker = Worker(app, None)
    [summary] = await asyncio.wait_for(worker.run(until_idle=0.2, handle_signals=False), 20)  # stops by itself
    assert (summary.offsets, len(handled)) == (ends, 50)
    assert worker.pollers[0].lag() == {}  # its partitions were released when it stopped
    after = await source.status(group_id=GROUP, default_servers=None)
    assert [(p.committed, p.end, p.lag) for p in after.partitions] == [(400, 400, 0), (100, 100, 0)]
    assert (after.total_lag, after.max_lag) == (0, 0)


async def test_a_lease_taken_by_another_process_stops_the_shard_here_and_keeps_the_rest_going() -> None:
    stream = MemoryStream("s", shards=2)
    handled: list[tuple[Any, int]] = []
    running = Running(recording_app(stream, handled, batch_size=5))
    first = {Partition("s", 0): put(stream, 0, range(10)), Partition("s", 1): put(stream, 1, range(10, 20))}
    await wait_for(lambda: stream.committed(GROUP) == first, 10, "the first records committed")
    stream.take(GROUP, Partition("s", 0))  # a phantom owner: a worker of another process
    await wait_for(lambda: Partition("s", 0) not in running.reader.accepted, 10, "the lost lease noticed")
    put(stream, 0, range(20, 30))  # the other process's to handle
    end = put(stream, 1, range(30, 40))
    await wait_for(lambda: stream.committed(GROUP)[Partition("s", 1)] == end, 10, "the kept shard committed")
    [summary] = await running.stop()
    assert sorted(n for _, n in handled) == list(range(20)) + list(range(30, 40))
    assert stream.committed(GROUP) == {Partition("s", 0): first[Partition("s", 0)], Partition("s", 1): end}
    assert summary.offsets == stream.committed(GROUP) and stream.refused(GROUP) == []


async def test_an_exactly_once_table_stores_the_sources_checkpoint_values(tmp_path: Any) -> None:
    """The Table stores what the source commits (here: the last position handled, not Kafka's next offset), and a
    worker whose commit was lost resumes from it."""
    stream = MemoryStream("s")
    first_end = put(stream, 0, range(20))
    url = f"sqlite:///{tmp_path / 'results.db'}"

    def table_app() -> App:
        app = App("mem")

        @app.function(
            source=MemorySource(stream, group_id=GROUP),
            outputs=[Table(url, "numbers", key="n")],
            processing_guarantee="exactly_once",
            batch_size=6,
        )
        def copy(records: list[Record]) -> list[dict[str, Any]]:
            return [{"n": r.value["n"]} for r in records]

        return app

    running = Running(table_app())
    await wait_for(lambda: stream.committed(GROUP) == {Partition("s", 0): first_end}, 10, "the end committed")
    await running.stop()
    stored = sqlite3.connect(tmp_path / "results.db").execute("SELECT partition, next_offset FROM streamfn_offsets")
    assert stored.fetchall() == [(0, first_end)]  # 200: the position of record 19, as the memory source commits

    stream.group(GROUP).checkpoints.clear()  # the commit is lost (a crash before it): the table still knows
    end = put(stream, 0, range(20, 25))
    running = Running(table_app())
    await wait_for(lambda: stream.committed(GROUP) == {Partition("s", 0): end}, 10, "the new end committed")
    await running.stop()
    rows = sqlite3.connect(tmp_path / "results.db").execute("SELECT n FROM numbers ORDER BY n").fetchall()
    assert rows == [(n,) for n in range(25)]
