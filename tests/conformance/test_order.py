"""Order within a key: with parallelization_factor 5, batches of a partition run together, each key's in order."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict

from conformance.harness import Harness, Ledger, Put, run_until_covered
from streamfn import App, Record

RECORDS, KEYS, PARTITIONS = 1000, 100, 2


async def test_each_keys_records_in_put_order_with_several_batches_of_a_partition_in_flight(harness: Harness) -> None:
    stream = await harness.stream(PARTITIONS)
    ledger = Ledger()
    await stream.put(ledger.plan([Put(i % KEYS % PARTITIONS, i, b"key-%d" % (i % KEYS)) for i in range(RECORDS)]))
    seen: dict[bytes, list[int]] = defaultdict(list)
    in_flight: dict[object, int] = defaultdict(int)  # by the source's partition id (a Kinesis shard's is a str)
    most_in_flight: dict[object, int] = defaultdict(int)
    app = App("order")

    @app.function(
        source=stream.source(stream.group),
        batch_size=10,
        maximum_batching_window_in_seconds=0.02,
        parallelization_factor=5,
    )
    async def handler(records: list[Record]) -> None:
        ids = [r.value["id"] for r in records]
        ledger.started(ids)
        partition = records[0].partition
        in_flight[partition] += 1
        most_in_flight[partition] = max(most_in_flight[partition], in_flight[partition])
        await asyncio.sleep(random.uniform(0, 0.01))
        for r in records:
            seen[r.key].append(r.value["id"])
        in_flight[partition] -= 1
        ledger.handled(ids)

    await run_until_covered(harness, app, stream, ledger, {p: RECORDS // PARTITIONS for p in range(PARTITIONS)})
    # every key's records once, in the order they were put
    assert dict(seen) == {b"key-%d" % k: list(range(k, RECORDS, KEYS)) for k in range(KEYS)}
    assert len(most_in_flight) == PARTITIONS
    assert min(most_in_flight.values()) >= 3  # batches of one partition really ran together
