"""Per-key parallelism: up to `parallelization_factor` batches of a partition in flight, each key in order."""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from typing import Any

from conftest import Out, committed, create_topic, produce, run_worker, source

from streamfn import App, Record
from streamfn.engine.worker import Worker


def keyed(count: int, keys: int, partitions: int) -> list[Out]:
    return [Out(b'{"n": %d}' % i, key=b"key-%d" % (i % keys), partition=(i % keys) % partitions) for i in range(count)]


async def test_per_key_order_holds_with_factor_5_and_random_handler_sleeps(broker: str, name: Any) -> None:
    topic, group = name("t"), name("g")
    await create_topic(broker, topic, 2)
    await produce(broker, topic, keyed(5000, 1000, 2))
    seen: dict[bytes, list[int]] = defaultdict(list)
    in_flight = {0: 0, 1: 0}
    most_in_flight = {0: 0, 1: 0}
    app = App("per-key")

    @app.function(
        source=source(topic, group), batch_size=20, maximum_batching_window_in_seconds=0.05, parallelization_factor=5
    )
    async def handler(records: list[Record]) -> None:
        partition = records[0].partition
        in_flight[partition] += 1
        most_in_flight[partition] = max(most_in_flight[partition], in_flight[partition])
        await asyncio.sleep(random.uniform(0, 0.01))
        for r in records:
            seen[r.key].append(r.offset)  # type: ignore[index]
        in_flight[partition] -= 1

    await run_worker(app, broker, lambda: sum(map(len, seen.values())) >= 5000, settle=0.5)
    assert len(seen) == 1000
    for key, offsets in seen.items():
        assert offsets == sorted(set(offsets)), key  # in offset order, each once
    assert sum(map(len, seen.values())) == 5000
    assert min(most_in_flight.values()) >= 3  # batches of one partition really ran together
    assert await committed(broker, group, topic, 2) == {0: 2500, 1: 2500}


async def test_a_slow_record_holds_the_commit_and_is_never_skipped(broker: str, name: Any) -> None:
    topic, group = name("t"), name("g")
    await create_topic(broker, topic, 1)
    records = keyed(200, 50, 1)
    records[20] = Out(b'{"n": 20, "slow": true}', key=b"slow", partition=0)
    await produce(broker, topic, records)
    handled: list[int] = []
    slow_started = asyncio.Event()
    release = asyncio.Event()
    app = App("slow-record")

    @app.function(
        source=source(topic, group),
        batch_size=5,
        maximum_batching_window_in_seconds=0.05,
        parallelization_factor=5,
        timeout=60,
    )
    async def handler(batch: list[Record]) -> None:
        if any(r.value.get("slow") for r in batch):
            slow_started.set()
            await release.wait()
        handled.extend(r.offset for r in batch)

    worker = Worker(app)
    task = asyncio.create_task(worker.run(handle_signals=False))
    await asyncio.wait_for(slow_started.wait(), 30)
    # Other lanes run on; records of the slow lane wait behind it (a lane is ordered). Wait until it settles.
    settled = -1
    while settled != len(handled):
        settled = len(handled)
        await asyncio.sleep(1)
    assert 20 not in handled and max(handled) > 150 and len(handled) > 100
    lowest_unhandled = min(set(range(200)) - set(handled))  # in the slow record's batch, at most 20
    assert lowest_unhandled <= 20
    assert await committed(broker, group, topic, 1) == {0: lowest_unhandled}  # held there, nothing skipped
    release.set()
    while len(handled) < 200:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    worker.stop()
    await task
    assert sorted(handled) == list(range(200))
    assert await committed(broker, group, topic, 1) == {0: 200}


async def test_factor_5_is_at_least_3_times_faster_on_a_sleeping_handler(broker: str, name: Any) -> None:
    spans: dict[int, list[float]] = {1: [], 5: []}
    counts = {1: 0, 5: 0}
    app = App("speedup")
    for factor in (1, 5):
        topic = name(f"t{factor}")
        await create_topic(broker, topic, 1)
        await produce(broker, topic, keyed(300, 100, 1))

        async def handler(records: list[Record], factor: int = factor) -> None:
            spans[factor].append(time.monotonic())
            await asyncio.sleep(0.05)
            counts[factor] += len(records)
            spans[factor].append(time.monotonic())

        app.function(
            source=source(topic, name("g")),
            name=f"factor{factor}",
            batch_size=10,
            maximum_batching_window_in_seconds=0.05,
            parallelization_factor=factor,
        )(handler)

    await run_worker(app, broker, lambda: counts[1] >= 300 and counts[5] >= 300)
    took = {factor: max(times) - min(times) for factor, times in spans.items()}
    assert took[1] >= 3 * took[5], took
