"""Rebalance: a second worker joins the group mid-stream; every record is handled, and nothing the group had
committed is handled again (the partitions it takes over resume from their checkpoints)."""

from __future__ import annotations

import asyncio
import contextlib

from conftest import wait_for

from conformance.harness import Harness, Ledger, Put
from streamfn import App, Record
from streamfn.engine.worker import Worker

PARTITIONS, PER_PARTITION = 4, 200


def declare(stream_source: object, ledger: Ledger, worker: str, handled_by: dict[str, set[int]]) -> App:
    app = App("rebalance")

    @app.function(source=stream_source, batch_size=5, maximum_batching_window_in_seconds=0.02)
    async def handler(records: list[Record]) -> None:
        ids = [r.value["id"] for r in records]
        ledger.started(ids)
        if not handled_by["b"]:
            await asyncio.sleep(0.2)  # slow (8 s a partition) until the second worker has joined and handled records
        handled_by[worker].update(ids)
        ledger.handled(ids)

    return app


async def test_a_second_worker_joins_every_record_is_handled_and_none_after_its_commit(harness: Harness) -> None:
    stream = await harness.stream(PARTITIONS)
    ledger = Ledger()
    await stream.put(ledger.plan([Put(i % PARTITIONS, i) for i in range(PARTITIONS * PER_PARTITION)]))
    handled_by: dict[str, set[int]] = {"a": set(), "b": set()}
    done = dict.fromkeys(range(PARTITIONS), PER_PARTITION)
    a = Worker(declare(stream.source(stream.group), ledger, "a", handled_by))
    b = Worker(declare(stream.source(stream.group), ledger, "b", handled_by))
    watching = asyncio.create_task(ledger.watch(stream, stream.group))
    running = [asyncio.create_task(a.run(handle_signals=False))]
    try:
        await wait_for(lambda: len(handled_by["a"]) >= 40, 30, "the first worker to handle records")
        running.append(asyncio.create_task(b.run(handle_signals=False)))
        await wait_for(lambda: ledger.all_handled() and ledger.covers(done), 60, "every record handled and committed")
    finally:
        a.stop()
        b.stop()
        await asyncio.gather(*running)
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching
    assert handled_by["b"], "the second worker took no partition over"
    assert handled_by["a"] | handled_by["b"] == set(range(PARTITIONS * PER_PARTITION))
    assert ledger.violations == [] and ledger.check_no_replay_past_commits() == []
    assert await stream.covered(stream.group) == done
