"""Shard ends: a partition that was split or merged is handled to its end and its end checkpointed; its children
start only after every parent's last record was handled, and are handled to their ends too."""

from __future__ import annotations

import asyncio

from conformance.harness import Harness, Ledger, Put, needs, run_until_covered
from streamfn import App, Record

WHY = "its partitions never end (no split, no merge)"


def declare(stream_source: object, ledger: Ledger, pace: dict[int, float]) -> App:
    """Batches of 5; a parent partition's batches sleep `pace[partition]`, so a child that started early would run
    before its parent's last record."""
    app = App("shard-end")

    @app.function(source=stream_source, batch_size=5, maximum_batching_window_in_seconds=0.02)
    async def handler(records: list[Record]) -> None:
        ids = [r.value["id"] for r in records]
        ledger.started(ids)
        await asyncio.sleep(pace.get(records[0].partition, 0))
        ledger.handled(ids)

    return app


def first_start(ledger: Ledger, partition: int) -> float:
    return min(t for i, starts in ledger.starts.items() if ledger.index[i][0] == partition for t in starts)


def last_handled(ledger: Ledger, partition: int) -> float:
    return max(t for i, times in ledger.handled_at.items() if ledger.index[i][0] == partition for t in times)


async def test_the_children_of_a_split_start_once_their_parent_has_ended(harness: Harness) -> None:
    needs(harness, "shard_ends", WHY)
    stream = await harness.stream(1)
    ledger = Ledger()
    await stream.put(ledger.plan([Put(0, i) for i in range(30)]))
    left, right = stream.split(0)
    await stream.put(ledger.plan([Put(left, i) for i in range(30, 50)] + [Put(right, i) for i in range(50, 70)]))
    app = declare(stream.source(stream.group), ledger, {0: 0.05})

    await run_until_covered(harness, app, stream, ledger, {0: 30, left: 20, right: 20})
    assert stream.finished(stream.group) == {0}  # the parent's end checkpointed; the children are open
    assert first_start(ledger, left) > last_handled(ledger, 0) < first_start(ledger, right)
    assert all(ledger.times_handled(i) == 1 for i in range(70))


async def test_the_child_of_a_merge_starts_once_both_parents_have_ended(harness: Harness) -> None:
    needs(harness, "shard_ends", WHY)
    stream = await harness.stream(2)
    ledger = Ledger()
    await stream.put(ledger.plan([Put(i % 2, i) for i in range(40)]))
    child = stream.merge(0, 1)
    await stream.put(ledger.plan([Put(child, i) for i in range(40, 60)]))
    app = declare(stream.source(stream.group), ledger, {1: 0.1})  # parent 1 ends well after parent 0

    await run_until_covered(harness, app, stream, ledger, {0: 20, 1: 20, child: 20})
    assert stream.finished(stream.group) == {0, 1}
    assert first_start(ledger, child) > max(last_handled(ledger, 0), last_handled(ledger, 1))
    assert all(ledger.times_handled(i) == 1 for i in range(60))
