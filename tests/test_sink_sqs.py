"""SqsQueue against moto's SQS in server mode: what arrives in the queue (bodies, attributes, order, FIFO ids),
what is refused at once, what fails for a retry, and one function end to end through the engine."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
from aiobotocore.session import get_session
from conftest import committed, create_topic, produce_values, read_topic, run_worker, source
from pydantic import BaseModel

from streamfn import App, Output, Record
from streamfn.connectors.kafka import KafkaTopic
from streamfn.connectors.kafka.embedded import free_port
from streamfn.connectors.sqs import SqsDeliveryError, SqsQueue
from streamfn.errors import ConfigError
from streamfn.outputs.sink import Emitted, Provenance, RejectedOutput, SinkContext, SinkRetry, SinkWriter

REGION = "us-east-1"
ACCOUNT = "123456789012"
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
SOURCE = Provenance("enrich", "orders", 2, 100, 124)
_queues = itertools.count()


@asynccontextmanager
async def sqs(endpoint: str) -> AsyncIterator[Any]:
    """An independent SQS client for setting queues up and reading what arrived."""
    async with get_session().create_client("sqs", region_name=REGION, endpoint_url=endpoint, **CREDENTIALS) as c:
        yield c


async def create_queue(endpoint: str, fifo: bool = False, **attributes: str) -> str:
    name = f"q{next(_queues)}" + (".fifo" if fifo else "")
    if fifo:
        attributes["FifoQueue"] = "true"
    async with sqs(endpoint) as client:
        created = await client.create_queue(QueueName=name, Attributes=attributes)
    url: str = created["QueueUrl"]
    return url


async def receive(endpoint: str, url: str, count: int, timeout: float = 20) -> list[dict[str, Any]]:
    """Messages of `url` in the order SQS hands them out, deleting each, until `count` arrived; then one more
    receive proves there are no more."""
    found: list[dict[str, Any]] = []
    async with sqs(endpoint) as client:
        deadline = time.monotonic() + timeout
        while len(found) < count and time.monotonic() < deadline:
            found.extend(await _receive_batch(client, url, wait=1))
        found.extend(await _receive_batch(client, url, wait=0))
    return found


async def _receive_batch(client: Any, url: str, wait: int) -> list[dict[str, Any]]:
    response = await client.receive_message(
        QueueUrl=url,
        MaxNumberOfMessages=10,
        WaitTimeSeconds=wait,
        MessageAttributeNames=["All"],
        MessageSystemAttributeNames=["All"],
    )
    messages: list[dict[str, Any]] = response.get("Messages", [])
    if messages:
        await client.delete_message_batch(
            QueueUrl=url,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
        )
    return messages


def attributes(message: dict[str, Any]) -> dict[str, str | bytes]:
    """A received message's attributes as name -> value (str for String, bytes for Binary)."""
    return {
        name: value["StringValue"] if value["DataType"] == "String" else value["BinaryValue"]
        for name, value in message.get("MessageAttributes", {}).items()
    }


def provenance(source: Provenance = SOURCE) -> tuple[tuple[str, bytes], ...]:
    """The headers the engine gives every output of an invocation."""
    return (
        ("streamfn.source.function", source.function.encode()),
        ("streamfn.source.topic", source.topic.encode()),
        ("streamfn.source.partition", str(source.partition).encode()),
        ("streamfn.source.offsets", f"{source.first_offset}-{source.last_offset}".encode()),
    )


PROVENANCE = {
    "streamfn.source.function": "enrich",
    "streamfn.source.topic": "orders",
    "streamfn.source.partition": "2",
    "streamfn.source.offsets": "100-124",
}


def emitted(value: Any, index: int, key: bytes | None = None, headers: tuple[tuple[str, bytes], ...] = ()) -> Emitted:
    return Emitted(value, key, headers + provenance(), SOURCE, index)


async def opened(queue: SqsQueue, function: str = "enrich") -> SinkWriter:
    async def no_chain(handler: Any, value_format: str) -> Any:
        raise AssertionError("not used by SqsQueue")

    return await queue.open(SinkContext(function, no_chain))


def sink(endpoint: str, url: str, **values: Any) -> SqsQueue:
    return SqsQueue(url, region_name=REGION, endpoint_url=endpoint, **CREDENTIALS, **values)


async def write(queue: SqsQueue, outputs: list[Emitted]) -> None:
    writer = await opened(queue)
    try:
        await writer.write(outputs)
    finally:
        await writer.close()


class Order(BaseModel):
    id: int
    total: float
    items: list[str]


# --- delivery ---------------------------------------------------------------------------------------------------


async def test_fifo_round_trip_keeps_order_with_provenance_and_fifo_ids(moto_endpoint: str) -> None:
    url = await create_queue(moto_endpoint, fifo=True)
    outputs = [emitted({"n": n}, n) for n in range(25)]  # keyless: one group (the function), one order

    await write(sink(moto_endpoint, url), outputs)

    messages = await receive(moto_endpoint, url, 25)
    assert [m["Body"] for m in messages] == [orjson.dumps({"n": n}).decode() for n in range(25)]
    assert all(attributes(m) == PROVENANCE for m in messages)
    assert {m["Attributes"]["MessageGroupId"] for m in messages} == {"enrich"}
    assert [m["Attributes"]["MessageDeduplicationId"] for m in messages] == [
        hashlib.sha256(f"enrich/orders-2/100-124/{n}".encode()).hexdigest() for n in range(25)
    ]


async def test_fifo_replay_after_a_restart_is_deduplicated_by_sqs(moto_endpoint: str) -> None:
    url = await create_queue(moto_endpoint, fifo=True)
    outputs = [emitted({"n": n}, n, key=b"customer-%d" % (n % 3)) for n in range(12)]

    await write(sink(moto_endpoint, url), outputs)
    await write(sink(moto_endpoint, url), outputs)  # a new writer (restart) replays the same batch: same Emitted.id

    messages = await receive(moto_endpoint, url, 12)
    assert sorted(m["Body"] for m in messages) == sorted(orjson.dumps({"n": n}).decode() for n in range(12))
    by_group: dict[str, list[int]] = {}
    for m in messages:
        by_group.setdefault(m["Attributes"]["MessageGroupId"], []).append(orjson.loads(m["Body"])["n"])
    assert by_group == {f"customer-{k}": list(range(k, 12, 3)) for k in range(3)}  # the key is the group, in order
    assert all(attributes(m)["streamfn.key"] == m["Attributes"]["MessageGroupId"] for m in messages)


async def test_fifo_group_from_configuration_or_hashed_key(moto_endpoint: str) -> None:
    url = await create_queue(moto_endpoint, fifo=True)
    await write(sink(moto_endpoint, url, message_group_id="all-orders"), [emitted("a", 0, key=b"k1"), emitted("b", 1)])
    await write(sink(moto_endpoint, url), [emitted("c", 2, key=b"not a group id \xff")])

    messages = await receive(moto_endpoint, url, 3)
    assert [(m["Body"], m["Attributes"]["MessageGroupId"]) for m in messages] == [
        ("a", "all-orders"),
        ("b", "all-orders"),
        ("c", hashlib.sha256(b"not a group id \xff").hexdigest()),
    ]
    assert attributes(messages[2])["streamfn.key"] == b"not a group id \xff"  # not text: a Binary attribute


async def test_standard_queue_delivers_all_and_a_retried_write_sends_no_duplicates(moto_endpoint: str) -> None:
    url = await create_queue(moto_endpoint)
    outputs = [emitted({"n": n}, n) for n in range(25)]
    writer = await opened(sink(moto_endpoint, url))
    try:
        await writer.write(outputs)
        await writer.write(outputs)  # the engine retrying a write: acknowledged outputs are not sent again
    finally:
        await writer.close()

    messages = await receive(moto_endpoint, url, 25)
    assert sorted(orjson.loads(m["Body"])["n"] for m in messages) == list(range(25))
    assert all(attributes(m) == PROVENANCE for m in messages)
    assert all("MessageGroupId" not in m["Attributes"] for m in messages)


async def test_bodies_of_each_value_type(moto_endpoint: str) -> None:
    url = await create_queue(moto_endpoint, fifo=True)
    values: list[Any] = [
        {"id": 7, "name": "Zoë"},
        "plain text, kept as is",
        Order(id=1, total=9.5, items=["book", "pen"]),
        b'{"already": "json"}',
        b"\x00\x01\xfe\xff binary",
        [1, 2, 3],
        42,
    ]
    await write(sink(moto_endpoint, url), [emitted(v, i) for i, v in enumerate(values)])

    messages = await receive(moto_endpoint, url, len(values))
    assert [m["Body"] for m in messages] == [
        '{"id":7,"name":"Zoë"}',
        "plain text, kept as is",
        '{"id":1,"total":9.5,"items":["book","pen"]}',
        '{"already": "json"}',
        base64.b64encode(b"\x00\x01\xfe\xff binary").decode(),
        "[1,2,3]",
        "42",
    ]
    encodings = [attributes(m).get("streamfn.encoding") for m in messages]
    assert encodings == [None, None, None, None, "base64", None, None]


async def test_attributes_keep_the_most_useful_ten(moto_endpoint: str) -> None:
    url = await create_queue(moto_endpoint)
    trace = (("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"), ("tracestate", b"x=1"))
    own = tuple((f"h{i}", f"v{i}".encode()) for i in range(6))
    output = Emitted(
        {"n": 1},
        b"k1",
        (("bad name!", b"dropped"), ("empty", b""), ("raw", b"\xff\x00"), *own, *provenance(), *trace),
        SOURCE,
        0,
    )
    await write(sink(moto_endpoint, url), [output])

    [message] = await receive(moto_endpoint, url, 1)
    assert attributes(message) == {
        **PROVENANCE,
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "streamfn.key": "k1",
        "raw": b"\xff\x00",  # not text: Binary
        "h0": "v0",
        "h1": "v1",
        "h2": "v2",
    }  # 10: h3..h5 and tracestate did not fit; an invalid name and an empty value are never sent


async def test_large_outputs_are_split_under_the_batch_size_limit(moto_endpoint: str) -> None:
    url = await create_queue(moto_endpoint)
    outputs = [emitted(f"{n}:" + "x" * 400_000, n) for n in range(6)]  # 2.4 MB: one request would be refused

    await write(sink(moto_endpoint, url), outputs)

    messages = await receive(moto_endpoint, url, 6)
    assert sorted(m["Body"] for m in messages) == sorted(o.value for o in outputs)


# --- failures ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("nul \x00 is not allowed", "U+0000"),
        ("", "empty"),
        ("x" * 1_048_577, "over SQS's limit of 1048576 bytes"),
        ({1, 2}, "cannot be a message body"),
    ],
    ids=["forbidden-character", "empty", "too-large", "not-json"],
)
async def test_values_sqs_can_never_accept_reject_the_write_before_sending(
    moto_endpoint: str, value: Any, reason: str
) -> None:
    url = await create_queue(moto_endpoint)
    with pytest.raises(RejectedOutput, match=re.escape(reason)):
        await write(sink(moto_endpoint, url), [emitted("fine", 0), emitted(value, 1)])
    assert await receive(moto_endpoint, url, 0) == []  # nothing was sent, not even the valid output


async def test_message_the_queue_refuses_is_rejected(moto_endpoint: str) -> None:
    url = await create_queue(moto_endpoint, MaximumMessageSize="1024")
    with pytest.raises(RejectedOutput, match="InvalidParameterValue"):
        await write(sink(moto_endpoint, url), [emitted("x" * 2000, 0)])


async def test_missing_queue_fails_for_a_retry(moto_endpoint: str) -> None:
    url = f"{moto_endpoint}/{ACCOUNT}/no-such-queue"
    with pytest.raises(SqsDeliveryError, match="NonExistentQueue") as raised:
        await write(sink(moto_endpoint, url), [emitted("a", 0)])
    assert not isinstance(raised.value, RejectedOutput)


async def test_unreachable_endpoint_fails_within_seconds() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    queue = sink(endpoint, f"{endpoint}/{ACCOUNT}/q")
    writer = await opened(queue)
    try:
        started = time.monotonic()
        with pytest.raises(SqsDeliveryError, match="SqsQueue\\('q'\\)"):
            await writer.write([emitted("a", 0)])
        assert time.monotonic() - started < 5
    finally:
        await writer.close()


# --- configuration ----------------------------------------------------------------------------------------------


def test_configuration_errors_are_one_line() -> None:
    cases = {
        "SqsQueue: queue_url is required": {},
        "SqsQueue: queue_url='sqs://q' is invalid: must be an http:// or https:// URL with a host": {
            "queue_url": "sqs://q"
        },
        "SqsQueue: message_group_id='has space' is invalid": {
            "queue_url": "https://sqs.eu-west-1.amazonaws.com/1/q.fifo",
            "message_group_id": "has space",
        },
        "SqsQueue: aws_access_key_id and aws_secret_access_key go together": {
            "queue_url": "https://sqs.eu-west-1.amazonaws.com/1/q",
            "aws_access_key_id": "AKIA",
        },
        "SqsQueue: unknown parameter 'region' (did you mean 'region_name'?)": {
            "queue_url": "https://sqs.eu-west-1.amazonaws.com/1/q",
            "region": "eu-west-1",
        },
    }
    for expected, values in cases.items():
        with pytest.raises(ConfigError) as raised:
            SqsQueue(**values)
        assert str(raised.value).startswith(expected)
        assert "\n" not in str(raised.value)


def test_region_and_endpoint_follow_the_queue_url() -> None:
    aws = SqsQueue("https://sqs.eu-west-1.amazonaws.com/123456789012/orders.fifo")
    assert (aws.region(), aws.endpoint(), aws.fifo, str(aws)) == ("eu-west-1", None, True, "SqsQueue('orders.fifo')")
    local = SqsQueue("http://localhost:4566/000000000000/jobs", region_name="us-east-1")
    assert (local.region(), local.endpoint(), local.fifo) == ("us-east-1", "http://localhost:4566", False)
    assert "s3cr3t" not in repr(SqsQueue("http://h/1/q", aws_access_key_id="id", aws_secret_access_key="s3cr3t"))


# --- through the engine -----------------------------------------------------------------------------------------


async def test_function_delivers_one_message_per_record_with_provenance_then_commits(
    broker: str, name: Any, moto_endpoint: str
) -> None:
    topic, group = name("t"), name("g")
    await create_topic(broker, topic, 4)
    await produce_values(broker, topic, 40, partitions=4)  # {"n": i} keyed k<i>, partition i % 4
    url = await create_queue(moto_endpoint, fifo=True)
    app = App("sqsflow")

    @app.function(
        source=source(topic, group), maximum_batching_window_in_seconds=0.1, outputs=[sink(moto_endpoint, url)]
    )
    def handler(records: list[Record]) -> list[Output]:
        return [Output({"n": r.value["n"], "offset": r.offset}, key=f"p{r.partition}") for r in records]

    messages: list[dict[str, Any]] = []

    async def read() -> None:
        messages.extend(await receive(moto_endpoint, url, 40, timeout=40))

    reading = asyncio.create_task(read())
    await run_worker(app, broker, reading.done, timeout=50, settle=0.5)

    assert len(messages) == 40
    for m in messages:
        body = orjson.loads(m["Body"])
        found = attributes(m)
        first, last = (int(o) for o in str(found.pop("streamfn.source.offsets")).split("-"))
        assert first <= body["offset"] <= last
        assert found == {
            "streamfn.source.function": "handler",
            "streamfn.source.topic": topic,
            "streamfn.source.partition": str(body["n"] % 4),
            "streamfn.key": f"p{body['n'] % 4}",
        }
    by_partition: dict[str, list[int]] = {}
    for m in messages:
        by_partition.setdefault(m["Attributes"]["MessageGroupId"], []).append(orjson.loads(m["Body"])["n"])
    assert by_partition == {f"p{p}": list(range(p, 40, 4)) for p in range(4)}  # each group in offset order
    assert await committed(broker, group, topic, 4) == {0: 10, 1: 10, 2: 10, 3: 10}


async def test_output_sqs_refuses_dead_letters_its_records_at_once(broker: str, name: Any, moto_endpoint: str) -> None:
    topic, group, dlq = name("t"), name("g"), name("dlq")
    await create_topic(broker, topic, 1)
    await produce_values(broker, topic, 6, partitions=1)
    url = await create_queue(moto_endpoint)
    app = App("sqsreject")

    @app.function(
        source=source(topic, group),
        batch_size=1,
        outputs=[sink(moto_endpoint, url, retry=SinkRetry(max_attempts=-1))],  # rejected outputs are not retried at all
        on_failure=KafkaTopic(dlq),
    )
    def handler(records: list[Record]) -> list[str]:
        return [f"n={r.value['n']}" + ("\x00" if r.value["n"] == 3 else "") for r in records]

    letters: list[Any] = []
    messages: list[dict[str, Any]] = []

    async def read_both() -> None:
        letters.extend(await read_topic(broker, dlq, 1, timeout=30))
        messages.extend(await receive(moto_endpoint, url, 5, timeout=30))

    reading = asyncio.create_task(read_both())
    await run_worker(app, broker, reading.done, timeout=40, settle=0.5)

    assert [dict(r.headers)["streamfn.source.offset"] for r in letters] == [b"3"]
    letter = orjson.loads(letters[0].value)
    assert letter["requestContext"]["condition"] == "OutputDeliveryFailed"
    assert "U+0000" in letter["errorMessage"]
    assert sorted(m["Body"] for m in messages) == [f"n={n}" for n in (0, 1, 2, 4, 5)]
    assert await committed(broker, group, topic, 1) == {0: 6}


async def test_a_kafka_functions_sqs_destination_gets_lambdas_failure_record_without_the_payload(
    broker: str, name: Any, moto_endpoint: str
) -> None:
    """As Lambda sends to an SQS on-failure destination of a Kafka mapping (lambda-esm.md 2.4): requestContext,
    responseContext, version, timestamp and KafkaBatchInfo (the dialect's block, one record), metadata only; the
    common part comes from streamfn.failures.record, as the dead-letter topic's."""
    from streamfn.context import function_arn

    topic, group = name("t"), name("g")
    await create_topic(broker, topic, 1)
    await produce_values(broker, topic, 3, partitions=1)
    url = await create_queue(moto_endpoint)
    app = App("sqsdlq")

    @app.function(source=source(topic, group), maximum_retry_attempts=0, on_failure=sink(moto_endpoint, url))
    def handler(records: list[Record]) -> None:
        if any(r.value["n"] == 1 for r in records):
            raise ValueError("n = 1")

    messages: list[dict[str, Any]] = []

    async def read() -> None:
        messages.extend(await receive(moto_endpoint, url, 3, timeout=30))

    reading = asyncio.create_task(read())
    await run_worker(app, broker, reading.done, timeout=40)
    assert await committed(broker, group, topic, 1) == {0: 3}
    assert len(messages) == 3  # the batch of 3 failed once, without retries: each record's failure record
    bodies = {
        orjson.loads(m["Body"])["KafkaBatchInfo"]["recordInfo"]["offset"]: orjson.loads(m["Body"]) for m in messages
    }
    assert sorted(bodies) == [0, 1, 2]
    for offset, body in bodies.items():
        assert set(body) == {"requestContext", "responseContext", "version", "timestamp", "KafkaBatchInfo"}
        assert {k: v for k, v in body["requestContext"].items() if k != "requestId"} == {
            "functionArn": function_arn("handler"),
            "condition": "RetryAttemptsExhausted",
            "approximateInvokeCount": 1,
        }
        response = {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"}
        assert body["responseContext"] == response
        info = body["KafkaBatchInfo"]
        assert (info["batchSize"], info["bootstrapServers"], info["recordInfo"]["offset"]) == (1, broker, offset)
