"""Where a worker's traces and metrics go: OpenTelemetry providers, built from `streamfn run`'s options.

Off is the default and costs nothing: a function whose worker has no tracer provider starts no spans, and one
without a meter provider records no histograms (its counters are plain integers either way, see stats.py).
Exporters follow OpenTelemetry's own settings: `OTEL_TRACES_EXPORTER` / `OTEL_METRICS_EXPORTER` choose them
(`--traces`, `--metrics`), `OTEL_EXPORTER_OTLP_ENDPOINT` and `OTEL_SERVICE_NAME` configure them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from opentelemetry.metrics import MeterProvider
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import TracerProvider

from streamfn.observability.metrics import FunctionInstruments, Instruments
from streamfn.observability.tracing import InvocationTracer

MetricsExporter = Literal["none", "console", "otlp", "prometheus"]
TracesExporter = Literal["none", "console", "otlp"]

DEFAULT_SERVICE = "streamfn"
PROMETHEUS_PORT = 9464
"""OpenTelemetry's default port for a Prometheus scrape endpoint."""


@dataclass(frozen=True, slots=True)
class FunctionTelemetry:
    """What one function's runner reports to; None for what is off."""

    tracer: InvocationTracer | None = None
    instruments: FunctionInstruments | None = None


NO_TELEMETRY = FunctionTelemetry()


class Telemetry:
    """A worker's providers (None: off). Tests pass SDK providers with in-memory readers and exporters."""

    def __init__(
        self, meter_provider: MeterProvider | None = None, tracer_provider: TracerProvider | None = None
    ) -> None:
        self.meter_provider = meter_provider
        self.tracer_provider = tracer_provider
        self.instruments = Instruments(meter_provider) if meter_provider is not None else None

    def function(self, name: str) -> FunctionTelemetry:
        tracer = InvocationTracer(self.tracer_provider, name) if self.tracer_provider is not None else None
        instruments = self.instruments.function(name) if self.instruments is not None else None
        return FunctionTelemetry(tracer, instruments)


@dataclass
class Exporters:
    """The providers `streamfn run` built, to shut down (flushing spans and metrics) when the worker stops."""

    meter_provider: SdkMeterProvider | None
    tracer_provider: SdkTracerProvider | None
    telemetry: Telemetry = field(init=False)

    def __post_init__(self) -> None:
        self.telemetry = Telemetry(self.meter_provider, self.tracer_provider)

    def shutdown(self) -> None:
        for provider in (self.meter_provider, self.tracer_provider):
            if provider is not None:
                provider.shutdown()


def exporters(metrics: Sequence[MetricsExporter], traces: TracesExporter) -> Exporters:
    """Providers for the chosen exporters. OTLP goes over HTTP/protobuf (`OTEL_EXPORTER_OTLP_ENDPOINT`, default
    http://localhost:4318); console and OTLP metrics are exported every `OTEL_METRIC_EXPORT_INTERVAL` ms (60 s)."""
    resource = Resource.create({SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME", DEFAULT_SERVICE)})
    readers = [_reader(name) for name in dict.fromkeys(metrics) if name != "none"]
    meter_provider = SdkMeterProvider(resource=resource, metric_readers=readers) if readers else None
    tracer_provider = None
    if traces != "none":
        tracer_provider = SdkTracerProvider(resource=resource)
        tracer_provider.add_span_processor(BatchSpanProcessor(_span_exporter(traces)))
    return Exporters(meter_provider, tracer_provider)


def _reader(name: MetricsExporter) -> MetricReader:
    # Exporters are imported when chosen: OTLP's protobuf modules take a while to load, and most runs need none.
    if name == "prometheus":
        from opentelemetry.exporter.prometheus import PrometheusMetricReader

        return PrometheusMetricReader()
    if name == "otlp":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        return PeriodicExportingMetricReader(OTLPMetricExporter())
    return PeriodicExportingMetricReader(ConsoleMetricExporter())


def _span_exporter(name: TracesExporter) -> SpanExporter:
    if name == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    return ConsoleSpanExporter()
