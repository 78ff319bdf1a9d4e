"""`streamfn redrive` for a function reading a DynamoDB table's stream, whose dead letters are in a KafkaTopic: each
letter's change is written back to the table (a put of its new image, a delete of its keys for REMOVE), the stream
records that as a new change, and the function (fixed) handles it once; changes without a new image are refused,
letter by letter, and nothing is written for them. Against moto in server mode and the test broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import orjson
import pytest
from conftest import read_topic, run_cli, run_worker, write_pipeline
from ddb_streams_double import StreamsDouble

from streamfn.cli.loader import load_app
from streamfn.connectors.dynamodb import DynamoDBStreamSource
from streamfn.connectors.dynamodb.api import DynamoDBStreamsApi

pytestmark = pytest.mark.slow  # every test here starts streamfn processes

REGION = "us-east-1"
_names = itertools.count()

PIPELINE = """
import json, os
from streamfn import App
from streamfn.connectors.dynamodb import DynamoDBStreamSource
from streamfn.connectors.kafka import KafkaTopic

app = App("redrive")
FAIL = set(filter(None, os.environ["FAIL"].split(",")))

@app.function(
    source=DynamoDBStreamSource(table=os.environ["TABLE"], lease_table=os.environ["LEASES"]),
    batch_size=10,
    bisect_batch_on_function_error=True,
    maximum_retry_attempts=0,
    on_failure=KafkaTopic(
        os.environ["DLQ"], bootstrap_servers=os.environ["BROKER"], max_message_bytes=int(os.environ["DLQ_MAX"])
    ),
)
async def handle(records):
    if any(f"{r.value.event_name}:{r.value.keys['pk']}" in FAIL for r in records):
        raise ValueError("bad change")
    with open(os.environ["HANDLED"], "a") as out:
        for r in records:
            out.write(json.dumps([r.value.event_name, r.value.keys["pk"], r.offset]) + "\\n")
"""


class Table:
    """A table keyed by pk (S) and sk (N) with a stream of `view_type`, on moto, with sync clients."""

    def __init__(self, endpoint: str, view_type: str) -> None:
        self.name = f"redrive-{next(_names)}-{id(self):x}"
        self.leases = f"leases-{self.name}"
        self.dynamodb = boto3.client("dynamodb", endpoint_url=endpoint, region_name=REGION)
        self.streams = boto3.client("dynamodbstreams", endpoint_url=endpoint, region_name=REGION)
        self.arn = self.dynamodb.create_table(
            TableName=self.name,
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
            AttributeDefinitions=[
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "N"},
            ],
            BillingMode="PAY_PER_REQUEST",
            StreamSpecification={"StreamEnabled": True, "StreamViewType": view_type},
        )["TableDescription"]["LatestStreamArn"]

    def put(self, pk: str, **attributes: Any) -> None:
        self.dynamodb.put_item(TableName=self.name, Item={"pk": {"S": pk}, "sk": {"N": "1"}} | attributes)

    def delete(self, pk: str) -> None:
        self.dynamodb.delete_item(TableName=self.name, Key={"pk": {"S": pk}, "sk": {"N": "1"}})

    def items(self) -> dict[str, dict[str, Any]]:
        """Every item by its pk, in DynamoDB's typed form (binary as bytes; sets sorted: DynamoDB's are unordered)."""
        scanned = self.dynamodb.scan(TableName=self.name, ConsistentRead=True)["Items"]
        return {item["pk"]["S"]: {name: ordered(value) for name, value in item.items()} for item in scanned}

    def records(self) -> list[dict[str, Any]]:
        """Every record of the stream (moto: one shard), as the API returns them."""
        [shard] = self.streams.describe_stream(StreamArn=self.arn)["StreamDescription"]["Shards"]
        iterator = self.streams.get_shard_iterator(
            StreamArn=self.arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        return list(self.streams.get_records(ShardIterator=iterator)["Records"])

    def shard(self) -> str:
        [shard] = self.streams.describe_stream(StreamArn=self.arn)["StreamDescription"]["Shards"]
        return str(shard["ShardId"])

    def checkpointed(self) -> bool:
        """The lease table's checkpoint is the stream's last record."""
        try:
            leases = self.dynamodb.scan(TableName=self.leases, ConsistentRead=True)["Items"]
        except self.dynamodb.exceptions.ResourceNotFoundException:
            return False
        last = self.records()[-1]["dynamodb"]["SequenceNumber"]
        return [lease.get("checkpoint", {}).get("S") for lease in leases] == [last]


def ordered(typed: dict[str, Any]) -> dict[str, Any]:
    """An attribute value with its sets (SS, NS, BS), in maps too, sorted."""
    [(kind, value)] = typed.items()
    if kind in ("SS", "NS", "BS"):
        return {kind: sorted(value)}
    if kind == "M":
        return {kind: {name: ordered(v) for name, v in value.items()}}
    return typed


class Setup:
    def __init__(self, table: Table, pipeline: Path, dlq: str, handled: Path) -> None:
        self.table = table
        self.pipeline = pipeline
        self.dlq = dlq
        self.handled_file = handled

    def handled(self) -> list[tuple[str, str, int]]:
        """(event name, pk, sequence number) of each change the handler got, in order."""
        if not self.handled_file.exists():
            return []
        return [tuple(json.loads(line)) for line in self.handled_file.read_text().splitlines()]  # type: ignore[misc]

    async def run(self, fail: str, monkeypatch: pytest.MonkeyPatch) -> None:
        """Run the function in-process, failing the changes named in `fail` ("INSERT:y,..."), until the stream is
        checkpointed at its last record."""
        monkeypatch.setenv("FAIL", fail)
        await run_worker(load_app(self.pipeline), None, self.table.checkpointed, timeout=40)

    def redrive(self, *options: str) -> tuple[int, list[str], list[str]]:
        done = run_cli("redrive", str(self.pipeline), "--function", "handle", *options, timeout=60)
        return done.returncode, done.stdout.splitlines(), done.stderr.splitlines()


@pytest.fixture
def setup(aws: str, broker: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Setup]]:
    """A table with a stream of the given view type and the pipeline reading it, AWS_ENDPOINT_URL pointing at moto
    for the commands run meanwhile."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws)
    made: list[Table] = []

    def make(view_type: str, dlq_max: int = 1024 * 1024) -> Setup:
        made.append(table := Table(aws, view_type))
        dlq, handled = f"dlq-{table.name}", tmp_path / "handled.jsonl"
        env = {"TABLE": table.name, "LEASES": table.leases, "DLQ": dlq, "BROKER": broker, "HANDLED": str(handled)}
        for key, value in (env | {"DLQ_MAX": str(dlq_max)}).items():
            monkeypatch.setenv(key, value)
        return Setup(table, write_pipeline(tmp_path, PIPELINE), dlq, handled)

    yield make
    for table in made:
        for name in (table.name, table.leases):
            with contextlib.suppress(table.dynamodb.exceptions.ResourceNotFoundException):
                table.dynamodb.delete_table(TableName=name)


def key(pk: str) -> dict[str, Any]:
    return {"pk": {"S": pk}, "sk": {"N": "1"}}


Y = key("y") | {"amount": {"N": "10.5"}, "blob": {"B": b"\x00\xff"}, "tags": {"M": {"bs": {"BS": [b"a", b"b"]}}}}
"""An image with binary attributes (B, and BS in a map): Lambda's event shows them as base64 text."""


async def test_redrive_writes_each_change_back_and_the_fixed_function_handles_the_new_changes_once(
    setup: Callable[..., Setup], broker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = setup("NEW_AND_OLD_IMAGES")
    t = s.table
    t.put("x", n={"N": "1"})
    t.dynamodb.put_item(TableName=t.name, Item=Y)  # INSERT y: fails
    t.put("z", n={"N": "1"})
    t.put("z", n={"N": "2"})  # MODIFY z: fails
    t.put("w")
    t.delete("w")  # REMOVE w: fails
    t.put("v", n={"N": "1"})  # INSERT v: fails
    t.put("u")
    t.delete("u")  # REMOVE u: fails
    await s.run("INSERT:y,MODIFY:z,REMOVE:w,INSERT:v,REMOVE:u", monkeypatch)
    assert [(name, pk) for name, pk, _ in s.handled()] == [("INSERT", pk) for pk in "xzwu"]
    assert len(await read_topic(broker, s.dlq, 5)) == 5
    sequences = [r["dynamodb"]["SequenceNumber"] for r in t.records()]

    # meanwhile y, z and w changed again, so that writing their changes back changes them (DynamoDB records no write
    # that changes nothing): y deleted, z modified, w created again; v and u stay as their changes left them
    t.delete("y")
    t.put("z", n={"N": "3"})
    t.put("w", again={"BOOL": True})
    before, items = len(t.records()), t.items()
    shard = t.shard()
    refused = [
        f"cannot redrive {t.name}-{shard}@{sequences[6]} (RetryAttemptsExhausted): the item is already as this INSERT "
        "left it, and DynamoDB records no change for a write that changes nothing, so the function would not see it "
        "again; nothing was written",
        f"cannot redrive {t.name}-{shard}@{sequences[8]} (RetryAttemptsExhausted): the item is already as this REMOVE "
        "left it (deleted), and DynamoDB records no change for a write that changes nothing, so the function would "
        "not see it again; nothing was written",
    ]
    for verb, dry in (("would redrive", ["--dry-run"]), ("redrove", [])):
        code, out, err = s.redrive(*dry)
        assert (code, sorted(err)) == (1, sorted(refused))
        assert sorted(out[:-1]) == sorted(
            f"{verb} {t.name}-{shard}@{sequences[i]} (RetryAttemptsExhausted)" for i in (1, 3, 5)
        )
        assert out[-1] == f"{verb} 3 records from {s.dlq}"
        if dry:
            assert (len(t.records()), t.items()) == (before, items)  # a dry run writes nothing

    assert t.items() == {
        "x": key("x") | {"n": {"N": "1"}},
        "y": Y,
        "z": key("z") | {"n": {"N": "2"}},
        "v": key("v") | {"n": {"N": "1"}},
    }
    written = t.records()[before:]
    assert sorted((r["eventName"], r["dynamodb"]["Keys"]["pk"]["S"]) for r in written) == [
        ("INSERT", "y"),
        ("MODIFY", "z"),
        ("REMOVE", "w"),
    ]

    # the function, fixed, handles the changes made meanwhile and the ones redrive wrote, each once
    await s.run("", monkeypatch)
    changes = [
        (r["eventName"], r["dynamodb"]["Keys"]["pk"]["S"], int(r["dynamodb"]["SequenceNumber"])) for r in t.records()
    ]
    assert [change[:2] for change in changes[9:12]] == [("REMOVE", "y"), ("MODIFY", "z"), ("INSERT", "w")]
    assert s.handled()[4:] == changes[9:]  # those made meanwhile, then those redrive wrote, each once

    code, out, err = s.redrive()
    assert (code, out, err) == (0, [f"redrove 0 records from {s.dlq}"], [])
    assert len(t.records()) == before + 3  # progress was kept: nothing written twice


async def test_changes_of_a_keys_only_stream_are_refused_letter_by_letter_and_nothing_is_written(
    setup: Callable[..., Setup], broker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = setup("KEYS_ONLY")
    t = s.table
    t.put("a", n={"N": "1"})  # INSERT a: fails
    t.put("a", n={"N": "2"})  # MODIFY a: fails
    await s.run("INSERT:a,MODIFY:a", monkeypatch)
    assert len(await read_topic(broker, s.dlq, 2)) == 2
    shard, records = t.shard(), t.records()
    refused = [
        f"cannot redrive {t.name}-{shard}@{r['dynamodb']['SequenceNumber']} (RetryAttemptsExhausted): its "
        f"{r['eventName']} has no new image (stream view type KEYS_ONLY), so the item cannot be written back as "
        "the change left it; nothing was written"
        for r in records
    ]
    items = t.items()

    for dry in (["--dry-run"], []):
        code, out, err = s.redrive(*dry)
        assert (code, sorted(err)) == (1, sorted(refused))
        assert out == [f"{'would redrive' if dry else 'redrove'} 0 records from {s.dlq}"]
        assert (t.records(), t.items()) == (records, items)  # nothing written

    code, out, err = s.redrive()
    assert (code, out, err) == (0, [f"redrove 0 records from {s.dlq}"], [])  # said once: progress moved past them


async def test_a_change_whose_letter_dropped_its_payload_is_read_back_from_the_stream(
    setup: Callable[..., Setup], broker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = setup("NEW_IMAGE", dlq_max=16384)
    t = s.table
    big = key("big") | {"padding": {"S": "x" * 20_000}, "blob": {"B": b"\x00\xff"}}
    t.dynamodb.put_item(TableName=t.name, Item=big)  # its letter would pass the topic's 16 KiB: payload left out
    await s.run("INSERT:big", monkeypatch)
    [letter] = await read_topic(broker, s.dlq, 1)
    assert "payload" not in orjson.loads(letter.value)
    [record] = t.records()
    t.delete("big")

    code, out, err = s.redrive()
    assert (code, err) == (0, [])
    assert out == [
        f"redrove {t.name}-{t.shard()}@{record['dynamodb']['SequenceNumber']} (RetryAttemptsExhausted) from the "
        "source topic (payload dropped)",
        f"redrove 1 records from {s.dlq}",
    ]
    assert t.items() == {"big": big}


async def test_a_record_read_back_is_the_readers_byte_for_byte_and_none_once_trimmed_or_its_shard_is_gone(
    aws: str, ddb_streams: StreamsDouble
) -> None:
    """What redrive reads back for a letter without its payload (Refill.get), on the streams double, which trims
    (moto never does): the record as the reader stores it; None for a trimmed one and for a shard the stream no
    longer has (TrimmedDataAccessException, ResourceNotFoundException); found past empty pages."""
    t = Table(aws, "NEW_AND_OLD_IMAGES")
    [shard] = ddb_streams.create(t.arn, t.name)
    placed = [ddb_streams.put(t.arn, key(pk), new_image=key(pk) | {"blob": {"B": "AP8="}})[1] for pk in ("a", "b", "c")]
    ddb_streams.trim(t.arn, shard, 1)
    source = DynamoDBStreamSource(table=t.name, region_name=REGION)
    api = DynamoDBStreamsApi(source.access(), table=t.name)
    await api.connect()
    try:
        stored = (await api.records(shard, await api.iterator(shard, None, "TRIM_HORIZON"))).records
    finally:
        await api.close()
    try:
        async with source.refill() as refill:
            assert await refill.get(shard, placed[0]) is None  # trimmed
            ddb_streams.empty(3)  # AWS may answer empty pages while records follow: they are read past
            assert await refill.get(shard, placed[1]) == (stored[0].key, stored[0].value)
            assert [await refill.get(shard, n) for n in placed[1:]] == [(r.key, r.value) for r in stored]
            assert await refill.get("shardId-00000000000000000000-00000000", placed[1]) is None
    finally:
        t.dynamodb.delete_table(TableName=t.name)


WINDOWED = """
import os
from streamfn import App
from streamfn.connectors.dynamodb import DynamoDBStreamSource
from streamfn.connectors.kafka import KafkaTopic

app = App("redrive")

@app.function(
    source=DynamoDBStreamSource(table=os.environ["TABLE"], lease_table=os.environ["LEASES"]),
    tumbling_window_in_seconds=1,
    window_idle_seconds=0.5,
    maximum_retry_attempts=0,
    on_failure=KafkaTopic(os.environ["DLQ"], bootstrap_servers=os.environ["BROKER"]),
)
def handle(event, context):
    if event["isFinalInvokeForWindow"]:
        raise RuntimeError("final invocation failure")
    return {"state": {"count": event["state"].get("count", 0) + len(event["Records"])}}
"""


async def test_a_tumbling_windows_letter_is_skipped_with_a_line_saying_so(
    setup: Callable[..., Setup], broker: str, tmp_path: Path
) -> None:
    """A window's failed final invocation (its records were handled) has no change to write back; its letter holds
    the final event, with no record in it (a stream's letter has no windowInfo to tell it by)."""
    s = setup("NEW_AND_OLD_IMAGES")
    t = s.table
    pipeline = write_pipeline(tmp_path, WINDOWED)
    t.put("a")
    reading = asyncio.create_task(read_topic(broker, s.dlq, 1, timeout=40))
    await run_worker(load_app(pipeline), None, reading.done, timeout=40)
    [letter] = reading.result()
    assert orjson.loads(letter.value)["payload"]["Records"] == []
    [record] = t.records()
    items = t.items()

    done = run_cli("redrive", str(pipeline), "--function", "handle", timeout=60)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.splitlines() == [
        f"skipped {t.name}-{t.shard()}@{record['dynamodb']['SequenceNumber']} (RetryAttemptsExhausted): a tumbling "
        "window's final invocation; its records were handled",
        f"redrove 0 records from {s.dlq}",
    ]
    assert (t.records(), t.items()) == ([record], items)
