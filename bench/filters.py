"""The cost of Lambda filter criteria per record: 3 filters against none, on in-memory Kafka records.

What it measures
    `--records` aiokafka ConsumerRecords (as the Kafka connector delivers them) with JSON object values of about
    150 bytes are built once. Each variant then passes over all of them, keeping the records it would hand to the
    function, and its records/s is measured:

    (none)       no filter_criteria: every record is kept (the loop alone, the baseline);
    (decode)     orjson.loads of every value, no filter: what a JSON source already pays to decode;
    (3 decoded)  3 filters on `value`, given the value the source already decoded (`matches(record, decoded)`);
    (3 bytes)    the same 3 filters, parsing each value from its bytes (no decoded value to reuse);
    (3 + meta)   3 filters that also test topic, headers and key before the value.

    46% of the records match one of the filters. Variants run interleaved `--repeats` times; the table shows the
    median records/s, microseconds per record, and the records kept. The records are built before timing and moved
    out of the garbage collector's reach (gc.freeze), so its passes over them do not count as filtering.

Run from the repository root:  python bench/filters.py [--records N] [--repeats N]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

import orjson
from aiokafka.structs import ConsumerRecord
from rich.console import Console
from rich.table import Table

from streamfn.connectors.kafka.dialect import RECORD_FIELDS
from streamfn.filters.criteria import compile_criteria

KafkaRecord: TypeAlias = ConsumerRecord[bytes, bytes]
Keep: TypeAlias = Callable[[Sequence[KafkaRecord], Sequence[dict[str, Any]]], int]

ON_VALUE = [
    {"value": {"device_ID": [{"prefix": "AB"}], "amount": [{"numeric": [">", 450]}]}},
    {"value": {"region": [{"anything-but": ["us-east-1", "eu-west-1"]}]}},
    {"value": {"session": {"duration": [{"numeric": [">=", 100, "<", 110]}]}}},
]
WITH_METADATA = [
    {"topic": ["orders"], "value": {"device_ID": [{"prefix": "AB"}], "amount": [{"numeric": [">", 450]}]}},
    {"headers": {"source": ["mobile"]}, "value": {"region": [{"anything-but": ["us-east-1", "eu-west-1"]}]}},
    {"key": [{"prefix": "user-"}], "value": {"session": {"duration": [{"numeric": [">=", 100, "<", 110]}]}}},
]
REGIONS = ("us-east-1", "eu-west-1", "ap-south-1")


def make_records(count: int) -> list[KafkaRecord]:
    records = []
    for index in range(count):
        data = {
            "device_ID": f"{'AB' if index % 2 else 'CD'}{index:06d}",
            "amount": index % 500,
            "region": REGIONS[index % 3] if index % 10 else "sa-east-1",
            "session": {"start_time": "2026-01-01T00:00:00Z", "duration": index % 200},
        }
        records.append(
            ConsumerRecord(
                topic="orders",
                partition=index % 4,
                offset=index,
                timestamp=1_767_225_600_000 + index,
                timestamp_type=0,
                key=f"user-{index % 1000}".encode(),
                value=orjson.dumps(data),
                checksum=None,
                serialized_key_size=0,
                serialized_value_size=0,
                headers=[("source", b"mobile" if index % 3 else b"web")],
            )
        )
    return records


def variants() -> dict[str, tuple[str, Keep]]:
    on_value = compile_criteria({"Filters": [{"Pattern": orjson.dumps(p).decode()} for p in ON_VALUE]}, RECORD_FIELDS)
    with_metadata = compile_criteria(
        {"Filters": [{"Pattern": orjson.dumps(p).decode()} for p in WITH_METADATA]}, RECORD_FIELDS
    )
    assert on_value is not None and with_metadata is not None

    def none(records: Sequence[KafkaRecord], decoded: Sequence[dict[str, Any]]) -> int:
        return len([record for record in records])

    def decode(records: Sequence[KafkaRecord], decoded: Sequence[dict[str, Any]]) -> int:
        return len([orjson.loads(record.value or b"null") for record in records])

    def three_decoded(records: Sequence[KafkaRecord], decoded: Sequence[dict[str, Any]]) -> int:
        return len([r for r, d in zip(records, decoded, strict=True) if on_value.matches(r, d)])

    def three_bytes(records: Sequence[KafkaRecord], decoded: Sequence[dict[str, Any]]) -> int:
        return len([record for record in records if on_value.matches(record)])

    def three_metadata(records: Sequence[KafkaRecord], decoded: Sequence[dict[str, Any]]) -> int:
        return len([r for r, d in zip(records, decoded, strict=True) if with_metadata.matches(r, d)])

    return {
        "none": ("(none) no filter", none),
        "decode": ("(decode) orjson.loads each value, no filter", decode),
        "3-decoded": ("(3 decoded) 3 filters on value, decoded value reused", three_decoded),
        "3-bytes": ("(3 bytes) 3 filters on value, parsed from bytes", three_bytes),
        "3-meta": ("(3 + meta) 3 filters on topic/headers/key and value", three_metadata),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    records = make_records(args.records)
    decoded = [orjson.loads(record.value or b"null") for record in records]
    runs = variants()
    gc.collect()
    gc.freeze()
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    kept: dict[str, int] = {}
    for _ in range(args.repeats):
        for name, (_, keep) in runs.items():
            started = time.perf_counter()
            kept[name] = keep(records, decoded)
            seconds[name].append(time.perf_counter() - started)

    table = Table(title=f"Filter criteria on {args.records:,} records, median of {args.repeats} runs")
    for column in ("variant", "records/s", "µs/record", "kept"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for name, (label, _) in runs.items():
        median = statistics.median(seconds[name])
        table.add_row(label, f"{args.records / median:,.0f}", f"{median / args.records * 1e6:.2f}", f"{kept[name]:,}")
    Console().print(table)


if __name__ == "__main__":
    main()
