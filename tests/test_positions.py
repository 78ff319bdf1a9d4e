"""Where a function starts: its starting position when the group has no offsets, its offsets when it has."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from conftest import committed, create_topic, produce_values, run_worker, source

from streamfn import App, Record


def collecting_app(topic: str, group: str, seen: list[int], **source_kw: Any) -> App:
    app = App("positions")

    @app.function(source=source(topic, group, **source_kw), batch_size=50, maximum_batching_window_in_seconds=0.1)
    def handler(records: list[Record]) -> None:
        seen.extend(r.value["n"] for r in records)

    return app


async def test_trim_horizon_reads_from_the_beginning(broker: str, name: Any) -> None:
    topic, group = name("t"), name("g")
    await create_topic(broker, topic, 2)
    await produce_values(broker, topic, 100, partitions=2)
    seen: list[int] = []
    await run_worker(
        collecting_app(topic, group, seen, starting_position="TRIM_HORIZON"), broker, lambda: len(seen) >= 100
    )
    assert sorted(seen) == list(range(100))


async def test_latest_skips_what_was_there_and_reads_what_comes(broker: str, name: Any) -> None:
    topic, group = name("t"), name("g")
    await create_topic(broker, topic, 2)
    await produce_values(broker, topic, 100, partitions=2)  # batched produce: Tansu's ListOffsets is wrong here
    seen: list[int] = []
    app = collecting_app(topic, group, seen, starting_position="LATEST")

    async def later() -> None:
        while await committed(broker, group, topic, 2) != {0: 50, 1: 50}:  # the start position, committed
            await asyncio.sleep(0.2)
        await produce_values(broker, topic, 10, partitions=2, start=100)

    task = asyncio.create_task(later())
    await run_worker(app, broker, lambda: len(seen) >= 10, settle=1.0)
    await task
    assert sorted(seen) == list(range(100, 110))


async def test_at_timestamp_starts_at_the_first_record_at_or_after_it(broker: str, name: Any) -> None:
    topic, group = name("t"), name("g")
    await create_topic(broker, topic, 2)
    await produce_values(broker, topic, 20, partitions=2)
    await asyncio.sleep(1.5)
    boundary = time.time()
    await asyncio.sleep(0.5)
    await produce_values(broker, topic, 20, partitions=2, start=20)
    seen: list[int] = []
    app = collecting_app(topic, group, seen, starting_position="AT_TIMESTAMP", starting_position_timestamp=boundary)
    await run_worker(app, broker, lambda: len(seen) >= 20, settle=1.0)
    assert sorted(seen) == list(range(20, 40))


async def test_restart_resumes_from_committed_offsets_and_ignores_starting_position(broker: str, name: Any) -> None:
    topic, group = name("t"), name("g")
    await create_topic(broker, topic, 2)
    await produce_values(broker, topic, 200, partitions=2)
    first: list[int] = []
    await run_worker(collecting_app(topic, group, first), broker, lambda: len(first) >= 200)
    assert await committed(broker, group, topic, 2) == {0: 100, 1: 100}

    await produce_values(broker, topic, 50, partitions=2, start=200)
    second: list[int] = []
    # Even a LATEST (or TRIM_HORIZON) start is ignored once the group has offsets, as in Lambda.
    await run_worker(
        collecting_app(topic, group, second, starting_position="LATEST"), broker, lambda: len(second) >= 50, settle=1.0
    )
    assert sorted(second) == list(range(200, 250))
    assert await committed(broker, group, topic, 2) == {0: 125, 1: 125}
