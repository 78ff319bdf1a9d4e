"""KinesisSource against moto in server mode (Kinesis, and DynamoDB for the lease table): Lambda's Kinesis event,
Powertools handlers, native records, checkpoints in the lease table, restarts, dead letters, throttling.

Each test has its own stream and lease table. moto numbers records 1, 2, 3... per shard (AWS: 56-digit sequence
numbers); the source treats them as opaque integers either way.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import boto3
import orjson
import pytest
from botocore.exceptions import ClientError
from conftest import read_topic, run_worker, wait_for

from streamfn import App, Record
from streamfn.connectors.kinesis import KinesisSource
from streamfn.connectors.kinesis.api import KinesisApi
from streamfn.connectors.kinesis.source import DIALECT
from streamfn.connectors.shards import AwsAccess, LeaseLost, LeaseTable
from streamfn.connectors.shards import reader as shard_reader
from streamfn.engine.worker import Worker
from streamfn.errors import ConfigError, Unreachable
from streamfn.failures.model import InvalidResponse, first_failed_index
from streamfn.record import Partition, RawRecord

REGION = "us-east-1"
_names = itertools.count()


class Stream:
    """A stream made for one test, with a sync client to put records and read the lease table."""

    def __init__(self, endpoint: str, shards: int) -> None:
        self.endpoint = endpoint
        self.name = f"stream-{next(_names)}-{id(self):x}"
        self.table = f"leases-{self.name}"
        self.kinesis = boto3.client("kinesis", endpoint_url=endpoint, region_name=REGION)
        self.dynamodb = boto3.client("dynamodb", endpoint_url=endpoint, region_name=REGION)
        self.kinesis.create_stream(StreamName=self.name, ShardCount=shards)
        self.shards = [s["ShardId"] for s in self.kinesis.list_shards(StreamName=self.name)["Shards"]]

    def source(self, **kw: Any) -> KinesisSource:
        return KinesisSource(
            stream=self.name, endpoint_url=self.endpoint, region_name=REGION, lease_table=self.table, **kw
        )

    def put(self, values: list[Any], key: Callable[[Any], str] = str) -> dict[str, list[tuple[int, Any]]]:
        """Put each value (JSON) with its partition key; per shard, (sequence number, value) in order."""
        placed: dict[str, list[tuple[int, Any]]] = {}
        for value in values:
            answer = self.kinesis.put_record(StreamName=self.name, Data=orjson.dumps(value), PartitionKey=key(value))
            placed.setdefault(answer["ShardId"], []).append((int(answer["SequenceNumber"]), value))
        return placed

    def checkpoints(self) -> dict[str, str]:
        """The lease table's checkpoint per shard ({} before the table exists)."""
        try:
            items = self.dynamodb.scan(TableName=self.table, ConsistentRead=True)["Items"]
        except self.dynamodb.exceptions.ResourceNotFoundException:
            return {}
        return {item["leaseKey"]["S"]: item["checkpoint"]["S"] for item in items}

    def owners(self) -> dict[str, str | None]:
        items = self.dynamodb.scan(TableName=self.table, ConsistentRead=True)["Items"]
        return {item["leaseKey"]["S"]: item.get("leaseOwner", {}).get("S") for item in items}


@pytest.fixture
def stream(aws: str) -> Iterator[Callable[..., Stream]]:
    made: list[Stream] = []

    def make(shards: int = 1) -> Stream:
        made.append(Stream(aws, shards))
        return made[-1]

    yield make
    for s in made:
        s.kinesis.delete_stream(StreamName=s.name)


def last_sequences(placed: dict[str, list[tuple[int, Any]]]) -> dict[str, str]:
    return {shard: str(records[-1][0]) for shard, records in placed.items()}


async def test_a_lambda_style_handler_gets_lambdas_kinesis_event(stream: Callable[..., Stream]) -> None:
    s = stream()
    placed = s.put([{"n": 1}, {"n": 2}, {"n": 3}], key=lambda v: f"user-{v['n']}")
    events: list[dict[str, Any]] = []
    app = App("kin")

    @app.function(source=s.source(), batch_size=10)
    def handler(event: dict[str, Any], context: Any) -> None:
        events.append(event)

    await run_worker(app, None, lambda: s.checkpoints() == last_sequences(placed), timeout=30)
    records = [r for event in events for r in event["Records"]]
    [shard] = s.shards
    arn = f"arn:aws:kinesis:{REGION}:123456789012:stream/{s.name}"
    described = s.kinesis.get_records(
        ShardIterator=s.kinesis.get_shard_iterator(StreamName=s.name, ShardId=shard, ShardIteratorType="TRIM_HORIZON")[
            "ShardIterator"
        ]
    )["Records"]
    assert records == [
        {
            "kinesis": {
                "kinesisSchemaVersion": "1.0",
                "partitionKey": f"user-{n}",
                "sequenceNumber": str(sequence),
                "data": base64.b64encode(orjson.dumps({"n": n})).decode(),
                "approximateArrivalTimestamp": round(item["ApproximateArrivalTimestamp"].timestamp() * 1000) / 1000,
            },
            "eventSource": "aws:kinesis",
            "eventVersion": "1.0",
            "eventID": f"{shard}:{sequence}",
            "eventName": "aws:kinesis:record",
            "invokeIdentityArn": "arn:aws:sts::123456789012:user/moto",
            "awsRegion": REGION,
            "eventSourceARN": arn,
        }
        for (sequence, _), n, item in zip(placed[shard], (1, 2, 3), described, strict=True)
    ]


async def test_native_handlers_get_records_and_every_shard_is_checkpointed_at_its_last_sequence_number(
    stream: Callable[..., Stream],
) -> None:
    s = stream(shards=3)
    placed = s.put([{"n": n} for n in range(60)], key=lambda v: f"key-{v['n'] % 7}")
    handled: list[Record] = []
    app = App("kin")

    @app.function(source=s.source(), batch_size=7)
    async def native(records: list[Record]) -> None:
        handled.extend(records)

    await run_worker(app, None, lambda: s.checkpoints() == last_sequences(placed), timeout=30)
    by_shard: dict[Any, list[tuple[int, Any]]] = {}
    for r in handled:
        by_shard.setdefault(r.partition, []).append((r.offset, r.value))
        assert (r.topic, r.key) == (s.name, f"key-{r.value['n'] % 7}".encode())
    assert by_shard == placed  # each shard's records once, in order, the sequence number as position
    assert set(s.owners().values()) == {None}  # a graceful stop releases the leases


async def test_a_restart_resumes_after_the_checkpoint(stream: Callable[..., Stream]) -> None:
    s = stream()
    first = s.put([{"n": n} for n in range(5)])
    handled: list[int] = []
    app = App("kin")

    @app.function(source=s.source())
    async def native(records: list[Record]) -> None:
        handled.extend(r.value["n"] for r in records)

    await run_worker(app, None, lambda: s.checkpoints() == last_sequences(first), timeout=30)
    second = s.put([{"n": n} for n in range(5, 9)])
    await run_worker(app, None, lambda: s.checkpoints() == last_sequences(second), timeout=30)
    assert handled == list(range(9))


def test_configuration_errors_are_one_line() -> None:
    with pytest.raises(ConfigError, match=r"^KinesisSource: give the stream's name"):
        KinesisSource()
    with pytest.raises(ConfigError, match=r"^KinesisSource: EventSourceArn='arn:nope' is invalid: must be a Kinesis"):
        KinesisSource(EventSourceArn="arn:nope")
    with pytest.raises(ConfigError, match=r"starting_position='EARLIEST' is invalid: .*'TRIM_HORIZON', 'LATEST'"):
        KinesisSource(stream="s", starting_position="EARLIEST")
    with pytest.raises(ConfigError, match=r"lease_duration_seconds=0 is invalid: allowed: >= 1 and <= 3600"):
        KinesisSource(stream="s", lease_duration_seconds=0)
    with pytest.raises(ConfigError, match=r"starting_position_timestamp \(Unix seconds\) is required"):
        KinesisSource(stream="s", StartingPosition="AT_TIMESTAMP")
    source = KinesisSource(EventSourceArn="arn:aws:kinesis:eu-west-1:123456789012:stream/clicks")
    assert (source.topics, source.access().region_name) == (["clicks"], "eu-west-1")
    assert source.group_id("my app", "enrich") == "streamfn-my-app-enrich"


async def test_a_powertools_handler_runs_unchanged_and_its_failed_record_is_dead_lettered_by_sequence_number(
    stream: Callable[..., Stream], broker: str
) -> None:
    """AWS Lambda Powertools' parser model and BatchProcessor for Kinesis, as a Lambda function would use them: its
    partial failure (n = 3) is bisected at that sequence number and retried alone, then dead-lettered with Lambda's
    failure record (`KinesisBatchInfo`, the record's own event as payload); the others are handled and the shard
    checkpointed at its last sequence number."""
    from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
    from aws_lambda_powertools.utilities.parser import parse
    from aws_lambda_powertools.utilities.parser.models import KinesisDataStreamModel, KinesisDataStreamRecord

    from streamfn.connectors.kafka import KafkaTopic

    s = stream()
    placed = s.put([{"n": n} for n in range(6)])
    [(shard, records)] = placed.items()
    poison = records[3][0]
    processor = BatchProcessor(event_type=EventType.KinesisDataStreams, model=KinesisDataStreamRecord)
    handled: list[int] = []
    dlq = f"dlq-{s.name}"
    app = App("kin")

    def record_handler(record: KinesisDataStreamRecord) -> None:
        value = orjson.loads(record.kinesis.data)
        if value["n"] == 3:
            raise ValueError("poison")
        handled.append(value["n"])

    @app.function(
        source=s.source(),
        function_response_types=["ReportBatchItemFailures"],
        bisect_batch_on_function_error=True,
        maximum_retry_attempts=1,
        on_failure=KafkaTopic(dlq, bootstrap_servers=broker),
    )
    def handler(event: dict[str, Any], context: Any) -> Any:
        parse(event=event, model=KinesisDataStreamModel)  # the whole event validates as Powertools models it
        return process_partial_response(
            event=event, record_handler=record_handler, processor=processor, context=context
        )

    await run_worker(app, None, lambda: s.checkpoints() == last_sequences(placed), timeout=40)
    assert sorted(set(handled)) == [0, 1, 2, 4, 5]
    [letter] = await read_topic(broker, dlq, 1)
    failure = orjson.loads(letter.value)
    assert failure["requestContext"]["condition"] == "RetryAttemptsExhausted"
    # The whole batch, its half (4-5), then the record alone twice: there Powertools raises, all records failed.
    assert failure["requestContext"]["approximateInvokeCount"] == 5
    assert (failure["responseContext"]["functionError"], failure["errorType"]) == ("Unhandled", "BatchProcessingError")
    arrival = failure["KinesisBatchInfo"].pop("approximateArrivalOfFirstRecord")
    assert failure["KinesisBatchInfo"] == {
        "shardId": shard,
        "startSequenceNumber": str(poison),
        "endSequenceNumber": str(poison),
        "approximateArrivalOfLastRecord": arrival,
        "batchSize": 1,
        "streamArn": f"arn:aws:kinesis:{REGION}:123456789012:stream/{s.name}",
    }
    [item] = failure["payload"]["Records"]
    assert (item["eventID"], base64.b64decode(item["kinesis"]["data"])) == (f"{shard}:{poison}", b'{"n":3}')


GetRecords = Callable[..., Awaitable[dict[str, Any]]]


def intercept_get_records(monkeypatch: pytest.MonkeyPatch, fault: Callable[[GetRecords, dict[str, Any]], Any]) -> None:
    """Route every GetRecords of the readers connected from now on through `fault(real_call, arguments)`: moto
    neither throttles nor ends a shard (its closed shards never return a null NextShardIterator)."""
    connect = KinesisApi.connect

    async def connect_then_intercept(api: KinesisApi) -> None:
        await connect(api)
        real = api.client.get_records
        if getattr(real, "intercepted", False):
            return

        async def get_records(**arguments: Any) -> Any:
            return await fault(real, arguments)

        get_records.intercepted = True  # type: ignore[attr-defined]
        api.client.get_records = get_records

    monkeypatch.setattr(KinesisApi, "connect", connect_then_intercept)


def iterator_shard(arguments: dict[str, Any]) -> tuple[str, int]:
    """The shard and last sequence number a moto shard iterator names (base64 of "stream:shard:sequence")."""
    _, shard, sequence = base64.decodebytes(arguments["ShardIterator"].encode()).decode().split(":")
    return shard, int(sequence)


async def test_throttling_is_backed_off_and_never_reaches_the_handler(
    stream: Callable[..., Stream], monkeypatch: pytest.MonkeyPatch
) -> None:
    s = stream()
    placed = s.put([{"n": n} for n in range(10)])
    throttles: list[float] = []

    async def throttle_five_times(real: GetRecords, arguments: dict[str, Any]) -> Any:
        if len(throttles) < 5:
            throttles.append(time.monotonic())
            error = {"Code": "ProvisionedThroughputExceededException", "Message": "Rate exceeded for shard"}
            raise ClientError({"Error": error}, "GetRecords")
        return await real(**arguments)

    intercept_get_records(monkeypatch, throttle_five_times)
    monkeypatch.setattr(shard_reader, "BACKOFF_BASE_SECONDS", 0.05)
    handled: list[int] = []
    app = App("kin")

    @app.function(source=s.source())
    async def native(records: list[Record]) -> None:
        handled.extend(r.value["n"] for r in records)

    [summary] = await run_worker(app, None, lambda: s.checkpoints() == last_sequences(placed), timeout=30)
    assert len(throttles) == 5
    assert handled == list(range(10))
    assert (summary.stats.failed_invocations, summary.stats.retries, summary.stats.dead_lettered) == (0, 0, 0)


async def test_a_lease_taken_by_another_worker_is_lost_at_once_and_nothing_more_is_committed_for_it(
    stream: Callable[..., Stream],
) -> None:
    s = stream()
    first = s.put([{"n": n} for n in range(3)])
    handled: list[int] = []
    app = App("kin")

    @app.function(source=s.source(lease_duration_seconds=3))
    async def native(records: list[Record]) -> None:
        handled.extend(r.value["n"] for r in records)

    worker = Worker(app)
    running = asyncio.create_task(worker.run(handle_signals=False))
    try:
        await wait_for(lambda: s.checkpoints() == last_sequences(first), 20, "the first records checkpointed")
        [shard] = s.shards
        table = await LeaseTable.open(s.table, AwsAccess(endpoint_url=s.endpoint, region_name=REGION))
        for _ in range(10):  # as a worker elsewhere would steal it: scan, take, again if a renew came between
            [lease] = await table.scan()
            try:
                await table.take(lease, "another-worker")
                break
            except LeaseLost:
                continue
        await table.close()
        poller = worker.pollers[0]
        await wait_for(lambda: not poller.workers, 10, "the shard lost (within a renew period)")
        s.put([{"n": n} for n in range(3, 6)])
        await asyncio.sleep(1)  # ten polls of a caught-up shard, were it still read
    finally:
        worker.stop()
        await running
    assert handled == [0, 1, 2]
    assert (s.checkpoints(), s.owners()) == (last_sequences(first), {shard: "another-worker"})


@pytest.mark.parametrize("named", [True, False], ids=["ChildShards named (AWS)", "no ChildShards (emulators)"])
async def test_a_shard_end_drains_the_parent_then_its_children_start(
    stream: Callable[..., Stream], monkeypatch: pytest.MonkeyPatch, named: bool
) -> None:
    """A split parent is read to its end (here: the null NextShardIterator AWS sends, injected since moto never
    does), handled, checkpointed at its last record, then SHARD_END with its children; only then are the children
    read (their leases wait for their parent's end). The children recorded are the ChildShards of the last
    response when it names them (here one only, to tell), else the listed shards naming the parent."""
    s = stream()
    placed = s.put([{"n": n} for n in range(5)])
    [parent] = s.shards
    s.kinesis.split_shard(StreamName=s.name, ShardToSplit=parent, NewStartingHashKey=str(2**127))
    children = sorted({sh["ShardId"] for sh in s.kinesis.list_shards(StreamName=s.name)["Shards"]} - {parent})
    last = placed[parent][-1][0]
    reads: list[str] = []

    async def end_parent_after_its_last_record(real: GetRecords, arguments: dict[str, Any]) -> Any:
        shard, after = iterator_shard(arguments)
        reads.append(shard)
        if shard == parent and after >= last:
            ended: dict[str, Any] = {"Records": [], "MillisBehindLatest": 0}  # no NextShardIterator: the end
            if named:
                ended["ChildShards"] = [{"ShardId": children[0], "ParentShards": [parent], "HashKeyRange": {}}]
            return ended
        return await real(**arguments)

    intercept_get_records(monkeypatch, end_parent_after_its_last_record)
    handled: list[int] = []
    app = App("kin")

    @app.function(source=s.source(lease_duration_seconds=2))
    async def native(records: list[Record]) -> None:
        handled.extend(r.value["n"] for r in records)

    def children_read() -> bool:
        return set(children) <= set(reads) and s.checkpoints().get(parent) == "SHARD_END"

    await run_worker(app, None, children_read, timeout=30)
    assert handled == list(range(5))
    first_child_read = min(reads.index(child) for child in children)
    assert set(reads[:first_child_read]) == {parent} and parent not in reads[first_child_read:]
    leases = s.dynamodb.scan(TableName=s.table, ConsistentRead=True)["Items"]
    lineage = {item["leaseKey"]["S"]: sorted(item.get("childShardIds", {}).get("SS", [])) for item in leases}
    assert lineage == {parent: children[:1] if named else children, **{child: [] for child in children}}


def passthrough(calls: list[str]) -> Callable[[GetRecords, dict[str, Any]], Awaitable[Any]]:
    async def record_call(real: GetRecords, arguments: dict[str, Any]) -> Any:
        calls.append(iterator_shard(arguments)[0])
        return await real(**arguments)

    return record_call


async def test_latest_starts_after_the_records_already_in_the_stream(
    stream: Callable[..., Stream], monkeypatch: pytest.MonkeyPatch
) -> None:
    s = stream()
    s.put([{"n": n} for n in range(3)])
    calls: list[str] = []
    intercept_get_records(monkeypatch, passthrough(calls))
    handled: list[int] = []
    app = App("kin")

    @app.function(source=s.source(starting_position="LATEST"))
    async def native(records: list[Record]) -> None:
        handled.extend(r.value["n"] for r in records)

    worker = Worker(app)
    running = asyncio.create_task(worker.run(handle_signals=False))
    try:
        await wait_for(lambda: bool(calls), 20, "the shard read from its LATEST iterator")
        later = s.put([{"n": n} for n in range(3, 6)])
        await wait_for(lambda: s.checkpoints() == last_sequences(later), 20, "the later records checkpointed")
    finally:
        worker.stop()
        await running
    assert handled == [3, 4, 5]


async def test_at_timestamp_starts_at_the_first_record_that_arrived_at_or_after_it(
    stream: Callable[..., Stream],
) -> None:
    s = stream()
    s.put([{"n": n} for n in range(3)])
    await asyncio.sleep(0.05)
    since = time.time()
    await asyncio.sleep(0.05)
    placed = s.put([{"n": n} for n in range(3, 6)])
    handled: list[int] = []
    app = App("kin")

    @app.function(source=s.source(StartingPosition="AT_TIMESTAMP", StartingPositionTimestamp=since))
    async def native(records: list[Record]) -> None:
        handled.extend(r.value["n"] for r in records)

    await run_worker(app, None, lambda: s.checkpoints() == last_sequences(placed), timeout=30)
    assert handled == [3, 4, 5]


async def test_an_expired_iterator_is_renewed_after_the_last_record_fetched(
    stream: Callable[..., Stream], monkeypatch: pytest.MonkeyPatch
) -> None:
    s = stream()
    first = s.put([{"n": n} for n in range(3)])
    expired: list[str] = []

    async def expire_once_after_the_first_records(real: GetRecords, arguments: dict[str, Any]) -> Any:
        _, after = iterator_shard(arguments)
        if after >= first[s.shards[0]][-1][0] and not expired:
            expired.append(arguments["ShardIterator"])
            error = {"Code": "ExpiredIteratorException", "Message": "Iterator expired"}
            raise ClientError({"Error": error}, "GetRecords")
        return await real(**arguments)

    intercept_get_records(monkeypatch, expire_once_after_the_first_records)
    handled: list[int] = []
    app = App("kin")

    @app.function(source=s.source())
    async def native(records: list[Record]) -> None:
        handled.extend(r.value["n"] for r in records)

    later: list[dict[str, list[tuple[int, Any]]]] = []

    def second_round() -> bool:
        """Once the iterator expired, more records: read after the last record fetched, none twice, none missed."""
        if expired and not later:
            later.append(s.put([{"n": n} for n in range(3, 6)]))
        return bool(later) and s.checkpoints() == last_sequences(later[0])

    await run_worker(app, None, second_round, timeout=30)
    assert (len(expired), handled) == (1, list(range(6)))


@pytest.mark.parametrize(
    "response",
    [None, {}, [], "", {"batchItemFailures": []}, {"batchItemFailures": None}],
    ids=["null", "empty object", "empty list", "empty string", "no failures", "null failures"],
)
def test_partial_responses_that_are_a_complete_success(response: Any) -> None:
    assert first_failed_index(response, PARTITION, BATCH, DIALECT.failed_item) is None


@pytest.mark.parametrize(
    "item",
    [{"itemIdentifier": ""}, {"itemIdentifier": None}, {"itemidentifier": "20"}, {"itemIdentifier": "123"}, "20"],
    ids=["empty identifier", "null identifier", "bad key name", "not in the batch", "not an object"],
)
def test_partial_responses_that_fail_the_whole_batch(item: Any) -> None:
    with pytest.raises(InvalidResponse):
        first_failed_index({"batchItemFailures": [item]}, PARTITION, BATCH, DIALECT.failed_item)


def test_a_partial_response_names_records_by_sequence_number_and_the_lowest_is_the_checkpoint() -> None:
    response = {"batchItemFailures": [{"itemIdentifier": "30"}, {"itemIdentifier": "20"}]}
    assert first_failed_index(response, PARTITION, BATCH, DIALECT.failed_item) == 1


PARTITION = Partition("s", "shardId-000000000000")
BATCH = [RawRecord("s", "shardId-000000000000", n, 0, b"k", b"{}") for n in (10, 20, 30)]


def test_kinesis_defaults_and_filters_follow_lambdas_kinesis_rules() -> None:
    """A 0 s batching window by default; filter patterns see `data` (JSON) and the kinesis metadata, and a pattern
    on a field Kinesis records lack (Kafka's `value`) is refused in one line."""
    app = App("kin")

    @app.function(
        source=KinesisSource(stream="s"),
        filter_criteria={"Filters": [{"Pattern": '{"data": {"n": [{"numeric": [">", 1]}]}, "partitionKey": ["a"]}'}]},
    )
    async def native(records: list[Record]) -> None: ...

    config = app.functions["native"].config
    assert config.maximum_batching_window_in_seconds == 0
    criteria = config.filter_criteria
    assert [criteria.matches(RawRecord("s", "shard", 1, 0, key, data)) for key, data in CANDIDATES] == [
        True,
        False,
        False,
        False,
    ]
    with pytest.raises(ConfigError, match=r"a Kinesis record has no field 'value'; its fields are data, partitionKey"):

        @app.function(source=KinesisSource(stream="s"), filter_criteria={"Filters": [{"Pattern": '{"value": [1]}'}]})
        async def other(records: list[Record]) -> None: ...


CANDIDATES = [(b"a", b'{"n": 2}'), (b"b", b'{"n": 2}'), (b"a", b'{"n": 1}'), (b"a", b"not json")]


async def test_a_stream_that_does_not_exist_is_reported_in_one_line(aws: str) -> None:
    app = App("kin")

    @app.function(source=KinesisSource(stream="no-such-stream", endpoint_url=aws, region_name=REGION))
    async def native(records: list[Record]) -> None: ...

    with pytest.raises(Unreachable) as raised:
        await Worker(app, connect_timeout=2).run(handle_signals=False)
    assert str(raised.value) == (
        f"function 'native': Kinesis stream no-such-stream ({REGION}, {aws}): no such stream; "
        "gave up after 2 s (--connect-timeout)"
    )
