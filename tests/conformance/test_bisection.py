"""Bisection: bisect_batch_on_function_error isolates the poison record; only it reaches the dead-letter destination."""

from __future__ import annotations

from conformance.harness import Harness, Ledger, Letter, Put, run_until_covered
from streamfn import App, Backoff, Record

PER_PARTITION, POISON = 16, 5


async def test_bisection_isolates_the_poison_record_into_the_destination(harness: Harness) -> None:
    stream = await harness.stream(2)
    ledger = Ledger(poison={POISON})
    # partition 0 holds ids 0-15 (5 is poison), partition 1 ids 16-31
    await stream.put(ledger.plan([Put(i // PER_PARTITION, i) for i in range(2 * PER_PARTITION)]))
    invocations: list[list[int]] = []
    app = App("bisect")

    @app.function(
        source=stream.source(stream.group),
        batch_size=PER_PARTITION,
        maximum_batching_window_in_seconds=0.5,
        backoff=Backoff(initial_seconds=0.01, max_seconds=0.05),
        bisect_batch_on_function_error=True,
        maximum_retry_attempts=1,
        on_failure=stream.on_failure,
    )
    async def handler(records: list[Record]) -> None:
        ids = [r.value["id"] for r in records]
        ledger.started(ids)
        invocations.append(ids)
        if POISON in ids:
            raise ValueError(f"poison {POISON}")
        ledger.handled(ids)

    await run_until_covered(harness, app, stream, ledger, {0: PER_PARTITION, 1: PER_PARTITION})
    assert await stream.letters() == [Letter(0, POISON, "RetryAttemptsExhausted")]
    assert all(ledger.times_handled(i) == 1 for i in set(range(2 * PER_PARTITION)) - {POISON})
    # halves, first half first; a half that succeeds is not invoked again; 5 alone gets its one retry
    assert [ids for ids in invocations if ids[0] < PER_PARTITION] == [
        list(range(16)),
        list(range(8)),
        list(range(4)),
        list(range(4, 8)),
        [4, 5],
        [4],
        [5],
        [5],
        [6, 7],
        list(range(8, 16)),
    ]
    assert [ids for ids in invocations if ids[0] >= PER_PARTITION] == [list(range(16, 32))]
