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
import statistics
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import harness
import orjson
from rich.console import Console
from rich.table import Table

from streamfn import Record

FACTORS = (1, 5, 10)
RUN_TIMEOUT_SECONDS = 300.0


@dataclass(frozen=True)
class RunResult(harness.TimedRun):
    batches: int
    """Successful handler invocations."""


# --- pre-fill --------------------------------------------------------------------------------------------------


def keyed(args: argparse.Namespace) -> Iterator[harness.ToProduce]:
    """The records keyed `key-<i % keys>`, each key in one partition (key % partitions)."""
    for i in range(args.records):
        key = i % args.keys
        yield f"key-{key}".encode(), orjson.dumps({"id": i, "key": key}), key % args.partitions


# --- one run ---------------------------------------------------------------------------------------------------


async def run_factor(args: argparse.Namespace, servers: str, topic: str, factor: int, run: int) -> RunResult:
    """A streamfn worker with the sleeping handler at `factor`; the clock starts at the first handler call."""
    started: list[harness.Mark] = []  # at the first handler call
    sleep_seconds = args.sleep_ms / 1000

    async def handler(records: list[Record]) -> None:
        if not started:
            started.append(harness.now())
        await asyncio.sleep(sleep_seconds)

    worker = harness.streamfn_worker(
        servers,
        topic,
        harness.unique_name(f"pf{factor}", run),
        handler,
        batch_size=args.batch_size,
        maximum_batching_window_in_seconds=0.0,
        parallelization_factor=factor,
    )
    async with asyncio.timeout(RUN_TIMEOUT_SECONDS):
        summary, end = await harness.run_until_committed(worker, args.records)
    stats = summary.stats
    if stats.failed_invocations or stats.handled != args.records:
        raise RuntimeError(f"factor {factor} handled {stats.handled} of {args.records} records: {stats}")
    first = started[0]
    return RunResult(args.records, end.wall - first.wall, end.cpu - first.cpu, stats.batches)


# --- report ----------------------------------------------------------------------------------------------------


def print_settings(
    console: Console, args: argparse.Namespace, servers: str, topic: str, produce_seconds: float
) -> None:
    records = (
        f"{args.records:,} JSON records keyed key-<i % {args.keys}> on topic {topic} "
        f"({args.partitions} partitions, partition = key % {args.partitions}); "
        f"{harness.prefilled(args.records, produce_seconds)}"
    )
    config = (
        f"handler: async def handler(records): await asyncio.sleep({args.sleep_ms:g} ms); "
        f"batch_size={args.batch_size}, maximum_batching_window_in_seconds=0, "
        f"timeout={harness.HANDLER_TIMEOUT_SECONDS:g}, session_timeout_ms={harness.SESSION_TIMEOUT_MS}, "
        f"value_format=json, parallelization_factor "
        f"{', '.join(map(str, FACTORS))}, repeats={args.repeats} (interleaved)"
    )
    harness.print_config(console, servers, [("records", records), ("config", config)])


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
    harness.add_rate_columns(table)
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
            *harness.rate_cells(runs, median),
            f"{median / baseline:.2f}" if baseline else "-",
            ceiling,
            f"{statistics.median(r.records / r.batches for r in runs):.1f}",
            harness.cpu_cell(runs),
        )
    console.print(table)


# --- main ------------------------------------------------------------------------------------------------------


async def bench(args: argparse.Namespace, servers: str, console: Console) -> int:
    topic = harness.unique_name()
    produce_seconds = await harness.prefill(servers, topic, args.partitions, keyed(args))
    print_settings(console, args, servers, topic, produce_seconds)

    async def run_one(factor: int, run: int) -> RunResult:
        return await run_factor(args, servers, topic, factor, run)

    def report(result: RunResult) -> str:
        return f"{result.rate:,.0f} records/s ({result.seconds:.2f} s)"

    results, failures = await harness.run_interleaved(
        console, FACTORS, args.repeats, run_one, lambda f: f"factor {f}", report if args.verbose else None
    )
    print_table(console, args, results)
    return 1 if failures else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = harness.new_parser(__doc__)
    harness.add_records(parser, 20_000)
    parser.add_argument("--partitions", type=int, default=4, help="partitions of the topic (default 4)")
    parser.add_argument("--keys", type=int, default=1000, help="distinct record keys (default 1000)")
    harness.add_batch_size(parser, 10)
    parser.add_argument("--sleep-ms", type=float, default=5.0, help="handler's await per batch, in ms (default 5)")
    harness.add_repeats(parser, "factor")
    harness.add_verbose(parser)
    args = parser.parse_args(argv)
    if min(args.records, args.partitions, args.keys, args.batch_size, args.repeats) < 1 or args.sleep_ms < 0:
        parser.error("--records, --partitions, --keys, --batch-size and --repeats must be >= 1, --sleep-ms >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    return harness.run_bench(parse_args(argv), bench)


if __name__ == "__main__":
    sys.exit(main())
