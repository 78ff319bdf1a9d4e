"""Items/s of streamfn's DynamoDBTable sink against plain aiobotocore write loops, on moto in server mode.

What it measures
    Each run writes `--records` distinct items of about `--value-bytes` bytes (a string key `id`, a number, a
    string, a float, a nested map) into a fresh table (PAY_PER_REQUEST), and its items/s is measured:

    (a) plain aiobotocore: the items converted with boto3's TypeSerializer (floats as Decimal), then
        BatchWriteItem requests of 25, one after the other, UnprocessedItems sent again (the baseline of (b));
    (b) streamfn: an in-memory stream pre-filled once with the same values as JSON records; a native handler
        returns one dict per record (`batch_size` records a batch); DynamoDBTable writes them (BatchWriteItem of 25);
    (c) streamfn, DynamoDBTable with `position_attribute`: a conditional PutItem per item, 25 at a time;
    (d) plain aiobotocore: the conditional PutItem of (c) per item, 25 at a time (the baseline of (c)).

    The variants run interleaved (a, b, c, d, a, ...) `--repeats` times; the table shows every run, the median
    items/s and the ratio of medians against its baseline of the same run. moto answers every call in one Python
    process: it, not the client, bounds the rates, so the ratios say what streamfn costs on top of the writes
    (decoding the records, the handler, checks and conversion, checkpoints).

How it times
    (a), (d): from the first request to the last answer (conversion included). (b), (c): from the worker's start
    (the sink's DescribeTable included; the memory source does no I/O) to the checkpoint covering every record
    (checked every 10 ms), so every item was acknowledged by DynamoDB.

Run from the repository root:  python bench/dynamodb_sink.py [--records N] [--repeats N] [--batch-size N]
                               [--variants a,b,c,d] [--value-bytes N] [-v]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
from decimal import Decimal
from typing import Any

import harness
import orjson
from boto3.dynamodb.types import TypeSerializer
from kinesis import REGION, client
from rich.console import Console
from rich.table import Table

from streamfn import App, Record
from streamfn.connectors.dynamodb import DynamoDBTable
from streamfn.connectors.dynamodb.writer import MAX_REQUEST_ITEMS, NEWER, PARTITION, POSITION
from streamfn.connectors.memory import MemorySource, MemoryStream
from streamfn.connectors.shards.local import embedded_aws
from streamfn.engine.worker import Worker

VARIANTS = {
    "a": "(a) aiobotocore BatchWriteItem loop",
    "b": "(b) streamfn DynamoDBTable",
    "c": "(c) streamfn DynamoDBTable, position_attribute",
    "d": "(d) aiobotocore conditional PutItem, 25 at a time",
}
BASELINE = {"b": "a", "c": "d"}
POSITION_ATTRIBUTE = "_position"


def make_value(i: int, size: int) -> dict[str, Any]:
    value: dict[str, Any] = {"id": f"item-{i}", "n": i, "user": f"u{i % 1000}", "score": i / 7, "tags": {"a": 1}}
    value["pad"] = "x" * max(0, size - len(orjson.dumps(value)))
    return value


async def create_table(endpoint: str, name: str) -> None:
    async with client(endpoint, "dynamodb") as dynamodb:
        await dynamodb.create_table(
            TableName=name,
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )


def typed(value: dict[str, Any]) -> dict[str, Any]:
    serializer = TypeSerializer()
    return {k: serializer.serialize(Decimal(repr(v)) if isinstance(v, float) else v) for k, v in value.items()}


async def run_batch_loop(endpoint: str, table: str, values: list[dict[str, Any]]) -> harness.TimedRun:
    """(a): TypeSerializer, then BatchWriteItem requests of 25 in turn; what is unprocessed goes again."""
    async with client(endpoint, "dynamodb") as dynamodb:
        started = harness.now()
        items = [typed(v) for v in values]
        for start in range(0, len(items), MAX_REQUEST_ITEMS):
            pending = [{"PutRequest": {"Item": item}} for item in items[start : start + MAX_REQUEST_ITEMS]]
            while pending:
                answer = await dynamodb.batch_write_item(RequestItems={table: pending})
                pending = answer.get("UnprocessedItems", {}).get(table, [])
        end = harness.now()
    return harness.TimedRun(len(values), end.wall - started.wall, end.cpu - started.cpu)


async def run_conditional_loop(endpoint: str, table: str, values: list[dict[str, Any]]) -> harness.TimedRun:
    """(d): per item, the conditional PutItem (c) sends, with its position map; 25 concurrent calls at a time."""
    async with client(endpoint, "dynamodb") as dynamodb:
        started = harness.now()
        items = [typed(v) for v in values]

        async def put(position: int, item: dict[str, Any]) -> None:
            digits = str(position)
            item[POSITION_ATTRIBUTE] = {"M": {PARTITION: {"S": "bench-0"}, POSITION: {"S": digits}}}
            await dynamodb.put_item(
                TableName=table,
                Item=item,
                ConditionExpression=NEWER,
                ExpressionAttributeNames={"#p": POSITION_ATTRIBUTE, "#s": PARTITION, "#o": POSITION},
                ExpressionAttributeValues={":s": {"S": "bench-0"}, ":n": {"N": str(len(digits))}, ":o": {"S": digits}},
            )

        for start in range(0, len(items), MAX_REQUEST_ITEMS):
            chunk = items[start : start + MAX_REQUEST_ITEMS]
            await asyncio.gather(*(put(start + i, item) for i, item in enumerate(chunk)))
        end = harness.now()
    return harness.TimedRun(len(values), end.wall - started.wall, end.cpu - started.cpu)


async def run_streamfn(
    endpoint: str, table: str, stream: MemoryStream, records: int, conditional: bool, batch_size: int, run: int
) -> harness.TimedRun:
    """(b), (c): a worker over the pre-filled stream (a new group each run) writing one item per record."""
    sink = DynamoDBTable(
        table,
        endpoint_url=endpoint,
        region_name=REGION,
        position_attribute=POSITION_ATTRIBUTE if conditional else None,
    )

    async def to_items(records: list[Record]) -> list[dict[str, Any]]:
        return [r.value for r in records]

    app = App("bench")
    source = MemorySource(stream, group_id=harness.unique_name("group", run))
    app.function(
        source=source, name="items", batch_size=batch_size, outputs=[sink], timeout=harness.HANDLER_TIMEOUT_SECONDS
    )(to_items)
    worker = Worker(app, None)
    started = harness.now()
    summary, end = await harness.run_until_committed(worker, records)
    if summary.stats.failed_invocations or summary.stats.handled != records:
        raise RuntimeError(f"streamfn handled {summary.stats.handled} records: {summary.stats}")
    return harness.TimedRun(records, end.wall - started.wall, end.cpu - started.cpu)


async def count_and_drop(endpoint: str, table: str) -> int:
    """The items the table holds; then it is deleted, so that moto (all in memory) stays as small for every run."""
    async with client(endpoint, "dynamodb") as dynamodb:
        count = int((await dynamodb.scan(TableName=table, Select="COUNT"))["Count"])
        await dynamodb.delete_table(TableName=table)
    return count


def print_results(console: Console, args: argparse.Namespace, results: dict[str, list[harness.TimedRun]]) -> None:
    table = Table(
        title=f"DynamoDBTable on moto: {args.records:,} items per run, batch_size {args.batch_size}",
        caption=(
            "items/s = items / (first request -> last answer (a, d), or worker start -> every record's checkpoint "
            "committed (b, c)). Ratios are of medians: (b) against (a), (c) against (d), in the same run. CPU %: this "
            "process's CPU time (all threads) / wall time over the timed window (moto is another process)."
        ),
        caption_justify="left",
    )
    table.add_column("variant")
    table.add_column("runs (items/s)", justify="right")
    table.add_column("median items/s", justify="right")
    table.add_column("median s", justify="right")
    table.add_column("vs baseline", justify="right")
    table.add_column("CPU %", justify="right")
    for variant, runs in results.items():
        if not runs:
            table.add_row(VARIANTS[variant], "failed", "-", "-", "-", "-")
            continue
        median = statistics.median(r.rate for r in runs)
        baseline = results.get(BASELINE.get(variant, ""))
        ratio = f"{median / statistics.median(r.rate for r in baseline):.2f}" if baseline else "-"
        table.add_row(VARIANTS[variant], *harness.rate_cells(runs, median), ratio, harness.cpu_cell(runs))
    console.print(table)


async def bench(args: argparse.Namespace, endpoint: str, console: Console) -> int:
    values = [make_value(i, args.value_bytes) for i in range(args.records)]
    stream = MemoryStream("bench")
    for value in values:
        stream.put(0, orjson.dumps(value))
    harness.print_line(console, "server", f"moto (server mode) at {endpoint}")
    harness.print_line(
        console,
        "config",
        f"~{len(orjson.dumps(values[0]))} B items, batch_size={args.batch_size}, repeats={args.repeats} "
        f"(interleaved), variants={','.join(args.variants)}; the records come from an in-memory stream",
    )
    harness.print_line(console, "machine", f"{os.cpu_count()} CPUs, {harness.versions('aiobotocore', 'moto')}")

    async def run_one(variant: str, run: int) -> harness.TimedRun:
        table = harness.unique_name("items", variant, run)
        await create_table(endpoint, table)
        gc.collect()
        async with asyncio.timeout(args.run_timeout):
            if variant == "a":
                result = await run_batch_loop(endpoint, table, values)
            elif variant == "d":
                result = await run_conditional_loop(endpoint, table, values)
            else:
                result = await run_streamfn(endpoint, table, stream, args.records, variant == "c", args.batch_size, run)
        found = await count_and_drop(endpoint, table)
        if found != args.records:
            raise RuntimeError(f"{VARIANTS[variant]}: the table holds {found} items, expected {args.records}")
        return result

    def report(result: harness.TimedRun) -> str:
        return f"{result.rate:,.0f} items/s ({result.seconds:.2f} s)"

    results, failures = await harness.run_interleaved(
        console, args.variants, args.repeats, run_one, lambda v: VARIANTS[v], report if args.verbose else None
    )
    print_results(console, args, results)
    return 1 if failures else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return harness.variant_args(__doc__, argv, list(VARIANTS), records=5_000)


def main(argv: list[str] | None = None) -> int:
    return harness.run_bench(parse_args(argv), bench, embedded_aws)


if __name__ == "__main__":
    sys.exit(main())
