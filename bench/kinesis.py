"""Throughput of streamfn's KinesisSource against a plain aiobotocore GetRecords loop, and the lease takeover time
after a kill -9, on moto in server mode (Kinesis, and DynamoDB for the lease table).

What it measures
    Throughput: for each shard count of `--shards` (default 1 and 4), one stream is pre-filled ONCE with `--records`
    JSON records of about `--value-bytes` bytes, spread evenly over its shards (ExplicitHashKey). Then each variant
    reads the whole stream from TRIM_HORIZON, and its records/s is measured:

    (a) plain aiobotocore: per shard, GetShardIterator(TRIM_HORIZON) then GetRecords(Limit=10000) again at once
        until the shard's records are in, all shards concurrently; no decoding, no checkpoint (the baseline);
    (b) streamfn, native no-op handler `async def noop(records)` (values decoded as JSON into Records), a fresh
        lease table per run (created, scanned, taken; a conditional checkpoint write per commit);
    (c) streamfn, Lambda-style no-op handler `def noop(event, context)`, a sync def (run in the thread pool; the
        event has Lambda's Kinesis shape, data base64-encoded).

    The variants run interleaved (a, b, c, a, b, c, ...) `--repeats` times; the table shows every run, the median
    records/s for the whole stream and per shard (whole / shards), and the ratio of medians against (a) of the same
    stream. moto answers every call in one Python process: it, not the client, bounds the rates (a GetRecords of
    10,000 records of 100 B takes it about a second), so the ratios say what streamfn costs on top of the reads.

    Takeover: two `streamfn run` processes share a `--takeover-shards`-shard stream with
    lease_duration_seconds=`--lease-duration`; once each holds its half, the one that came last is killed with
    SIGKILL (it releases nothing), and the time until the lease table shows every shard owned by the survivor is
    measured (read every 50 ms). A new worker is started and the cycle repeated `--kills` times.

How it times
    Throughput: the clock starts at the first GetRecords request (for streamfn: of its reader; the lease table's
    creation and the first scan are excluded, as the group join is for Kafka) and stops once every record is
    handled and committed: for (a) when the last shard's last GetRecords returns, for streamfn when
    `poller.checkpoint.committed_records` reaches the record count (checked every 10 ms).

Run from the repository root:  python bench/kinesis.py [--records N] [--shards 1,4] [--repeats N] [--batch-size N]
                               [--variants a,b,c] [--kills N] [--lease-duration S] [-v]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness
import orjson
from aiobotocore.session import get_session
from rich.console import Console
from rich.table import Table

from streamfn import App, Record
from streamfn.connectors.kinesis import KinesisSource
from streamfn.connectors.kinesis.api import KinesisApi
from streamfn.connectors.shards.local import embedded_aws
from streamfn.connectors.shards.reader import ShardReader
from streamfn.context import LambdaContext
from streamfn.engine.worker import Worker

REGION = "us-east-1"
PUT_CHUNK = 500  # PutRecords' most records per call
WATCH_SECONDS = 0.05
VARIANTS = {
    "a": "(a) aiobotocore GetRecords loop",
    "b": "(b) native: async def noop(records)",
    "c": "(c) Lambda-style: def noop(event, ctx)",
}

TAKEOVER_PIPELINE = """
import os
from streamfn import App
from streamfn.connectors.kinesis import KinesisSource

app = App("bench-takeover")

@app.function(source=KinesisSource(stream=os.environ["STREAM"], lease_table=os.environ["TABLE"],
                                   endpoint_url=os.environ["ENDPOINT"], region_name="us-east-1",
                                   lease_duration_seconds=float(os.environ["DURATION"])))
async def noop(records):
    pass
"""


# --- moto ------------------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def client(endpoint: str, service: str) -> AsyncIterator[Any]:
    async with get_session().create_client(service, region_name=REGION, endpoint_url=endpoint) as made:
        yield made


# --- pre-fill --------------------------------------------------------------------------------------------------


def make_value(i: int, size: int) -> bytes:
    value: dict[str, Any] = {"id": i, "user": f"u{i % 1000}", "pad": ""}
    value["pad"] = "x" * max(0, size - len(orjson.dumps(value)))
    return orjson.dumps(value)


async def prefill(endpoint: str, stream: str, shards: int, records: int, value_bytes: int) -> dict[str, int]:
    """Create `stream` with `shards` shards and put `records` records, record i into shard i % shards (by its
    starting hash key); the records of each shard."""
    async with client(endpoint, "kinesis") as kinesis:
        await kinesis.create_stream(StreamName=stream, ShardCount=shards)
        listed = (await kinesis.list_shards(StreamName=stream))["Shards"]
        hash_keys = [s["HashKeyRange"]["StartingHashKey"] for s in listed]
        counts: Counter[str] = Counter()
        for start in range(0, records, PUT_CHUNK):
            entries = [
                {"Data": make_value(i, value_bytes), "PartitionKey": f"k{i}", "ExplicitHashKey": hash_keys[i % shards]}
                for i in range(start, min(records, start + PUT_CHUNK))
            ]
            answer = await kinesis.put_records(StreamName=stream, Records=entries)
            if answer.get("FailedRecordCount"):
                raise RuntimeError(f"{answer['FailedRecordCount']} records were not put")
            counts.update(r["ShardId"] for r in answer["Records"])
    return dict(counts)


# --- throughput ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stream:
    name: str
    shards: int
    counts: dict[str, int]

    @property
    def records(self) -> int:
        return sum(self.counts.values())


async def run_plain(endpoint: str, stream: Stream) -> harness.TimedRun:
    """(a): every shard read from TRIM_HORIZON to its last record, concurrently; the clock from the first request."""
    started: list[harness.Mark] = []
    async with client(endpoint, "kinesis") as kinesis:

        async def read(shard: str, count: int) -> int:
            iterator = (
                await kinesis.get_shard_iterator(
                    StreamName=stream.name, ShardId=shard, ShardIteratorType="TRIM_HORIZON"
                )
            )["ShardIterator"]
            received = 0
            while received < count:
                if not started:
                    started.append(harness.now())
                response = await kinesis.get_records(ShardIterator=iterator, Limit=KinesisApi.max_records)
                received += len(response["Records"])
                iterator = response["NextShardIterator"]
            return received

        received = await asyncio.gather(*(read(shard, count) for shard, count in stream.counts.items()))
        end = harness.now()
    if sum(received) != stream.records:
        raise RuntimeError(f"(a) received {sum(received)} records, expected {stream.records}")
    return harness.TimedRun(stream.records, end.wall - started[0].wall, end.cpu - started[0].cpu)


STARTED: list[harness.Mark] = []
"""When the first GetRecords request of the run's reader left (the clock's start)."""


def timed_reads(reader: ShardReader) -> ShardReader:
    """`reader`, noting in STARTED when its first GetRecords request leaves (a shard source's bench variants)."""
    api = reader.api
    records = api.records

    async def timed(shard: str, iterator: str, limit: int | None = None) -> Any:
        if not STARTED:
            STARTED.append(harness.now())
        return await records(shard, iterator, limit)

    api.records = timed  # type: ignore[method-assign]
    return reader


async def run_noop(source: Any, variant: str, batch_size: int, records: int) -> harness.TimedRun:
    """A no-op handler over `source` (whose readers are `timed_reads`) until its `records` are committed: (b) native
    `async def noop(records)`, (c) Lambda-style `def noop(event, context)`; timed from the first GetRecords request."""
    STARTED.clear()

    async def native_noop(records: list[Record]) -> None:
        pass

    def lambda_noop(event: dict[str, Any], context: LambdaContext) -> None:
        pass

    app = App("bench")
    handler = native_noop if variant == "b" else lambda_noop
    app.function(source=source, name="noop", batch_size=batch_size, timeout=harness.HANDLER_TIMEOUT_SECONDS)(handler)
    summary, end = await harness.run_until_committed(Worker(app), records)
    if summary.stats.failed_invocations or summary.stats.handled != records:
        raise RuntimeError(f"streamfn ({variant}) handled {summary.stats.handled} records: {summary.stats}")
    return harness.TimedRun(records, end.wall - STARTED[0].wall, end.cpu - STARTED[0].cpu)


class TimedSource(KinesisSource):
    """A KinesisSource whose readers note when their first GetRecords request leaves, in STARTED."""

    def reader(self, *, group_id: str) -> ShardReader:
        return timed_reads(super().reader(group_id=group_id))


async def run_streamfn(endpoint: str, stream: Stream, variant: str, batch_size: int, run: int) -> harness.TimedRun:
    source = TimedSource(
        stream=stream.name,
        endpoint_url=endpoint,
        region_name=REGION,
        lease_table=harness.unique_name("leases", stream.shards, variant, run),
        value_format="json",
    )
    return await run_noop(source, variant, batch_size, stream.records)


async def run_variant(
    endpoint: str, stream: Stream, variant: str, batch_size: int, timeout: float, run: int
) -> harness.TimedRun:
    gc.collect()
    async with asyncio.timeout(timeout):
        if variant == "a":
            return await run_plain(endpoint, stream)
        return await run_streamfn(endpoint, stream, variant, batch_size, run)


def print_throughput(
    console: Console, args: argparse.Namespace, results: dict[tuple[int, str], list[harness.TimedRun]]
) -> None:
    table = Table(
        title=f"KinesisSource on moto: {args.records:,} records per stream, batch_size {args.batch_size}",
        caption=(
            "records/s = records / (first GetRecords request -> last record received (a) or committed (b, c)); "
            "per shard = whole stream / shards. Ratios are of medians, against (a) on the same stream, in the same "
            "run. CPU %: this process's CPU time (all threads) / wall time over the timed window (moto is another "
            "process)."
        ),
        caption_justify="left",
    )
    table.add_column("shards", justify="right")
    table.add_column("variant")
    harness.add_rate_columns(table)
    table.add_column("per shard records/s", justify="right")
    table.add_column("vs (a)", justify="right")
    table.add_column("CPU %", justify="right")
    for (shards, variant), runs in results.items():
        if not runs:
            table.add_row(str(shards), VARIANTS[variant], "failed", "-", "-", "-", "-", "-")
            continue
        median = statistics.median(r.rate for r in runs)
        baseline = results.get((shards, "a"))
        ratio = f"{median / statistics.median(r.rate for r in baseline):.2f}" if baseline else "-"
        table.add_row(
            str(shards),
            VARIANTS[variant],
            *harness.rate_cells(runs, median),
            f"{median / shards:,.0f}",
            ratio,
            harness.cpu_cell(runs),
        )
    console.print(table)


# --- takeover --------------------------------------------------------------------------------------------------


async def owners(dynamodb: Any, table: str) -> dict[str, str | None]:
    try:
        items = (await dynamodb.scan(TableName=table, ConsistentRead=True))["Items"]
    except dynamodb.exceptions.ResourceNotFoundException:
        return {}
    return {item["leaseKey"]["S"]: item.get("leaseOwner", {}).get("S") for item in items}


def owner_pid(owner: str | None) -> int | None:
    """The process id in a worker id ("host:pid:suffix")."""
    return None if owner is None else int(owner.split(":")[-2])


async def wait_owned(dynamodb: Any, table: str, shards: int, pids: set[int], timeout: float) -> None:
    """Until every shard is owned and the owners are exactly `pids`, holding shares that differ by one at most."""
    deadline = time.monotonic() + timeout
    while True:
        found = await owners(dynamodb, table)
        loads = Counter(owner_pid(o) for o in found.values())
        if len(found) == shards and set(loads) == pids and max(loads.values()) - min(loads.values()) <= 1:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the leases were not shared by {sorted(pids)} within {timeout:g} s: {found}")
        await asyncio.sleep(WATCH_SECONDS)


async def measure_takeover(args: argparse.Namespace, endpoint: str, console: Console) -> list[float]:
    """Kill -9 the newest of two workers `--kills` times; the seconds until the survivor owns every shard."""
    stream, table = harness.unique_name("takeover"), harness.unique_name("takeover-leases")
    async with client(endpoint, "kinesis") as kinesis:
        await kinesis.create_stream(StreamName=stream, ShardCount=args.takeover_shards)
    env = dict(os.environ, STREAM=stream, TABLE=table, ENDPOINT=endpoint, DURATION=str(args.lease_duration))
    timeout = 10 * args.lease_duration + 30
    takeovers: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-kinesis-") as name:
        pipeline = Path(name) / "pipeline.py"
        pipeline.write_text(TAKEOVER_PIPELINE)
        log = (Path(name) / "workers.log").open("w")
        command = [sys.executable, "-m", "streamfn", "run", str(pipeline), "--log-level", "WARNING"]

        def start() -> subprocess.Popen[bytes]:
            return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log)

        survivor = start()
        workers = [survivor]
        try:
            async with client(endpoint, "dynamodb") as dynamodb:
                await wait_owned(dynamodb, table, args.takeover_shards, {survivor.pid}, timeout)
                for kill in range(args.kills):
                    victim = start()
                    workers.append(victim)
                    await wait_owned(dynamodb, table, args.takeover_shards, {survivor.pid, victim.pid}, timeout)
                    victim.send_signal(signal.SIGKILL)
                    killed = time.monotonic()
                    await wait_owned(dynamodb, table, args.takeover_shards, {survivor.pid}, timeout)
                    takeovers.append(time.monotonic() - killed)
                    victim.wait(10)
                    if args.verbose:
                        console.print(f"kill {kill + 1}: the survivor owned every shard {takeovers[-1]:.2f} s later")
        finally:
            for process in workers:
                process.kill()
                process.wait(10)
            log.close()
    return takeovers


def print_takeover(console: Console, args: argparse.Namespace, takeovers: list[float]) -> None:
    table = Table(
        title=f"Lease takeover after kill -9: {args.takeover_shards} shards, 2 workers",
        caption=(
            "seconds from SIGKILL of one worker to the lease table showing every shard owned by the other (read "
            "every 50 ms). Expected: the lease duration plus up to two take periods (half the duration each): the "
            "survivor must see a lease's counter unchanged for longer than the duration on its own clock."
        ),
        caption_justify="left",
    )
    table.add_column("lease duration s", justify="right")
    table.add_column("kills", justify="right")
    table.add_column("takeover s (each)", justify="right")
    table.add_column("median s", justify="right")
    table.add_column("median / duration", justify="right")
    median = statistics.median(takeovers)
    table.add_row(
        f"{args.lease_duration:g}",
        str(len(takeovers)),
        " ".join(f"{t:.2f}" for t in takeovers),
        f"{median:.2f}",
        f"{median / args.lease_duration:.2f}",
    )
    console.print(table)


# --- main ------------------------------------------------------------------------------------------------------


async def bench(args: argparse.Namespace, endpoint: str, console: Console) -> int:
    streams = {}
    for shards in args.shards:
        name = harness.unique_name("stream", shards)
        started = time.perf_counter()
        counts = await prefill(endpoint, name, shards, args.records, args.value_bytes)
        streams[shards] = Stream(name, shards, counts)
        harness.print_line(
            console,
            "stream",
            f"{name}: {shards} shards, {harness.prefilled(args.records, time.perf_counter() - started)}",
        )
    harness.print_line(console, "server", f"moto (server mode) at {endpoint}")
    harness.print_line(
        console,
        "config",
        f"~{len(make_value(0, args.value_bytes))} B JSON values, batch_size={args.batch_size}, "
        f"GetRecords Limit={KinesisApi.max_records}, repeats={args.repeats} (interleaved), "
        f"variants={','.join(args.variants)}",
    )
    harness.print_line(console, "machine", f"{os.cpu_count()} CPUs, {harness.versions('aiobotocore', 'moto')}")
    keys = [(shards, variant) for shards in args.shards for variant in args.variants]

    async def run_one(key: tuple[int, str], run: int) -> harness.TimedRun:
        shards, variant = key
        return await run_variant(endpoint, streams[shards], variant, args.batch_size, args.run_timeout, run)

    def report(result: harness.TimedRun) -> str:
        return f"{result.rate:,.0f} records/s ({result.seconds:.2f} s)"

    results, failures = await harness.run_interleaved(
        console,
        keys,
        args.repeats,
        run_one,
        lambda key: f"{key[0]} shards {VARIANTS[key[1]]}",
        report if args.verbose else None,
    )
    print_throughput(console, args, results)
    if args.kills:
        print_takeover(console, args, await measure_takeover(args, endpoint, console))
    return 1 if failures else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = harness.new_parser(__doc__)
    harness.add_records(parser, 20_000)
    parser.add_argument(
        "--shards",
        type=lambda text: [int(n) for n in text.split(",") if n.strip()],
        default=[1, 4],
        help="comma-separated shard counts, one pre-filled stream each (default 1,4)",
    )
    harness.add_repeats(parser, "variant")
    harness.add_batch_size(parser, 100)
    parser.add_argument(
        "--kills", type=int, default=3, help="kill -9 cycles for the takeover time (default 3; 0: skip)"
    )
    parser.add_argument(
        "--lease-duration", type=float, default=10.0, help="lease_duration_seconds of the takeover workers (default 10)"
    )
    parser.add_argument("--takeover-shards", type=int, default=4, help="shards of the takeover stream (default 4)")
    harness.add_variant_options(parser, list(VARIANTS))
    args = harness.parse_variant_args(parser, argv, list(VARIANTS))
    if min(args.records, args.repeats, args.batch_size, args.takeover_shards, *args.shards) < 1 or args.kills < 0:
        parser.error("--records, --repeats, --batch-size, --shards and --takeover-shards must be >= 1, --kills >= 0")
    if args.lease_duration < 1:
        parser.error("--lease-duration must be >= 1 (KinesisSource's lower bound)")
    return args


def main(argv: list[str] | None = None) -> int:
    return harness.run_bench(parse_args(argv), bench, embedded_aws)


if __name__ == "__main__":
    sys.exit(main())
