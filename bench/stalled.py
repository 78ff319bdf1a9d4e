"""Memory behind a stalled handler: the worker's peak RSS with `--records` waiting, and that it resumes without loss.

What it measures
    One 4-partition topic is pre-filled with `--records` JSON records of about 100 bytes (record i goes to partition
    i % 4). `streamfn run pipeline.py` (a real worker process, as users run it) reads it with a native handler whose
    invocations stall while a flag file exists: every lane's first batch stalls, and the records behind them wait
    (in the topic, and in the worker's bounded partition buffers: past its high mark a partition is paused). While
    the handler is stalled, the worker's RSS is sampled (VmRSS, every `SAMPLE_SECONDS`) for `--stall` seconds; then
    the flag file is removed, the handler recovers, and the bench waits until the group's commits cover every
    record. The worker's peak RSS is the kernel's high-water mark (VmHWM) read just before it is stopped.

    Checked: the handler wrote the id of every record it handled (4 bytes each, to a file): each of the `--records`
    ids exactly once, and the committed offsets cover every record.

Run from the repository root:  python bench/stalled.py [--records N] [--batch-size N] [--stall S]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import harness
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from rich.console import Console
from rich.table import Table

PARTITIONS = 4
SAMPLE_SECONDS = 0.1
WATCH_SECONDS = 0.2
RUN_TIMEOUT_SECONDS = 600.0
RSS_GOAL_MIB = 200

PIPELINE = f"""
import asyncio, os
from array import array
from pathlib import Path
from streamfn import App
from streamfn.connectors.kafka import KafkaSource

app = App("bench-stalled")
source = KafkaSource(topics=[os.environ["TOPIC"]], consumer_group_id=os.environ["GROUP"],
                     session_timeout_ms={harness.SESSION_TIMEOUT_MS}, value_format="json")
STALL = Path(os.environ["STALL"])
STALLED = Path(os.environ["STALLED"])
handled = open(os.environ["HANDLED"], "ab")

@app.function(source=source, batch_size=int(os.environ["BATCH_SIZE"]), maximum_batching_window_in_seconds=0.0,
              timeout=900)
async def stalls(records):
    if STALL.exists():
        STALLED.touch()
        while STALL.exists():
            await asyncio.sleep(0.05)
    array("I", [r.value["id"] for r in records]).tofile(handled)
    handled.flush()
"""


@dataclass(frozen=True)
class Outcome:
    stalled_rss_mib: list[float]
    """VmRSS samples while the handler was stalled."""
    peak_rss_mib: float
    """VmHWM of the worker, read just before it was stopped."""
    resume_seconds: float
    """From the handler's recovery to the commit covering the last record."""
    handled: int
    duplicates: int
    missing: int
    committed: int


def spread(records: int) -> Iterator[harness.ToProduce]:
    for i in range(records):
        yield None, orjson.dumps({"id": i, "user": f"u{i % 1000}", "amount": i % 100, "pad": "x" * 40}), i % PARTITIONS


def status_kib(pid: int, field: str) -> int:
    """A field of /proc/<pid>/status in KiB (VmRSS, VmHWM); 0 once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


async def committed_total(reader: AIOKafkaConsumer, topic: str) -> int:
    """The records the group committed, asked by a consumer with the group's id that never joins it."""
    offsets = [await reader.committed(TopicPartition(topic, p)) for p in range(PARTITIONS)]
    return sum(offset or 0 for offset in offsets)


async def wait_for(
    condition: Callable[[], Awaitable[bool]], what: str, worker: asyncio.subprocess.Process, log: Path
) -> None:
    """Poll `condition()` until it is true; raise if the worker exits or time runs out."""
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    while not await condition():
        if worker.returncode is not None:
            raise RuntimeError(f"the worker exited with {worker.returncode} while waiting for {what}; see {log}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {what} within {RUN_TIMEOUT_SECONDS:g} s")
        await asyncio.sleep(WATCH_SECONDS)


async def run(args: argparse.Namespace, servers: str, topic: str, directory: Path) -> Outcome:
    group = harness.unique_name("stalled")
    stall, stalled, handled = directory / "stall", directory / "stalled", directory / "handled"
    stall.touch()
    log = directory / "worker.log"
    env = dict(
        os.environ,
        TOPIC=topic,
        GROUP=group,
        STALL=str(stall),
        STALLED=str(stalled),
        HANDLED=str(handled),
        BATCH_SIZE=str(args.batch_size),
    )
    command = [sys.executable, "-m", "streamfn", "run", str(directory / "pipeline.py")]
    command += ["--bootstrap-servers", servers, "--log-level", "WARNING"]
    with log.open("w") as errors:
        worker = await asyncio.create_subprocess_exec(*command, env=env, stdout=subprocess.DEVNULL, stderr=errors)
    reader = AIOKafkaConsumer(bootstrap_servers=servers, group_id=group, enable_auto_commit=False)
    await reader.start()
    try:

        async def is_stalled() -> bool:
            return stalled.exists()

        await wait_for(is_stalled, "stalled invocation", worker, log)
        samples = []
        for _ in range(round(args.stall / SAMPLE_SECONDS)):
            samples.append(status_kib(worker.pid, "VmRSS") / 1024)
            await asyncio.sleep(SAMPLE_SECONDS)
        stall.unlink()
        recovered = time.monotonic()

        wanted: int = args.records

        async def all_committed() -> bool:
            return await committed_total(reader, topic) >= wanted

        await wait_for(all_committed, "commit of every record", worker, log)
        resume_seconds = time.monotonic() - recovered
        committed = await committed_total(reader, topic)
        peak = status_kib(worker.pid, "VmHWM") / 1024
    finally:
        await reader.stop()
        if worker.returncode is None:
            worker.send_signal(signal.SIGTERM)
        await asyncio.wait_for(worker.wait(), RUN_TIMEOUT_SECONDS)
    ids = array("I")
    ids.frombytes(handled.read_bytes())
    seen = bytearray(args.records)
    duplicates = 0
    for i in ids:
        duplicates += seen[i]
        seen[i] = 1
    return Outcome(samples, peak, resume_seconds, len(ids), duplicates, seen.count(0), committed)


def print_table(console: Console, args: argparse.Namespace, outcome: Outcome) -> None:
    table = Table(
        title=f"{args.records:,} records behind a stalled handler ({PARTITIONS} partitions, batch_size "
        f"{args.batch_size:,})",
        caption=f"RSS while stalled: VmRSS of the worker process sampled every {SAMPLE_SECONDS:g} s for "
        f"{args.stall:g} s; peak: its VmHWM (the kernel's high-water mark) over the whole run, recovery included. "
        "Resume: from the handler's recovery to the commit covering the last record.",
        caption_justify="left",
    )
    for column in ("RSS while stalled (MiB, max)", "peak RSS (MiB)", "goal", "resume s", "handled", "lost", "twice"):
        table.add_column(column, justify="right")
    met = outcome.peak_rss_mib < RSS_GOAL_MIB
    lossless = outcome.missing == 0 and outcome.committed >= args.records
    table.add_row(
        f"{max(outcome.stalled_rss_mib, default=0):.0f}",
        f"{outcome.peak_rss_mib:.0f}",
        f"[green]< {RSS_GOAL_MIB} ok[/]" if met else f"[red]< {RSS_GOAL_MIB} MISS[/]",
        f"{outcome.resume_seconds:.1f}",
        f"{outcome.handled:,}",
        f"[green]{outcome.missing}[/]" if lossless else f"[red]{outcome.missing}[/]",
        f"{outcome.duplicates}",
    )
    console.print(table)


async def bench(args: argparse.Namespace, servers: str, console: Console) -> int:
    topic = harness.unique_name("stalled")
    seconds = await harness.prefill(servers, topic, PARTITIONS, spread(args.records))
    harness.print_config(
        console,
        servers,
        [
            (
                "records",
                f"{args.records:,} JSON records of ~100 B on topic {topic}; {harness.prefilled(args.records, seconds)}",
            ),
            ("config", f"batch_size={args.batch_size}, window 0, stall {args.stall:g} s"),
        ],
    )
    with tempfile.TemporaryDirectory(prefix="bench-stalled-") as name:
        directory = Path(name)
        (directory / "pipeline.py").write_text(PIPELINE)
        outcome = await run(args, servers, topic, directory)
    print_table(console, args, outcome)
    return 0 if outcome.missing == 0 and outcome.peak_rss_mib < RSS_GOAL_MIB else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = harness.new_parser(__doc__)
    harness.add_records(parser, 1_000_000)
    harness.add_batch_size(parser, 10_000)
    parser.add_argument("--stall", type=float, default=10.0, help="seconds the handler stays stalled (default 10)")
    args = parser.parse_args(argv)
    if args.records < 1 or args.batch_size < 1 or args.stall <= 0:
        parser.error("--records and --batch-size must be >= 1, --stall > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    return harness.run_bench(parse_args(argv), bench)


if __name__ == "__main__":
    sys.exit(main())
