"""OpenTelemetry metrics after a scripted run: Lambda's event counts per function and partition, exact.

Two functions read the same two partitions. Per partition, 10 records are produced before the worker starts; 2 of
them match no filter; `batch_size=4` with a long batching window cuts each partition's 8 matching records into two
batches of 4. One record fails every time. What each count must be follows from Lambda's rules, worked out in the
comments, and is compared with what an OpenTelemetry reader collected.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections import defaultdict
from typing import Any

from conftest import Out, committed, create_topic, produce, read_topic, source
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader, NumberDataPoint
from prometheus_client.parser import text_string_to_metric_families

from streamfn import App, BatchItemFailures, Record
from streamfn.cli.operations import prometheus_metrics
from streamfn.connectors.kafka import KafkaTopic
from streamfn.engine.worker import Worker
from streamfn.observability.endpoint import Endpoint
from streamfn.observability.telemetry import Telemetry, exporters

SKIPPED = {2, 7, 12, 17}
"""Records no filter matches: 2 per partition."""
BAD = 4
"""Fails every invocation it is in (partition 0's first batch: 0, 1, 3, 4)."""


def collected(reader: InMemoryMetricReader) -> dict[str, dict[tuple[Any, ...], Any]]:
    """name -> {(function, topic, partition[, outcome]): value or histogram point}. (OpenTelemetry's instrument
    names are case-insensitive: the SDK exports them lowercased.)"""
    found: dict[str, dict[tuple[Any, ...], Any]] = defaultdict(dict)
    data = reader.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    a = point.attributes or {}
                    where = tuple(a[k] for k in ("function", "topic", "partition", "outcome") if k in a)
                    value = point if isinstance(point, HistogramDataPoint) else point.value
                    assert isinstance(point, HistogramDataPoint | NumberDataPoint)
                    found[metric.name][where] = value
    return found


async def test_lambda_event_counts_per_function_and_partition_are_exact(broker: str, name: Any) -> None:
    topic, dlq = name("t"), name("dlq")
    await create_topic(broker, topic, 2)
    await produce(
        broker,
        topic,
        [
            Out(json.dumps({"n": n, "kind": "skip" if n in SKIPPED else "order"}).encode(), partition=n // 10)
            for n in range(20)
        ],
    )
    reader = InMemoryMetricReader()
    app = App("metered")
    orders = {"Filters": [{"Pattern": json.dumps({"value": {"kind": ["order"]}})}]}
    common: dict[str, Any] = {"batch_size": 4, "maximum_batching_window_in_seconds": 5, "filter_criteria": orders}

    def fail_on_bad(records: list[Record]) -> None:
        if any(r.value["n"] == BAD for r in records):
            raise ValueError("bad record")

    @app.function(
        source=source(topic, name("g")),
        bisect_batch_on_function_error=True,
        maximum_retry_attempts=1,
        on_failure=KafkaTopic(dlq),
        **common,
    )
    def bisecting(records: list[Record]) -> None:
        fail_on_bad(records)

    @app.function(source=source(topic, name("g")), maximum_retry_attempts=0, **common)
    def dropping(records: list[Record]) -> None:
        fail_on_bad(records)

    @app.function(
        source=source(topic, name("g")),
        function_response_types=["ReportBatchItemFailures"],
        maximum_retry_attempts=0,
        **common,
    )
    def reporting(records: list[Record]) -> None:
        if bad := [r for r in records if r.value["n"] == BAD]:
            raise BatchItemFailures(bad)

    worker = Worker(app, Telemetry(meter_provider=MeterProvider(metric_readers=[reader])))
    task = asyncio.create_task(worker.run(handle_signals=False))
    deadline = time.monotonic() + 60
    while not all(p.checkpoint.offsets() == {(topic, 0): 10, (topic, 1): 10} for p in worker.pollers):
        assert time.monotonic() < deadline and not task.done(), "not all committed in time"
        await asyncio.sleep(0.05)
    metrics = collected(reader)  # while running: lag and records in flight are read from the live partitions
    worker.stop()
    await task

    p0, p1 = ("bisecting", topic, 0), ("bisecting", topic, 1)
    d0, d1 = ("dropping", topic, 0), ("dropping", topic, 1)
    r0, r1 = ("reporting", topic, 0), ("reporting", topic, 1)
    expected = {
        "PolledEventCount": {p0: 10, p1: 10, d0: 10, d1: 10, r0: 10, r1: 10},
        "FilteredOutEventCount": {p0: 2, p1: 2, d0: 2, d1: 2, r0: 2, r1: 2},
        # bisecting, partition 0: [0 1 3 4] fails, halves [0 1] ok and [3 4] fails, halves [3] ok and [4] fails,
        # [4] retried once and fails again; then [5 6 8 9]: 4+2+2+1+1+1+4 = 15 records invoked.
        # dropping, partition 0: [0 1 3 4] fails with no retries (dropped), then [5 6 8 9]: 8.
        # reporting, partition 0: [0 1 3 4] reports 4 failed (a failed invocation's events for Lambda's
        # FailedInvokeEventCount, not an InvokeErrorCount); no retries: 4 is dropped. Then [5 6 8 9]: 8.
        "InvokedEventCount": {p0: 15, p1: 8, d0: 8, d1: 8, r0: 8, r1: 8},
        "FailedInvokeEventCount": {p0: 4 + 2 + 1 + 1, p1: 0, d0: 4, d1: 0, r0: 4, r1: 0},
        "InvokeErrorCount": {p0: 4, p1: 0, d0: 1, d1: 0, r0: 0, r1: 0},
        "OnFailureDestinationDeliveryErrorCount": {p0: 0, p1: 0, d0: 0, d1: 0, r0: 0, r1: 0},
        "CommitErrorCount": {p0: 0, p1: 0, d0: 0, d1: 0, r0: 0, r1: 0},
        "streamfn.retries": {p0: 1, p1: 0, d0: 0, d1: 0, r0: 0, r1: 0},
        "streamfn.bisections": {p0: 2, p1: 0, d0: 0, d1: 0, r0: 0, r1: 0},
        "OnFailureDestinationDeliveredEventCount": {p0: 1, p1: 0, d0: 0, d1: 0, r0: 0, r1: 0},
        "DroppedEventCount": {p0: 0, p1: 0, d0: 4, d1: 0, r0: 1, r1: 0},
        "CommittedEventCount": {p0: 10, p1: 10, d0: 10, d1: 10, r0: 10, r1: 10},
        "OffsetLag": {p0: 0, p1: 0, d0: 0, d1: 0, r0: 0, r1: 0},
        "streamfn.records.in_flight": {p0: 0, p1: 0, d0: 0, d1: 0, r0: 0, r1: 0},
        "MaxOffsetLag": {("bisecting",): 0, ("dropping",): 0, ("reporting",): 0},
        "SumOffsetLag": {("bisecting",): 0, ("dropping",): 0, ("reporting",): 0},
        "PollingErrorCount": {("bisecting",): 0, ("dropping",): 0, ("reporting",): 0},
    }
    assert {metric: metrics[metric.lower()] for metric in expected} == expected

    # One histogram point per (partition, outcome); the batch sizes add up to the records invoked.
    sizes = metrics["streamfn.batch.size"]
    assert {where: (point.count, point.sum) for where, point in sizes.items() if where[0] == "bisecting"} == {
        (*p0, "success"): (3, 2 + 1 + 4),
        (*p0, "error"): (4, 4 + 2 + 1 + 1),
        (*p1, "success"): (2, 8),
    }
    durations = metrics["streamfn.invocation.duration"]
    assert {where: point.count for where, point in durations.items()} == {
        where: point.count for where, point in sizes.items()
    }

    # What the counts claim, checked against the broker.
    letters = await read_topic(broker, dlq, 1)
    assert [
        (json.loads(d.value)["requestContext"]["condition"], dict(d.headers)["streamfn.source.offset"]) for d in letters
    ] == [("RetryAttemptsExhausted", b"4")]
    for function in app.functions.values():
        assert await committed(broker, function.group_id, topic, 2) == {0: 10, 1: 10}


async def test_the_prometheus_endpoint_serves_the_counts_under_lambdas_names(broker: str, name: Any) -> None:
    """What `streamfn run --metrics-port` serves: the counts per partition, as Prometheus scrapes them."""
    topic = name("t")
    await create_topic(broker, topic, 2)
    await produce(broker, topic, [Out(b'{"n": %d}' % n, partition=n % 2) for n in range(7)])
    app = App("scraped")

    @app.function(source=source(topic, name("g")))
    def handler(records: list[Record]) -> None:
        pass

    built = exporters(["prometheus"], "none")
    worker = Worker(app, built.telemetry)
    endpoint = Endpoint(0, {"/metrics": prometheus_metrics}, host="127.0.0.1")
    endpoint.start()
    task = asyncio.create_task(worker.run(handle_signals=False))
    try:
        deadline = time.monotonic() + 30
        while worker.pollers[0].checkpoint.offsets() != {(topic, 0): 4, (topic, 1): 3}:
            assert time.monotonic() < deadline and not task.done(), "not all committed in time"
            await asyncio.sleep(0.05)
        url = f"http://127.0.0.1:{endpoint.port}/metrics"
        scraped = (await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())).decode()
    finally:
        worker.stop()
        await task
        endpoint.stop()
        built.shutdown()  # the reader leaves prometheus_client's registry
    samples = {
        (s.name, s.labels.get("partition")): s.value
        for family in text_string_to_metric_families(scraped)
        for s in family.samples
        if s.labels.get("function") == "handler"
    }
    assert {k: v for k, v in samples.items() if k[0] in ("polledeventcount_total", "committedeventcount_total")} == {
        ("polledeventcount_total", "0"): 4,
        ("polledeventcount_total", "1"): 3,
        ("committedeventcount_total", "0"): 4,
        ("committedeventcount_total", "1"): 3,
    }
    assert samples[("offsetlag", "0")] == samples[("offsetlag", "1")] == samples[("maxoffsetlag", None)] == 0
