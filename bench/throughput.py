"""Throughput of streamfn against a plain aiokafka consumer loop, on the embedded (Tansu) broker.

What it measures
    One 4-partition topic is pre-filled ONCE with `--records` JSON records of about `--value-bytes` bytes (spread
    evenly: record i goes to partition i % 4). Then each variant reads the whole topic from the beginning with a
    fresh consumer group, and its records/s is measured:

    (a)  plain aiokafka: `getmany(timeout_ms=200)` + `commit()` after each non-empty fetch (the baseline);
    (a+out) the same, also decoding each value and producing it again (orjson.dumps) to another topic with
         aiokafka's batch API, acks=all, awaited before the commit: the baseline for (b+out);
    (b)  streamfn, native no-op handler `async def noop(records)` (values decoded as JSON into Records);
    (c)  streamfn, Lambda-style no-op handler `def noop(event, context)`, a sync def (run in the thread pool);
    (c') streamfn, Lambda-style no-op handler `async def noop(event, context)` (extra, no target);
    (b+3f) streamfn, native no-op handler behind 3 filters (the first two miss, the third matches every record, so
         all three are evaluated and the handler still sees every record): the cost of filtering against (b);
    (b+out) streamfn, native handler returning every record's value, written to a KafkaTopic output on the same
         broker (acks=all, awaited before the commit): the cost of an output against (b), which has none.
    (b+metrics) (b) with metrics on: an SDK MeterProvider with a PrometheusMetricReader, scraped once a second from
         another thread (prometheus_client's generate_latest, as the --metrics-port endpoint serves it); each run
         checks the last scrape counted every invocation. The cost of the histograms against (b).
    (b+traces) (b) with tracing on: an SDK TracerProvider with a BatchSpanProcessor and an exporter that discards
         the spans, so the cost is creating, ending and queueing one span per invocation (no I/O); each run checks
         every invocation's span reached the exporter.
    (b+all) (b) with both.
    The count+sum job of issue 18 (`--variants a-sum,b-sum,c-sum`, best with `--records 1000000 --batch-size 10000`):
    each value is decoded and a count and a sum of its `amount` are kept per `user` (1,000 users), the same code in
    every variant; each run checks the counts add up to the records and the sum to the expected total.
    (a+sum) plain aiokafka: `getmany` + `orjson.loads` of each value + count+sum + `commit()` after each fetch;
    (a+sum+gc) the same loop under the garbage collector settings a streamfn worker runs with
         (streamfn/engine/collector.py): what of the difference is the collector, and what the engine;
    (b+sum) streamfn, native handler `async def job(records)` (values decoded as JSON into Records);
    (c+sum) streamfn, Lambda-style sync handler `def job(event, context)`: base64 + orjson.loads in the handler;
    (c'+sum) the same as an `async def` (extra, no target).
    Telemetry is off in every other variant: (b) against the code before observability is "off costs nothing".

    The variants run interleaved (a, b, c, c', a, b, c, c', ...) `--repeats` times, because the machine is small and
    noisy; the table shows every run, the median records/s, and the ratio of medians against (a) and against the
    variant's own baseline (the count+sum variants': (a+sum)).
    Targets: (b)/(a) >= 0.8 and (c)/(a) >= 0.5; (b+sum)/(a+sum) >= 0.8 and (c+sum)/(a+sum) >= 0.6.

How it times
    The clock starts when the first record is received: for (a) when the first non-empty `getmany` returns, for
    streamfn at the first handler call (so the consumer group join, about session_timeout/2 = 3 s on Tansu, is
    excluded). It stops once every record is handled AND committed: for (a) when the `commit()` after the last
    record returns, for streamfn when `poller.checkpoint.committed_records` reaches the record count (watched
    every 10 ms). Completion is detected by counting records, never by end offsets (Tansu's ListOffsets "latest"
    is wrong after batched produce). Also shown: CPU % (this process's CPU time over the timed window / its wall
    time; ~100% means CPU-bound on the event loop, less means waiting on the broker), the records already received
    when the clock started, and peak RSS (the largest VmRSS of this whole process sampled during a run).

Run from the repository root:  python bench/throughput.py [--records N] [--repeats N] [--batch-size N] [--window S]
                               [--variants a,b,c,c-async] [-v]
       The count+sum job:       python bench/throughput.py --variants a-sum,b-sum,c-sum --records 1000000 \
                                   --batch-size 10000
       Observability:           python bench/throughput.py --variants a,b,b-metrics,b-traces,b-all --repeats 5
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import gc
import statistics
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import harness
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from streamfn import Record
from streamfn.connectors.kafka import KafkaTopic
from streamfn.context import LambdaContext
from streamfn.engine.collector import collecting_for_worker
from streamfn.observability.stats import Counts
from streamfn.observability.telemetry import Telemetry
from streamfn.record import Partition, Position

PARTITIONS = 4
FETCH_MAX_BYTES = 16 * 1024 * 1024  # as streamfn's KafkaReader
RSS_SAMPLE_SECONDS = 0.02
LAMBDA_DEFAULT_WINDOW = 0.5
SCRAPE_SECONDS = 1.0
"""(b+metrics): how often the metrics are collected during a run, as a Prometheus scrape would."""
INVOCATIONS_METRIC = "streamfn_invocation_duration_seconds"


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    target: float | None
    """Minimum ratio of this variant's median records/s to its baseline's, if it has one."""
    baseline: str = "a"
    """The variant its ratio and target are against."""


VARIANTS = {
    v.key: v
    for v in (
        Variant("a", "(a) aiokafka getmany+commit", None),
        Variant("a-json", "(a') aiokafka getmany+commit, orjson.loads each value", None),
        Variant("a-out", "(a+out) aiokafka getmany+produce+commit", None),
        Variant("b", "(b) native: async def noop(records)", 0.8),
        Variant("c", "(c) Lambda-style: def noop(event, ctx)", 0.5),
        Variant("c-async", "(c') Lambda-style: async def noop(event, ctx) (extra)", None),
        Variant("b-out", "(b+out) native, each value out to a KafkaTopic", None),
        Variant("b-3f", "(b+3f) native no-op behind 3 filters", None),
        Variant("b-metrics", "(b+metrics) native no-op, metrics on, scraped 1/s", None),
        Variant("b-traces", "(b+traces) native no-op, tracing on, spans dropped", None),
        Variant("b-all", "(b+all) native no-op, metrics and tracing on", None),
        Variant("a-sum", "(a+sum) aiokafka getmany+orjson+count/sum+commit", None, "a-sum"),
        Variant("a-sum-gc", "(a+sum+gc) the same, under the worker's collector settings", None, "a-sum"),
        Variant("b-sum", "(b+sum) native count+sum: async def job(records)", 0.8, "a-sum"),
        Variant("c-sum", "(c+sum) Lambda-style count+sum: def job(event, ctx)", 0.6, "a-sum"),
        Variant("c-sum-async", "(c'+sum) Lambda-style count+sum: async def (extra)", None, "a-sum"),
    )
}

OBSERVED = {"b-metrics": (True, False), "b-traces": (False, True), "b-all": (True, True)}
"""The variants with telemetry on: (metrics, traces)."""


THREE_FILTERS = {
    "Filters": [
        {"Pattern": '{"value": {"user": [{"prefix": "x"}]}}'},
        {"Pattern": '{"value": {"amount": [{"numeric": ["<", 0]}]}}'},
        {"Pattern": '{"value": {"id": [{"exists": true}], "pad": [{"anything-but": "stop"}]}}'},
    ]
}
"""(b+3f): two filters that miss every record, then one that matches every record."""


@dataclass(frozen=True)
class RunResult(harness.TimedRun):
    peak_rss_kib: int
    first_fetch: int
    """Records already received when the clock started (the first fetch)."""


@dataclass(frozen=True)
class Settings:
    servers: str
    topic: str
    records: int
    batch_size: int
    window: float
    run_timeout: float
    value_bytes: int
    from_assignment: bool = False
    """Start the clock when the partitions are assigned, before the first fetch (bench/cost.py: CPU per record of
    every record, the first fetch's included), rather than when the first record is received."""


# --- process memory --------------------------------------------------------------------------------------------


def vm_rss_kib() -> int:
    """This process's resident set size now (Linux), in KiB; 0 where /proc is not available."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class RssSampler:
    """Samples VmRSS in the background while a run is under way and keeps the peak."""

    def __init__(self, interval: float = RSS_SAMPLE_SECONDS) -> None:
        self.interval = interval
        self.peak_kib = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RssSampler:
        self.peak_kib = vm_rss_kib()
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
        self.peak_kib = max(self.peak_kib, vm_rss_kib())

    async def _sample(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.peak_kib = max(self.peak_kib, vm_rss_kib())


# --- pre-fill --------------------------------------------------------------------------------------------------


def make_value(i: int, size: int) -> bytes:
    """A JSON object of `size` bytes (or the smallest possible above it) for record i."""
    value: dict[str, Any] = {"id": i, "user": f"u{i % 1000}", "amount": (i * 7919) % 100_000 / 100, "pad": ""}
    value["pad"] = "x" * max(0, size - len(orjson.dumps(value)))
    return orjson.dumps(value)


def spread(records: int, value_bytes: int, partitions: int = PARTITIONS) -> Iterator[harness.ToProduce]:
    """`records` unkeyed records spread evenly over the partitions: record i goes to partition i % partitions."""
    for i in range(records):
        yield None, make_value(i, value_bytes), i % partitions


# --- the count+sum job ------------------------------------------------------------------------------------------


Totals = dict[str, list[float]]
"""Per user: [count, sum of amount]."""


def tally(totals: Totals, values: Iterable[dict[str, Any]]) -> None:
    """The count+sum job, the same for every variant: count each decoded value and add its amount, per user."""
    for value in values:
        entry = totals.get(value["user"])
        if entry is None:
            totals[value["user"]] = [1, value["amount"]]
        else:
            entry[0] += 1
            entry[1] += value["amount"]


def lambda_values(event: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """What a Lambda-style handler does with its event to get the values: base64, then JSON."""
    loads, b64decode = orjson.loads, base64.b64decode
    for items in event["records"].values():
        for item in items:
            yield loads(b64decode(item["value"]))


@functools.cache
def expected_sum(records: int, value_bytes: int) -> float:
    return float(sum(orjson.loads(make_value(i, value_bytes))["amount"] for i in range(records)))


def check_totals(totals: Totals, records: int, value_bytes: int) -> None:
    """Raise unless the job counted every record once and summed every amount."""
    count = sum(entry[0] for entry in totals.values())
    total = sum(entry[1] for entry in totals.values())
    expected = expected_sum(records, value_bytes)
    if count != records or abs(total - expected) > 1e-6 * max(1.0, expected):
        raise RuntimeError(f"count+sum counted {count} records (of {records}), sum {total} (expected {expected})")


# --- telemetry -------------------------------------------------------------------------------------------------


class DiscardSpans(SpanExporter):
    """Counts the spans and drops them: what tracing costs the worker without an exporter's encoding and I/O."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


class Observability:
    """A run's telemetry with metrics and/or tracing on, as `streamfn run --metrics prometheus` and `--traces`
    would set it up, minus the network: the metrics are scraped once a second from another thread (as the HTTP
    endpoint's thread does), the spans go through the SDK's batch processor to an exporter that drops them.
    `async with` scrapes while the run is under way, then shuts the providers down (flushing the spans)."""

    def __init__(self, metrics: bool, traces: bool) -> None:
        self.reader = PrometheusMetricReader() if metrics else None  # registers with prometheus_client's REGISTRY
        self.meter_provider = MeterProvider(metric_readers=[self.reader]) if self.reader is not None else None
        self.exporter = DiscardSpans()
        self.tracer_provider = TracerProvider() if traces else None
        if self.tracer_provider is not None:
            self.tracer_provider.add_span_processor(BatchSpanProcessor(self.exporter))
        self.telemetry = Telemetry(self.meter_provider, self.tracer_provider)
        self.scrapes = 0
        self.last_scrape = ""
        self._scraper: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Observability:
        if self.reader is not None:
            self._scraper = asyncio.create_task(self._scrape_every_second())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._scraper is not None:
            self._scraper.cancel()
            await asyncio.gather(self._scraper, return_exceptions=True)
            await self._scrape()  # after the run: what it counted
        for provider in (self.meter_provider, self.tracer_provider):
            if provider is not None:
                provider.shutdown()  # the reader leaves the registry; queued spans are exported

    async def _scrape_every_second(self) -> None:
        while True:
            await asyncio.sleep(SCRAPE_SECONDS)
            await self._scrape()

    async def _scrape(self) -> None:
        self.last_scrape = (await asyncio.to_thread(generate_latest, REGISTRY)).decode()
        self.scrapes += 1

    def check(self, stats: Counts) -> None:
        """Raise unless every invocation was counted by the metrics and/or reached the span exporter."""
        invocations = stats.batches + stats.failed_invocations
        if self.reader is not None:
            counted = sum(
                sample.value
                for family in text_string_to_metric_families(self.last_scrape)
                for sample in family.samples
                if sample.name == f"{INVOCATIONS_METRIC}_count"
            )
            if counted != invocations:
                raise RuntimeError(f"metrics counted {counted:g} invocations of {invocations}")
        if self.tracer_provider is not None and self.exporter.spans != invocations:
            raise RuntimeError(f"{self.exporter.spans} spans exported for {invocations} invocations")


# --- variants --------------------------------------------------------------------------------------------------


Timing = tuple[harness.Mark, harness.Mark, int]
"""(clock start, clock end, records received when the clock started)."""


async def run_plain(
    settings: Settings, group: str, decode: bool, produce: bool, totals: Totals | None = None
) -> Timing:
    """(a): count records from getmany, commit after each non-empty fetch; (a') also decodes each value.

    (a') is the same work a native handler's records need (streamfn decodes values before the handler runs, so
    an undecodable one can be routed rather than crash the handler): (b)/(a') is the framework's own overhead.
    (a+out) also encodes each value again and produces it, one producer batch per partition, awaited before the
    commit, as (b+out)'s KafkaTopic output does.
    """
    producer = AIOKafkaProducer(bootstrap_servers=settings.servers, acks="all") if produce else None
    if producer is not None:
        await producer.start()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.servers,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=harness.SESSION_TIMEOUT_MS,
        fetch_max_bytes=FETCH_MAX_BYTES,
    )
    assignment = MarkAssignment()
    consumer.subscribe([settings.topic], listener=assignment)
    await consumer.start()
    try:
        count = 0
        first: harness.Mark | None = None
        first_fetch = 0
        while count < settings.records:
            batches = await consumer.getmany(timeout_ms=200)
            if not batches:
                continue
            if first is None:
                first = assignment.mark if settings.from_assignment else harness.now()
                first_fetch = sum(len(records) for records in batches.values())
            sent = []
            for tp, records in batches.items():
                count += len(records)
                if producer is not None:
                    sent.extend(await send_again(producer, f"{group}-out", tp.partition, records))
                elif totals is not None:
                    tally(totals, (orjson.loads(record.value) for record in records))
                elif decode:
                    for record in records:
                        orjson.loads(record.value)
            await asyncio.gather(*sent)
            await consumer.commit()
        end = harness.now()
    finally:
        await consumer.stop()
        if producer is not None:
            await producer.stop()
    if count != settings.records:
        raise RuntimeError(f"(a) received {count} records, expected {settings.records}")
    assert first is not None
    return first, end, first_fetch


class MarkAssignment(ConsumerRebalanceListener):  # type: ignore[misc]
    """Notes when the plain loop's consumer was first assigned its partitions (`Settings.from_assignment`)."""

    def __init__(self) -> None:
        self.mark: harness.Mark | None = None

    async def on_partitions_revoked(self, revoked: Any) -> None:
        pass

    async def on_partitions_assigned(self, assigned: Any) -> None:
        if self.mark is None:
            self.mark = harness.now()


async def send_again(
    producer: AIOKafkaProducer, topic: str, partition: int, records: list[Any]
) -> list[asyncio.Future[Any]]:
    """Decode each record's value, encode it again and append it to producer batches for `partition` of `topic`."""
    sent = []
    batch = producer.create_batch()
    for record in records:
        value = orjson.dumps(orjson.loads(record.value))
        if batch.append(key=record.key, value=value, timestamp=None, headers=[]) is None:
            sent.append(await producer.send_batch(batch, topic, partition=partition))
            batch = producer.create_batch()
            batch.append(key=record.key, value=value, timestamp=None, headers=[])
    sent.append(await producer.send_batch(batch, topic, partition=partition))
    return sent


async def run_streamfn(settings: Settings, group: str, style: str, totals: Totals) -> Timing:
    """(b), (c), (c') and the rest: a streamfn worker with a no-op handler (or the variant's); the clock starts at
    the first handler call."""
    # (clock mark, records polled so far) at the first handler call; list.append is thread-safe (sync handlers)
    called: list[tuple[harness.Mark, int]] = []

    def first_call() -> None:
        if not called:
            called.append((harness.now(), poller.stats.total().polled))

    async def native_noop(records: list[Record]) -> None:
        first_call()

    async def native_forward(records: list[Record]) -> list[Any]:
        first_call()
        return [r.value for r in records]

    def lambda_noop(event: dict[str, Any], context: LambdaContext) -> None:
        first_call()

    async def lambda_async_noop(event: dict[str, Any], context: LambdaContext) -> None:
        first_call()

    async def native_sum(records: list[Record]) -> None:
        first_call()
        tally(totals, (r.value for r in records))

    def lambda_sum(event: dict[str, Any], context: LambdaContext) -> None:
        first_call()
        tally(totals, lambda_values(event))

    async def lambda_async_sum(event: dict[str, Any], context: LambdaContext) -> None:
        first_call()
        tally(totals, lambda_values(event))

    handlers: dict[str, Callable[..., Any]] = {
        "b": native_noop,
        "c": lambda_noop,
        "c-async": lambda_async_noop,
        "b-out": native_forward,
        "b-3f": native_noop,
        "b-sum": native_sum,
        "c-sum": lambda_sum,
        "c-sum-async": lambda_async_sum,
        **dict.fromkeys(OBSERVED, native_noop),
    }
    outputs = [KafkaTopic(f"{group}-out")] if style == "b-out" else []
    filters = THREE_FILTERS if style == "b-3f" else None
    observed = Observability(*OBSERVED[style]) if style in OBSERVED else None
    worker = harness.streamfn_worker(
        settings.servers,
        settings.topic,
        group,
        handlers[style],
        telemetry=observed.telemetry if observed is not None else None,
        name="noop",
        batch_size=settings.batch_size,
        maximum_batching_window_in_seconds=settings.window,
        outputs=outputs,
        filter_criteria=filters,
    )
    poller = worker.pollers[0]
    assigned: list[harness.Mark] = []
    if settings.from_assignment:
        told = poller.assigned

        async def assigned_now(offsets: dict[Partition, Position]) -> None:
            assigned.append(harness.now())
            await told(offsets)

        poller.assigned = assigned_now  # type: ignore[method-assign]
    async with observed if observed is not None else nullcontext():
        summary, end = await harness.run_until_committed(worker, settings.records)
    if observed is not None:
        observed.check(summary.stats)
    expected_outputs = settings.records if outputs else 0
    if (
        summary.stats.failed_invocations
        or summary.stats.handled != settings.records
        or summary.stats.outputs != expected_outputs
    ):
        raise RuntimeError(f"streamfn ({style}) handled {summary.stats.handled} records: {summary.stats}")
    first, first_fetch = called[0]
    return assigned[0] if assigned else first, end, first_fetch


async def run_variant(settings: Settings, variant: str, run: int) -> RunResult:
    gc.collect()
    group = harness.unique_name(variant, run)
    totals: Totals = {}
    async with RssSampler() as rss, asyncio.timeout(settings.run_timeout):
        if variant in ("a", "a-json", "a-out", "a-sum", "a-sum-gc"):
            with collecting_for_worker() if variant == "a-sum-gc" else nullcontext():
                first, end, first_fetch = await run_plain(
                    settings,
                    group,
                    decode=variant == "a-json",
                    produce=variant == "a-out",
                    totals=totals if variant.startswith("a-sum") else None,
                )
        else:
            first, end, first_fetch = await run_streamfn(settings, group, variant, totals)
    if "-sum" in variant:
        check_totals(totals, settings.records, settings.value_bytes)
    return RunResult(settings.records, end.wall - first.wall, end.cpu - first.cpu, rss.peak_kib, first_fetch)


# --- report ----------------------------------------------------------------------------------------------------


def print_settings(console: Console, args: argparse.Namespace, settings: Settings, produce_seconds: float) -> None:
    sample = make_value(0, args.value_bytes)
    records = (
        f"{settings.records:,} JSON records of ~{len(sample)} B on topic {settings.topic} "
        f"({PARTITIONS} partitions, {settings.records // PARTITIONS:,} each, partition = i % {PARTITIONS}); "
        f"{harness.prefilled(settings.records, produce_seconds)}"
    )
    config = (
        f"batch_size={settings.batch_size}, maximum_batching_window_in_seconds={settings.window:g}, "
        f"timeout={harness.HANDLER_TIMEOUT_SECONDS:g}, session_timeout_ms={harness.SESSION_TIMEOUT_MS}, "
        f"fetch_max_bytes={FETCH_MAX_BYTES}, value_format=json, repeats={args.repeats} (interleaved), "
        f"variants={','.join(args.variants)}"
    )
    lines = [("records", records), ("sample", sample.decode()), ("config", config)]
    harness.print_config(console, settings.servers, lines, packages=("orjson",))


def window_note(settings: Settings) -> str:
    return (
        f"Window: this run uses maximum_batching_window_in_seconds={settings.window:g}. Lambda's default window "
        f"({LAMBDA_DEFAULT_WINDOW:g} s) holds a partial batch until it is full or the window, counted from its first "
        f"record's arrival, ends. Batches do not line up with fetches, so the last batch of a partition is usually "
        f"partial and waits: up to {LAMBDA_DEFAULT_WINDOW:g} s of tail wait per run, a fixed cost rather than "
        f"throughput, which is why the default bench uses 0. --window {LAMBDA_DEFAULT_WINDOW:g} measures it."
    )


def print_table(console: Console, settings: Settings, variants: list[str], results: dict[str, list[RunResult]]) -> None:
    medians = {v: statistics.median(r.rate for r in results[v]) for v in variants if results[v]}
    baseline = medians.get("a")
    table = Table(
        title=f"Throughput: {settings.records:,} records, {PARTITIONS} partitions, batch_size {settings.batch_size}, "
        f"window {settings.window:g} s",
        caption=(
            "records/s = records / (time from first record received to the commit covering the last record); "
            "(a) first non-empty getmany -> last commit() returned; streamfn: first handler call -> "
            "checkpoint.committed_records == records (checked every 10 ms). Group join and shutdown excluded. "
            "Ratios are of medians. '1st fetch': records already received when the clock started (median; they "
            "count in records/s, for every variant alike). CPU %: this process's CPU time (all threads) / wall "
            "time over the timed window (median; the broker is another process). Peak RSS: max VmRSS of this "
            "whole process sampled during the runs.\n" + window_note(settings)
        ),
        caption_justify="left",
    )
    table.add_column("variant")
    harness.add_rate_columns(table)
    table.add_column("vs (a)", justify="right")
    table.add_column("vs (a')", justify="right")
    table.add_column("vs baseline", justify="right")
    table.add_column("target", justify="right")
    table.add_column("CPU %", justify="right")
    table.add_column("1st fetch", justify="right")
    table.add_column("peak RSS MiB", justify="right")
    for key in variants:
        runs = results[key]
        variant = VARIANTS[key]
        if not runs:
            table.add_row(variant.label, "failed", "-", "-", "-", "-", "-", "-", "-", "-", "-")
            continue
        median = medians[key]
        ratio = median / baseline if baseline else None
        decoding = medians.get("a-json")
        ratio_decoding = f"{median / decoding:.2f}" if decoding else "-"
        own = medians.get(variant.baseline)
        own_ratio = median / own if own else None
        own_cell = "-" if own_ratio is None else f"{own_ratio:.2f} of {VARIANTS[variant.baseline].label.split()[0]}"
        if variant.target is None:
            target = "-"
        elif own_ratio is None:
            target = f">= {variant.target:.1f}"
        else:
            met = own_ratio >= variant.target
            target = f"[green]>= {variant.target:.1f} ok[/]" if met else f"[red]>= {variant.target:.1f} MISS[/]"
        table.add_row(
            variant.label,
            *harness.rate_cells(runs, median),
            "-" if ratio is None else f"{ratio:.2f}",
            ratio_decoding,
            own_cell,
            target,
            harness.cpu_cell(runs),
            f"{statistics.median(r.first_fetch for r in runs):,.0f}",
            f"{max(r.peak_rss_kib for r in runs) / 1024:.0f}",
        )
    console.print(table)


# --- main ------------------------------------------------------------------------------------------------------


async def bench(args: argparse.Namespace, servers: str, console: Console) -> int:
    settings = Settings(
        servers=servers,
        topic=harness.unique_name(),
        records=args.records,
        batch_size=args.batch_size,
        window=args.window,
        run_timeout=args.run_timeout,
        value_bytes=args.value_bytes,
    )
    to_produce = spread(settings.records, args.value_bytes)
    produce_seconds = await harness.prefill(servers, settings.topic, PARTITIONS, to_produce)
    print_settings(console, args, settings, produce_seconds)

    async def run_one(variant: str, run: int) -> RunResult:
        return await run_variant(settings, variant, run)

    def report(result: RunResult) -> str:
        return f"{result.rate:,.0f} records/s ({result.seconds:.2f} s, peak RSS {result.peak_rss_kib / 1024:.0f} MiB)"

    results, failures = await harness.run_interleaved(
        console, args.variants, args.repeats, run_one, lambda v: VARIANTS[v].label, report if args.verbose else None
    )
    print_table(console, settings, args.variants, results)
    return 1 if failures else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = harness.new_parser(__doc__)
    harness.add_records(parser, 200_000)
    harness.add_repeats(parser, "variant")
    harness.add_batch_size(parser, 100)
    parser.add_argument(
        "--window",
        type=float,
        default=0.0,
        help="streamfn maximum_batching_window_in_seconds (default 0.0; Lambda's default is 0.5)",
    )
    harness.add_variant_options(parser, list(VARIANTS))
    args = harness.parse_variant_args(parser, argv, list(VARIANTS))
    if args.records < 1 or args.repeats < 1 or args.batch_size < 1 or args.window < 0:
        parser.error("--records, --repeats and --batch-size must be >= 1 and --window >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    return harness.run_bench(parse_args(argv), bench)


if __name__ == "__main__":
    sys.exit(main())
