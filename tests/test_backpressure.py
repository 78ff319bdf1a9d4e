"""A slow handler or a sink that is down holds memory flat: the partition is paused at the buffer's high mark."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from conftest import committed, create_topic, produce_values, source

from streamfn import App, Record, SinkRetry
from streamfn.connectors.kafka import KafkaTopic
from streamfn.connectors.kafka.embedded import free_port
from streamfn.engine.worker import Worker


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

    worker = Worker(app)
    task = asyncio.create_task(worker.run(handle_signals=False))
    reader = worker.pollers[0].reader
    peak, peak_bytes, paused_seen = 0, 0, False
    while handled[1] < 5_000 or handled[0] < 3_000:
        assert not task.done()
        poller = worker.pollers[0]
        if (p0 := poller.workers.get((topic, 0))) is not None:
            peak = max(peak, p0.buffered)
            peak_bytes = max(peak_bytes, p0.buffered_bytes)
        consumer = getattr(reader, "_consumer", None)  # made once the reader connected
        paused_seen |= consumer is not None and any(tp.partition == 0 for tp in consumer.paused())
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


async def test_a_sink_that_is_down_pauses_its_partition_and_commits_nothing_unwritten(broker: str, name: Any) -> None:
    topic, group, out = name("t"), name("g"), name("out")
    await create_topic(broker, topic, 1)
    await produce_values(broker, topic, 20_000, partitions=1)
    down = f"127.0.0.1:{free_port()}"  # nothing listens there
    app = App("sink-backpressure")
    handled = 0

    @app.function(
        source=source(topic, group),
        batch_size=100,
        maximum_batching_window_in_seconds=0,
        outputs=[KafkaTopic(out, bootstrap_servers=down, retry=SinkRetry(max_attempts=-1, max_seconds=0.2))],
    )
    async def forward(records: list[Record]) -> list[Any]:
        nonlocal handled
        handled += len(records)
        return [r.value for r in records]

    worker = Worker(app)
    task = asyncio.create_task(worker.run(handle_signals=False))
    reader = worker.pollers[0].reader
    peak, paused_seen, deadline = 0, False, time.monotonic() + 6
    while time.monotonic() < deadline:
        assert not task.done()
        if (p0 := worker.pollers[0].workers.get((topic, 0))) is not None:
            peak = max(peak, p0.buffered)
        consumer = getattr(reader, "_consumer", None)  # made once the reader connected
        paused_seen |= consumer is not None and bool(consumer.paused())
        await asyncio.sleep(0.01)
    worker.stop()
    await task

    # the first batch's write is still being retried; the second was invoked meanwhile (invocations overlap the
    # previous batch's write) and waits for it; nothing else was taken
    assert handled == 200
    assert paused_seen  # the full buffer paused the partition
    assert peak < 1_000 + 1024 * 1024 / 20, peak  # bounded as for a slow handler, never the 20,000 in Kafka
    assert await committed(broker, group, topic, 1) == {0: 0}  # nothing committed past the unwritten outputs
