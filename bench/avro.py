"""Decoding and encoding cost per record: Avro (streamfn's AvroCodec, fastavro) against JSON (orjson), with and
without validating into a pydantic model.

What it measures
    `--records` order records (8 fields: strings, a double, ints, a boolean, an array of strings) are encoded once
    in each format. Then each variant runs over all of them, `--repeats` times interleaved, in this process with no
    broker: the records/s of the step alone, as a handler's values cost it before the handler runs.

    json            orjson.loads of each value (what `value_format="json"` does)
    json + model    the same, then Order.model_validate (a `value_model=Order`)
    avro            AvroCodec.decode: fastavro.schemaless_reader with the schema parsed once
    avro + model    the same, then Order.model_validate
    json encode     streamfn.outputs.sink.encode of each dict (orjson.dumps)
    avro encode     AvroCodec.encode of batches of 100 (fastavro.schemaless_writer per record)

Run from the repository root:  python bench/avro.py [--records N] [--repeats N]
"""

from __future__ import annotations

import asyncio
import os
import platform
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import harness
import orjson
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from streamfn.formats.avro import AvroCodec
from streamfn.outputs.sink import encode

BATCH = 100
"""Outputs per `AvroCodec.encode` call, as one batch of a handler's outputs."""
ORDER_SCHEMA = {
    "type": "record",
    "name": "Order",
    "namespace": "bench",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "customer", "type": "string"},
        {"name": "amount", "type": "double"},
        {"name": "quantity", "type": "int"},
        {"name": "currency", "type": "string"},
        {"name": "created_ms", "type": "long"},
        {"name": "paid", "type": "boolean"},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
    ],
}


class Order(BaseModel):
    id: str
    customer: str
    amount: float
    quantity: int
    currency: str
    created_ms: int
    paid: bool
    tags: list[str]


def orders(count: int) -> list[dict[str, Any]]:
    return [
        {
            "id": f"order-{i}",
            "customer": f"customer-{i % 1000}",
            "amount": i * 0.25,
            "quantity": i % 7 + 1,
            "currency": "EUR",
            "created_ms": 1_700_000_000_000 + i,
            "paid": i % 2 == 0,
            "tags": ["web", "promo"] if i % 3 else ["store"],
        }
        for i in range(count)
    ]


def variants(codec: AvroCodec, values: list[dict[str, Any]]) -> dict[str, tuple[Callable[[], object], int]]:
    """Each variant as (one pass over every record, bytes per record of its input or output).

    Results are dropped as they come (`consume`), as a worker drops a batch's values once handled: keeping 100k
    decoded values alive would time the garbage collector walking them instead."""
    as_json = [orjson.dumps(value) for value in values]
    as_avro: list[bytes] = [data for data in asyncio.run(codec.encode(values, "orders")) if data is not None]
    json_size = sum(map(len, as_json)) // len(values)
    avro_size = sum(map(len, as_avro)) // len(values)
    loads, decode, validate = orjson.loads, codec.decode, Order.model_validate

    async def encode_batches() -> None:
        for start in range(0, len(values), BATCH):
            await codec.encode(values[start : start + BATCH], "orders")

    return {
        "json": (lambda: consume(map(loads, as_json)), json_size),
        "json + model": (lambda: consume(map(validate, map(loads, as_json))), json_size),
        "avro": (lambda: consume(map(decode, as_avro)), avro_size),
        "avro + model": (lambda: consume(map(validate, map(decode, as_avro))), avro_size),
        "json encode": (lambda: consume(map(encode, values)), json_size),
        "avro encode": (lambda: asyncio.run(encode_batches()), avro_size),
    }


def consume(results: Iterable[object]) -> None:
    deque(results, maxlen=0)


def timed(run: Callable[[], object], records: int) -> float:
    started = time.perf_counter()
    run()
    return records / (time.perf_counter() - started)


def report(console: Console, rates: dict[str, list[float]], sizes: dict[str, int]) -> None:
    table = Table(title="records/s of each step alone (higher is better)")
    table.add_column("variant")
    table.add_column("bytes/record", justify="right")
    table.add_column("runs (records/s)", justify="right")
    table.add_column("median records/s", justify="right")
    table.add_column("vs json", justify="right")
    medians = {name: statistics.median(runs) for name, runs in rates.items()}
    for name, runs in rates.items():
        baseline = medians["json encode" if name.endswith("encode") else "json"]
        table.add_row(
            name,
            str(sizes[name]),
            " ".join(f"{rate:,.0f}" for rate in runs),
            f"{medians[name]:,.0f}",
            f"{medians[name] / baseline:.2f}",
        )
    console.print(table)


def main(argv: Sequence[str]) -> int:
    parser = harness.new_parser(__doc__)
    harness.add_records(parser, 100_000)
    harness.add_repeats(parser, "variant")
    args = parser.parse_args(argv)
    console = Console(width=None if Console().is_terminal else 170)
    values = orders(args.records)
    steps = variants(AvroCodec(ORDER_SCHEMA), values)
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, (run, _size) in steps.items():
            rates[name].append(timed(run, args.records))
    harness.print_line(console, "records", f"{args.records:,} orders, {args.repeats} interleaved runs per variant")
    packages = harness.versions("fastavro", "orjson", "pydantic")
    harness.print_line(console, "machine", f"{os.cpu_count()} CPUs, Python {platform.python_version()}, {packages}")
    report(console, rates, {name: size for name, (_run, size) in steps.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
