"""Failure handling: retries, bisection, partial batch responses, record age, undecodable values, dead letters."""

from __future__ import annotations

import asyncio
import base64
import math
import time
from typing import Any

import orjson
import pytest
from conftest import Out, committed, create_topic, produce, produce_values, read_topic, run_worker, source

from streamfn import App, Backoff, Record
from streamfn.connectors.kafka import KafkaTopic
from streamfn.failure import BatchItemFailures

FAST = Backoff(initial_seconds=0.01, max_seconds=0.05)


def letters(records: list[Any]) -> list[dict[str, Any]]:
    return [orjson.loads(r.value) for r in records]


async def test_bisect_isolates_one_poison_record_within_the_bound(broker: str, name: Any) -> None:
    topic, group, dlq = name("t"), name("g"), name("dlq")
    await create_topic(broker, topic, 2)
    await produce_values(broker, topic, 128, partitions=2)  # 64 per partition; partition 1 is clean
    invocations: list[list[int]] = []
    handled: set[tuple[int, int]] = set()
    app = App("bisect")

    @app.function(
        source=source(topic, group), batch_size=64, maximum_batching_window_in_seconds=0.5, backoff=FAST,
        bisect_batch_on_function_error=True, maximum_retry_attempts=2, on_failure=KafkaTopic(dlq),
    )
    def handler(records: list[Record]) -> None:
        if records[0].partition == 0:
            invocations.append([r.offset for r in records])
        if any(r.partition == 0 and r.offset == 37 for r in records):
            raise ValueError("poison at 37")
        handled.update((r.partition, r.offset) for r in records)

    summary = await run_worker(app, broker, lambda: len(handled) >= 127, settle=1.0)
    dead = await read_topic(broker, dlq, 1)
    assert [(list(r.headers), orjson.loads(r.value)["requestContext"]["condition"]) for r in dead] == [
        ([("streamfn.source.topic", topic.encode()), ("streamfn.source.partition", b"0"),
          ("streamfn.source.offset", b"37"), ("streamfn.error.condition", b"RetryAttemptsExhausted"),
          ("streamfn.error.type", b"ValueError")], "RetryAttemptsExhausted"),
    ]
    assert handled == {(p, o) for p in range(2) for o in range(64)} - {(0, 37)}
    assert len(invocations) <= 2 * math.ceil(math.log2(64)) + 1 + 2
    # records in halves that succeeded are not invoked again
    invoked_offsets = [o for batch in invocations for o in batch if o != 37]
    successful_invocations = [b for b in invocations if 37 not in b]
    assert sorted(o for b in successful_invocations for o in b) == sorted(set(invoked_offsets))
    assert orjson.loads(dead[0].value)["requestContext"]["approximateInvokeCount"] == 1 + 6 + 2  # splits + retries
    assert await committed(broker, group, topic, 2) == {0: 64, 1: 64}
    assert summary[0].stats.dead_lettered == 1


async def test_without_bisect_the_whole_batch_is_dead_lettered_after_its_retries(broker: str, name: Any) -> None:
    topic, group, dlq = name("t"), name("g"), name("dlq")
    await create_topic(broker, topic, 1)
    await produce_values(broker, topic, 30, partitions=1)
    calls: list[int] = []
    app = App("nobisect")

    @app.function(
        source=source(topic, group), batch_size=10, maximum_batching_window_in_seconds=0.5, backoff=FAST,
        maximum_retry_attempts=3, on_failure=KafkaTopic(dlq),
    )
    async def handler(records: list[Record]) -> None:
        calls.append(records[0].offset)
        if records[0].offset == 10:
            raise RuntimeError("batch 10-19 always fails")

    await run_worker(app, broker, lambda: calls.count(20) >= 1, settle=1.0)
    assert calls == [0, 10, 10, 10, 10, 20]  # 1 + 3 retries, then the partition moves on
    dead = await read_topic(broker, dlq, 10)
    assert sorted(int(dict(r.headers)["streamfn.source.offset"]) for r in dead) == list(range(10, 20))
    for letter in letters(dead):
        assert letter["requestContext"]["approximateInvokeCount"] == 4
        assert letter["requestContext"]["condition"] == "RetryAttemptsExhausted"
        assert letter["errorType"] == "RuntimeError" and letter["errorMessage"] == "batch 10-19 always fails"
    assert await committed(broker, group, topic, 1) == {0: 30}


async def test_dead_letter_layout_field_by_field(broker: str, name: Any) -> None:
    topic, group, dlq = name("t"), name("g"), name("dlq")
    await create_topic(broker, topic, 1)
    await produce(broker, topic, [Out(b'{"bad": true}', key=b"user-7", partition=0, headers=[("trace", b"t1")],
                                      timestamp_ms=1_700_000_000_000)])
    app = App("layout")

    @app.function(source=source(topic, group), backoff=FAST, maximum_retry_attempts=0, on_failure=KafkaTopic(dlq),
                  maximum_batching_window_in_seconds=0)
    def enrich(event: dict[str, Any], context: Any) -> None:
        raise KeyError("customer")

    dead: list[Any] = []

    async def poll() -> None:
        dead.extend(await read_topic(broker, dlq, 1, timeout=30))

    reader = asyncio.create_task(poll())
    await run_worker(app, broker, lambda: reader.done(), timeout=40)
    (letter_record,) = dead
    assert letter_record.key == b"user-7"
    headers = dict(letter_record.headers)
    assert headers["trace"] == b"t1" and headers["streamfn.source.offset"] == b"0"
    letter = orjson.loads(letter_record.value)
    assert set(letter) == {"requestContext", "responseContext", "errorType", "errorMessage", "stackTrace", "version",
                           "timestamp", "KafkaBatchInfo", "payload"}
    assert letter["requestContext"]["functionArn"] == "arn:aws:lambda:local:000000000000:function:enrich"
    assert letter["requestContext"]["approximateInvokeCount"] == 1 and len(letter["requestContext"]["requestId"]) == 36
    assert letter["responseContext"] == {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"}
    assert letter["errorType"] == "KeyError" and letter["errorMessage"] == "'customer'"
    assert any("raise KeyError" in line for line in letter["stackTrace"])
    assert letter["version"] == "1.0" and letter["timestamp"].endswith("Z")
    payload = letter["payload"]
    assert letter["KafkaBatchInfo"] == {"batchSize": 1, "bootstrapServers": broker,
                                        "payloadSize": len(orjson.dumps(payload)),
                                        "recordInfo": {"offset": 0, "timestamp": 1_700_000_000_000}}
    assert payload["eventSource"] == "SelfManagedKafka" and payload["bootstrapServers"] == broker
    (record,) = payload["records"][f"{topic}-0"]
    assert base64.b64decode(record["value"]) == b'{"bad": true}' and base64.b64decode(record["key"]) == b"user-7"
    assert record["headers"] == [{"trace": list(b"t1")}] and record["offset"] == 0
    assert await committed(broker, group, topic, 1) == {0: 1}
