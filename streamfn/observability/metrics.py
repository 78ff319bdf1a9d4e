"""OpenTelemetry metrics, per function and partition, with Lambda's event source mapping names where it has them.

The counts are the engine's own plain integers (observability/stats.py), read by observable instruments only when a
reader collects (a Prometheus scrape, an OTLP export): the hot path bumps an int and never calls the metrics SDK
per record. Histograms (invocation duration, batch size, sink write duration) are recorded once per invocation or
sink write, and only when metrics are on. Callbacks run on the reader's thread: they copy what they read.

Names as exported: the Lambda ones as they are (`PolledEventCount`; Prometheus lowercases them and adds `_total`:
`polledeventcount_total`), streamfn's own under `streamfn.` (Prometheus: `streamfn_invocation_duration_seconds`).
Attributes: `function`, and `topic` and `partition` for per-partition series.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation
from opentelemetry.util.types import AttributeValue

from streamfn.observability.stats import FunctionStats
from streamfn.record import Partition


class Named(Protocol):
    @property
    def name(self) -> str: ...


class InFlight(Protocol):
    @property
    def in_flight(self) -> int: ...


@dataclass(frozen=True, slots=True)
class LagMetric:
    """How far behind a source's partitions are, as Lambda names it for that source (its dialect's): a gauge per
    partition, and the function's Max and Sum of it."""

    name: str
    """Kafka: OffsetLag (records past the committed offset)."""
    unit: str
    description: str
    """Of the per-partition gauge."""
    family: str
    """Where Lambda documents it, for the Max and Sum gauges' descriptions (Kafka: Lambda's KafkaMetrics)."""


class Polled(Protocol):
    """What the gauges read of a function's poller (streamfn.engine.poller.Poller): its function's name, its
    partitions' records in flight and their lags, and how its source names the lag. A protocol, so the engine
    imports metrics and not the reverse."""

    @property
    def function(self) -> Named: ...

    @property
    def lag_metric(self) -> LagMetric: ...

    @property
    def workers(self) -> Mapping[Partition, InFlight]: ...

    def lag(self) -> dict[Partition, int]: ...


class Blocked(Protocol):
    """What the blocked-loop counter reads of the loop watchdog (streamfn.engine.watchdog.LoopWatchdog)."""

    @property
    def blocked(self) -> Mapping[str, int]: ...


SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)
RECORDS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)

COUNTERS: Mapping[str, tuple[str, str]] = {
    "PolledEventCount": ("polled", "Records read from the source."),
    "FilteredOutEventCount": ("filtered_out", "Records no filter matched: committed without an invocation."),
    "InvokedEventCount": ("invoked", "Records passed to the handler; a retried record counts again."),
    "FailedInvokeEventCount": ("failed_invoked", "Records of invocations that failed or reported failed items."),
    "DroppedEventCount": ("dropped", "Records that failed for good with no on_failure destination."),
    "OnFailureDestinationDeliveredEventCount": ("dead_lettered", "Records written to the on_failure destination."),
    "CommittedEventCount": ("committed", "Records covered by committed offsets."),
    "InvokeErrorCount": ("failed_invocations", "Invocations that raised or timed out."),
    "OnFailureDestinationDeliveryErrorCount": ("delivery_errors", "Failed attempts to write to on_failure."),
    "CommitErrorCount": ("commit_errors", "Failed commits of the partition's offset (retried)."),
    "streamfn.retries": ("retries", "Invocations repeated after a function error."),
    "streamfn.bisections": ("bisections", "Failing batches split in two (or cut at a reported failure)."),
    "streamfn.outputs": ("outputs", "Outputs acknowledged by every sink of the function."),
    "streamfn.windows.closed": ("windows_closed", "Aggregations: window results emitted."),
    "streamfn.late": ("late", "Aggregations: records whose windows had all closed."),
}
"""Counter name -> (the `Counts` field it reads, description)."""


class FunctionInstruments:
    """What one function records per invocation and per sink write."""

    def __init__(self, instruments: Instruments, function: str) -> None:
        self._instruments = instruments
        self._function = function

    def invocation(self, partition: Partition, size: int, seconds: float, outcome: str) -> None:
        attributes: dict[str, AttributeValue] = {
            "function": self._function,
            "topic": partition.topic,
            "partition": partition.partition,
            "outcome": outcome,
        }
        self._instruments.duration.record(seconds, attributes)
        self._instruments.batch_size.record(size, attributes)

    def sink_write(self, sink: str, seconds: float, error: BaseException | None) -> None:
        attributes: dict[str, AttributeValue] = {"function": self._function, "sink": sink}
        self._instruments.sink_duration.record(seconds, attributes | {"outcome": "error" if error else "success"})
        if error is not None:
            self._instruments.sink_errors.add(1, attributes | {"error": type(error).__name__})


class Instruments:
    """A worker's instruments: the histograms its functions record, and the observable counts and gauges."""

    def __init__(self, provider: MeterProvider) -> None:
        self.meter: Meter = provider.get_meter("streamfn")
        meter = self.meter
        self.duration = meter.create_histogram(
            "streamfn.invocation.duration",
            unit="s",
            description="How long an invocation took (the handler, within its timeout).",
            explicit_bucket_boundaries_advisory=SECONDS,
        )
        self.batch_size = meter.create_histogram(
            "streamfn.batch.size",
            unit="{record}",
            description="Records per invocation.",
            explicit_bucket_boundaries_advisory=RECORDS,
        )
        self.sink_duration = meter.create_histogram(
            "streamfn.sink.write.duration",
            unit="s",
            description="How long one attempt to write a batch's outputs to a sink took.",
            explicit_bucket_boundaries_advisory=SECONDS,
        )
        self.sink_errors = meter.create_counter(
            "streamfn.sink.write.errors", unit="{error}", description="Failed attempts to write outputs to a sink."
        )

    def function(self, name: str) -> FunctionInstruments:
        return FunctionInstruments(self, name)

    def observe(self, stats: Mapping[str, FunctionStats], pollers: Sequence[Polled]) -> None:
        """Report the functions' counts, lags and records in flight whenever a reader collects."""
        for name, (field, description) in COUNTERS.items():
            self.meter.create_observable_counter(
                name, callbacks=[_counts(stats, field)], unit="{event}", description=description
            )
        by_metric: dict[LagMetric, list[Polled]] = {}
        for poller in pollers:
            by_metric.setdefault(poller.lag_metric, []).append(poller)
        for lag, polled in by_metric.items():  # one set of gauges per kind of source
            self.meter.create_observable_gauge(
                lag.name,
                callbacks=[_per_partition(polled, lambda poller: poller.lag())],
                unit=lag.unit,
                description=lag.description,
            )
            for prefix, combine in (("Max", max), ("Sum", sum)):
                self.meter.create_observable_gauge(
                    f"{prefix}{lag.name}",
                    callbacks=[_per_function(polled, combine)],
                    unit=lag.unit,
                    description=f"{lag.name} of the function's partitions: the {prefix.lower()} ({lag.family}).",
                )
        self.meter.create_observable_counter(
            "PollingErrorCount",
            callbacks=[_polling_errors(stats)],
            unit="{error}",
            description="Fetches from the source that failed (the poller backs off and polls again).",
        )
        self.meter.create_observable_gauge(
            "streamfn.records.in_flight",
            callbacks=[_per_partition(pollers, _in_flight)],
            unit="{record}",
            description="Records fetched and not done yet (buffered, or in a batch being invoked or written).",
        )

    def observe_loop(self, watchdog: Blocked) -> None:
        """Report how often the event loop was found blocked, by the function whose async handler blocked it."""

        def observe(_: CallbackOptions) -> Iterable[Observation]:
            return [Observation(n, {"function": function}) for function, n in list(watchdog.blocked.items())]

        self.meter.create_observable_counter(
            "streamfn.event_loop.blocked",
            callbacks=[observe],
            unit="{event}",
            description="Times the event loop was blocked past the watchdog's limit (function: the async handler "
            "running then, empty if none).",
        )


def _where(function: str, partition: Partition) -> dict[str, str | int]:
    return {"function": function, "topic": partition.topic, "partition": partition.partition}


def _counts(stats: Mapping[str, FunctionStats], field: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def observe(_: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(getattr(counts, field), _where(name, partition))
            for name, function in stats.items()
            for partition, counts in list(function.partitions.items())
        ]

    return observe


def _polling_errors(stats: Mapping[str, FunctionStats]) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def observe(_: CallbackOptions) -> Iterable[Observation]:
        return [Observation(function.polling_errors, {"function": name}) for name, function in stats.items()]

    return observe


def _in_flight(poller: Polled) -> dict[Partition, int]:
    return {partition: worker.in_flight for partition, worker in list(poller.workers.items())}


def _per_partition(
    pollers: Sequence[Polled], values: Callable[[Polled], dict[Partition, int]]
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def observe(_: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(value, _where(poller.function.name, partition))
            for poller in pollers
            for partition, value in values(poller).items()
        ]

    return observe


def _per_function(
    pollers: Sequence[Polled], combine: Callable[[Iterable[int]], int]
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def observe(_: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(combine(lags.values()), {"function": poller.function.name})
            for poller in pollers
            if (lags := poller.lag())
        ]

    return observe
