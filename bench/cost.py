"""CPU per record: the plain aiokafka loop and streamfn by batch size, partition count and value size.

What it measures
    For each partition count (`--partitions`, default 4 and 64) and value size (`--value-bytes`, default 100 B and
    10 KB), one topic is pre-filled with JSON records shaped as bench/throughput.py's (record i goes to partition
    i % partitions): `--records` of the small values, `--large-records` of the large ones. Then the count+sum job of
    bench/throughput.py reads the whole topic with a fresh consumer group, as
      plain  a plain aiokafka loop (getmany + orjson.loads + count+sum + commit after each fetch: throughput's (a+sum)),
      native streamfn's native handler `async def job(records)` at each batch size (`--batch-sizes`, default 10, 100,
             1,000 and 10,000; window 0),
      lambda streamfn's Lambda-style handler `def job(event, context)` (base64 + orjson in the handler) at each size,
    `--repeats` times each, interleaved, every run checked for a complete count and sum.

    The figure is this process's CPU time (all threads: the client, the engine, the handler) over the timed window
    (bench/throughput.py's: first record received to the commit covering the last one) divided by the records, in
    µs; the broker runs in another process. "own" is streamfn's minus the plain loop's, on the same topic: what the
    framework adds per record (the handler's work is the same code in both, except that the Lambda-style one also
    decodes base64). Batches are never larger than what a partition has buffered (64 partitions of a 200,000-record
    topic hold 3,125 records each) nor than Lambda's 6 MB payload (about 450 records of 10 KB).

Run from the repository root:  python bench/cost.py [--records N] [--large-records N] [--batch-sizes 10,100,...]
                               [--partitions 4,64] [--value-bytes 100,10240] [--repeats N] [-v]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass

import harness
import throughput
from rich.console import Console
from rich.table import Table

STYLES = {"native": "b-sum", "lambda": "c-sum"}
"""streamfn's handler styles, as bench/throughput.py's variants of the count+sum job."""


@dataclass(frozen=True)
class Topic:
    name: str
    partitions: int
    value_bytes: int
    records: int


Key = tuple[Topic, str, int]
"""(topic, plain | native | lambda, batch size; 0 for the plain loop)."""


def cpu_us(runs: list[throughput.RunResult]) -> float:
    return statistics.median(1e6 * r.cpu_seconds / r.records for r in runs)


async def run_one(servers: str, key: Key, run: int, run_timeout: float) -> throughput.RunResult:
    topic, style, batch_size = key
    settings = throughput.Settings(
        servers=servers,
        topic=topic.name,
        records=topic.records,
        batch_size=max(batch_size, 1),
        window=0.0,
        run_timeout=run_timeout,
        value_bytes=topic.value_bytes,
    )
    return await throughput.run_variant(settings, "a-sum" if style == "plain" else STYLES[style], run)


def print_table(console: Console, args: argparse.Namespace, results: dict[Key, list[throughput.RunResult]]) -> None:
    table = Table(
        title="CPU µs per record (this process: client, engine and handler; median of runs)",
        caption="own = streamfn - plain on the same topic: what the framework adds per record. Every run counted and "
        "summed every record.",
        caption_justify="left",
    )
    for column in ("partitions", "value", "records", "batch size", "plain", "native", "own", "lambda", "own"):
        table.add_column(column, justify="right")
    topics = list(dict.fromkeys(key[0] for key in results))
    for topic in topics:
        plain_runs = results.get((topic, "plain", 0), [])
        plain = cpu_us(plain_runs) if plain_runs else None
        for batch_size in args.batch_sizes:
            cells = []
            for style in STYLES:
                runs = results.get((topic, style, batch_size), [])
                if not runs:
                    cells += ["failed", "-"]
                    continue
                us = cpu_us(runs)
                cells += [f"{us:.2f}", "-" if plain is None else f"{us - plain:+.2f}"]
            table.add_row(
                str(topic.partitions),
                f"{topic.value_bytes:,} B",
                f"{topic.records:,}",
                f"{batch_size:,}",
                "-" if plain is None else f"{plain:.2f}",
                *cells,
            )
    console.print(table)


async def bench(args: argparse.Namespace, servers: str, console: Console) -> int:
    topics = []
    lines = []
    for partitions in args.partitions:
        for value_bytes in args.value_bytes:
            records = args.records if value_bytes <= 1000 else args.large_records
            topic = Topic(harness.unique_name(partitions, value_bytes), partitions, value_bytes, records)
            to_produce = throughput.spread(records, value_bytes, partitions)
            seconds = await harness.prefill(servers, topic.name, partitions, to_produce)
            topics.append(topic)
            lines.append((f"{partitions}x{value_bytes}", f"{records:,} records: {harness.prefilled(records, seconds)}"))
    lines.append(("config", f"batch sizes {', '.join(map(str, args.batch_sizes))}, window 0, repeats {args.repeats}"))
    harness.print_config(console, servers, lines, packages=("orjson",))
    keys: list[Key] = []
    for topic in topics:
        keys.append((topic, "plain", 0))
        keys += [(topic, style, batch_size) for batch_size in args.batch_sizes for style in STYLES]

    def label(key: Key) -> str:
        topic, style, batch_size = key
        size = f" batch {batch_size}" if batch_size else ""
        return f"{topic.partitions} partitions, {topic.value_bytes} B: {style}{size}"

    def report(result: throughput.RunResult) -> str:
        return f"{1e6 * result.cpu_seconds / result.records:.2f} µs CPU per record ({result.rate:,.0f} records/s)"

    async def run(key: Key, repeat: int) -> throughput.RunResult:
        return await run_one(servers, key, repeat, args.run_timeout)

    results, failures = await harness.run_interleaved(
        console, keys, args.repeats, run, label, report if args.verbose else None
    )
    print_table(console, args, results)
    return 1 if failures else 0


def numbers(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = harness.new_parser(__doc__)
    harness.add_records(parser, 200_000)
    parser.add_argument(
        "--large-records", type=int, default=20_000, help="records of values over 1,000 B (default 20000)"
    )
    parser.add_argument("--batch-sizes", type=numbers, default=[10, 100, 1000, 10_000])
    parser.add_argument("--partitions", type=numbers, default=[4, 64])
    parser.add_argument("--value-bytes", type=numbers, default=[100, 10_240])
    harness.add_repeats(parser, "configuration")
    parser.add_argument("--run-timeout", type=float, default=300.0, help="seconds before a run is abandoned")
    harness.add_verbose(parser)
    args = parser.parse_args(argv)
    every = [args.records, args.large_records, args.repeats, *args.batch_sizes, *args.partitions, *args.value_bytes]
    if min(every) < 1:
        parser.error("every count and size must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    return harness.run_bench(parse_args(argv), bench)


if __name__ == "__main__":
    sys.exit(main())
