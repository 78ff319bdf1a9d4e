"""Throughput of streamfn's DynamoDBStreamSource against a plain aiobotocore GetRecords loop, on moto in server mode
(DynamoDB, its streams, and the lease table).

What it measures
    One table with a NEW_IMAGE stream is pre-filled ONCE with `--records` items of about `--value-bytes` bytes
    (BatchWriteItem, 25 a call: one INSERT each on the stream; moto gives a stream one shard). Then each variant
    reads the whole stream from TRIM_HORIZON, and its records/s is measured:

    (a) plain aiobotocore: GetShardIterator(TRIM_HORIZON) then GetRecords(Limit=1000) again at once until the
        shard's records are in; no decoding, no checkpoint (the baseline);
    (b) streamfn, native no-op handler `async def noop(records)` (each stream record decoded into a Change: its
        images converted to Python values by boto3's TypeDeserializer),
        a fresh lease table per run (created, scanned, taken; a conditional checkpoint write per commit);
    (c) streamfn, Lambda-style no-op handler `def noop(event, context)`, a sync def (run in the thread pool).

    The variants run interleaved (a, b, c, a, b, c, ...) `--repeats` times, as bench/kinesis.py's do (and with its
    clock: from the first GetRecords request to the last record received (a) or committed (b, c)). moto answers
    every call in one Python process: it bounds the rates, so the ratios say what streamfn costs on top of the reads.

Run from the repository root:  python bench/dynamodb.py [--records N] [--repeats N] [--batch-size N] [--variants a,b,c]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import time
from typing import Any

import harness
from kinesis import REGION, client, make_value, run_noop, timed_reads
from rich.console import Console
from rich.table import Table

from streamfn.connectors.dynamodb import DynamoDBStreamSource
from streamfn.connectors.dynamodb.api import DynamoDBStreamsApi
from streamfn.connectors.shards.local import embedded_aws
from streamfn.connectors.shards.reader import ShardReader

WRITE_CHUNK = 25  # BatchWriteItem's most items per call
VARIANTS = {
    "a": "(a) aiobotocore GetRecords loop",
    "b": "(b) native: async def noop(records)",
    "c": "(c) Lambda-style: def noop(event, ctx)",
}


async def prefill(endpoint: str, table: str, records: int, value_bytes: int) -> str:
    """Create `table` with a NEW_IMAGE stream and write `records` items; the stream's ARN."""
    async with client(endpoint, "dynamodb") as dynamodb:
        created = await dynamodb.create_table(
            TableName=table,
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
            StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_IMAGE"},
        )
        for start in range(0, records, WRITE_CHUNK):
            requests = [
                {"PutRequest": {"Item": {"pk": {"S": f"k{i}"}, "value": {"S": make_value(i, value_bytes).decode()}}}}
                for i in range(start, min(records, start + WRITE_CHUNK))
            ]
            answer = await dynamodb.batch_write_item(RequestItems={table: requests})
            if answer.get("UnprocessedItems"):
                raise RuntimeError(f"items were not written: {answer['UnprocessedItems']}")
    return str(created["TableDescription"]["LatestStreamArn"])


async def run_plain(endpoint: str, arn: str, records: int) -> harness.TimedRun:
    """(a): the stream's shard read from TRIM_HORIZON to its last record; the clock from the first request."""
    async with client(endpoint, "dynamodbstreams") as streams:
        [shard] = (await streams.describe_stream(StreamArn=arn))["StreamDescription"]["Shards"]
        iterator = (
            await streams.get_shard_iterator(StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON")
        )["ShardIterator"]
        started = harness.now()
        received = 0
        while received < records:
            response = await streams.get_records(ShardIterator=iterator, Limit=DynamoDBStreamsApi.max_records)
            received += len(response["Records"])
            iterator = response["NextShardIterator"]
        end = harness.now()
    return harness.TimedRun(records, end.wall - started.wall, end.cpu - started.cpu)


class TimedSource(DynamoDBStreamSource):
    """A DynamoDBStreamSource whose readers note when their first GetRecords request leaves (bench/kinesis.py)."""

    def reader(self, *, group_id: str) -> ShardReader:
        return timed_reads(super().reader(group_id=group_id))


async def run_streamfn(endpoint: str, table: str, records: int, variant: str, batch_size: int, run: int) -> Any:
    source = TimedSource(
        table=table, endpoint_url=endpoint, region_name=REGION, lease_table=harness.unique_name("leases", variant, run)
    )
    return await run_noop(source, variant, batch_size, records)


def print_throughput(console: Console, args: argparse.Namespace, results: dict[str, list[harness.TimedRun]]) -> None:
    table = Table(
        title=f"DynamoDBStreamSource on moto: {args.records:,} stream records, one shard, batch_size {args.batch_size}",
        caption=(
            "records/s = records / (first GetRecords request -> last record received (a) or committed (b, c)). "
            "Ratios are of medians, against (a), in the same run. CPU %: this process's CPU time (all threads) / wall "
            "time over the timed window (moto is another process)."
        ),
        caption_justify="left",
    )
    table.add_column("variant")
    harness.add_rate_columns(table)
    table.add_column("vs (a)", justify="right")
    table.add_column("CPU %", justify="right")
    for variant, runs in results.items():
        if not runs:
            table.add_row(VARIANTS[variant], "failed", "-", "-", "-", "-")
            continue
        median = statistics.median(r.rate for r in runs)
        baseline = results.get("a")
        ratio = f"{median / statistics.median(r.rate for r in baseline):.2f}" if baseline else "-"
        table.add_row(VARIANTS[variant], *harness.rate_cells(runs, median), ratio, harness.cpu_cell(runs))
    console.print(table)


async def bench(args: argparse.Namespace, endpoint: str, console: Console) -> int:
    table = harness.unique_name("table")
    started = time.perf_counter()
    arn = await prefill(endpoint, table, args.records, args.value_bytes)
    harness.print_line(console, "table", f"{table}: {harness.prefilled(args.records, time.perf_counter() - started)}")
    harness.print_line(console, "server", f"moto (server mode) at {endpoint}")
    harness.print_line(
        console,
        "config",
        f"~{len(make_value(0, args.value_bytes))} B JSON values, batch_size={args.batch_size}, "
        f"GetRecords Limit={DynamoDBStreamsApi.max_records}, repeats={args.repeats} (interleaved), "
        f"variants={','.join(args.variants)}",
    )
    harness.print_line(console, "machine", f"{os.cpu_count()} CPUs, {harness.versions('aiobotocore', 'moto')}")

    async def run_one(variant: str, run: int) -> harness.TimedRun:
        gc.collect()
        async with asyncio.timeout(args.run_timeout):
            if variant == "a":
                return await run_plain(endpoint, arn, args.records)
            return await run_streamfn(endpoint, table, args.records, variant, args.batch_size, run)  # type: ignore[no-any-return]

    results, failures = await harness.run_interleaved(
        console, args.variants, args.repeats, run_one, lambda variant: VARIANTS[variant]
    )
    print_throughput(console, args, results)
    return 1 if failures else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return harness.variant_args(__doc__, argv, list(VARIANTS), records=20_000)


def main(argv: list[str] | None = None) -> int:
    return harness.run_bench(parse_args(argv), bench, embedded_aws)


if __name__ == "__main__":
    sys.exit(main())
