"""The Http sink against a real HTTP server on 127.0.0.1: bodies, headers, status handling, and through the engine
a receiver that is down for a while (nothing lost, nothing duplicated, offsets held) or never recovers (dead
letters with OutputDeliveryFailed)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import orjson
import pytest
from conftest import committed, create_topic, produce_values, read_topic, run_worker, source
from pydantic import BaseModel

from streamfn import App, Record
from streamfn.connectors.http import Http, HttpDeliveryError
from streamfn.connectors.kafka import KafkaTopic
from streamfn.errors import ConfigError
from streamfn.outputs.sink import Emitted, Provenance, RejectedOutput, SinkContext, SinkRetry, SinkWriter

REFUSAL = b'{"error": "refused: field \\"n\\" is invalid"}'
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


# --- a real HTTP/1.1 receiver ---------------------------------------------------------------------------------------


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    """Names lowercased."""
    body: bytes
    status: int
    """What the receiver answered."""

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Receiver:
    """An asyncio HTTP/1.1 server (keep-alive) that records every request and answers `status`, or the next of
    `script` while it lasts; `stop()` closes the port and every connection, `start()` reopens the same port."""

    status: int = 200
    body: bytes = b'{"ok": true}'
    delay: float = 0.0
    script: list[int] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None
    _connections: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    @property
    def accepted(self) -> list[Request]:
        return [r for r in self.requests if 200 <= r.status < 300]

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connected, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while await self._exchange(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        line = await reader.readline()
        if not line:
            return False
        method, path, _ = line.decode().split(" ", 2)
        headers: dict[str, str] = {}
        while (header := await reader.readline()) not in (b"\r\n", b""):
            name, value = header.decode().split(":", 1)
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        if self.delay:
            await asyncio.sleep(self.delay)
        status = self.script.pop(0) if self.script else self.status
        self.requests.append(Request(method, path, headers, body, status))
        answer = self.body if status < 300 else REFUSAL if status < 500 else b'{"error": "overloaded"}'
        writer.write(
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(answer)}\r\n\r\n".encode()
            + answer
        )
        await writer.drain()
        return True


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    server = Receiver()
    await server.start()
    yield server
    await server.stop()


# --- helpers --------------------------------------------------------------------------------------------------------


class Reading(BaseModel):
    sensor: str
    celsius: float


def emitted(values: Sequence[Any], *, offset: int = 1000, per_invocation: int = 50) -> list[Emitted]:
    """Outputs as the engine hands them over: one per record of orders-3 from `offset`, invoked `per_invocation`
    records at a time (an output's id, and so the idempotency key, follows from these offsets)."""
    outputs = []
    for i, value in enumerate(values):
        first = offset + i // per_invocation * per_invocation
        headers: tuple[tuple[str, bytes], ...] = (("streamfn.source.function", b"enrich"),)
        if i in (0, 200):
            headers += (("traceparent", TRACEPARENT.encode()),)
        source_of = Provenance("enrich", "orders", 3, first, first + per_invocation - 1)
        outputs.append(Emitted(value, None, headers, source_of, i % per_invocation))
    return outputs


async def _no_chain(handler: Callable[..., Any], value_format: str) -> Any:
    raise AssertionError("the Http sink never chains functions")


CONTEXT = SinkContext("enrich", _no_chain)


@contextlib.asynccontextmanager
async def opened(sink: Http) -> AsyncIterator[SinkWriter]:
    writer = await sink.open(CONTEXT)
    try:
        yield writer
    finally:
        await writer.close()


async def raised(call: Awaitable[None]) -> tuple[BaseException, float]:
    started = time.monotonic()
    with pytest.raises(Exception) as caught:
        await call
    return caught.value, time.monotonic() - started


# --- the connector --------------------------------------------------------------------------------------------------


async def test_round_trip_chunks_in_order_with_exact_bodies_and_headers(receiver: Receiver) -> None:
    values: list[Any] = [{"n": i} for i in range(250)]
    values[1:6] = ["plain text", "caf\u00e9 bytes".encode(), Reading(sensor="s1", celsius=21.5), None, [1, "two"]]
    sink = Http(receiver.url, auth=("ingest", "s3cret"), headers={"X-Tenant": "acme"}, max_batch=100)
    async with opened(sink) as writer:
        await writer.write(emitted(values))

    expected = [{"n": i} for i in range(250)]
    expected[1:6] = ["plain text", "caf\u00e9 bytes", {"sensor": "s1", "celsius": 21.5}, None, [1, "two"]]
    assert [r.json() for r in receiver.requests] == [expected[0:100], expected[100:200], expected[200:250]]
    basic = "Basic " + base64.b64encode(b"ingest:s3cret").decode()
    for request in receiver.requests:
        assert request.method == "POST" and request.path == "/hook"
        assert request.headers["content-type"] == "application/json"
        assert request.headers["authorization"] == basic
        assert request.headers["x-tenant"] == "acme"
        assert request.headers["x-streamfn-function"] == "enrich"
    assert [r.headers["x-streamfn-source"] for r in receiver.requests] == [
        "orders-3/1000-1099",
        "orders-3/1100-1199",
        "orders-3/1200-1249",
    ]
    assert [r.headers.get("traceparent") for r in receiver.requests] == [TRACEPARENT, None, TRACEPARENT]
    keys = [r.headers["idempotency-key"] for r in receiver.requests]
    assert len(set(keys)) == 3 and all(len(k) == 64 for k in keys)

    # The same outputs again (a replayed batch, another writer after a restart): the same keys, chunk by chunk.
    async with opened(sink) as writer:
        await writer.write(emitted(values))
    assert [r.headers["idempotency-key"] for r in receiver.requests[3:]] == keys
    assert [r.body for r in receiver.requests[3:]] == [r.body for r in receiver.requests[:3]]


async def test_bearer_token_method_and_a_single_output(receiver: Receiver) -> None:
    async with opened(Http(receiver.url, method="put", bearer_token="tok-123")) as writer:
        await writer.write(emitted([{"n": 7}]))
    [request] = receiver.requests
    assert (request.method, request.headers["authorization"], request.json()) == ("PUT", "Bearer tok-123", [{"n": 7}])
    assert request.headers["x-streamfn-source"] == "orders-3/1000-1049"


@pytest.mark.parametrize("status", [400, 401, 404, 413, 422, 301])
async def test_refusals_are_rejected_outputs_naming_status_and_body(receiver: Receiver, status: int) -> None:
    receiver.status = status
    async with opened(Http(receiver.url)) as writer:
        error, _ = await raised(writer.write(emitted([{"n": 1}])))
    assert isinstance(error, RejectedOutput)
    reason = HTTPStatus(status).phrase
    assert str(error) == f"Http('{receiver.url}') answered {status} {reason}: {REFUSAL.decode()}"
    assert len(receiver.requests) == 1  # the sink itself never retries


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504])
async def test_transient_statuses_raise_a_retryable_error(receiver: Receiver, status: int) -> None:
    receiver.status = status
    async with opened(Http(receiver.url)) as writer:
        error, _ = await raised(writer.write(emitted([{"n": 1}])))
        assert type(error) is HttpDeliveryError and not isinstance(error, RejectedOutput)
        assert f"answered {status} {HTTPStatus(status).phrase}" in str(error)
        receiver.status = 200
        await writer.write(emitted([{"n": 1}]))  # the engine's retry
    assert [r.status for r in receiver.requests] == [status, 200]
    assert receiver.requests[0].body == receiver.requests[1].body == b'[{"n":1}]'


async def test_a_retried_write_skips_the_chunks_already_delivered(receiver: Receiver) -> None:
    receiver.script = [200, 200, 503]
    outputs = emitted([{"n": i} for i in range(250)])
    async with opened(Http(receiver.url, max_batch=100)) as writer:
        error, _ = await raised(writer.write(outputs))
        assert isinstance(error, HttpDeliveryError)
        await writer.write(outputs)
    assert [(r.status, len(r.json())) for r in receiver.requests] == [(200, 100), (200, 100), (503, 50), (200, 50)]
    assert [n["n"] for r in receiver.accepted for n in r.json()] == list(range(250))


async def test_receiver_down_raises_promptly_and_the_same_writer_recovers(receiver: Receiver) -> None:
    async with opened(Http(receiver.url, timeout=10)) as writer:
        await writer.write(emitted([{"n": 0}]))  # leaves a pooled keep-alive connection behind
        await receiver.stop()
        error, took = await raised(writer.write(emitted([{"n": 1}], offset=1001)))
        assert isinstance(error, HttpDeliveryError) and not isinstance(error, RejectedOutput)
        assert str(error).startswith(
            f"Http('{receiver.url}'): ConnectError: All connection attempts failed (ConnectionRefusedError: "
        )
        assert took < 3  # refused at once, not a 10 s timeout
        await receiver.start()  # the same port
        await writer.write(emitted([{"n": 1}], offset=1001))
    assert [r.json() for r in receiver.accepted] == [[{"n": 0}], [{"n": 1}]]


async def test_a_receiver_that_does_not_answer_times_out_as_retryable(receiver: Receiver) -> None:
    receiver.delay = 5
    async with opened(Http(receiver.url, timeout=0.3)) as writer:
        error, took = await raised(writer.write(emitted([{"n": 1}])))
    assert isinstance(error, HttpDeliveryError) and "ReadTimeout" in str(error)
    assert took < 3


async def test_values_json_cannot_carry_are_rejected_before_anything_is_sent(receiver: Receiver) -> None:
    async with opened(Http(receiver.url, max_batch=100)) as writer:
        values: list[Any] = [{"n": i} for i in range(250)]
        values[230] = b"\xff\xfe not utf-8"
        error, _ = await raised(writer.write(emitted(values)))
        assert isinstance(error, RejectedOutput)
        assert str(error).startswith("output enrich/orders-3/1200-1249/30 is bytes that are not UTF-8 text")
        values[230] = {"when": {1, 2}}
        error, _ = await raised(writer.write(emitted(values)))
        assert isinstance(error, RejectedOutput)
        assert str(error).startswith("output enrich/orders-3/1200-1249/30 cannot be sent as JSON: ")
    assert receiver.requests == []


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            {"url": "ftp://example.com/in"},
            "Http: url='ftp://example.com/in' is invalid: must be an http:// or https:// URL with a host",
        ),
        (
            {"url": "hooks.example.com"},
            "Http: url='hooks.example.com' is invalid: must be an http:// or https:// URL with a host",
        ),
        (
            {"url": "https://h/x", "auth": ("u", "p"), "bearer_token": "t"},
            "Http: auth and bearer_token both set the Authorization header; use only one",
        ),
        (
            {"url": "https://h/x", "headers": {"Authorization": "Key k"}, "bearer_token": "t"},
            "Http: bearer_token and headers['Authorization'] both set the Authorization header; use only one",
        ),
        (
            {"url": "https://h/x", "headers": {"Idempotency-Key": "mine"}},
            "Http: headers: 'Idempotency-Key' is set by the sink for each request",
        ),
        (
            {"url": "https://h/x", "headers": {"X-Key": "secret\r\nX-Evil: 1"}},
            "Http: headers: the value of 'X-Key' must be printable ASCII on one line",
        ),
        (
            {"url": "https://h/x", "method": "GET"},
            "Http: method='GET' is invalid: Input should be 'POST', 'PUT' or 'PATCH'",
        ),
        ({"url": "https://h/x", "max_batch": 0}, "Http: max_batch=0 is invalid: allowed: >= 1 and <= 10000"),
        (
            {"url": "https://h/x", "batch": 10},
            "Http: unknown parameter 'batch' (did you mean 'max_batch'?); "
            "allowed: auth, bearer_token, headers, max_batch, method, retry, timeout, url",
        ),
        ({}, "Http: url is required"),
    ],
)
def test_config_errors_are_one_line(arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Http(**arguments)
    assert str(caught.value) == message


def test_the_sink_describes_itself_without_secrets() -> None:
    sink = Http("https://user:pw@hooks.example.com:8443/in?token=abc", bearer_token="tok-123")
    assert str(sink) == "Http('https://hooks.example.com:8443/in')"
    assert "tok-123" not in repr(sink)


# --- through the engine ---------------------------------------------------------------------------------------------


async def test_sink_down_then_up_loses_nothing_duplicates_nothing_and_holds_offsets(
    broker: str, name: Any, receiver: Receiver
) -> None:
    topic, group = name("t"), name("g")
    await create_topic(broker, topic, 4)
    await produce_values(broker, topic, 200, partitions=4)
    await receiver.stop()  # connection refused from the start; the port stays ours to reopen
    app = App("httpdown")

    @app.function(
        source=source(topic, group),
        maximum_batching_window_in_seconds=0.1,
        outputs=[Http(receiver.url, retry=SinkRetry(max_attempts=-1, initial_seconds=0.1, max_seconds=0.5))],
    )
    def handler(records: list[Record]) -> list[dict[str, Any]]:
        invoked.update(r.partition for r in records)
        return [{"id": r.value["n"], "partition": r.partition, "offset": r.offset} for r in records]

    invoked: set[int] = set()
    held: list[dict[int, int | None]] = []

    async def outage() -> None:
        """Down until every partition's first batch is handled and its write has been failing for 2 s."""
        started = time.monotonic()
        while len(invoked) < 4 and time.monotonic() - started < 40:
            await asyncio.sleep(0.05)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            held.append(await committed(broker, group, topic, 4))
            await asyncio.sleep(0.2)
        await receiver.start()

    reopened = asyncio.create_task(outage())
    await run_worker(app, broker, lambda: sum(len(r.json()) for r in receiver.accepted) >= 200, settle=1.0)
    await reopened

    ids = sorted(item["id"] for r in receiver.accepted for item in r.json())
    assert ids == list(range(200))  # every output, exactly once
    assert [r.status for r in receiver.requests] == [200] * len(receiver.requests)
    assert {r.headers["x-streamfn-function"] for r in receiver.requests} == {"handler"}
    assert held and all(offsets == {0: 0, 1: 0, 2: 0, 3: 0} for offsets in held)  # nothing past unwritten outputs
    assert await committed(broker, group, topic, 4) == {0: 50, 1: 50, 2: 50, 3: 50}


async def test_sink_never_recovers_every_record_is_dead_lettered_then_committed(
    broker: str, name: Any, receiver: Receiver
) -> None:
    topic, group, dlq = name("t"), name("g"), name("dlq")
    await create_topic(broker, topic, 2)
    await produce_values(broker, topic, 40, partitions=2)
    receiver.status = 503
    app = App("httpnever")

    @app.function(
        source=source(topic, group),
        maximum_batching_window_in_seconds=0.1,
        outputs=[Http(receiver.url, retry=SinkRetry(max_attempts=3, initial_seconds=0.05, max_seconds=0.1))],
        on_failure=KafkaTopic(dlq),
    )
    def handler(records: list[Record]) -> list[dict[str, Any]]:
        return [{"id": r.value["n"]} for r in records]

    letters: list[Any] = []

    async def read_letters() -> None:
        letters.extend(await read_topic(broker, dlq, 40, timeout=40))

    reading = asyncio.create_task(read_letters())
    await run_worker(app, broker, reading.done, timeout=50, settle=0.5)
    dead = [orjson.loads(r.value) for r in letters]
    assert len(dead) == 40
    assert sorted(
        (int(dict(r.headers)["streamfn.source.partition"]), int(dict(r.headers)["streamfn.source.offset"]))
        for r in letters
    ) == [(p, o) for p in range(2) for o in range(20)]
    for letter in dead:
        assert letter["requestContext"]["condition"] == "OutputDeliveryFailed"
        assert letter["errorType"] == "HttpDeliveryError"
        assert (
            letter["errorMessage"]
            == f"Http('{receiver.url}') answered 503 Service Unavailable: " + '{"error": "overloaded"}'
        )
    assert receiver.accepted == [] and len(receiver.requests) % 3 == 0  # 3 attempts per write
    assert await committed(broker, group, topic, 2) == {0: 20, 1: 20}
