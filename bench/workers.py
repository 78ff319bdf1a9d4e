"""Throughput of `streamfn run --workers 1` vs `--workers 2` (processes sharing the group), on the embedded broker.

What it measures
    One 4-partition topic per job is pre-filled ONCE with JSON records (`--records` for cpu, `--agg-records` for
    agg, which runs about 6x faster and needs more to time well) `{"id", "user", "amount", "ts"}`:
    record i is keyed by its user `u<i % 1000>` and goes to partition (i % 1000) % 4 (so each user's records stay in
    one partition), `ts` 10 ms after the previous one. Then, for each worker count, `streamfn run pipeline.py
    --workers N` (a real subprocess, as users run it) reads the whole topic from the beginning with a fresh consumer
    group, and its records/s is measured. Jobs:

    (cpu)  a native handler that spends about `--spin-us` µs of pure-Python work per record (a counted loop; the
           count is calibrated once in this process, the same for every run): bound by one core per process;
    (agg)  `@app.aggregate(key="user", window=Tumbling(60), timestamp="ts")` folding a count and a sum of `amount`
           per user and window, the closed windows' results written to a KafkaTopic; the window state goes to its
           changelog topic before each commit;
    (sum)  issue 18's count+sum job: a native handler over JSON values (`value_format="json"`, batch_size 10,000)
           counting records and summing `amount` per user in memory (`--sum-records`, 1,000,000 by default).

    The worker counts run interleaved (1, 2, 1, 2, ...) `--repeats` times per job, because the machine is small and
    noisy; the table shows every run, the median records/s and the ratio of the medians (2 vs 1) of the same job.

How it times
    Across processes, so by the wall clock: the clock starts at the first handler or fold call of any worker process
    (each appends time.time() to a file on its first call; the group join, about session_timeout/2 = 3 s on Tansu,
    is excluded) and stops when the group's committed offsets add up to the record count (read every
    `WATCH_SECONDS` by a consumer with the group's id that never joins it). With 2 workers, a process that joins
    the group after the other one started is a rebalance inside the timed window, as it would be for users. The
    supervisor is then stopped with SIGTERM.

Run from the repository root:  python bench/workers.py [--records N] [--agg-records N] [--sum-records N]
                               [--spin-us US] [--repeats N] [--jobs cpu,agg,sum] [-v]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import harness
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from rich.console import Console
from rich.table import Table

WORKERS = (1, 2)
JOBS = ("cpu", "agg", "sum")
PARTITIONS = 4
USERS = 1000
WATCH_SECONDS = 0.05
RUN_TIMEOUT_SECONDS = 300.0

PIPELINE = f"""
import os, time
from streamfn import App
from streamfn.connectors.kafka import KafkaSource, KafkaTopic
from streamfn.state.windows import Tumbling

app = App("bench-workers")
source = KafkaSource(topics=[os.environ["TOPIC"]], consumer_group_id=os.environ["GROUP"],
                     session_timeout_ms={harness.SESSION_TIMEOUT_MS}, value_format="json")
SPIN = int(os.environ["SPIN"])
started = []

def first_call():
    started.append(True)
    with open(os.environ["STARTED"], "a") as out:
        out.write(f"{{time.time()}}\\n")

if os.environ["JOB"] == "cpu":
    @app.function(source=source, batch_size=100, maximum_batching_window_in_seconds=0.0)
    def spin(records):
        if not started:
            first_call()
        for _ in records:
            for _ in range(SPIN):
                pass
elif os.environ["JOB"] == "sum":
    counts, sums = {{}}, {{}}

    @app.function(source=source, batch_size=10_000, maximum_batching_window_in_seconds=0.0)
    async def count_sum(records):
        if not started:
            first_call()
        for r in records:
            user = r.value["user"]
            counts[user] = counts.get(user, 0) + 1
            sums[user] = sums.get(user, 0) + r.value["amount"]
else:
    @app.aggregate(source=source, key="user", window=Tumbling(60), timestamp="ts",
                   outputs=[KafkaTopic(os.environ["GROUP"] + "-out")], batch_size=100,
                   maximum_batching_window_in_seconds=0.0)
    def per_user(accumulator, record):
        if not started:
            first_call()
        if accumulator is None:
            return {{"count": 1, "amount": record.value["amount"]}}
        return {{"count": accumulator["count"] + 1, "amount": accumulator["amount"] + record.value["amount"]}}
"""


@dataclass(frozen=True)
class RunResult:
    records: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.records / self.seconds


def spin_count(micros: float) -> int:
    """Iterations of an empty `for` loop that take about `micros` µs here (the fastest of a few tries)."""
    n = 200_000
    best = min(_time_loop(n) for _ in range(5))
    return max(1, round(micros * 1e-6 / (best / n)))


def _time_loop(n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        pass
    return time.perf_counter() - started


def records(count: int) -> Iterator[harness.ToProduce]:
    for i in range(count):
        user = i % USERS
        value = {"id": i, "user": f"u{user}", "amount": i % 100, "ts": 1_700_000_000_000 + 10 * i}
        yield f"u{user}".encode(), orjson.dumps(value), user % PARTITIONS


async def committed_total(reader: AIOKafkaConsumer, topic: str) -> int:
    """The records the group committed, by a consumer in the group that never joins it (it only asks)."""
    offsets = [await reader.committed(TopicPartition(topic, p)) for p in range(PARTITIONS)]
    return sum(offset or 0 for offset in offsets)


async def run_workers(
    args: argparse.Namespace, servers: str, directory: Path, topic: str, count: int, job: str, workers: int
) -> RunResult:
    group = harness.unique_name(job, workers)
    started_file = directory / f"{group}.started"
    env = dict(os.environ, JOB=job, TOPIC=topic, GROUP=group, STARTED=str(started_file), SPIN=str(args.spin))
    log = (directory / f"{group}.log").open("w")
    command = [sys.executable, "-m", "streamfn", "run", str(directory / "pipeline.py"), "--workers", str(workers)]
    command += ["--bootstrap-servers", servers, "--log-level", "WARNING"]
    supervisor = await asyncio.create_subprocess_exec(*command, env=env, stdout=subprocess.DEVNULL, stderr=log)
    reader = AIOKafkaConsumer(bootstrap_servers=servers, group_id=group, enable_auto_commit=False)
    await reader.start()
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
        while await committed_total(reader, topic) < count:
            if supervisor.returncode is not None:
                raise RuntimeError(f"streamfn exited with {supervisor.returncode}; see {log.name}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"not every record committed within {RUN_TIMEOUT_SECONDS:g} s")
            await asyncio.sleep(WATCH_SECONDS)
        ended = time.time()
    finally:
        await reader.stop()
        supervisor.send_signal(signal.SIGTERM)
        await asyncio.wait_for(supervisor.wait(), RUN_TIMEOUT_SECONDS)
        log.close()
    first = min(float(line) for line in started_file.read_text().split())
    return RunResult(count, ended - first)


def print_table(console: Console, results: dict[tuple[str, int], list[RunResult]]) -> None:
    table = Table(
        title="streamfn run --workers N: records/s",
        caption="Wall clock from the first handler call of any worker to the last record committed (group join "
        "excluded). 'vs 1 worker' is the ratio of the medians of the same job, measured in the same run.",
    )
    table.add_column("job")
    table.add_column("workers", justify="right")
    table.add_column("runs (records/s)", justify="right")
    table.add_column("median records/s", justify="right")
    table.add_column("median s", justify="right")
    table.add_column("vs 1 worker", justify="right")
    for (job, workers), runs in results.items():
        if not runs:
            continue
        median = statistics.median(r.rate for r in runs)
        baseline = results.get((job, 1))
        ratio = f"{median / statistics.median(r.rate for r in baseline):.2f}" if baseline else "-"
        table.add_row(
            job,
            str(workers),
            " ".join(f"{r.rate:,.0f}" for r in runs),
            f"{median:,.0f}",
            f"{statistics.median(r.seconds for r in runs):.2f}",
            ratio,
        )
    console.print(table)


async def bench(args: argparse.Namespace, servers: str, console: Console) -> int:
    args.spin = spin_count(args.spin_us)
    topics = {}
    counts = {"cpu": args.records, "agg": args.agg_records, "sum": args.sum_records}
    for job in args.jobs:
        topics[job] = harness.unique_name(job)
        count = counts[job]
        seconds = await harness.prefill(servers, topics[job], PARTITIONS, records(count))
        harness.print_line(console, job, f"topic {topics[job]}: {harness.prefilled(count, seconds)}")
    harness.print_config(
        console,
        servers,
        [
            (
                "jobs",
                f"cpu: {args.spin:,} empty loop iterations per record (~{args.spin_us:g} µs here); "
                "agg: count+sum per user, Tumbling(60), results to a KafkaTopic; sum: count+sum per user in memory",
            ),
            ("topics", f"{PARTITIONS} partitions, {USERS} users; batch_size=100 (sum: 10,000)"),
        ],
    )
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as name:
        directory = Path(name)
        (directory / "pipeline.py").write_text(PIPELINE)
        keys = [(job, workers) for job in args.jobs for workers in WORKERS]

        async def run_one(key: tuple[str, int], run: int) -> RunResult:
            job, workers = key
            return await run_workers(args, servers, directory, topics[job], counts[job], job, workers)

        def report(result: RunResult) -> str:
            return f"{result.rate:,.0f} records/s ({result.seconds:.2f} s)"

        results, failures = await harness.run_interleaved(
            console,
            keys,
            args.repeats,
            run_one,
            lambda key: f"{key[0]} --workers {key[1]}",
            report if args.verbose else None,
        )
    print_table(console, results)
    return 1 if failures else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = harness.new_parser(__doc__)
    harness.add_records(parser, 100_000)
    parser.add_argument(
        "--agg-records", type=int, default=500_000, help="records of the agg job's topic (default 500000)"
    )
    parser.add_argument(
        "--sum-records", type=int, default=1_000_000, help="records of the sum job's topic (default 1000000)"
    )
    parser.add_argument("--spin-us", type=float, default=50.0, help="cpu job: µs of work per record (default 50)")
    harness.add_subset(parser, "--jobs", list(JOBS))
    harness.add_repeats(parser, "worker count")
    harness.add_verbose(parser)
    args = parser.parse_args(argv)
    harness.checked_subset(parser, "--jobs", args.jobs, list(JOBS))
    if min(args.records, args.agg_records, args.sum_records, args.repeats) < 1 or args.spin_us < 0:
        parser.error("--records, --agg-records, --sum-records and --repeats must be >= 1, --spin-us >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    return harness.run_bench(parse_args(argv), bench)


if __name__ == "__main__":
    sys.exit(main())
