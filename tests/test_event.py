"""What a handler receives: Lambda's self-managed Kafka event field by field, the context, native records."""

from __future__ import annotations

import base64
import uuid
from typing import Any

from aiokafka.structs import ConsumerRecord
from conftest import Out, create_topic, produce, run_worker, source

from streamfn import App, Record
from streamfn.connectors.kafka.event import lambda_record

PAYLOADS = [
    Out(b'{"id": 1}', key=b"user-1", partition=0, headers=[("trace", b"abc"), ("trace", b""), ("bin", b"\x00\xff")]),
    Out(b"\x00\x01binary\xfe", key=None, partition=0, headers=[]),
    Out(
        "ünïcode ✓".encode(),
        key=b"\xff\x00",
        partition=1,
        headers=[("h", b"v"), ("name", "hello-ë".encode())],
        timestamp_ms=1_700_000_000_123,
    ),
]


async def test_lambda_event_field_by_field(broker: str, name: Any) -> None:
    topic, group = name("t"), name("g")
    await create_topic(broker, topic, 2)
    await produce(broker, topic, PAYLOADS)
    events: list[dict[str, Any]] = []
    contexts: list[Any] = []

    app = App("shape")

    @app.function(source=source(topic, group), batch_size=10, maximum_batching_window_in_seconds=0.2, timeout=5)
    def handler(event: dict[str, Any], context: Any) -> None:
        events.append(event)
        contexts.append(
            (
                context.function_name,
                context.aws_request_id,
                context.invoked_function_arn,
                context.get_remaining_time_in_millis(),
                context.logger,
            )
        )

    await run_worker(app, broker, lambda: sum(len(r) for e in events for r in e["records"].values()) >= 3)

    assert {e["eventSource"] for e in events} == {"SelfManagedKafka"}
    assert {e["bootstrapServers"] for e in events} == {broker}
    by_key = {k: v for e in events for k, v in e["records"].items()}
    assert set(by_key) == {f"{topic}-0", f"{topic}-1"}
    p0, p1 = by_key[f"{topic}-0"], by_key[f"{topic}-1"]
    assert [r["offset"] for r in p0] == [0, 1] and [r["offset"] for r in p1] == [0]

    first, second, third = p0[0], p0[1], p1[0]
    assert set(first) == {"topic", "partition", "offset", "timestamp", "timestampType", "key", "value", "headers"}
    assert first["topic"] == topic and first["partition"] == 0
    assert base64.b64decode(first["key"]) == b"user-1"
    assert base64.b64decode(first["value"]) == b'{"id": 1}'
    assert first["headers"] == [{"trace": list(b"abc")}, {"trace": []}, {"bin": [0, -1]}]  # Java's signed bytes
    assert first["timestampType"] == "CREATE_TIME" and isinstance(first["timestamp"], int)
    assert first["timestamp"] > 1_600_000_000_000  # epoch milliseconds

    assert "key" not in second  # a null key is absent, as in Lambda
    assert base64.b64decode(second["value"]) == b"\x00\x01binary\xfe"
    assert second["headers"] == []

    assert base64.b64decode(third["key"]) == b"\xff\x00"
    assert base64.b64decode(third["value"]).decode() == "ünïcode ✓"
    assert third["timestamp"] == 1_700_000_000_123
    assert third["headers"] == [{"h": [118]}, {"name": [104, 101, 108, 108, 111, 45, -61, -85]}]  # AWS's ë

    name_, _, arn, remaining, logger = contexts[0]
    assert name_ == "handler" and arn.endswith(":function:handler") and arn.startswith("arn:aws:lambda:")
    assert len({c[1] for c in contexts}) == len(contexts)  # one per invocation
    assert all(str(uuid.UUID(c[1])) == c[1] and uuid.UUID(c[1]).version == 4 for c in contexts)  # as Lambda's
    assert 0 < remaining <= 5000
    logger.info("context.logger works")


def test_log_append_time_and_tombstone_in_event() -> None:
    record = ConsumerRecord("t", 3, 7, 1234, 1, b"k", None, None, 1, 0, [("a", b"b"), ("s", b"\x80\x7f"), ("n", None)])
    assert lambda_record(record) == {
        "topic": "t",
        "partition": 3,
        "offset": 7,
        "timestamp": 1234,
        "timestampType": "LOG_APPEND_TIME",
        "key": "aw==",
        "headers": [{"a": [98]}, {"s": [-128, 127]}, {"n": []}],
    }


async def test_native_records_decoded_per_value_format(broker: str, name: Any) -> None:
    topic = name("t")
    await create_topic(broker, topic, 1)
    await produce(
        broker, topic, [Out(b'{"a": [1, 2]}', key=b"k", partition=0, headers=[("x", b"y")]), Out(b"null", partition=0)]
    )
    got: dict[str, list[Record]] = {"json": [], "string": [], "bytes": []}
    app = App("native")
    for fmt in got:

        def collect(records: list[Record], fmt: str = fmt) -> None:
            got[fmt].extend(records)

        app.function(
            source=source(topic, name(fmt), value_format=fmt),
            name=f"read_{fmt}",
            maximum_batching_window_in_seconds=0.1,
        )(collect)

    await run_worker(app, broker, lambda: all(len(v) >= 2 for v in got.values()))
    assert [r.value for r in got["json"]] == [{"a": [1, 2]}, None]
    assert [r.value for r in got["string"]] == ['{"a": [1, 2]}', "null"]
    assert [r.value for r in got["bytes"]] == [b'{"a": [1, 2]}', b"null"]
    first = got["json"][0]
    assert (first.topic, first.partition, first.offset, first.key) == (topic, 0, 0, b"k")
    assert list(first.headers) == [("x", b"y")] and first.timestamp_type == "CREATE_TIME"
