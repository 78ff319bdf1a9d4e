"""Lambda's 6 MB invocation payload: a record that passes it alone is not invoked but routed to on_failure as
`MaximumPayloadSizeExceeded`, and headers count toward the estimate that cuts batches."""

from __future__ import annotations

from typing import Any

import orjson
from conftest import Out, committed, create_topic, produce, read_topic, run_worker, source

from streamfn import App, Record
from streamfn.config import PAYLOAD_LIMIT_BYTES
from streamfn.connectors.kafka import KafkaTopic


async def test_a_record_above_6_mb_is_dead_lettered_without_an_invocation(broker: str, name: Any) -> None:
    topic, group, dlq = name("t"), name("g"), name("dlq")
    await create_topic(broker, topic, 1)
    big = b"x" * 7_000_000
    await produce(broker, topic, [Out(b"a", key=b"k0"), Out(b"b"), Out(big, key=b"big"), Out(b"d")])
    handled: list[tuple[int, bytes]] = []
    app = App("payload")

    @app.function(
        source=source(topic, group, value_format="bytes"),
        maximum_batching_window_in_seconds=0.2,
        on_failure=KafkaTopic(dlq),
    )
    def handler(records: list[Record]) -> None:
        handled.extend((r.offset, r.value) for r in records)

    [summary] = await run_worker(app, broker, lambda: len(handled) == 3, settle=1.0)
    assert handled == [(0, b"a"), (1, b"b"), (3, b"d")]
    assert summary.stats.dead_lettered == 1 and summary.stats.invoked == 3
    [letter] = await read_topic(broker, dlq, 1)
    headers = dict(letter.headers)
    assert letter.key == b"big"
    assert (headers["streamfn.source.offset"], headers["streamfn.error.condition"]) == (
        b"2",
        b"MaximumPayloadSizeExceeded",
    )
    dead = orjson.loads(letter.value)
    assert dead["requestContext"]["condition"] == "MaximumPayloadSizeExceeded"
    assert dead["requestContext"]["approximateInvokeCount"] == 0 and "responseContext" not in dead
    assert dead["errorType"] == "PayloadSizeExceeded"
    assert dead["errorMessage"] == f"the record makes a 9333543-byte payload, above {PAYLOAD_LIMIT_BYTES}"
    assert dead["KafkaBatchInfo"]["recordInfo"]["offset"] == 2
    assert await committed(broker, group, topic, 1) == {0: 4}


async def test_headers_count_toward_the_6_mb_estimate(broker: str, name: Any) -> None:
    topic, group = name("t"), name("g")
    await create_topic(broker, topic, 1)
    header = ("trace-blob", bytes(range(256)) * 2344)  # 600 KB: about 2.4 MB in the event, as lists of numbers
    await produce(broker, topic, [Out(b"%d" % n, headers=[header]) for n in range(4)])
    events: list[int] = []
    batches: list[int] = []
    app = App("payload")

    @app.function(source=source(topic, group, value_format="bytes"), maximum_batching_window_in_seconds=0.5)
    def handler(event: dict[str, Any], context: Any) -> None:
        [records] = event["records"].values()
        batches.append(len(records))
        events.append(len(orjson.dumps(event)))

    await run_worker(app, broker, lambda: sum(batches) >= 4)
    assert batches == [2, 2]  # counting keys and values only, all 4 would have been one batch
    assert all(size <= PAYLOAD_LIMIT_BYTES for size in events)
    assert events[0] * 2 > PAYLOAD_LIMIT_BYTES  # which would have been about 9.6 MB
