"""Redrive: dead letters go back to their source topic once, and a fixed handler then processes them."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import fastavro
import orjson
import pytest
from aiokafka.structs import ConsumerRecord
from conftest import (
    Out,
    committed,
    create_topic,
    produce,
    read_topic,
    run_cli,
    run_until_read,
    run_worker,
    source,
    write_pipeline,
)
from registry_server import RegistryServer

from streamfn import App, Backoff, Record
from streamfn.connectors.kafka import KafkaTopic
from streamfn.connectors.kafka.dialect import KafkaBatchInfo
from streamfn.connectors.kafka.event import KafkaEvent
from streamfn.connectors.kafka.letter import dead_letter
from streamfn.connectors.kafka.redrive import redrive
from streamfn.failures.model import Condition, FailedRecord, FailureOrigin
from streamfn.formats.registry import SchemaRegistry
from streamfn.record import Partition

PIPELINE = """
import os
from streamfn import App
from streamfn.connectors.kafka import KafkaSource, KafkaTopic

app = App("redrive")

@app.function(source=KafkaSource(topics=[os.environ["TOPIC"]], consumer_group_id=os.environ["GROUP"]),
              maximum_retry_attempts=0, on_failure=KafkaTopic(os.environ["DLQ"]))
def handle(records): ...
"""


@pytest.mark.slow
async def test_redrive_round_trip(broker: str, name: Any, tmp_path: Path, monkeypatch: Any) -> None:
    topic, group, dlq = name("t"), name("g"), name("dlq")
    await create_topic(broker, topic, 2)
    await produce(
        broker,
        topic,
        [
            Out(
                b'{"n": %d, "bad": %s}' % (i, b"true" if i in (3, 6) else b"false"),
                key=b"k%d" % i,
                partition=i % 2,
                headers=[("origin", b"test")],
            )
            for i in range(8)
        ],
    )
    fixed = False
    handled: list[tuple[int, int, int]] = []

    def build() -> App:
        app = App("redrive")

        @app.function(
            source=source(topic, group),
            batch_size=10,
            maximum_batching_window_in_seconds=0.3,
            maximum_retry_attempts=0,
            backoff=Backoff(initial_seconds=0.01),
            on_failure=KafkaTopic(dlq),
        )
        def handle(records: list[Record]) -> None:
            if not fixed and any(r.value["bad"] for r in records):
                raise ValueError("not handled yet")
            handled.extend((r.partition, r.offset, r.value["n"]) for r in records)

        return app

    # 1. a buggy handler: partition 1's batch (1, 3, 5, 7) and partition 0's batch (0, 2, 4, 6) fail
    dead = (await run_until_read(build(), broker, {dlq: 8}))[dlq]
    assert len(dead) == 8 and handled == []
    assert await committed(broker, group, topic, 2) == {0: 4, 1: 4}

    pipeline = write_pipeline(tmp_path, PIPELINE)
    env = {"TOPIC": topic, "GROUP": group, "DLQ": dlq}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # 2. a dry run lists them and moves nothing
    dry = run_cli("redrive", str(pipeline), "--function", "handle", "--dry-run", servers=broker)
    assert dry.returncode == 0, dry.stderr
    assert (
        "would redrive 8 records" in dry.stdout and f"would redrive {topic}-1@3 (RetryAttemptsExhausted)" in dry.stdout
    )
    # 3. a redrive puts the originals back, once
    done = run_cli("redrive", str(pipeline), "--function", "handle", servers=broker)
    assert done.returncode == 0 and "redrove 8 records" in done.stdout, done.stderr
    again = run_cli("redrive", str(pipeline), "--function", "handle", servers=broker)
    assert again.returncode == 0 and "redrove 0 records" in again.stdout, again.stderr
    back = await read_topic(broker, topic, 16)
    redriven = [r for r in back if r.offset >= 4]
    assert sorted((r.partition, r.key, r.value, list(r.headers)) for r in redriven) == sorted(
        (i % 2, b"k%d" % i, b'{"n": %d, "bad": %s}' % (i, b"true" if i in (3, 6) else b"false"), [("origin", b"test")])
        for i in range(8)
    )
    # 4. the fixed handler processes the redriven records
    fixed = True
    await run_worker(build(), broker, lambda: len(handled) >= 8, settle=0.5)
    assert sorted(n for _, _, n in handled) == list(range(8))
    assert await committed(broker, group, topic, 2) == {0: 8, 1: 8}


ORDER_SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "Order",
    "fields": [{"name": "id", "type": "string"}, {"name": "amount", "type": "double"}],
}


def avro(order: dict[str, Any]) -> bytes:
    body = io.BytesIO()
    fastavro.schemaless_writer(body, fastavro.parse_schema(ORDER_SCHEMA), order)
    return body.getvalue()


def originals(values: list[bytes | None]) -> list[Out]:
    """Records whose key, value and headers must come back exactly: a null key, an upstream function's streamfn.*
    provenance, an empty and a non-UTF-8 header value, a repeated header name."""
    headers = [("streamfn.source.function", b"upstream"), ("empty", b""), ("bin", b"\xff\x00"), ("bin", b"2")]
    return [
        Out(value, key=None if i == 0 else b"k%d" % i, partition=0, headers=headers[: i + 1])
        for i, value in enumerate(values)
    ]


async def run_redrive_round_trip(
    broker: str, name: Any, records: list[Out], **source_options: Any
) -> list[tuple[Any, Any, list[tuple[str, bytes]]]]:
    """Produce `records`, fail them all into the dead-letter topic, redrive them into the source topic; return
    what the source topic then holds after the originals (key, value, headers as raw bytes), sorted."""
    topic, group, dlq = name("t"), name("g"), name("dlq")
    await create_topic(broker, topic, 1)
    await produce(broker, topic, records)
    app = App("exact")

    @app.function(
        source=source(topic, group, **source_options),
        maximum_retry_attempts=0,
        backoff=Backoff(initial_seconds=0.01),
        maximum_batching_window_in_seconds=0.3,
        on_failure=KafkaTopic(dlq),
    )
    def failing(event: dict[str, Any], context: Any) -> None:
        raise ValueError("not yet")

    await run_until_read(app, broker, {dlq: len(records)})
    done = await redrive(broker, dlq, f"{group}-redrive", source_servers=broker, limit=None, dry_run=False)
    assert sorted((r.offset, r.origin) for r in done) == [(i, "letter") for i in range(len(records))]
    back = await read_topic(broker, topic, 2 * len(records))
    return sorted(((r.key, r.value, list(r.headers)) for r in back[len(records) :]), key=repr)


def raw(records: list[Out]) -> list[tuple[Any, Any, list[tuple[str, bytes]]]]:
    """In the order run_redrive_round_trip returns them (letters of different keys come back in any order)."""
    return sorted(((r.key, r.value, list(r.headers or [])) for r in records), key=repr)


async def test_redrive_puts_back_json_records_byte_for_byte(broker: str, name: Any) -> None:
    records = originals([b'{"n": 0}', b'{"n":1 , "spaced" : true}', None, b"not json \xff"])
    assert await run_redrive_round_trip(broker, name, records) == raw(records)


async def test_redrive_puts_back_avro_records_of_a_schema_file_byte_for_byte(
    broker: str, name: Any, tmp_path: Path
) -> None:
    schema = tmp_path / "order.avsc"
    schema.write_bytes(orjson.dumps(ORDER_SCHEMA))
    records = originals([avro({"id": f"o-{i}", "amount": i + 0.5}) for i in range(3)])
    redriven = await run_redrive_round_trip(broker, name, records, value_format="avro", value_schema=str(schema))
    assert redriven == raw(records)


@pytest.mark.parametrize("record_format", ["JSON", "SOURCE"])
async def test_redrive_puts_back_registry_framed_avro_byte_for_byte(broker: str, name: Any, record_format: str) -> None:
    """The Lambda payload holds such a value decoded (JSON) or without its 5-byte header (SOURCE): the letter keeps
    the exact bytes beside it."""
    with RegistryServer() as registry:
        schema_id = registry.state.register("orders-value", {"schema": orjson.dumps(ORDER_SCHEMA).decode()}).body["id"]
        framed = [b"\x00" + schema_id.to_bytes(4, "big") + avro({"id": f"o-{i}", "amount": i}) for i in range(3)]
        records = originals(framed)
        redriven = await run_redrive_round_trip(
            broker,
            name,
            records,
            value_format="avro",
            schema_registry=SchemaRegistry(registry.url),
            event_record_format=record_format,
        )
    assert redriven == raw(records)


@pytest.mark.slow
async def test_redrive_reads_a_record_whose_letter_dropped_its_payload_back_from_the_source(
    broker: str, name: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    topic, group, dlq = name("t"), name("g"), name("dlq")
    await create_topic(broker, topic, 1)
    big = Out(b'"' + b"y" * (770 * 1024) + b'"', key=b"big", partition=0, headers=[("h", b"\xfe")])
    await produce(broker, topic, [big])
    app = App("redrive")

    @app.function(
        source=source(topic, group),
        maximum_retry_attempts=0,
        backoff=Backoff(initial_seconds=0.01),
        maximum_batching_window_in_seconds=0,
        on_failure=KafkaTopic(dlq),
    )
    def handle(records: list[Record]) -> None:
        raise ValueError("too big to handle")

    (letter,) = (await run_until_read(app, broker, {dlq: 1}))[dlq]
    assert "payloadDropped" in orjson.loads(letter.value)["streamfn"]
    # a letter pointing at an offset the source no longer holds (as after retention): reported, nothing produced
    gone = ConsumerRecord(topic, 0, 7, 0, 0, big.key, big.value, None, 3, len(big.value or b""), big.headers)
    arn = "arn:aws:lambda:local:000000000000:function:handle"
    origin = FailureOrigin("handle", arn, KafkaEvent(broker), KafkaBatchInfo(broker))
    failure = FailedRecord(Partition(topic, 0), gone, Condition.RETRY_ATTEMPTS_EXHAUSTED, 1, ValueError("x"), 1)
    lost = dead_letter(origin, failure, 16 * 1024)
    await produce(broker, dlq, [Out(lost.value, key=lost.key, partition=letter.partition, headers=lost.headers)])
    for key, value in {"TOPIC": topic, "GROUP": group, "DLQ": dlq}.items():
        monkeypatch.setenv(key, value)
    done = run_cli("redrive", str(write_pipeline(tmp_path, PIPELINE)), "--function", "handle", servers=broker)
    assert done.returncode == 1, done.stderr
    assert f"redrove {topic}-0@0 (RetryAttemptsExhausted) from the source topic (payload dropped)" in done.stdout
    assert "redrove 1 records" in done.stdout
    assert done.stderr.strip() == (
        f"cannot redrive {topic}-0@7 (RetryAttemptsExhausted): its letter has no payload and the source lost it"
    )
    back = await read_topic(broker, topic, 3, timeout=5)
    assert [(r.offset, r.key, r.value, list(r.headers)) for r in back] == [
        (offset, big.key, big.value, list(big.headers or [])) for offset in (0, 1)
    ]
