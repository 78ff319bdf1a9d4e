"""Kinesis as an output and SQS as a Kinesis function's on_failure, against moto in server mode: what lands on the
target stream (every output once, per-key order, partition keys), what a partial PutRecords failure resends, what
an oversize output does, and the exact failure record Lambda sends to an SQS destination for a stream."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from conftest import run_worker
from test_kinesis import REGION, Stream, last_sequences
from test_sink_sqs import create_queue, receive, sqs

from streamfn import App, Output, Record
from streamfn.connectors.kinesis import KinesisStream
from streamfn.connectors.kinesis.dialect import arrival
from streamfn.connectors.kinesis.sink import (
    MAX_RECORD_BYTES,
    MAX_REQUEST_BYTES,
    MAX_REQUEST_RECORDS,
    Entry,
    partition_key,
    requests,
)
from streamfn.connectors.memory.destination import MemoryDestination
from streamfn.connectors.sqs import SqsQueue
from streamfn.context import function_arn
from streamfn.errors import ConfigError
from streamfn.failures.model import Countable
from streamfn.outputs.sink import Emitted, Provenance, SinkRetry

ACCOUNT = "123456789012"
FAST_RETRY = SinkRetry(max_attempts=5, initial_seconds=0.01, max_seconds=0.05)


@pytest.fixture
def stream(aws: str) -> Iterator[Callable[..., Stream]]:
    """Streams made for one test (test_kinesis's Stream), deleted after it."""
    made: list[Stream] = []

    def make(shards: int = 1) -> Stream:
        made.append(Stream(aws, shards))
        return made[-1]

    yield make
    for s in made:
        s.kinesis.delete_stream(StreamName=s.name)


def read_stream(s: Stream) -> list[dict[str, Any]]:
    """Every record of the stream, shard by shard, each shard's in sequence order."""
    found = []
    for shard in [x["ShardId"] for x in s.kinesis.list_shards(StreamName=s.name)["Shards"]]:
        iterator = s.kinesis.get_shard_iterator(StreamName=s.name, ShardId=shard, ShardIteratorType="TRIM_HORIZON")
        found += s.kinesis.get_records(ShardIterator=iterator["ShardIterator"], Limit=10_000)["Records"]
    return found


def target(s: Stream, **kw: Any) -> KinesisStream:
    return KinesisStream(s.name, endpoint_url=s.endpoint, region_name=REGION, retry=FAST_RETRY, **kw)


async def test_every_output_lands_once_in_order_per_key_with_the_partition_key_given(
    stream: Callable[..., Stream],
) -> None:
    """Outputs keyed by the handler keep that key as partition key; a `partition_key` function overrides it; every
    output is on the target stream exactly once and each key's records are in the handler's order."""
    source, by_key, by_function = stream(2), stream(3), stream(2)
    placed = source.put([{"n": n} for n in range(60)], key=lambda v: f"in-{v['n'] % 4}")
    app = App("kin")

    @app.function(
        source=source.source(),
        batch_size=7,
        outputs=[target(by_key), target(by_function, partition_key=lambda value: f"p{value['n'] % 2}")],
    )
    async def handler(records: list[Record]) -> list[Output]:
        return [Output({"n": r.value["n"]}, key=f"k{r.value['n'] % 5}") for r in records]

    await run_worker(app, None, lambda: source.checkpoints() == last_sequences(placed), timeout=40)
    for written, key_of in ((by_key, lambda n: f"k{n % 5}"), (by_function, lambda n: f"p{n % 2}")):
        records = read_stream(written)
        values = [orjson.loads(r["Data"])["n"] for r in records]
        assert sorted(values) == list(range(60))  # every output once
        assert all(r["PartitionKey"] == key_of(orjson.loads(r["Data"])["n"]) for r in records)
        for key in {r["PartitionKey"] for r in records}:
            mine = [orjson.loads(r["Data"])["n"] for r in records if r["PartitionKey"] == key]
            # source records of one input key are handled in order; outputs of one key follow in their order
            for input_key in range(4):
                ordered = [n for n in mine if n % 4 == input_key]
                assert ordered == sorted(ordered), (key, ordered)


class FlakyPutRecords:
    """A Kinesis client whose first PutRecords fails the entries at `failing` (as AWS answers a throttled entry:
    ErrorCode ProvisionedThroughputExceededException): only the others reach the stream. moto never fails entries."""

    def __init__(self, client: Any, failing: set[int]) -> None:
        self._client = client
        self._failing = failing
        self.calls: list[list[bytes]] = []

    async def put_records(self, *, StreamName: str, Records: list[dict[str, Any]]) -> dict[str, Any]:
        self.calls.append([r["Data"] for r in Records])
        failing = self._failing if len(self.calls) == 1 else set()
        sent = [r for i, r in enumerate(Records) if i not in failing]
        answered = iter((await self._client.put_records(StreamName=StreamName, Records=sent))["Records"])
        results = [
            {"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": "Rate exceeded for shard"}
            if i in failing
            else next(answered)
            for i in range(len(Records))
        ]
        return {"FailedRecordCount": len(failing), "Records": results}


async def test_a_partial_putrecords_failure_resends_only_the_failed_entries(
    stream: Callable[..., Stream], monkeypatch: pytest.MonkeyPatch
) -> None:
    source, written = stream(1), stream(1)
    placed = source.put([{"n": n} for n in range(6)])
    flaky: list[FlakyPutRecords] = []
    opened = KinesisStream.open

    async def open_flaky(self: KinesisStream, context: Any) -> Any:
        writer = await opened(self, context)
        flaky.append(FlakyPutRecords(writer._client, {1, 4}))
        writer._client = flaky[-1]
        return writer

    monkeypatch.setattr(KinesisStream, "open", open_flaky)
    app = App("kin")

    @app.function(source=source.source(), batch_size=10, outputs=[target(written)])
    async def handler(records: list[Record]) -> list[Any]:
        return [r.value for r in records]

    await run_worker(app, None, lambda: source.checkpoints() == last_sequences(placed), timeout=30)
    [client] = flaky
    assert client.calls == [
        [orjson.dumps({"n": n}) for n in range(6)],
        [orjson.dumps({"n": 1}), orjson.dumps({"n": 4})],  # the retry: only what failed
    ]
    values = [orjson.loads(r["Data"])["n"] for r in read_stream(written)]
    assert values == [0, 2, 3, 5, 1, 4]  # each once; the retried entries after the rest (documented)


async def test_strict_order_keeps_a_keys_order_when_an_entry_fails(
    stream: Callable[..., Stream], monkeypatch: pytest.MonkeyPatch
) -> None:
    """strict_order=True: one record of a key per request, so the failed first entry is resent before the next
    record of its key is ever sent; the stream holds the key's records once, in the handler's order."""
    source, written = stream(1), stream(1)
    placed = source.put([{"n": n} for n in range(5)])
    flaky: list[FlakyPutRecords] = []
    opened = KinesisStream.open

    async def open_flaky(self: KinesisStream, context: Any) -> Any:
        writer = await opened(self, context)
        flaky.append(FlakyPutRecords(writer._client, {0}))
        writer._client = flaky[-1]
        return writer

    monkeypatch.setattr(KinesisStream, "open", open_flaky)
    app = App("kin")

    @app.function(source=source.source(), batch_size=10, outputs=[target(written, strict_order=True)])
    async def handler(records: list[Record]) -> list[Output]:
        return [Output(r.value, key="one-key") for r in records]

    await run_worker(app, None, lambda: source.checkpoints() == last_sequences(placed), timeout=30)
    [client] = flaky
    assert client.calls == [[orjson.dumps({"n": 0})]] + [[orjson.dumps({"n": n})] for n in range(5)]
    records = read_stream(written)
    assert [orjson.loads(r["Data"])["n"] for r in records] == [0, 1, 2, 3, 4]
    assert {r["PartitionKey"] for r in records} == {"one-key"}


async def test_an_output_over_one_mib_goes_to_on_failure_with_the_reason_and_the_others_are_written(
    stream: Callable[..., Stream],
) -> None:
    source, written = stream(1), stream(1)
    placed = source.put([{"n": n} for n in range(4)])
    [records] = placed.values()
    dlq = MemoryDestination("kinesis-oversize")
    app = App("kin")

    @app.function(source=source.source(), batch_size=1, outputs=[target(written)], on_failure=dlq)
    async def handler(records: list[Record]) -> list[Any]:
        return ["x" * MAX_RECORD_BYTES if r.value["n"] == 2 else r.value for r in records]

    await run_worker(app, None, lambda: source.checkpoints() == last_sequences(placed), timeout=30)
    assert [orjson.loads(r["Data"]) for r in read_stream(written)] == [{"n": 0}, {"n": 1}, {"n": 3}]
    [letter] = dlq.letters
    assert (letter.offset, letter.condition, letter.invoke_count) == (records[2][0], "OutputDeliveryFailed", 1)
    assert letter.error is not None and "RejectedOutput" in letter.error
    size = MAX_RECORD_BYTES + len(hashlib.sha256(b"").hexdigest())  # the text as UTF-8; its hash as partition key
    assert f"{size} bytes as a Kinesis record (data and partition key), over Kinesis's limit of 1048576" in letter.error


@pytest.mark.parametrize("spelling", ["arn", "DestinationConfig", "SqsQueue"])
async def test_an_sqs_destination_gets_lambdas_metadata_only_failure_record(
    stream: Callable[..., Stream], spelling: str
) -> None:
    """As Lambda sends to an SQS on-failure destination of a Kinesis mapping (its kinesis-on-failure-destination
    page): requestContext, responseContext, version, timestamp and KinesisBatchInfo; not the record itself."""
    source = stream(1)
    placed = source.put([{"n": n} for n in range(4)], key=lambda v: f"user-{v['n']}")
    [(shard, records)] = placed.items()
    url = await create_queue(source.endpoint)
    name = url.rsplit("/", 1)[-1]
    arn = f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name}"
    destination: dict[str, Any] = {
        "arn": {"on_failure": arn},
        "DestinationConfig": {"DestinationConfig": {"OnFailure": {"Destination": arn}}},
        "SqsQueue": {"on_failure": SqsQueue(url, region_name=REGION)},
    }[spelling]
    app = App("kin")

    @app.function(
        source=source.source(),
        batch_size=10,
        maximum_retry_attempts=1,
        bisect_batch_on_function_error=True,
        **destination,
    )
    def handler(event: dict[str, Any], context: Any) -> None:
        if any(r["kinesis"]["partitionKey"] == "user-2" for r in event["Records"]):
            raise ValueError("user-2 fails")

    await run_worker(app, None, lambda: source.checkpoints() == last_sequences(placed), timeout=40)
    [message] = await receive(source.endpoint, url, 1)
    body = orjson.loads(message["Body"])
    poison = records[2][0]
    [item] = [r for r in read_stream(source) if int(r["SequenceNumber"]) == poison]
    arrived = arrival(round(item["ApproximateArrivalTimestamp"].timestamp() * 1000))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", body.pop("timestamp"))
    request_id = body["requestContext"].pop("requestId")
    assert isinstance(request_id, str) and request_id
    assert body == {
        "requestContext": {
            "functionArn": function_arn("handler"),
            "condition": "RetryAttemptsExhausted",
            "approximateInvokeCount": 4,  # the batch of 4 and its half (2-3): bisected, then alone twice
        },
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
        "version": "1.0",
        "KinesisBatchInfo": {
            "shardId": shard,
            "startSequenceNumber": str(poison),
            "endSequenceNumber": str(poison),
            "approximateArrivalOfFirstRecord": arrived,
            "approximateArrivalOfLastRecord": arrived,
            "batchSize": 1,
            "streamArn": f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/{source.name}",
        },
    }


async def test_an_sqs_destination_counts_its_dead_letters(moto_endpoint: str) -> None:
    """SqsQueue is Countable: `streamfn status` shows its depth as it shows a dead-letter topic's."""
    url = await create_queue(moto_endpoint)
    queue = SqsQueue(url, region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing")
    assert isinstance(queue, Countable) and await queue.depth() == 0
    async with sqs(moto_endpoint) as client:
        for n in range(3):
            await client.send_message(QueueUrl=url, MessageBody=str(n))
    assert await queue.depth() == 3


def test_a_destination_uri_is_the_sources_to_resolve() -> None:
    """Config checks only the shape; the source says what it takes, in one line naming field, value and what is
    allowed."""
    from streamfn.connectors.kinesis import KinesisSource

    source = KinesisSource(stream="s", region_name=REGION)
    app = App("kin")
    with pytest.raises(ConfigError) as raised:
        app.function(source=source, on_failure="kafka://dlq")(lambda event, context: None)
    assert str(raised.value) == (
        "function '<lambda>': on_failure='kafka://dlq' is invalid: allowed for a Kinesis source: "
        "arn:aws:sqs:<region>:<account>:<queue> (an SQS queue, as Lambda's DestinationConfig names one) or a "
        "destination object such as SqsQueue(url) or KafkaTopic('name')"
    )
    with pytest.raises(ConfigError, match=r"on_failure='dlq' is invalid: must be a destination URI or ARN"):
        app.function(source=source, name="f2", on_failure="dlq")(lambda event, context: None)
    queue = source.destination(f"arn:aws:sqs:eu-west-1:{ACCOUNT}:dead")
    assert isinstance(queue, SqsQueue)
    assert (queue.queue_url, queue.region()) == (f"https://sqs.eu-west-1.amazonaws.com/{ACCOUNT}/dead", "eu-west-1")


def _entry(key: str, size: int) -> Entry:
    output = Emitted(b"", None, (), Provenance("f", "s", "shardId-0", 1, 1), 0)
    return Entry(output, b"", key, size)


def test_requests_stay_within_putrecords_limits_and_strict_order_sends_a_key_once_per_request() -> None:
    many = [_entry(f"k{i}", 10) for i in range(1001)]
    assert [len(r) for r in requests(many, False)] == [MAX_REQUEST_RECORDS, MAX_REQUEST_RECORDS, 1]
    big = [_entry(f"k{i}", MAX_RECORD_BYTES) for i in range(11)]
    assert [len(r) for r in requests(big, False)] == [5, 5, 1]
    assert sum(e.size for e in next(requests(big, False))) <= MAX_REQUEST_BYTES
    keyed = [_entry(k, 10) for k in ["a", "b", "a", "c", "a", "a"]]
    assert [[e.key for e in r] for r in requests(keyed, True)] == [["a", "b"], ["a", "c"], ["a"], ["a"]]
    assert [[e.key for e in r] for r in requests(keyed, False)] == [["a", "b", "a", "c", "a", "a"]]


def test_the_partition_key_is_configured_else_the_outputs_key_else_a_hash_of_the_value() -> None:
    def output(key: bytes | None) -> Emitted:
        return Emitted({"n": 1}, key, (), Provenance("f", "s", "shardId-0", 1, 1), 0)

    data = b'{"n":1}'
    assert partition_key(output(b"user-7"), data, "fixed") == "fixed"
    assert partition_key(output(b"user-7"), data, lambda value: f"n{value['n']}") == "n1"
    assert partition_key(output(b"user-7"), data, None) == "user-7"
    assert partition_key(output(None), data, None) == hashlib.sha256(data).hexdigest()
    for refused in (b"", b"x" * 257, b"\xff"):  # Kinesis takes 1 to 256 characters of text
        assert partition_key(output(refused), data, None) == hashlib.sha256(refused).hexdigest()
    with pytest.raises(ConfigError, match="partition_key='' is invalid: must be 1 to 256 characters"):
        KinesisStream("s", partition_key="")
