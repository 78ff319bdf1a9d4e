"""Failure handling: retries, bisection, partial batch responses, record age, undecodable values, dead letters."""

from __future__ import annotations

import asyncio
import base64
import math
import re
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.structs import ConsumerRecord
from conftest import (
    Out,
    committed,
    create_topic,
    produce,
    produce_values,
    read_topic,
    run_until_read,
    run_worker,
    source,
)

from streamfn import App, Backoff, Record
from streamfn.connectors.kafka import KafkaTopic
from streamfn.connectors.kafka.dialect import KafkaBatchInfo
from streamfn.connectors.kafka.event import KafkaEvent
from streamfn.connectors.kafka.letter import PROVENANCE, dead_letter
from streamfn.engine.worker import Worker
from streamfn.failures.model import BatchItemFailures, Condition, FailedRecord, FailureOrigin
from streamfn.record import Partition

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
        source=source(topic, group),
        batch_size=64,
        maximum_batching_window_in_seconds=0.5,
        backoff=FAST,
        bisect_batch_on_function_error=True,
        maximum_retry_attempts=2,
        on_failure=KafkaTopic(dlq),
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
        (
            [
                ("streamfn.source.topic", topic.encode()),
                ("streamfn.source.partition", b"0"),
                ("streamfn.source.offset", b"37"),
                ("streamfn.error.condition", b"RetryAttemptsExhausted"),
                ("streamfn.error.type", b"ValueError"),
            ],
            "RetryAttemptsExhausted",
        ),
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
        source=source(topic, group),
        batch_size=10,
        maximum_batching_window_in_seconds=0.5,
        backoff=FAST,
        maximum_retry_attempts=3,
        on_failure=KafkaTopic(dlq),
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
    await produce(
        broker,
        topic,
        [Out(b'{"bad": true}', key=b"user-7", partition=0, headers=[("trace", b"t1")], timestamp_ms=1_700_000_000_000)],
    )
    app = App("layout")

    @app.function(
        source=source(topic, group),
        backoff=FAST,
        maximum_retry_attempts=0,
        on_failure=KafkaTopic(dlq),
        maximum_batching_window_in_seconds=0,
    )
    def enrich(event: dict[str, Any], context: Any) -> None:
        raise KeyError("customer")

    (letter_record,) = (await run_until_read(app, broker, {dlq: 1}))[dlq]
    assert letter_record.key == b"user-7"
    headers = dict(letter_record.headers)
    assert headers["trace"] == b"t1" and headers["streamfn.source.offset"] == b"0"
    letter = orjson.loads(letter_record.value)
    assert set(letter) == {
        "requestContext",
        "responseContext",
        "errorType",
        "errorMessage",
        "stackTrace",
        "version",
        "timestamp",
        "KafkaBatchInfo",
        "payload",
    }
    assert letter["requestContext"]["functionArn"] == "arn:aws:lambda:local:000000000000:function:enrich"
    assert letter["requestContext"]["approximateInvokeCount"] == 1 and len(letter["requestContext"]["requestId"]) == 36
    assert letter["responseContext"] == {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"}
    assert letter["errorType"] == "KeyError" and letter["errorMessage"] == "'customer'"
    assert any("raise KeyError" in line for line in letter["stackTrace"])
    assert letter["version"] == "1.0" and letter["timestamp"].endswith("Z")
    payload = letter["payload"]
    assert letter["KafkaBatchInfo"] == {
        "batchSize": 1,
        "bootstrapServers": broker,
        "payloadSize": len(orjson.dumps(payload)),
        "recordInfo": {"offset": 0, "timestamp": 1_700_000_000_000},
    }
    assert payload["eventSource"] == "SelfManagedKafka" and payload["bootstrapServers"] == broker
    (record,) = payload["records"][f"{topic}-0"]
    assert base64.b64decode(record["value"]) == b'{"bad": true}' and base64.b64decode(record["key"]) == b"user-7"
    assert record["headers"] == [{"trace": list(b"t1")}] and record["offset"] == 0
    assert await committed(broker, group, topic, 1) == {0: 1}


def item(topic: str, partition: int, offset: Any) -> dict[str, Any]:
    return {"itemIdentifier": {"partition": f"{topic}-{partition}", "offset": offset}}


async def test_partial_batch_response_checkpoints_at_the_lowest_failure_and_retries_from_it(
    broker: str, name: Any
) -> None:
    topic, group = name("t"), name("g")
    await create_topic(broker, topic, 1)
    await produce_values(broker, topic, 10, partitions=1)
    calls: list[list[int]] = []
    app = App("partial")

    @app.function(
        source=source(topic, group),
        batch_size=10,
        maximum_batching_window_in_seconds=0.5,
        backoff=FAST,
        function_response_types=["ReportBatchItemFailures"],
    )
    def handler(event: dict[str, Any], context: Any) -> Any:
        offsets = [r["offset"] for r in event["records"][f"{topic}-0"]]
        calls.append(offsets)
        if len(calls) == 1:  # 4 and 7 failed: the checkpoint is 4, the retry starts there
            return {"batchItemFailures": [item(topic, 0, 7), item(topic, 0, 4)]}
        return {"batchItemFailures": []}

    await run_worker(app, broker, lambda: len(calls) >= 2, settle=0.5)
    assert calls == [list(range(10)), list(range(4, 10))]
    assert await committed(broker, group, topic, 1) == {0: 10}


SUCCESS_FORMS = [None, {}, [], "", {"batchItemFailures": []}, {"batchItemFailures": None}]


async def test_partial_batch_success_forms(broker: str, name: Any) -> None:
    """Each form Lambda accepts as success commits the batch after one invocation (one function per form)."""
    topics = [name(f"t{i}") for i in range(len(SUCCESS_FORMS))]
    calls: dict[int, int] = {}
    app = App("success-forms")
    for i, (topic, response) in enumerate(zip(topics, SUCCESS_FORMS, strict=True)):
        await create_topic(broker, topic, 1)
        await produce_values(broker, topic, 3, partitions=1)

        def handler(event: dict[str, Any], context: Any, i: int = i, response: Any = response) -> Any:
            calls[i] = calls.get(i, 0) + 1
            return response

        app.function(
            source=source(topic, f"{topic}-g"),
            name=f"form{i}",
            batch_size=3,
            backoff=FAST,
            maximum_batching_window_in_seconds=0.2,
            function_response_types=["ReportBatchItemFailures"],
        )(handler)

    await run_worker(app, broker, lambda: len(calls) == len(SUCCESS_FORMS), settle=0.5)
    assert calls == dict.fromkeys(range(len(SUCCESS_FORMS)), 1)
    for topic in topics:
        assert await committed(broker, f"{topic}-g", topic, 1) == {0: 3}


MALFORMED = {
    "empty identifier": lambda t: {"batchItemFailures": [{"itemIdentifier": ""}]},
    "null identifier": lambda t: {"batchItemFailures": [{"itemIdentifier": None}]},
    "missing identifier": lambda t: {"batchItemFailures": [{"id": {"partition": f"{t}-0", "offset": 1}}]},
    "offset not in batch": lambda t: {"batchItemFailures": [item(t, 0, 123)]},
    "other partition": lambda t: {"batchItemFailures": [item(t, 5, 1)]},
    "offset as string": lambda t: {"batchItemFailures": [item(t, 0, "1")]},
    "failures not a list": lambda t: {"batchItemFailures": "1"},
    "not an object": lambda t: "failed",
}


async def test_malformed_partial_response_fails_the_whole_batch(broker: str, name: Any) -> None:
    """Each malformed response fails the whole batch: retried whole, then dead-lettered whole."""
    cases = {case: (name("t"), name("dlq")) for case in MALFORMED}
    calls: dict[str, list[list[int]]] = {case: [] for case in MALFORMED}
    app = App("malformed")
    for case, (topic, dlq) in cases.items():
        await create_topic(broker, topic, 1)
        await produce_values(broker, topic, 3, partitions=1)

        def handler(event: dict[str, Any], context: Any, case: str = case, topic: str = topic) -> Any:
            calls[case].append([r["offset"] for r in event["records"][f"{topic}-0"]])
            return MALFORMED[case](topic)

        app.function(
            source=source(topic, f"{topic}-g"),
            name=case.replace(" ", "_"),
            batch_size=3,
            backoff=FAST,
            maximum_batching_window_in_seconds=0.2,
            function_response_types=["ReportBatchItemFailures"],
            maximum_retry_attempts=1,
            on_failure=KafkaTopic(dlq),
        )(handler)

    await run_worker(app, broker, lambda: all(len(c) >= 2 for c in calls.values()), settle=1.0)
    for case, (topic, dlq) in cases.items():
        assert calls[case] == [[0, 1, 2], [0, 1, 2]], case
        dead = await read_topic(broker, dlq, 3)
        assert sorted(int(dict(r.headers)["streamfn.source.offset"]) for r in dead) == [0, 1, 2], case
        assert {orjson.loads(r.value)["errorType"] for r in dead} == {"InvalidResponse"}, case
        assert await committed(broker, f"{topic}-g", topic, 1) == {0: 3}, case


async def test_native_handler_reports_failed_records_and_bisect_cuts_there(broker: str, name: Any) -> None:
    topic, group, dlq = name("t"), name("g"), name("dlq")
    await create_topic(broker, topic, 1)
    await produce_values(broker, topic, 8, partitions=1)
    calls: list[list[int]] = []
    app = App("native-partial")

    @app.function(
        source=source(topic, group),
        batch_size=8,
        maximum_batching_window_in_seconds=0.5,
        backoff=FAST,
        function_response_types=["ReportBatchItemFailures"],
        bisect_batch_on_function_error=True,
        maximum_retry_attempts=1,
        on_failure=KafkaTopic(dlq),
    )
    async def handler(records: list[Record]) -> BatchItemFailures | None:
        calls.append([r.offset for r in records])
        bad = [r for r in records if r.offset == 5]
        if bad:
            raise BatchItemFailures(bad)
        return None

    await run_worker(app, broker, lambda: [7] in calls, settle=1.0)
    # cut at 5 (no retry used); 5-7 fails at its first record: halves 5-6 then 7; 5-6 halves 5 then 6;
    # 5 alone gets its one retry
    assert calls == [list(range(8)), [5, 6, 7], [5, 6], [5], [5], [6], [7]]
    dead = await read_topic(broker, dlq, 1)
    assert [dict(r.headers)["streamfn.source.offset"] for r in dead] == [b"5"]
    assert orjson.loads(dead[0].value)["responseContext"]["functionError"] is None  # a reported item, as Lambda
    assert await committed(broker, group, topic, 1) == {0: 8}


async def test_records_past_their_maximum_age_go_to_the_destination_and_fresh_ones_are_delivered(
    broker: str, name: Any
) -> None:
    topic, group, dlq = name("t"), name("g"), name("dlq")
    await create_topic(broker, topic, 1)
    old = int(time.time() * 1000) - 120_000
    await produce(
        broker, topic, [Out(b'{"n": %d}' % i, partition=0, timestamp_ms=old if i % 2 else None) for i in range(6)]
    )
    delivered: list[int] = []
    app = App("age")

    @app.function(
        source=source(topic, group),
        batch_size=6,
        maximum_batching_window_in_seconds=0.5,
        maximum_record_age_in_seconds=60,
        on_failure=KafkaTopic(dlq),
    )
    def handler(records: list[Record]) -> None:
        delivered.extend(r.offset for r in records)

    await run_worker(app, broker, lambda: len(delivered) >= 3, settle=1.0)
    assert delivered == [0, 2, 4]
    dead = letters(await read_topic(broker, dlq, 3))
    assert sorted(d["KafkaBatchInfo"]["recordInfo"]["offset"] for d in dead) == [1, 3, 5]
    for letter in dead:
        assert letter["requestContext"]["condition"] == "RecordAgeExceeded"
        assert "responseContext" not in letter and letter["requestContext"]["approximateInvokeCount"] == 0
    assert await committed(broker, group, topic, 1) == {0: 6}


async def test_unwritable_destination_holds_the_commit_until_it_recovers(
    broker: str, name: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from streamfn.connectors.kafka.embedded import EmbeddedBroker, free_port

    topic, group, dlq = name("t"), name("g"), name("dlq")
    await create_topic(broker, topic, 1)
    await produce_values(broker, topic, 20, partitions=1)
    port = free_port()  # nothing listens here yet: the dead-letter cluster is down
    handled: list[int] = []
    app = App("dlq-down")

    @app.function(
        source=source(topic, group),
        batch_size=5,
        maximum_batching_window_in_seconds=0.2,
        backoff=FAST,
        maximum_retry_attempts=0,
        on_failure=KafkaTopic(dlq, bootstrap_servers=f"127.0.0.1:{port}"),
    )
    def handler(records: list[Record]) -> None:
        if records[0].offset == 5:
            raise ValueError("poison batch")
        handled.extend(r.offset for r in records)

    from streamfn.engine.worker import Worker

    worker = Worker(app)
    task = asyncio.create_task(worker.run(handle_signals=False))
    while "writing 5 failed records" not in caplog.text:
        await asyncio.sleep(0.1)
    await asyncio.sleep(3)
    # the partition waits on the destination: the next batch was invoked while the dead letters were being written
    # (invocations overlap the previous batch's writes), and nothing after it
    assert handled == [0, 1, 2, 3, 4, 10, 11, 12, 13, 14]
    assert await committed(broker, group, topic, 1) == {0: 5}  # never past the undelivered failures
    with EmbeddedBroker(port) as dead_letters:
        while len(handled) < 15:
            assert not task.done()
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        worker.stop()
        await task
        dead = await read_topic(dead_letters.address, dlq, 5)
    assert sorted(int(dict(r.headers)["streamfn.source.offset"]) for r in dead) == [5, 6, 7, 8, 9]
    assert handled == [0, 1, 2, 3, 4, *range(10, 20)]
    assert await committed(broker, group, topic, 1) == {0: 20}


async def test_timeouts_and_exceptions_in_sync_and_async_handlers_are_function_errors(broker: str, name: Any) -> None:
    topics = {kind: (name("t"), name("dlq")) for kind in ("sync", "async", "timeout")}
    app = App("errors")
    for topic, _ in topics.values():
        await create_topic(broker, topic, 1)
        await produce_values(broker, topic, 2, partitions=1)
    common = {"batch_size": 2, "maximum_batching_window_in_seconds": 0.2, "backoff": FAST, "maximum_retry_attempts": 1}

    @app.function(source=source(topics["sync"][0], name("g")), on_failure=KafkaTopic(topics["sync"][1]), **common)
    def sync_handler(records: list[Record]) -> None:
        raise LookupError("sync failure")

    @app.function(source=source(topics["async"][0], name("g")), on_failure=KafkaTopic(topics["async"][1]), **common)
    async def async_handler(records: list[Record]) -> None:
        await asyncio.sleep(0)
        raise ArithmeticError("async failure")

    @app.function(
        source=source(topics["timeout"][0], name("g")),
        on_failure=KafkaTopic(topics["timeout"][1]),
        timeout=0.3,
        **common,
    )
    async def slow_handler(records: list[Record]) -> None:
        await asyncio.sleep(10)

    read = await run_until_read(app, broker, {dlq: 2 for _, dlq in topics.values()})
    found = {kind: letters(read[dlq]) for kind, (_, dlq) in topics.items()}
    expected = {
        "sync": ("LookupError", "sync failure"),
        "async": ("ArithmeticError", "async failure"),
        "timeout": ("InvocationTimeout", "invocation exceeded the timeout of 0.3 s"),
    }
    for kind, (error_type, message) in expected.items():
        assert [
            (d["errorType"], d["errorMessage"], d["requestContext"]["approximateInvokeCount"]) for d in found[kind]
        ] == [(error_type, message, 2)] * 2, kind


async def test_undecodable_values_are_dead_lettered_and_never_reach_the_handler(broker: str, name: Any) -> None:
    topic, group, dlq = name("t"), name("g"), name("dlq")
    await create_topic(broker, topic, 1)
    await produce(
        broker, topic, [Out(b'{"n": 0}', partition=0), Out(b"{not json", partition=0), Out(b'{"n": 2}', partition=0)]
    )
    seen: list[Any] = []
    app = App("undecodable")

    @app.function(
        source=source(topic, group), batch_size=3, maximum_batching_window_in_seconds=0.3, on_failure=KafkaTopic(dlq)
    )
    def handler(records: list[Record]) -> None:
        seen.extend(r.value for r in records)

    await run_worker(app, broker, lambda: len(seen) >= 2, settle=1.0)
    assert seen == [{"n": 0}, {"n": 2}]
    (letter,) = letters(await read_topic(broker, dlq, 1))
    assert letter["requestContext"]["condition"] == "DeserializationError"
    assert letter["requestContext"]["approximateInvokeCount"] == 0 and "responseContext" not in letter
    assert letter["errorType"] == "JSONDecodeError" and "unexpected character" in letter["errorMessage"]
    assert base64.b64decode(letter["payload"]["records"][f"{topic}-0"][0]["value"]) == b"{not json"
    assert await committed(broker, group, topic, 1) == {0: 3}


async def test_without_a_destination_failed_records_are_dropped_logged_and_counted(
    broker: str, name: Any, caplog: pytest.LogCaptureFixture
) -> None:
    topic, group = name("t"), name("g")
    await create_topic(broker, topic, 1)
    await produce_values(broker, topic, 4, partitions=1)
    calls: list[int] = []
    app = App("drop")

    @app.function(
        source=source(topic, group),
        batch_size=2,
        maximum_batching_window_in_seconds=0.2,
        backoff=FAST,
        maximum_retry_attempts=1,
    )
    def handler(records: list[Record]) -> None:
        calls.append(records[0].offset)
        if records[0].offset == 0:
            raise ValueError("nope")

    summary = await run_worker(app, broker, lambda: 2 in calls, settle=0.5)
    assert calls == [0, 0, 2]
    assert summary[0].stats.dropped == 2 and summary[0].stats.handled == 2
    for offset in (0, 1):
        assert f"{topic}-0 offset {offset} dropped (RetryAttemptsExhausted after 2 invocations" in caplog.text
    assert await committed(broker, group, topic, 1) == {0: 4}


async def test_infinite_retries_with_a_destination_are_capped_at_10_and_the_log_says_so(
    broker: str, name: Any, caplog: pytest.LogCaptureFixture
) -> None:
    topic, group, dlq = name("t"), name("g"), name("dlq")
    await create_topic(broker, topic, 1)
    await produce_values(broker, topic, 1, partitions=1)
    calls: list[int] = []
    app = App("cap")

    @app.function(
        source=source(topic, group),
        batch_size=1,
        maximum_batching_window_in_seconds=0,
        backoff=Backoff(initial_seconds=0.001, max_seconds=0.005),
        on_failure=KafkaTopic(dlq),
    )
    def handler(records: list[Record]) -> None:  # maximum_retry_attempts left at -1 (for ever)
        calls.append(records[0].offset)
        raise ValueError("always")

    dead = (await run_until_read(app, broker, {dlq: 1}))[dlq]
    assert len(calls) == 11  # 1 + 10 retries
    assert letters(dead)[0]["requestContext"]["approximateInvokeCount"] == 11
    assert "infinite retries with an on_failure destination: capped at 10 retries" in caplog.text
    assert await committed(broker, group, topic, 1) == {0: 1}


async def test_lambda_spelled_destination_and_a_disabled_function(
    broker: str, name: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """DestinationConfig as CloudFormation spells it writes to that topic of the source's cluster; a function with
    Enabled=False is declared but never polls (its group commits nothing)."""
    topic, group, parked_group, dlq = name("t"), name("g"), name("off"), name("dlq")
    await create_topic(broker, topic, 1)
    await produce_values(broker, topic, 3, partitions=1)
    parked: list[Any] = []
    app = App("lambda-spelled")

    @app.function(
        source=source(topic, group),
        DestinationConfig={"OnFailure": {"Destination": f"kafka://{dlq}"}},
        MaximumRetryAttempts=0,
        backoff=FAST,
        maximum_batching_window_in_seconds=0,
    )
    def failing(event: dict[str, Any], context: Any) -> None:
        raise ValueError("always")

    @app.function(source=source(topic, parked_group), Enabled=False)
    def off(event: dict[str, Any], context: Any) -> None:
        parked.append(event)

    dead = (await run_until_read(app, broker, {dlq: 3}))[dlq]
    assert sorted(int(dict(r.headers)["streamfn.source.offset"]) for r in dead) == [0, 1, 2]
    assert await committed(broker, group, topic, 1) == {0: 3}
    assert parked == [] and await committed(broker, parked_group, topic, 1) == {0: None}
    assert "function off: Enabled=False: not polling its source (declared, not run)" in caplog.text


async def test_a_worker_whose_functions_are_all_disabled_stops_at_once(
    broker: str, name: Any, caplog: pytest.LogCaptureFixture
) -> None:
    app = App("all-off")

    @app.function(source=source(name("t"), name("g")), enabled=False)
    def off(records: list[Record]) -> None: ...

    (summary,) = await asyncio.wait_for(Worker(app).run(handle_signals=False), timeout=5)
    assert (summary.name, summary.committed_records, summary.offsets) == ("off", 0, {})
    assert "no function to run: every function with a source has Enabled=False" in caplog.text


async def test_dead_letter_names_the_request_id_of_the_last_invocation(broker: str, name: Any, tmp_path: Path) -> None:
    topic, group, dlq = name("t"), name("g"), name("dlq")
    await create_topic(broker, topic, 1)
    await produce_values(broker, topic, 2, partitions=1)
    seen = tmp_path / "request-ids"
    app = App("request-id")

    @app.function(
        source=source(topic, group),
        batch_size=2,
        maximum_retry_attempts=2,
        backoff=FAST,
        on_failure=KafkaTopic(dlq),
        maximum_batching_window_in_seconds=0.3,
    )
    def failing(event: dict[str, Any], context: Any) -> None:
        with seen.open("a") as file:
            file.write(context.aws_request_id + "\n")
        raise ValueError("always")

    dead = (await run_until_read(app, broker, {dlq: 2}))[dlq]
    invoked = seen.read_text().split()
    assert len(invoked) == 3 and len(set(invoked)) == 3  # 1 + 2 retries, each its own request
    assert [letter["requestContext"]["requestId"] for letter in letters(dead)] == [invoked[-1]] * 2


async def test_dead_letter_of_an_error_message_utf8_cannot_carry_is_written(broker: str, name: Any) -> None:
    """A message with a lone surrogate (what surrogateescape makes of undecodable bytes) once failed every JSON
    encoding of its letter: the partition never moved."""
    topic, group, dlq = name("t"), name("g"), name("dlq")
    await create_topic(broker, topic, 1)
    await produce_values(broker, topic, 2, partitions=1)
    app = App("surrogate")

    class Odd(Exception):
        pass

    @app.function(
        source=source(topic, group),
        batch_size=1,
        maximum_retry_attempts=0,
        backoff=FAST,
        on_failure=KafkaTopic(dlq),
        maximum_batching_window_in_seconds=0,
    )
    def failing(records: list[Record]) -> None:
        if records[0].offset == 0:
            raise Odd(b"file \xff.csv".decode("utf-8", "surrogateescape"))

    dead = (await run_until_read(app, broker, {dlq: 1}, timeout=15))[dlq]
    (letter,) = letters(dead)
    assert letter["errorType"] == "Odd" and letter["errorMessage"] == "file \\udcff.csv"
    assert any("file \\udcff.csv" in line for line in letter["stackTrace"])
    assert dict(dead[0].headers)["streamfn.error.type"] == b"Odd"
    assert await committed(broker, group, topic, 1) == {0: 2}


async def test_dead_letter_too_large_for_the_topic_drops_the_payload_and_points_at_the_record(
    broker: str, name: Any
) -> None:
    """A 770 KiB value is over 1 MiB as base64 in a letter: the letter goes without its payload (the default
    max_message_bytes, aiokafka's and Kafka's 1 MiB), says so, and points at the record in the source topic."""
    topic, group, dlq = name("t"), name("g"), name("dlq")
    await create_topic(broker, topic, 1)
    big = b'{"blob": "' + b"x" * (770 * 1024) + b'"}'
    await produce(
        broker, topic, [Out(b'{"small": 1}', partition=0), Out(big, key=b"k", partition=0, headers=[("h", b"v")])]
    )
    app = App("oversize")

    @app.function(
        source=source(topic, group),
        maximum_retry_attempts=0,
        backoff=FAST,
        on_failure=KafkaTopic(dlq),
        maximum_batching_window_in_seconds=0,
    )
    def failing(records: list[Record]) -> None:
        raise ValueError("never handled")

    dead = (await run_until_read(app, broker, {dlq: 2}))[dlq]
    small, large = sorted(dead, key=lambda r: int(dict(r.headers)["streamfn.source.offset"]))
    assert "payload" in orjson.loads(small.value) and "streamfn" not in orjson.loads(small.value)
    letter = orjson.loads(large.value)
    assert "payload" not in letter and len(large.value) < 1024 * 1024
    note = letter["streamfn"]["payloadDropped"]
    assert note["record"] == {"topic": topic, "partition": 0, "offset": 1} and note["dropped"] == ["payload"]
    size = re.fullmatch(
        r"MaximumPayloadSizeExceeded: the dead letter would be (\d+) bytes, over the destination's "
        r"max_message_bytes=1048576; the record stays in its source topic",
        note["reason"],
    )
    assert size is not None and int(size[1]) > 1024 * 1024
    assert letter["errorMessage"] == "never handled" and letter["KafkaBatchInfo"]["recordInfo"]["offset"] == 1
    assert letter["KafkaBatchInfo"]["payloadSize"] > len(big)
    assert large.key == b"k" and list(large.headers)[:2] == [("h", b"v"), ("streamfn.source.topic", topic.encode())]
    assert await committed(broker, group, topic, 1) == {0: 2}


def test_a_letter_too_large_even_without_its_payload_still_fits() -> None:
    """A huge error message, key and headers: the letter cuts the error text, then leaves the record's key and
    headers out (the record is in its source topic), and says what it dropped; it always fits."""
    record = ConsumerRecord("t", 0, 5, 0, 0, b"k" * 20_000, b"v", None, 20_000, 1, [("h", b"x" * 20_000)])
    arn = "arn:aws:lambda:local:000000000000:function:f"
    origin = FailureOrigin("f", arn, KafkaEvent("b"), KafkaBatchInfo("127.0.0.1:9092"))
    error = ValueError("e" * 90_000)
    failure = FailedRecord(Partition("t", 0), record, Condition.RETRY_ATTEMPTS_EXHAUSTED, 1, error, 1)
    letter = dead_letter(origin, failure, 16 * 1024)
    assert DefaultRecordBatchBuilder.estimate_size_in_bytes(letter.key, letter.value, letter.headers) <= 16 * 1024
    body = orjson.loads(letter.value)
    assert body["streamfn"]["payloadDropped"]["dropped"] == [
        "payload",
        "stackTrace",
        "errorMessage after 1000 characters",
        "key",
        "headers",
    ]
    assert body["errorMessage"] == "e" * 1000 and "stackTrace" not in body and "payload" not in body
    assert letter.key is None and [name for name, _ in letter.headers] == list(PROVENANCE)
