"""CPU per record: the plain aiokafka loop and streamfn by batch size, partition count and value size.

What it measures
    For each partition count (`--partitions`, default 4 and 64) and value size (`--value-bytes`, default 100 B and
    10 KB), one topic is pre-filled with JSON records shaped as bench/throughput.py's (record i goes to partition
    i % partitions): `--records` of the small values, `--large-records` of the large ones. Then the count+sum job of
    bench/throughput.py reads the whole topic with a fresh consumer group, as
      plain  a plain aiokafka loop (getmany + orjson.loads + count+sum + commit after each fetch: throughput's (a+sum)),
             under CPython's default garbage collector settings, and (plain+gc) under a streamfn worker's,
      native streamfn's native handler `async def job(records)` at each batch size (`--batch-sizes`, default 10, 100,
             1,000 and 10,000; window 0),
      lambda streamfn's Lambda-style handler `def job(event, context)` (base64 + orjson in the handler) at each size,
    `--repeats` times each, interleaved, every run checked for a complete count and sum.

    The figure is this process's CPU time (all threads: the client, the engine, the handler) from the moment the
    partitions are assigned (so every fetch counts, the first one too) to the commit covering the last record,
    divided by the records, in µs; the broker runs in another process. "own" is streamfn's minus plain+gc's, on the
    same topic: what the framework adds per record (the handler's work is the same code in both, except that the
    Lambda-style one also decodes base64). Batches are never larger than what a partition has buffered (64
    partitions of a 200,000-record topic hold 3,125 records each) nor than Lambda's 6 MB payload (about 450 records
    of 10 KB).

    A second table measures alone (no broker) what a Lambda-style invocation costs per record: the event streamfn
    builds (KafkaEvent), and the handler's base64 and JSON decoding of each value.

Run from the repository root:  python bench/cost.py [--records N] [--large-records N] [--batch-sizes 10,100,...]
                               [--partitions 4,64] [--value-bytes 100,10240] [--repeats N] [-v]
"""

from __future__ import annotations

import argparse
import base64
import gc
import statistics
import sys
import timeit
from collections.abc import Callable
from dataclasses import dataclass

import harness
import orjson
import throughput
from aiokafka.structs import ConsumerRecord
from rich.console import Console
from rich.table import Table

from streamfn.connectors.kafka.event import KafkaEvent
from streamfn.record import Partition

STYLES = {"native": "b-sum", "lambda": "c-sum"}
PLAIN = {"plain": "a-sum", "plain+gc": "a-sum-gc"}
"""The plain loop under CPython's default collector settings, and under a streamfn worker's."""
MICRO_RECORDS = 1000
MICRO_REPEATS = 50
"""streamfn's handler styles, as bench/throughput.py's variants of the count+sum job."""


@dataclass(frozen=True)
class Topic:
    name: str
    partitions: int
    value_bytes: int
    records: int


Key = tuple[Topic, str, int]
"""(topic, plain | plain+gc | native | lambda, batch size; 0 for the plain loops)."""


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
        from_assignment=True,
    )
    return await throughput.run_variant(settings, PLAIN.get(style) or STYLES[style], run)


def print_table(console: Console, args: argparse.Namespace, results: dict[Key, list[throughput.RunResult]]) -> None:
    table = Table(
        title="CPU µs per record (this process: client, engine and handler; median of runs)",
        caption="plain: the aiokafka loop under CPython's default collector settings; plain+gc: under a streamfn "
        "worker's (streamfn/engine/collector.py). own = streamfn - plain+gc on the same topic: what the framework adds "
        "per record (for lambda, with the handler's base64 decoding, which the plain loop does not do; see the table "
        "below). Every run counted and summed every record.",
        caption_justify="left",
    )
    columns = ("partitions", "value", "records", "batch size", "plain", "plain+gc", "native", "own", "lambda", "own")
    for column in columns:
        table.add_column(column, justify="right")
    for topic in dict.fromkeys(key[0] for key in results):
        plain = {name: cpu_us(runs) for name in PLAIN if (runs := results.get((topic, name, 0)))}
        for batch_size in args.batch_sizes:
            cells = []
            for style in STYLES:
                runs = results.get((topic, style, batch_size), [])
                if not runs:
                    cells += ["failed", "-"]
                    continue
                us = cpu_us(runs)
                own = plain.get("plain+gc")
                cells += [f"{us:.2f}", "-" if own is None else f"{us - own:+.2f}"]
            table.add_row(
                str(topic.partitions),
                f"{topic.value_bytes:,} B",
                f"{topic.records:,}",
                f"{batch_size:,}",
                *(f"{plain[name]:.2f}" if name in plain else "-" for name in PLAIN),
                *cells,
            )
    console.print(table)


def print_micro(console: Console, sizes: list[int]) -> None:
    """What a Lambda-style invocation costs per record, measured alone (no broker, collector off): the event
    streamfn builds, and what a handler then does to read a value."""
    table = Table(
        title=f"Per record, measured alone (best of {MICRO_REPEATS} x {MICRO_RECORDS:,} records, collector off)",
        caption="event: KafkaEvent (connectors/kafka/event.py) over a batch, the Lambda event streamfn builds; "
        "b64decode and orjson.loads: what a Lambda-style handler then does per value (a native handler gets the "
        "value decoded by the engine, orjson.loads).",
        caption_justify="left",
    )
    for column in ("value", "event µs", "base64.b64decode µs", "orjson.loads µs"):
        table.add_column(column, justify="right")
    for size in sizes:
        table.add_row(f"{size:,} B", *(f"{us:.2f}" for us in micro_row(size)))
    console.print(table)


def micro_row(size: int) -> list[float]:
    """µs per record of values of `size` bytes: the event, base64.b64decode, orjson.loads."""
    values = [throughput.make_value(i, size) for i in range(MICRO_RECORDS)]
    records = [
        ConsumerRecord("topic", 0, i, 1_700_000_000_000 + i, 0, None, v, None, -1, len(v), ())
        for i, v in enumerate(values)
    ]
    event = KafkaEvent("localhost:9092")
    partition = Partition("topic", 0)
    encoded = [item["value"] for item in event(partition, records)["records"]["topic-0"]]
    return [
        best_us(lambda: event(partition, records)),
        best_us(lambda: [base64.b64decode(text) for text in encoded]),
        best_us(lambda: [orjson.loads(value) for value in values]),
    ]


def best_us(work: Callable[[], object]) -> float:
    """µs per record of `work` over MICRO_RECORDS records, the best of MICRO_REPEATS, with the collector off."""
    gc.disable()
    try:
        return 1e6 * min(timeit.repeat(work, number=1, repeat=MICRO_REPEATS)) / MICRO_RECORDS
    finally:
        gc.enable()


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
        keys += [(topic, name, 0) for name in PLAIN]
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
    print_micro(console, args.value_bytes)
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
