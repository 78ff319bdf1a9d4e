"""A slow handler holds memory flat: its partition is paused at the buffer's high mark and resumed as it drains."""

from __future__ import annotations

import asyncio
from typing import Any

from conftest import committed, create_topic, produce_values, source

from streamfn import App, Record
from streamfn.worker import Worker


async def test_slow_handler_pauses_its_partition_and_memory_stays_bounded(broker: str, name: Any) -> None:
    topic, group = name("t"), name("g")
    await create_topic(broker, topic, 2)
    await produce_values(broker, topic, 40_000, partitions=2)
    handled = {0: 0, 1: 0}
    app = App("backpressure")

    @app.function(source=source(topic, group), batch_size=100, maximum_batching_window_in_seconds=0)
    async def handler(records: list[Record]) -> None:
        if records[0].partition == 0:
            await asyncio.sleep(0.05)  # partition 0 is slow; partition 1 is not
        handled[records[0].partition] += len(records)

    worker = Worker(app, broker)
    task = asyncio.create_task(worker.run(handle_signals=False))
    reader = worker.pollers[0].reader
    peak, peak_bytes, paused_seen = 0, 0, False
    while handled[1] < 5_000 or handled[0] < 3_000:
        assert not task.done()
        poller = worker.pollers[0]
        if (p0 := poller.workers.get((topic, 0))) is not None:
            peak = max(peak, p0.buffered)
            peak_bytes = max(peak_bytes, p0.buffered_bytes)
        paused_seen |= any(tp.partition == 0 for tp in reader._consumer.paused())  # type: ignore[attr-defined]
        await asyncio.sleep(0.01)
    worker.stop()
    await task

    assert paused_seen  # backpressure engaged on the slow partition
    # Bounded by the high mark (1,000 records) plus one fetch (1 MiB per partition), never the 20,000 in Kafka.
    assert peak < 1_000 + 1024 * 1024 / 20, peak  # a record here is at least 20 bytes on the wire
    assert peak_bytes < 1024 * 1024, peak_bytes
    offsets = await committed(broker, group, topic, 2)
    assert offsets == handled  # every handled record committed on stop, nothing beyond
    assert handled[1] > 2 * handled[0]  # the fast partition was never held back by the slow one
