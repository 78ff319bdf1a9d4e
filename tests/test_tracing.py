"""Traces and structured logs across two chained functions: one trace from the producer to the last function.

The same case runs with the two functions chained through a Kafka topic and through `Function(...)`: the first
function's span is a child of the first traced record's producer span and links to every producer in its batch;
the second function's span is a child of the first's; the handler's `context.logger` lines carry the function,
partition, offsets, request id and trace id of the invocation that wrote them.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from typing import Any

import pytest
from conftest import Out, create_topic, produce, read_topic, source
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from streamfn import App, Function, Record
from streamfn.connectors.kafka import KafkaTopic
from streamfn.context import LambdaContext
from streamfn.engine.worker import Worker
from streamfn.observability.logs import ContextFields, JsonFormatter
from streamfn.observability.telemetry import Telemetry


def traceparent(span: trace.Span) -> list[tuple[str, bytes]]:
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier, trace.set_span_in_context(span))
    return [(k, v.encode()) for k, v in carrier.items()]


@pytest.mark.parametrize("chain", ["topic", "function"])
async def test_a_chain_of_functions_is_one_trace_and_its_logs_name_the_invocation(
    broker: str, name: Any, chain: str
) -> None:
    topic, middle = name("t"), name("mid")
    await create_topic(broker, topic, 1)
    await create_topic(broker, middle, 1)
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    producer = provider.get_tracer("test-producer")
    with producer.start_as_current_span("produce first") as first, producer.start_as_current_span("again") as also:
        pass
    with producer.start_as_current_span("produce second") as second:
        pass
    # Records 0 and 1 were produced in one trace (two spans), record 2 in another.
    headers = [traceparent(first), traceparent(also), traceparent(second)]
    await produce(broker, topic, [Out(b'{"n": %d}' % i, partition=0, headers=headers[i]) for i in range(3)])

    logged = io.StringIO()
    handler = logging.StreamHandler(logged)
    handler.addFilter(ContextFields())
    handler.setFormatter(JsonFormatter())
    logging.getLogger().addHandler(handler)
    request_ids: list[str] = []
    received: list[int] = []
    app = App("traced")

    async def second_handler(records: list[Record]) -> None:
        received.extend(r.value["n"] for r in records)

    window: dict[str, Any] = {"batch_size": 3, "maximum_batching_window_in_seconds": 5}
    if chain == "topic":
        app.function(source=source(middle, name("g")), **window)(second_handler)
        outputs: list[Any] = [KafkaTopic(middle)]
    else:
        app.function()(second_handler)
        outputs = [Function(second_handler)]

    @app.function(source=source(topic, name("g")), outputs=outputs, **window)
    def first_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        request_ids.append(context.aws_request_id)
        context.logger.info("enriching %d records", len(event["records"][f"{topic}-0"]))
        return {"outputs": [{"n": i} for i in range(3)]}

    worker = Worker(app, Telemetry(tracer_provider=provider))
    task = asyncio.create_task(worker.run(handle_signals=False))
    deadline = time.monotonic() + 40
    try:
        while len(received) < 3 and time.monotonic() < deadline and not task.done():
            await asyncio.sleep(0.05)
    finally:
        worker.stop()
        await task
        logging.getLogger().removeHandler(handler)
    assert received == [0, 1, 2]

    invoked: dict[str, ReadableSpan] = {s.name: s for s in spans.get_finished_spans() if s.name.startswith("invoke")}
    assert sorted(invoked) == ["invoke first_handler", "invoke second_handler"]
    a, b = invoked["invoke first_handler"], invoked["invoke second_handler"]
    assert a.context is not None and b.context is not None and a.parent is not None and b.parent is not None
    trace_id = first.get_span_context().trace_id
    # One trace: producer -> first function -> second function, each the parent of the next.
    assert (a.context.trace_id, a.parent.span_id) == (trace_id, first.get_span_context().span_id)
    assert (b.context.trace_id, b.parent.span_id) == (trace_id, a.context.span_id)
    # The first batch links to each producer span it holds records of (both traces).
    assert {link.context.span_id for link in a.links} == {s.get_span_context().span_id for s in (first, also, second)}
    assert a.attributes is not None and dict(a.attributes) == {
        "faas.name": "first_handler",
        "faas.invocation_id": request_ids[0],
        "messaging.destination.name": topic,
        "messaging.destination.partition.id": "0",
        "messaging.batch.message_count": 3,
        "streamfn.offsets.first": 0,
        "streamfn.offsets.last": 2,
        "streamfn.attempt": 1,
        "streamfn.outcome": "success",
    }
    if chain == "topic":  # what another consumer of the topic sees: the first function's span as the parent
        (out, *_) = await read_topic(broker, middle, 3)
        _version, trace_hex, parent_hex, _flags = dict(out.headers)["traceparent"].decode().split("-")
        assert (trace_hex, parent_hex) == (f"{trace_id:032x}", f"{a.context.span_id:016x}")

    lines = [json.loads(line) for line in logged.getvalue().splitlines()]
    (line,) = [line for line in lines if line["message"] == "enriching 3 records"]
    assert line | {"time": None} == {
        "time": None,
        "level": "INFO",
        "logger": "streamfn.function.first_handler",
        "message": "enriching 3 records",
        "function": "first_handler",
        "topic": topic,
        "partition": 0,
        "offsets": "0-2",
        "request_id": request_ids[0],
        "trace_id": f"{trace_id:032x}",
        "span_id": f"{a.context.span_id:016x}",
    }
