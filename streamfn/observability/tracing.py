"""Traces: a span per invocation that continues its input's W3C trace context and hands it on to its outputs.

A batch holds records of many producers. Its span is a child of the first record that carries a `traceparent`
(so a chain of functions, one batch feeding the next, is one trace) and links to every distinct context in the
batch (OpenTelemetry's convention for batch consumers), so no producer's trace loses the invocation. The outputs
carry the span's own context, so the next function's span is its child. With tracing off the runner holds no
`InvocationTracer` and nothing here runs: outputs then carry their input's trace headers unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanContext, SpanKind, Status, StatusCode, use_span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from streamfn.record import Partition, SourceRecord

TRACE_HEADERS = ("traceparent", "tracestate")
"""W3C trace context headers, carried from an invocation's input to its outputs."""

MAX_LINKS = 128
"""OpenTelemetry's default limit of links per span: a batch of 10,000 traced records links to its first 128."""

_PROPAGATOR = TraceContextTextMapPropagator()


class InvocationTracer:
    """Starts the spans of one function's invocations."""

    def __init__(self, provider: trace.TracerProvider, function: str) -> None:
        self._tracer = provider.get_tracer("streamfn")
        self._function = function

    def start(self, partition: Partition, records: Sequence[SourceRecord], attempt: int, request_id: str) -> Span:
        """The span of one invocation over `records` (its `attempt`-th for them), started now."""
        contexts = _contexts(records)
        parent = trace.set_span_in_context(NonRecordingSpan(contexts[0])) if contexts else Context()
        return self._tracer.start_span(
            f"invoke {self._function}",
            context=parent,
            kind=SpanKind.CONSUMER,
            links=[Link(c) for c in contexts[:MAX_LINKS]],
            attributes={
                "faas.name": self._function,
                "faas.invocation_id": request_id,
                "messaging.destination.name": partition.topic,
                "messaging.destination.partition.id": str(partition.partition),
                "messaging.batch.message_count": len(records),
                "streamfn.offsets.first": records[0].offset,
                "streamfn.offsets.last": records[-1].offset,
                "streamfn.attempt": attempt,
            },
        )


def within(span: Span) -> AbstractContextManager[Span]:
    """Make `span` the current one while the handler runs, so spans the handler starts are its children;
    `finish` ends it and records the outcome."""
    return use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False)


def finish(span: Span, outcome: str, error: BaseException | None = None) -> None:
    """End an invocation's span with its outcome (success, partial, error, timeout)."""
    span.set_attribute("streamfn.outcome", outcome)
    if error is not None:
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
    span.end()


def trace_fields(span: Span) -> dict[str, str]:
    """The ids that tie an invocation's log lines to its span (as OpenTelemetry's log records name them)."""
    context = span.get_span_context()
    return {"trace_id": format(context.trace_id, "032x"), "span_id": format(context.span_id, "016x")}


def headers_of(span: Span) -> tuple[tuple[str, bytes], ...]:
    """The W3C trace context headers naming `span` as the parent of whatever the outputs cause."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, trace.set_span_in_context(span))
    return tuple((name, value.encode()) for name, value in carrier.items())


def _contexts(records: Sequence[SourceRecord]) -> list[SpanContext]:
    """The distinct valid trace contexts of the records' `traceparent`/`tracestate` headers, in record order."""
    found: dict[tuple[int, int], SpanContext] = {}
    for record in records:
        if not record.headers:
            continue
        carrier = {name: value.decode("latin-1") for name, value in record.headers if name in TRACE_HEADERS}
        if not carrier:
            continue
        context = trace.get_current_span(_PROPAGATOR.extract(carrier)).get_span_context()
        if context.is_valid:
            found.setdefault((context.trace_id, context.span_id), context)
    return list(found.values())
