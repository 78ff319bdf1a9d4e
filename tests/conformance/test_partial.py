"""Partial batch responses (ReportBatchItemFailures): the lowest failed record is the checkpoint and the retry
starts from it; with bisection the batch is cut there at no retry's cost."""

from __future__ import annotations

from conformance.harness import Harness, Ledger, Letter, Put, run_until_covered
from streamfn import App, Backoff, Record
from streamfn.failures.model import BatchItemFailures

FAST = Backoff(initial_seconds=0.01, max_seconds=0.05)


async def test_the_retry_starts_at_the_lowest_failed_record_and_the_checkpoint_waits_there(harness: Harness) -> None:
    stream = await harness.stream(1)
    ledger = Ledger()
    await stream.put(ledger.plan([Put(0, i) for i in range(8)]))
    invocations: list[list[int]] = []
    app = App("partial")

    @app.function(
        source=stream.source(stream.group),
        batch_size=8,
        maximum_batching_window_in_seconds=0.5,
        backoff=FAST,
        function_response_types=["ReportBatchItemFailures"],
    )
    async def handler(records: list[Record]) -> BatchItemFailures | None:
        ids = [r.value["id"] for r in records]
        ledger.started(ids)
        invocations.append(ids)
        if len(invocations) == 1:  # 3 and 6 fail the first time: 0-2 succeeded
            ledger.handled(ids[:3])
            return BatchItemFailures([r for r in records if r.value["id"] in (6, 3)])
        ledger.handled(ids)
        return None

    await run_until_covered(harness, app, stream, ledger, {0: 8})
    assert invocations == [list(range(8)), list(range(3, 8))]
    assert await stream.letters() == []


async def test_with_bisection_the_batch_is_cut_at_the_failure_and_only_it_is_dead_lettered(harness: Harness) -> None:
    stream = await harness.stream(1)
    ledger = Ledger(poison={5})
    await stream.put(ledger.plan([Put(0, i) for i in range(8)]))
    invocations: list[list[int]] = []
    app = App("partial-bisect")

    @app.function(
        source=stream.source(stream.group),
        batch_size=8,
        maximum_batching_window_in_seconds=0.5,
        backoff=FAST,
        function_response_types=["ReportBatchItemFailures"],
        bisect_batch_on_function_error=True,
        maximum_retry_attempts=1,
        on_failure=stream.on_failure,
    )
    async def handler(records: list[Record]) -> None:
        ids = [r.value["id"] for r in records]
        ledger.started(ids)
        invocations.append(ids)
        if 5 in ids:
            ledger.handled(ids[: ids.index(5)])
            raise BatchItemFailures([r for r in records if r.value["id"] == 5])
        ledger.handled(ids)

    await run_until_covered(harness, app, stream, ledger, {0: 8})
    # cut at 5 (no retry used); 5-7 fails at its first record: halves 5-6 then 7; 5-6 halves 5 then 6; 5 alone
    # gets its one retry
    assert invocations == [list(range(8)), [5, 6, 7], [5, 6], [5], [5], [6], [7]]
    assert await stream.letters() == [Letter(0, 5, "RetryAttemptsExhausted")]
