"""A commit never passes an unhandled record: a slow record holds its partition's checkpoint; other lanes run on."""

from __future__ import annotations

import asyncio

from conftest import wait_for

from conformance.harness import Harness, Ledger, Put, run_until_covered
from streamfn import App, Record

RECORDS, SLOW = 100, 20


async def test_a_slow_record_holds_the_checkpoint_below_it_and_is_never_skipped(harness: Harness) -> None:
    stream = await harness.stream(1)
    ledger = Ledger()
    await stream.put(ledger.plan([Put(0, i, b"key-%d" % i) for i in range(RECORDS)]))
    release = asyncio.Event()
    app = App("slow-record")

    @app.function(
        source=stream.source(stream.group),
        batch_size=5,
        maximum_batching_window_in_seconds=0.02,
        parallelization_factor=5,
        timeout=60,
    )
    async def handler(records: list[Record]) -> None:
        ids = [r.value["id"] for r in records]
        ledger.started(ids)
        if SLOW in ids:
            await release.wait()
        ledger.handled(ids)

    def held() -> bool:
        """The other lanes ran on and the checkpoint reached the lowest record not handled (the slow batch's)."""
        handled = set(ledger.handled_at)
        lowest = min(set(range(RECORDS)) - handled)
        return len(handled) > RECORDS // 2 and lowest <= SLOW and ledger.covers({0: lowest})

    async def release_when_held() -> None:
        try:
            await wait_for(held, 30, "the checkpoint held at the slow batch while other lanes ran on")
            await asyncio.sleep(0.5)  # a few more samples: the checkpoint stays there
            assert SLOW not in ledger.handled_at and held()
        finally:
            release.set()

    releasing = asyncio.create_task(release_when_held())
    try:
        await run_until_covered(harness, app, stream, ledger, {0: RECORDS})
    finally:
        await releasing  # if the checkpoint did not hold, that is the failure to report
    assert all(ledger.times_handled(i) == 1 for i in range(RECORDS))
