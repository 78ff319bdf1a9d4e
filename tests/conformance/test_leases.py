"""Lost leases: another worker takes a partition while a batch of it is in flight; this worker abandons that batch
at once, commits nothing more for the partition (not even tries) and invokes nothing more of it, while its other
partitions flow on."""

from __future__ import annotations

import asyncio
import contextlib
import time

from conftest import run_worker

from conformance.harness import Harness, Ledger, Put, needs
from streamfn import App, Record

PER_PARTITION, HELD = 40, 10
"""Records per partition; the id whose batch is in flight when partition 0 is taken."""


async def test_a_lost_partition_is_abandoned_and_nothing_more_is_committed_or_invoked(harness: Harness) -> None:
    needs(harness, "leases", "its partitions move only through a rebalance every member takes part in (no `lost`)")
    stream = await harness.stream(2)
    ledger = Ledger()
    # partition 0 holds ids 0-39, partition 1 ids 40-79; 80-89 arrive in partition 0 once it was taken
    await stream.put(ledger.plan([Put(i // PER_PARTITION, i) for i in range(2 * PER_PARTITION)]))
    later = ledger.plan([Put(0, i) for i in range(2 * PER_PARTITION, 2 * PER_PARTITION + 10)])
    in_flight, abandoned, release = asyncio.Event(), asyncio.Event(), asyncio.Event()
    app = App("lost")

    @app.function(source=stream.source(stream.group), batch_size=5, maximum_batching_window_in_seconds=0.02, timeout=60)
    async def handler(records: list[Record]) -> None:
        ids = [r.value["id"] for r in records]
        ledger.started(ids)
        if HELD in ids:
            in_flight.set()
            try:
                await release.wait()
            except asyncio.CancelledError:
                abandoned.set()
                raise
            return  # done, but by a worker that no longer holds the lease: it must not be committed
        if records[0].partition == 1:
            await asyncio.sleep(0.02)  # partition 1 still flowing while partition 0 is taken
        ledger.handled(ids)

    covered_when_taken, taken_at = -1, float("inf")

    async def take_while_in_flight() -> None:
        nonlocal covered_when_taken, taken_at
        try:
            await asyncio.wait_for(in_flight.wait(), 20)
            covered_when_taken = (await stream.covered(stream.group))[0]
            taken_at = time.monotonic()
            stream.take(stream.group, 0)
            await stream.put(later)
            with contextlib.suppress(TimeoutError):  # not abandoned: the batch would finish once released
                await asyncio.wait_for(abandoned.wait(), 2)
        finally:
            release.set()

    taking = asyncio.create_task(take_while_in_flight())
    watching = asyncio.create_task(ledger.watch(stream, stream.group))
    try:
        await run_worker(
            app,
            harness.servers,
            lambda: release.is_set() and ledger.covers({0: covered_when_taken, 1: PER_PARTITION}),
            timeout=30,
            settle=0.5,  # time for a commit of the lost partition to show, if one were made
        )
    finally:
        await taking
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching
    assert abandoned.is_set(), "the in-flight invocation of the lost partition was waited for, not abandoned"
    assert 0 <= covered_when_taken <= HELD
    assert await stream.covered(stream.group) == {0: covered_when_taken, 1: PER_PARTITION}  # nothing more committed
    assert stream.refused(stream.group) == []  # nor tried to
    assert [i for i, starts in ledger.starts.items() if ledger.index[i][0] == 0 and max(starts) > taken_at] == []
    assert ledger.violations == []
