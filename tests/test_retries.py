"""A failing or slow handler: retried with backoff (Lambda's infinite default), holding back only its partition."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from conftest import committed, create_topic, produce_values, run_worker, source

from streamfn import App, Backoff, Record

FAST = Backoff(initial_seconds=0.05, max_seconds=0.2)


async def test_failing_batch_is_retried_until_it_succeeds_while_other_partitions_flow(broker: str, name: Any) -> None:
    topic, group = name("t"), name("g")
    await create_topic(broker, topic, 2)
    await produce_values(broker, topic, 40, partitions=2)
    attempts: dict[int, int] = {}
    handled: dict[int, list[int]] = {0: [], 1: []}
    p1_done_while_p0_failing: list[bool] = []
    app = App("retry")

    @app.function(source=source(topic, group), batch_size=10, maximum_batching_window_in_seconds=0.1, backoff=FAST)
    async def handler(records: list[Record]) -> None:
        first = records[0]
        if first.partition == 0 and first.offset == 10:
            attempts[10] = attempts.get(10, 0) + 1
            if attempts[10] < 5:
                p1_done_while_p0_failing.append(len(handled[1]) == 20)
                raise RuntimeError("downstream unavailable")
        handled[first.partition].extend(r.offset for r in records)

    await run_worker(app, broker, lambda: sum(map(len, handled.values())) >= 40, settle=0.5)
    assert attempts[10] == 5
    assert handled == {0: list(range(20)), 1: list(range(20))}  # in order, nothing skipped or repeated
    assert any(p1_done_while_p0_failing)  # partition 1 finished while partition 0 was still retrying
    assert await committed(broker, group, topic, 2) == {0: 20, 1: 20}


async def test_nothing_is_committed_past_a_batch_that_keeps_failing(broker: str, name: Any) -> None:
    topic, group = name("t"), name("g")
    await create_topic(broker, topic, 1)
    await produce_values(broker, topic, 30, partitions=1)
    failures: list[int] = []
    app = App("stuck")

    @app.function(source=source(topic, group), batch_size=10, maximum_batching_window_in_seconds=0.1, backoff=FAST)
    def handler(records: list[Record]) -> None:
        if records[0].offset >= 10:
            failures.append(records[0].offset)
            raise ValueError("poison")

    await run_worker(app, broker, lambda: len(failures) >= 5)
    assert set(failures) == {10}  # the same batch, again and again; the one after it never invoked
    assert await committed(broker, group, topic, 1) == {0: 10}


async def test_timeout_is_a_failure_and_the_batch_is_retried(broker: str, name: Any) -> None:
    topic, group = name("t"), name("g")
    await create_topic(broker, topic, 1)
    await produce_values(broker, topic, 5, partitions=1)
    calls: list[float] = []
    completed: list[int] = []
    app = App("timeout")

    @app.function(
        source=source(topic, group), batch_size=5, timeout=0.5, backoff=FAST, maximum_batching_window_in_seconds=0.1
    )
    async def handler(records: list[Record]) -> None:
        calls.append(time.monotonic())
        if len(calls) == 1:
            await asyncio.sleep(5)  # cancelled at the timeout
        completed.extend(r.offset for r in records)

    await run_worker(app, broker, lambda: len(completed) >= 5, settle=0.3)
    assert len(calls) == 2 and 0.5 <= calls[1] - calls[0] < 2.0
    assert completed == [0, 1, 2, 3, 4]
    assert await committed(broker, group, topic, 1) == {0: 5}


async def test_handler_raising_timeouterror_itself_is_a_plain_failure(broker: str, name: Any) -> None:
    topic, group = name("t"), name("g")
    await create_topic(broker, topic, 1)
    await produce_values(broker, topic, 1, partitions=1)
    calls: list[int] = []
    app = App("own-timeout")

    @app.function(source=source(topic, group), batch_size=1, backoff=FAST, maximum_batching_window_in_seconds=0)
    def handler(records: list[Record]) -> None:
        calls.append(1)
        if len(calls) < 3:
            raise TimeoutError("the handler's own timeout")

    summary = await run_worker(app, broker, lambda: len(calls) >= 3, settle=0.3)
    assert summary[0].stats.failed_invocations == 2 and summary[0].stats.handled == 1


async def test_slow_sync_handler_does_not_starve_heartbeats(
    broker: str, name: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A sync handler blocking longer than the session timeout: no rebalance, nothing handled twice."""
    topic, group = name("t"), name("g")
    await create_topic(broker, topic, 2)
    await produce_values(broker, topic, 4, partitions=2)
    handled: list[tuple[int, int]] = []
    app = App("slow")

    @app.function(source=source(topic, group), batch_size=2, timeout=20, maximum_batching_window_in_seconds=0.1)
    def handler(records: list[Record]) -> None:
        time.sleep(8)  # session timeout is 6 s
        handled.extend((r.partition, r.offset) for r in records)

    from streamfn.engine.worker import Worker

    worker = Worker(app)
    task = asyncio.create_task(worker.run(handle_signals=False))
    while len(handled) < 4:
        assert not task.done()
        await asyncio.sleep(0.1)
    assert "partitions revoked" not in caplog.text  # no rebalance while the handler blocked
    worker.stop()
    await task
    assert sorted(handled) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert await committed(broker, group, topic, 2) == {0: 2, 1: 2}


def test_backoff_is_capped_exponential_with_full_jitter_however_many_rounds() -> None:
    """The one backoff every retry of a batch uses (tenacity's waits and a held partition's rounds alike): before
    retry n, uniform in [0, min(max, initial * 2^(n-1))]; a partition held for thousands of rounds stays capped."""
    backoff = Backoff(initial_seconds=0.5, max_seconds=3)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 3.0), (5_000, 3.0)]:
        delays = [backoff.delay(attempt) for _ in range(500)]
        assert all(0 <= delay <= ceiling for delay in delays)
        assert max(delays) > ceiling * 0.9  # jitter spans the range, up to the ceiling
