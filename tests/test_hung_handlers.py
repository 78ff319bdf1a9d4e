"""Handlers that hang or block: a hung sync handler only holds up its own lane (never other partitions), too many
hung calls stop the worker for a restart after committing what was done, and an async handler that blocks the
event loop is named by the watchdog."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import pytest
from conftest import Out, committed, create_topic, produce, produce_values, run_worker, source

from streamfn import App, Backoff, Record
from streamfn.cli.health import Health
from streamfn.engine import threads
from streamfn.engine.supervision import EngineFailure
from streamfn.engine.worker import Worker

FAST = Backoff(initial_seconds=0.01, max_seconds=0.05)


async def test_a_hung_sync_handler_never_costs_another_partition_its_records(broker: str, name: Any) -> None:
    topic, group = name("t"), name("g")
    await create_topic(broker, topic, 4)
    await produce(broker, topic, [Out(b'{"n": %d}' % i, partition=0) for i in range(10)])  # keyless: 1 per lane
    release = threading.Event()
    hung = 0
    handled: set[tuple[int, int]] = set()
    app = App("hung")

    @app.function(
        source=source(topic, group),
        batch_size=1,
        timeout=1,
        parallelization_factor=10,
        backoff=FAST,
        maximum_retry_attempts=-1,
    )
    def hangs(records: list[Record]) -> None:
        nonlocal hung
        record = records[0]
        if record.partition == 0:
            hung += 1
            release.wait()  # for ever, as far as the worker knows
            return
        handled.add((record.partition, record.offset))

    async def produce_once_the_old_pool_is_full() -> None:
        while hung < 64:  # the old shared pool's 64 threads, all held by partition 0's timed-out calls
            await asyncio.sleep(0.05)
        await produce(broker, topic, [Out(b'{"n": %d}' % i, partition=1 + i % 3) for i in range(30)])

    producing = asyncio.create_task(produce_once_the_old_pool_is_full())
    try:
        summary = await run_worker(app, broker, lambda: len(handled) == 30, timeout=50, settle=0.3)
    finally:
        release.set()
        producing.cancel()
    assert handled == {(p, o) for p in (1, 2, 3) for o in range(10)}
    assert hung <= 10 * threads.MAX_ABANDONED_PER_LANE  # each lane waits once it left 8 hung calls behind
    assert summary[0].stats.dropped == 0 and summary[0].stats.failed_invocations >= 64  # all of partition 0's
    assert await committed(broker, group, topic, 4) == {0: 0, 1: 10, 2: 10, 3: 10}


async def test_too_many_hung_calls_stop_the_worker_after_committing(
    broker: str, name: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(threads, "MAX_ABANDONED_PER_WORKER", 2)
    topic, group = name("t"), name("g")
    await create_topic(broker, topic, 2)
    await produce_values(broker, topic, 20, partitions=2)
    release = threading.Event()
    handled: set[tuple[int, int]] = set()
    app = App("hung")

    @app.function(source=source(topic, group), batch_size=1, timeout=1, backoff=FAST, maximum_retry_attempts=-1)
    def stuck(records: list[Record]) -> None:
        record = records[0]
        if record.partition == 0 and record.offset == 4:
            release.wait()
        handled.add((record.partition, record.offset))

    try:
        with pytest.raises(EngineFailure) as stopped:
            await run_worker(app, broker, lambda: False, timeout=40)
    finally:
        release.set()
    reason = "function stuck: 3 timed-out sync invocations are still running in this worker (more than 2)"
    assert str(stopped.value).startswith(reason)
    assert [r.levelno for r in caplog.records if r.getMessage().startswith(reason)] == [logging.CRITICAL]
    assert await committed(broker, group, topic, 2) == {0: 4, 1: max(o for p, o in handled if p == 1) + 1}


async def test_an_async_handler_blocking_the_loop_is_named(
    broker: str, name: Any, caplog: pytest.LogCaptureFixture
) -> None:
    topic, group = name("t"), name("g")
    await create_topic(broker, topic, 1)
    await produce_values(broker, topic, 3, partitions=1)
    handled: list[int] = []
    probed: list[tuple[int, Any]] = []
    app = App("blocking")

    @app.function(source=source(topic, group), batch_size=1, timeout=10)
    async def blocker(records: list[Record]) -> None:
        if records[0].offset == 1:
            threading.Timer(1.5, lambda: probed.append(health.live()[:2])).start()  # /live runs on its own thread
            time.sleep(2.0)  # noqa: ASYNC251 (the point: it blocks the event loop)
        handled.append(records[0].offset)

    worker = Worker(app)
    health = Health(worker)
    task = asyncio.create_task(worker.run(handle_signals=False))
    try:
        while len(handled) < 3 and not task.done():
            await asyncio.sleep(0.05)
    finally:
        worker.stop()
        await task
    assert probed == [(503, "application/json")]
    blocked = [r.getMessage() for r in caplog.records if r.name == "streamfn.watchdog" and r.levelno == logging.ERROR]
    named = [m.split(" for ")[0] for m in blocked if m.startswith("function ")]  # a loaded machine may add others
    assert named == ["function blocker: its async handler has blocked the event loop"]
    assert worker.watchdog.blocked["blocker"] == 1  # what the streamfn.event_loop.blocked counter reads
