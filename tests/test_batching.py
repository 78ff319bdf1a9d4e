"""How records are cut into batches: by size, by window (from the first record's arrival), by 6 MB payload."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from conftest import Out, committed, create_topic, produce, produce_values, run_worker, source

from streamfn import App, Record


async def test_batches_cut_at_batch_size_in_offset_order(broker: str, name: Any) -> None:
    topic, group = name("t"), name("g")
    await create_topic(broker, topic, 1)
    await produce_values(broker, topic, 35, partitions=1)
    batches: list[list[int]] = []
    app = App("size")

    @app.function(source=source(topic, group), batch_size=10, maximum_batching_window_in_seconds=1)
    def handler(records: list[Record]) -> None:
        batches.append([r.offset for r in records])

    await run_worker(app, broker, lambda: sum(map(len, batches)) >= 35)
    assert [len(b) for b in batches] == [10, 10, 10, 5]
    assert [o for b in batches for o in b] == list(range(35))


async def test_window_starts_at_first_record_and_flushes_a_partial_batch(broker: str, name: Any) -> None:
    topic, group = name("t"), name("g")
    await create_topic(broker, topic, 1)
    calls: list[tuple[float, list[int]]] = []
    app = App("window")

    @app.function(source=source(topic, group), batch_size=100, maximum_batching_window_in_seconds=1.5)
    def handler(records: list[Record]) -> None:
        calls.append((time.monotonic(), [r.value["n"] for r in records]))

    produced_at: list[float] = []

    async def producer() -> None:
        await asyncio.sleep(4)  # after the group join
        produced_at.append(time.monotonic())
        await produce_values(broker, topic, 3, partitions=1)
        await asyncio.sleep(0.5)
        await produce_values(broker, topic, 2, partitions=1, start=3)

    task = asyncio.create_task(producer())
    await run_worker(app, broker, lambda: sum(len(c[1]) for c in calls) >= 5)
    await task
    # One batch: the window opened with the first record and took the ones that came 0.5 s later too.
    assert [c[1] for c in calls] == [[0, 1, 2, 3, 4]]
    waited = calls[0][0] - produced_at[0]
    assert 1.4 <= waited < 3.0, waited


async def test_batch_payload_stays_under_6_mb(broker: str, name: Any) -> None:
    topic, group = name("t"), name("g")
    await create_topic(broker, topic, 1)
    big = b"x" * 1_000_000  # 1.33 MB each once base64-encoded in the event
    await produce(broker, topic, [Out(big, partition=0) for _ in range(10)])
    sizes: list[int] = []
    app = App("payload")

    @app.function(source=source(topic, group), batch_size=100, maximum_batching_window_in_seconds=0.5)
    def handler(event: dict[str, Any], context: Any) -> None:
        records = next(iter(event["records"].values()))
        sizes.append(len(records))

    await run_worker(app, broker, lambda: sum(sizes) >= 10)
    assert sizes == [4, 4, 2]  # 4 x 1.33 MB fits in 6 MB, a fifth would not


async def test_every_record_handled_once_and_committed_to_the_end(broker: str, name: Any) -> None:
    topic, group = name("t"), name("g")
    await create_topic(broker, topic, 4)
    await produce_values(broker, topic, 40_000)
    seen: dict[int, list[int]] = {p: [] for p in range(4)}
    app = App("scale")

    @app.function(source=source(topic, group), batch_size=500, maximum_batching_window_in_seconds=0.1)
    async def handler(records: list[Record]) -> None:
        seen[records[0].partition].extend(r.offset for r in records)
        assert all(r.partition == records[0].partition for r in records)  # a batch holds one partition

    summary = await run_worker(app, broker, lambda: sum(map(len, seen.values())) >= 40_000, settle=0.5)
    assert {p: offsets for p, offsets in seen.items()} == {p: list(range(10_000)) for p in range(4)}
    assert await committed(broker, group, topic) == {p: 10_000 for p in range(4)}
    assert summary[0].stats.handled == 40_000 and summary[0].committed_records == 40_000
