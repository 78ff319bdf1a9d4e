"""Throughput of @app.aggregate (windowed counts and sums) and the cost of exactly-once, on the embedded broker.

What it measures
    One 4-partition topic is pre-filled ONCE with `--records` JSON records of about `--value-bytes` bytes, shaped
    as bench/throughput.py's (`{"id", "user", "amount", "pad"}`) plus an event time `ts` (epoch ms): record i is
    keyed by its user `u<i % 1000>`, goes to partition i % 4 (so each user's records stay in one partition, as an
    aggregation needs) and happens `--ms-per-record` ms after the previous one, so the 60 s tumbling windows close
    along the way (the last window of each partition stays open: nothing passes its end). Then each variant reads
    the whole topic from the beginning with a fresh consumer group, and its records/s is measured:

    (plain)     the same aggregation by hand over a plain aiokafka loop (getmany, orjson, a dict per partition,
                commit after each fetch), in memory only: the baseline (agg) is measured against;
    (noop)      native no-op handler `async def noop(records)`: bench/throughput.py's (b);
    (agg)       `@app.aggregate(key="user", window=Tumbling(60), timestamp="ts")` folding a count and a sum of
                `amount` per user and window, the closed windows' results upserted to a SQLite Table (keyed by user
                and window_start); the window state goes to its changelog topic before each commit;
    (agg-kafka) the same, the results written to a KafkaTopic instead;
    (alo)       `@app.function` whose native handler emits one row per batch (its partition, first offset and
                record count) to a SQLite Table, processing_guarantee="at_least_once" (the default);
    (eo)        the same with processing_guarantee="exactly_once": the Table stores the batch's source offsets in
                the transaction of its rows, and the worker resumes from them.

    The variants run interleaved (plain, noop, agg, agg-kafka, alo, eo, plain, ...) `--repeats` times, because
    the machine is small and noisy; the table shows every run, the median records/s, the ratio of medians to
    (plain) and to (noop), and (eo)'s to (alo). Each run is checked: every record handled, none late or failed,
    (plain, agg, agg-kafka) exactly the windows that must close closed, (agg) with every closed window's row and
    record count in the table, (alo, eo) one row per batch whose counts add up to the records.

How it times (as bench/throughput.py)
    The clock starts at the first handler or fold call (so the consumer group join, about session_timeout/2 = 3 s
    on Tansu, is excluded) and stops when `poller.checkpoint.committed_records` reaches the record count (watched
    every 10 ms). Completion is detected by counting records, never by end offsets (Tansu's ListOffsets "latest" is
    wrong after batched produce). CPU %: this process's CPU time over the timed window / its wall time.

Run from the repository root:  python bench/aggregate.py [--records N] [--repeats N] [--batch-size N]
                               [--ms-per-record MS] [--value-bytes N] [--variants plain,noop,agg,agg-kafka,alo,eo] [-v]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sqlite3
import statistics
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness
import orjson
from aiokafka import AIOKafkaConsumer
from rich.console import Console
from rich.table import Table as RichTable

from streamfn import App, Record
from streamfn.connectors.kafka import KafkaSource, KafkaTopic
from streamfn.connectors.table import Table
from streamfn.engine.worker import FunctionSummary, Worker
from streamfn.outputs.sink import Sink
from streamfn.state.windows import Tumbling

PARTITIONS = 4
USERS = 1000
WINDOW_SECONDS = 60
BASE_MS = 1_717_405_200_000
"""2024-06-03T09:00:00Z: the event time of record 0, on a window boundary."""


@dataclass(frozen=True)
class Variant:
    key: str
    label: str


VARIANTS = {
    v.key: v
    for v in (
        Variant("plain", "(plain) aiokafka getmany+commit, orjson, dict count+sum per user and window"),
        Variant("noop", "(noop) native: async def noop(records)"),
        Variant("agg", "(agg) @app.aggregate count+sum, 60 s tumbling -> Table (SQLite)"),
        Variant("agg-kafka", "(agg-kafka) the same -> KafkaTopic"),
        Variant("alo", "(alo) one row per batch -> Table, at_least_once"),
        Variant("eo", "(eo) one row per batch -> Table, exactly_once"),
    )
}


@dataclass(frozen=True)
class RunResult(harness.TimedRun):
    outputs: int
    """Outputs written (window results, or rows of batches)."""
    batches: int
    """Successful handler invocations (0 for aggregations, which fold without invoking)."""


@dataclass(frozen=True)
class Settings:
    servers: str
    topic: str
    records: int
    batch_size: int
    ms_per_record: int
    closed_windows: int
    """Window results every aggregation run must emit: the (user, window) pairs whose window ends at or before the
    largest event time of the user's partition."""
    closed_records: int
    """The records in those windows."""
    run_timeout: float


# --- pre-fill --------------------------------------------------------------------------------------------------


def make_value(i: int, size: int, ms_per_record: int) -> bytes:
    """bench/throughput.py's record i with its event time `ts`, padded to `size` bytes (or the least above)."""
    value: dict[str, Any] = {
        "id": i,
        "user": f"u{i % USERS}",
        "amount": (i * 7919) % 100_000 / 100,
        "ts": BASE_MS + i * ms_per_record,
        "pad": "",
    }
    value["pad"] = "x" * max(0, size - len(orjson.dumps(value)))
    return orjson.dumps(value)


def keyed(records: int, value_bytes: int, ms_per_record: int) -> Iterator[harness.ToProduce]:
    """Record i keyed by its user u<i % 1000>, to partition i % 4: every user's records in one partition."""
    for i in range(records):
        yield f"u{i % USERS}".encode(), make_value(i, value_bytes, ms_per_record), i % PARTITIONS


def closing(records: int, ms_per_record: int) -> tuple[int, int]:
    """(windows, records) that must close in a run: per partition, windows ending at or before its last event."""
    size_ms = WINDOW_SECONDS * 1000
    # the last record of partition p: the largest i < records with i % PARTITIONS == p
    last = {p: records - 1 - (records - 1 - p) % PARTITIONS for p in range(min(records, PARTITIONS))}
    windows: set[tuple[int, int]] = set()
    closed_records = 0
    for i in range(records):
        start = (i * ms_per_record) // size_ms
        if (start + 1) * size_ms <= last.get(i % PARTITIONS, -1) * ms_per_record:
            windows.add((i % USERS, start))
            closed_records += 1
    return len(windows), closed_records


# --- variants --------------------------------------------------------------------------------------------------


def source(settings: Settings, group: str) -> KafkaSource:
    return KafkaSource(
        topics=[settings.topic],
        bootstrap_servers=settings.servers,
        consumer_group_id=group,
        session_timeout_ms=harness.SESSION_TIMEOUT_MS,
        value_format="json",
    )


def rows(database: Path, query: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(database) as connection:
        return connection.execute(query).fetchall()


async def run_plain(settings: Settings, group: str) -> RunResult:
    """(plain): the same aggregation by hand over aiokafka, in memory only (no durable state, nowhere to write):
    decode each value, add it to its user's window, count the windows each partition's event time closes, and
    commit after each fetch. The baseline the framework's aggregation is measured against."""
    consumer = AIOKafkaConsumer(
        settings.topic,
        bootstrap_servers=settings.servers,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=harness.SESSION_TIMEOUT_MS,
        fetch_max_bytes=16 * 1024 * 1024,
    )
    size_ms = WINDOW_SECONDS * 1000
    windows: dict[int, dict[tuple[str, int], list[float]]] = {p: {} for p in range(PARTITIONS)}
    seen = dict.fromkeys(range(PARTITIONS), 0)
    count = closed = 0
    first: harness.Mark | None = None
    await consumer.start()
    try:
        while count < settings.records:
            batches = await consumer.getmany(timeout_ms=200)
            if batches and first is None:
                first = harness.now()
            for tp, records in batches.items():
                count += len(records)
                open_windows = windows[tp.partition]
                for record in records:
                    value = orjson.loads(record.value)
                    ts = value["ts"]
                    seen[tp.partition] = max(seen[tp.partition], ts)
                    accumulator = open_windows.setdefault((value["user"], ts - ts % size_ms), [0, 0.0])
                    accumulator[0] += 1
                    accumulator[1] += value["amount"]
                ending = [w for w in open_windows if w[1] + size_ms <= seen[tp.partition]]
                for window in ending:
                    del open_windows[window]
                closed += len(ending)
            if batches:
                await consumer.commit()
        end = harness.now()
    finally:
        await consumer.stop()
    if closed != settings.closed_windows:
        raise RuntimeError(f"(plain): {closed} windows closed, expected {settings.closed_windows}")
    assert first is not None
    return RunResult(settings.records, end.wall - first.wall, end.cpu - first.cpu, closed, 0)


async def run_variant(settings: Settings, variant: str, run: int, directory: Path) -> RunResult:
    gc.collect()
    group = harness.unique_name(variant, run)
    if variant == "plain":
        return await run_plain(settings, group)
    database = directory / f"{group}.db"
    started: list[harness.Mark] = []

    def first_call() -> None:
        if not started:
            started.append(harness.now())

    app = App("bench")
    if variant == "noop":

        async def noop(records: list[Record]) -> None:
            first_call()

        app.function(
            source=source(settings, group),
            timeout=harness.HANDLER_TIMEOUT_SECONDS,
            batch_size=settings.batch_size,
            maximum_batching_window_in_seconds=0.0,
        )(noop)
    elif variant in ("agg", "agg-kafka"):
        sink: Sink = (
            Table(f"sqlite:///{database}", "per_user", key=("user", "window_start"))
            if variant == "agg"
            else KafkaTopic(f"{group}-out")
        )

        def fold(accumulator: dict[str, Any] | None, record: Record) -> dict[str, Any]:
            if not started:
                first_call()
            if accumulator is None:
                return {"count": 1, "amount": record.value["amount"]}
            return {"count": accumulator["count"] + 1, "amount": accumulator["amount"] + record.value["amount"]}

        app.aggregate(
            source=source(settings, group),
            key="user",
            window=Tumbling(WINDOW_SECONDS),
            timestamp="ts",
            outputs=[sink],
            name="per_user",
            batch_size=settings.batch_size,
            maximum_batching_window_in_seconds=0.0,
        )(fold)
    else:

        async def per_batch(records: list[Record]) -> list[dict[str, int]]:
            first_call()
            first = records[0]
            return [{"partition": first.partition, "first_offset": first.offset, "records": len(records)}]

        app.function(
            source=source(settings, group),
            timeout=harness.HANDLER_TIMEOUT_SECONDS,
            batch_size=settings.batch_size,
            maximum_batching_window_in_seconds=0.0,
            outputs=[Table(f"sqlite:///{database}", "batches", key=("partition", "first_offset"))],
            processing_guarantee="exactly_once" if variant == "eo" else "at_least_once",
        )(per_batch)
    worker = Worker(app)
    async with asyncio.timeout(settings.run_timeout):
        summary, end = await harness.run_until_committed(worker, settings.records)
    check(settings, variant, summary, database)
    first = started[0]
    stats = summary.stats
    return RunResult(settings.records, end.wall - first.wall, end.cpu - first.cpu, stats.outputs, stats.batches)


def check(settings: Settings, variant: str, summary: FunctionSummary, database: Path) -> None:
    """Raise if the run did not do all its work (it is then reported as failed, not measured)."""
    stats = summary.stats
    problems = []
    if stats.handled != settings.records or stats.failed_invocations or stats.late or stats.dead_lettered:
        problems.append(f"handled {stats.handled} of {settings.records}")
    if variant in ("agg", "agg-kafka") and stats.outputs != settings.closed_windows:
        problems.append(f"{stats.outputs} window results, expected {settings.closed_windows}")
    if variant == "agg" and settings.closed_windows:  # the table is created by the first write
        [(count, total)] = rows(database, "SELECT count(*), sum(count) FROM per_user")
        if (count, total) != (settings.closed_windows, settings.closed_records):
            problems.append(f"table holds {count} windows of {total} records")
    if variant in ("alo", "eo"):
        [(count, total)] = rows(database, "SELECT count(*), sum(records) FROM batches")
        if count != stats.batches or total != settings.records:
            problems.append(f"table holds {count} batches of {total} records ({stats.batches} invocations)")
    if problems:
        raise RuntimeError(f"{variant}: {'; '.join(problems)}: {stats}")


# --- report ----------------------------------------------------------------------------------------------------


def print_settings(console: Console, args: argparse.Namespace, settings: Settings, produce_seconds: float) -> None:
    sample = make_value(0, args.value_bytes, settings.ms_per_record)
    span = settings.records * settings.ms_per_record / 1000
    records = (
        f"{settings.records:,} JSON records of ~{len(sample)} B on topic {settings.topic} "
        f"({PARTITIONS} partitions, partition = i % {PARTITIONS}, key = user u<i % {USERS}>), event time "
        f"{settings.ms_per_record} ms apart ({span:,.0f} s: {settings.closed_windows:,} windows of "
        f"{settings.closed_records:,} records close in a run); {harness.prefilled(settings.records, produce_seconds)}"
    )
    config = (
        f"batch_size={settings.batch_size}, maximum_batching_window_in_seconds=0, window=Tumbling({WINDOW_SECONDS}), "
        f"allowed_lateness=0, session_timeout_ms={harness.SESSION_TIMEOUT_MS}, value_format=json, Tables in SQLite "
        f"files under a temporary directory, repeats={args.repeats} (interleaved), variants={','.join(args.variants)}"
    )
    lines = [("records", records), ("sample", sample.decode()), ("config", config)]
    harness.print_config(console, settings.servers, lines, packages=("orjson", "aiosqlite"))


def print_table(console: Console, settings: Settings, variants: list[str], results: dict[str, list[RunResult]]) -> None:
    medians = {v: statistics.median(r.rate for r in results[v]) for v in variants if results[v]}
    plain, noop, alo = medians.get("plain"), medians.get("noop"), medians.get("alo")
    table = RichTable(
        title=f"Aggregations and exactly-once: {settings.records:,} records, {PARTITIONS} partitions, "
        f"batch_size {settings.batch_size}",
        caption=(
            "records/s = records / (first handler or fold call -> checkpoint.committed_records == records, checked "
            "every 10 ms); group join and shutdown excluded. Ratios are of medians. Outputs: window results or "
            "batch rows written per run. CPU %: this process's CPU time (all threads) / wall time over the timed "
            "window (median; the broker is another process)."
        ),
        caption_justify="left",
    )
    table.add_column("variant")
    harness.add_rate_columns(table)
    table.add_column("vs (plain)", justify="right")
    table.add_column("vs (noop)", justify="right")
    table.add_column("vs (alo)", justify="right")
    table.add_column("outputs", justify="right")
    table.add_column("CPU %", justify="right")
    for key in variants:
        runs = results[key]
        if not runs:
            table.add_row(VARIANTS[key].label, "failed", "-", "-", "-", "-", "-", "-", "-")
            continue
        median = medians[key]
        table.add_row(
            VARIANTS[key].label,
            *harness.rate_cells(runs, median),
            f"{median / plain:.2f}" if plain else "-",
            f"{median / noop:.2f}" if noop else "-",
            f"{median / alo:.2f}" if alo and key in ("alo", "eo") else "-",
            f"{statistics.median(r.outputs for r in runs):,.0f}",
            harness.cpu_cell(runs),
        )
    console.print(table)


# --- main ------------------------------------------------------------------------------------------------------


async def bench(args: argparse.Namespace, servers: str, console: Console) -> int:
    closed_windows, closed_records = closing(args.records, args.ms_per_record)
    settings = Settings(
        servers=servers,
        topic=harness.unique_name("agg"),
        records=args.records,
        batch_size=args.batch_size,
        ms_per_record=args.ms_per_record,
        closed_windows=closed_windows,
        closed_records=closed_records,
        run_timeout=args.run_timeout,
    )
    to_produce = keyed(settings.records, args.value_bytes, settings.ms_per_record)
    produce_seconds = await harness.prefill(servers, settings.topic, PARTITIONS, to_produce)
    print_settings(console, args, settings, produce_seconds)

    with tempfile.TemporaryDirectory(prefix="streamfn-bench-") as directory:

        async def run_one(variant: str, run: int) -> RunResult:
            return await run_variant(settings, variant, run, Path(directory))

        def report(result: RunResult) -> str:
            return f"{result.rate:,.0f} records/s ({result.seconds:.2f} s, {result.outputs:,} outputs)"

        def label(variant: str) -> str:
            return VARIANTS[variant].label

        results, failures = await harness.run_interleaved(
            console, args.variants, args.repeats, run_one, label, report if args.verbose else None
        )
    print_table(console, settings, args.variants, results)
    return 1 if failures else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = harness.new_parser(__doc__)
    harness.add_records(parser, 200_000)
    harness.add_repeats(parser, "variant")
    harness.add_batch_size(parser, 100)
    parser.add_argument(
        "--ms-per-record",
        type=int,
        default=2,
        help="event time between consecutive records, in ms (default 2: 30 records per user and minute)",
    )
    harness.add_variant_options(parser, list(VARIANTS))
    args = harness.parse_variant_args(parser, argv, list(VARIANTS))
    if args.records < PARTITIONS or args.repeats < 1 or args.batch_size < 1 or args.ms_per_record < 1:
        parser.error(f"--records must be >= {PARTITIONS}, --repeats, --batch-size and --ms-per-record >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    return harness.run_bench(parse_args(argv), bench)


if __name__ == "__main__":
    sys.exit(main())
