"""Lambda's DynamoDB Streams rules end to end through the engine, on the memory source speaking DynamoDB's dialect
(no AWS): the event Lambda-style handlers get for each stream view type, partial batch responses by sequence
number, failure records with DDBStreamBatchInfo, Change values for native handlers, value_model, filters and
tumbling windows.

Records are built as the DynamoDB Streams reader delivers them (tests/dynamodb_records.py), at DynamoDB-like
sequence numbers (21 digits) which are also their positions.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import orjson
import pytest
from conftest import wait_for
from dynamodb_records import (
    CREATED,
    REGION,
    STREAM_ARN,
    TABLE,
    TTL_IDENTITY,
    Change,
    ViewType,
    location,
    put,
    stored,
)
from pydantic import BaseModel

from streamfn import App, Backoff, Record
from streamfn.connectors.dynamodb.change import Change as ChangeValue
from streamfn.connectors.dynamodb.change import change_codec, keys_codec
from streamfn.connectors.dynamodb.dialect import DIALECT, DynamoDBDialect
from streamfn.connectors.memory import MemoryDestination, MemorySource, MemoryStream
from streamfn.engine.worker import FunctionSummary, Worker
from streamfn.record import Partition

GROUP = "g"
FAST = Backoff(initial_seconds=0.01, max_seconds=0.05)
SHARD = Partition(TABLE, 0)
SHARD_ID = "shardId-000000000000"

ORDER = {"id": {"S": "o-1"}}
INSERTED = {"id": {"S": "o-1"}, "total": {"N": "10"}, "customer": {"S": "c-7"}}
MODIFIED = {"id": {"S": "o-1"}, "total": {"N": "12.5"}, "customer": {"S": "c-7"}}
CHANGES = [
    Change("INSERT", ORDER, new=INSERTED),
    Change("MODIFY", ORDER, new=MODIFIED, old=INSERTED),
    Change("REMOVE", ORDER, old=MODIFIED),
    Change("REMOVE", {"id": {"S": "o-2"}}, old={"id": {"S": "o-2"}}, ttl=True),
]


def source(stream: MemoryStream, dialect: DynamoDBDialect = DIALECT) -> MemorySource:
    """The memory stream as a DynamoDB stream: its dialect, its location, its codecs."""
    return MemorySource(
        stream,
        group_id=GROUP,
        dialect=dialect,
        connection=location(),
        value_format=change_codec,
        key_format=keys_codec,
    )


async def run_until(app: App, condition: Callable[[], bool], what: str) -> list[FunctionSummary]:
    worker = Worker(app, None)
    task = asyncio.create_task(worker.run(handle_signals=False))
    try:
        await wait_for(lambda: condition() or task.done(), 20, what)
    finally:
        worker.stop()
        summaries = await task
    assert condition(), what
    return summaries


def committed(stream: MemoryStream, end: int) -> Callable[[], bool]:
    return lambda: stream.committed(GROUP) == {SHARD: end}


def expected_record(change: Change, sequence: int, view: ViewType, created: int) -> dict[str, Any]:
    """Lambda's event record, written out in its order: eventID ... eventSourceARN, userIdentity."""
    value = stored(change, sequence, view, created)
    record = {
        "eventID": value["eventID"],
        "eventName": change.event_name,
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": REGION,
        "dynamodb": value["dynamodb"],
        "eventSourceARN": STREAM_ARN,
    }
    if change.ttl:
        record["userIdentity"] = TTL_IDENTITY
    return record


@pytest.mark.parametrize("view", ["KEYS_ONLY", "NEW_IMAGE", "OLD_IMAGE", "NEW_AND_OLD_IMAGES"])
async def test_a_lambda_style_handler_gets_lambdas_dynamodb_event_for_each_view_type(view: ViewType) -> None:
    stream = MemoryStream(TABLE)
    end = put(stream, 0, CHANGES, view)
    events: list[dict[str, Any]] = []
    app = App("ddb")

    @app.function(source=source(stream), batch_size=10)
    def handler(event: dict[str, Any], context: Any) -> None:
        events.append(event)

    await run_until(app, committed(stream, end), "the batch committed")
    [event] = events
    sequences = stream.shards[SHARD].positions
    assert event == {
        "Records": [
            expected_record(change, sequence, view, CREATED + index)
            for index, (change, sequence) in enumerate(zip(CHANGES, sequences, strict=True))
        ]
    }
    records = event["Records"]
    order = ["eventID", "eventName", "eventVersion", "eventSource", "awsRegion", "dynamodb", "eventSourceARN"]
    assert [list(r) for r in records] == [order] * 3 + [[*order, "userIdentity"]]
    images = [sorted(set(r["dynamodb"]) & {"NewImage", "OldImage"}) for r in records]
    assert (
        images
        == {
            "KEYS_ONLY": [[], [], [], []],
            "NEW_IMAGE": [["NewImage"], ["NewImage"], [], []],
            "OLD_IMAGE": [[], ["OldImage"], ["OldImage"], ["OldImage"]],
            "NEW_AND_OLD_IMAGES": [["NewImage"], ["NewImage", "OldImage"], ["OldImage"], ["OldImage"]],
        }[view]
    )
    assert [r["dynamodb"]["SequenceNumber"] for r in records] == [str(s) for s in sequences]


def numbered(count: int) -> list[Change]:
    return [Change("INSERT", {"id": {"N": str(n)}}, new={"id": {"N": str(n)}}) for n in range(count)]


async def test_a_partial_response_names_records_by_sequence_number_and_the_failure_record_has_ddb_batch_info() -> None:
    """The handler fails record 3 of 6 by its `dynamodb.SequenceNumber` every time: with bisection the batch is cut
    there and the rest halved until 3 is alone and its one retry spent; 3 alone is dead-lettered with Lambda's
    failure record (DDBStreamBatchInfo, arrival to the second; its payload the record's own event)."""
    stream = MemoryStream(TABLE)
    end = put(stream, 0, numbered(6))
    sequences = stream.shards[SHARD].positions
    dlq = MemoryDestination("dlq")
    invocations: list[list[int]] = []
    app = App("ddb")

    @app.function(
        source=source(stream),
        batch_size=10,
        backoff=FAST,
        function_response_types=["ReportBatchItemFailures"],
        bisect_batch_on_function_error=True,
        maximum_retry_attempts=1,
        on_failure=dlq,
    )
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        ids = [int(r["dynamodb"]["Keys"]["id"]["N"]) for r in event["Records"]]
        invocations.append(ids)
        failed = [r["dynamodb"]["SequenceNumber"] for r in event["Records"] if r["dynamodb"]["Keys"]["id"]["N"] == "3"]
        return {"batchItemFailures": [{"itemIdentifier": s} for s in failed]}

    await run_until(app, committed(stream, end), "the end committed")
    # cut at 3 (no retry used); 3-5 fails at its first record: halves 3-4 then 5; 3-4 halves 3 then 4; 3 alone
    # gets its one retry
    assert invocations == [[0, 1, 2, 3, 4, 5], [3, 4, 5], [3, 4], [3], [3], [4], [5]]
    [letter] = dlq.letters
    assert (letter.offset, letter.condition, letter.invoke_count) == (sequences[3], "RetryAttemptsExhausted", 5)
    record = letter.record
    request, timestamp = record["requestContext"], record.pop("timestamp")
    assert timestamp.endswith("Z")
    assert request.pop("requestId")
    assert record == {
        "requestContext": {
            "functionArn": "arn:aws:lambda:local:000000000000:function:handler",
            "condition": "RetryAttemptsExhausted",
            "approximateInvokeCount": 5,
        },
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": None},
        "version": "1.0",
        "DDBStreamBatchInfo": {
            "shardId": SHARD_ID,
            "startSequenceNumber": str(sequences[3]),
            "endSequenceNumber": str(sequences[3]),
            "approximateArrivalOfFirstRecord": "2025-12-03T00:00:03Z",
            "approximateArrivalOfLastRecord": "2025-12-03T00:00:03Z",
            "batchSize": 1,
            "streamArn": STREAM_ARN,
        },
        "payload": {"Records": [expected_record(numbered(6)[3], sequences[3], "NEW_AND_OLD_IMAGES", CREATED + 3)]},
    }


BAD_RESPONSES = {
    "an empty itemIdentifier": {"batchItemFailures": [{"itemIdentifier": ""}]},
    "a null itemIdentifier": {"batchItemFailures": [{"itemIdentifier": None}]},
    "a misspelt key": {"batchItemFailures": [{"itemIdentifer": "1"}]},
    "a sequence number not in the batch": {"batchItemFailures": [{"itemIdentifier": "123"}]},
    "the Kinesis name of the field": {"batchItemFailures": [{"sequenceNumber": "100000000000000000007"}]},
}
"""AWS's documented (and AWS-recorded) cases in which a partial batch response fails the whole batch."""

GOOD_RESPONSES = {
    "an empty list": {"batchItemFailures": []},
    "a null list": {"batchItemFailures": None},
    "an empty response": {},
    "a null response": None,
}
"""AWS's documented cases of a complete success."""


@pytest.mark.parametrize("case", list(BAD_RESPONSES) + list(GOOD_RESPONSES))
async def test_partial_batch_responses_that_fail_or_succeed_the_whole_batch_as_aws_documents(case: str) -> None:
    stream = MemoryStream(TABLE)
    end = put(stream, 0, numbered(3))
    invocations: list[list[int]] = []
    app = App("ddb")

    @app.function(
        source=source(stream), batch_size=10, backoff=FAST, function_response_types=["ReportBatchItemFailures"]
    )
    def handler(event: dict[str, Any], context: Any) -> Any:
        invocations.append([int(r["dynamodb"]["Keys"]["id"]["N"]) for r in event["Records"]])
        return {**BAD_RESPONSES, **GOOD_RESPONSES}[case] if len(invocations) == 1 else None

    await run_until(app, committed(stream, end), "the end committed")
    assert invocations == ([[0, 1, 2]] * 2 if case in BAD_RESPONSES else [[0, 1, 2]])


async def test_a_native_handler_gets_changes_of_plain_python_values_keyed_by_the_items_key() -> None:
    stream = MemoryStream(TABLE)
    item = {
        "id": {"S": "o-1"},
        "total": {"N": "12.50"},
        "paid": {"BOOL": True},
        "note": {"NULL": True},
        "blob": {"B": base64.b64encode(b"\x00\xffbytes").decode()},
        "tags": {"SS": ["a", "b"]},
        "sizes": {"NS": ["1", "2.5"]},
        "chunks": {"BS": [base64.b64encode(b"x").decode()]},
        "lines": {"L": [{"M": {"sku": {"S": "k1"}, "qty": {"N": "2"}}}]},
    }
    changes = [
        Change("INSERT", ORDER, new=item),
        Change("MODIFY", ORDER, new=MODIFIED, old=item),
        Change("REMOVE", ORDER, old=MODIFIED, ttl=True),
    ]
    end = put(stream, 0, changes)
    got: list[Record] = []
    app = App("ddb")

    @app.function(source=source(stream), batch_size=10)
    async def handler(records: list[Record]) -> None:
        got.extend(records)

    await run_until(app, committed(stream, end), "the batch committed")
    sequences = [str(s) for s in stream.shards[SHARD].positions]
    plain = {
        "id": "o-1",
        "total": Decimal("12.50"),
        "paid": True,
        "note": None,
        "blob": b"\x00\xffbytes",
        "tags": {"a", "b"},
        "sizes": {Decimal(1), Decimal("2.5")},
        "chunks": {b"x"},
        "lines": [{"sku": "k1", "qty": Decimal(2)}],
    }
    modified = {"id": "o-1", "total": Decimal("12.5"), "customer": "c-7"}
    assert [r.value for r in got] == [
        ChangeValue("INSERT", {"id": "o-1"}, plain, None, sequences[0], "NEW_AND_OLD_IMAGES"),
        ChangeValue("MODIFY", {"id": "o-1"}, modified, plain, sequences[1], "NEW_AND_OLD_IMAGES"),
        ChangeValue("REMOVE", {"id": "o-1"}, None, modified, sequences[2], "NEW_AND_OLD_IMAGES", expired=True),
    ]
    assert [r.key for r in got] == [{"id": "o-1"}] * 3
    assert [r.offset for r in got] == [int(s) for s in sequences]
    assert [r.timestamp for r in got] == [(CREATED + i) * 1000 for i in range(3)]


class Order(BaseModel):
    id: str
    total: Decimal
    customer: str


async def test_value_model_validates_new_images_and_an_invalid_one_goes_to_on_failure_with_the_reason() -> None:
    """The second INSERT's new image has no customer: it fails without reaching the handler (DeserializationError,
    pydantic's message); a REMOVE has no new image to validate, and its old image stays a dict."""
    stream = MemoryStream(TABLE)
    invalid = {"id": {"S": "o-2"}, "total": {"N": "3"}}
    end = put(
        stream,
        0,
        [
            Change("INSERT", ORDER, new=INSERTED),
            Change("INSERT", {"id": {"S": "o-2"}}, new=invalid),
            Change("REMOVE", ORDER, old=INSERTED),
        ],
    )
    dlq = MemoryDestination("dlq")
    got: list[Any] = []
    app = App("ddb")

    @app.function(source=source(stream), batch_size=10, value_model=Order, on_failure=dlq)
    async def handler(records: list[Record]) -> None:
        got.extend(r.value for r in records)

    await run_until(app, committed(stream, end), "the batch committed")
    assert [(c.event_name, c.new_image, c.old_image) for c in got] == [
        ("INSERT", Order(id="o-1", total=Decimal(10), customer="c-7"), None),
        ("REMOVE", None, {"id": "o-1", "total": Decimal(10), "customer": "c-7"}),
    ]
    [letter] = dlq.letters
    assert (letter.offset, letter.condition, letter.invoke_count) == (
        stream.shards[SHARD].positions[1],
        "DeserializationError",
        0,
    )
    assert letter.error is not None
    assert "1 validation error for Order" in letter.error and "customer" in letter.error
    assert letter.record["DDBStreamBatchInfo"]["approximateArrivalOfFirstRecord"] == "2025-12-03T00:00:01Z"
    assert "responseContext" not in letter.record  # never invoked


async def test_filters_on_dynamodb_fields_pass_only_matching_changes_and_commit_past_the_others() -> None:
    """AWS's DynamoDB filter examples through the engine: eventName (as AWS's CDK example), a typed NewImage
    attribute, and awsRegion, which a dialect knowing the stream's location can read."""
    stream = MemoryStream(TABLE)
    end = put(
        stream,
        0,
        [
            Change("INSERT", ORDER, new=INSERTED),
            Change("MODIFY", ORDER, new=MODIFIED, old=INSERTED),
            Change("INSERT", {"id": {"S": "o-2"}}, new={"id": {"S": "o-2"}, "customer": {"S": "c-8"}}),
            Change("REMOVE", ORDER, old=MODIFIED),
        ],
    )
    pattern = orjson.dumps(
        {"eventName": ["INSERT"], "awsRegion": [REGION], "dynamodb": {"NewImage": {"customer": {"S": ["c-7"]}}}}
    ).decode()
    got: list[str] = []
    app = App("ddb")

    @app.function(
        source=source(stream, DynamoDBDialect(location())),
        batch_size=10,
        filter_criteria={"Filters": [{"Pattern": pattern}]},
    )
    def handler(event: dict[str, Any], context: Any) -> None:
        got.extend(r["eventName"] + " " + r["dynamodb"]["Keys"]["id"]["S"] for r in event["Records"])

    [summary] = await run_until(app, committed(stream, end), "the end committed")
    assert got == ["INSERT o-1"]
    assert summary.stats.filtered_out == 3


async def test_a_pattern_on_the_region_needs_a_dialect_that_knows_the_stream() -> None:
    from streamfn.errors import ConfigError

    app = App("ddb")
    with pytest.raises(ConfigError, match="a DynamoDB stream record has no field 'awsRegion'; its fields are eventID"):

        @app.function(
            source=source(MemoryStream(TABLE)), filter_criteria={"Filters": [{"Pattern": '{"awsRegion": ["x"]}'}]}
        )
        def handler(event: dict[str, Any], context: Any) -> None: ...


async def test_a_tumbling_window_event_names_the_shard_and_the_stream_arn_and_its_state_outlives_a_restart() -> None:
    """Window events carry `shardId` and `eventSourceARN` (Lambda's DynamoDB window event); the window's state, whose
    checkpoint positions are 21-digit sequence numbers, is restored exactly by the next worker."""
    stream = MemoryStream(TABLE)
    first = put(stream, 0, numbered(3))
    events: list[dict[str, Any]] = []
    app = App("ddb")

    @app.function(source=source(stream), tumbling_window_in_seconds=900, window_idle_seconds=3600, batch_size=10)
    def windowed(event: dict[str, Any], context: Any) -> dict[str, Any]:
        events.append(event)
        ids = [int(r["dynamodb"]["Keys"]["id"]["N"]) for r in event["Records"]]
        return {"state": {"ids": [*event["state"].get("ids", []), *ids]}}

    await run_until(app, committed(stream, first), "the first batch committed")
    second = put(stream, 0, numbered(5)[3:])
    await run_until(app, committed(stream, second), "the second batch committed")
    assert [(e["shardId"], e["eventSourceARN"]) for e in events] == [(SHARD_ID, STREAM_ARN)] * 2
    assert [e["window"] for e in events] == [{"start": "2025-12-03T00:00:00Z", "end": "2025-12-03T00:15:00Z"}] * 2
    assert [(e["state"], e["isFinalInvokeForWindow"], e["isWindowTerminatedEarly"]) for e in events] == [
        ({}, False, False),
        ({"ids": [0, 1, 2]}, False, False),
    ]
    assert [[r["dynamodb"]["Keys"]["id"]["N"] for r in e["Records"]] for e in events] == [["0", "1", "2"], ["3", "4"]]


def test_a_partitions_state_entry_keeps_positions_past_64_bits_exactly() -> None:
    """The state entry of a window or an aggregation holds positions (`last`, `covers`): DynamoDB's and Kinesis's
    sequence numbers pass 64 bits, which orjson can neither write nor read back exactly (it reads floats)."""
    from streamfn.state.changelog import ChangelogEntry
    from streamfn.state.store import META_KEY, PartitionState

    sequence = 4421584500000000017450439091
    state = PartitionState()
    state.meta = {"last": sequence, "covers": sequence, "state": {"n": 1}}
    state.stage(sequence)
    [entry] = state.take(sequence)
    assert entry == ChangelogEntry(META_KEY, entry.value, sequence)
    restored = PartitionState([entry])
    assert restored.meta == {"last": sequence, "covers": sequence, "state": {"n": 1}}
    assert type(restored.meta["last"]) is int


@pytest.mark.parametrize("records_as", ["data classes", "parser models"])
async def test_a_powertools_handler_runs_unchanged_and_reports_its_failed_record_by_sequence_number(
    records_as: str,
) -> None:
    """AWS Lambda Powertools for DynamoDB Streams as a Lambda function uses it: the event parses as its
    DynamoDBStreamModel and reads as its DynamoDBStreamEvent; BatchProcessor(EventType.DynamoDBStreams), with its
    data classes or its parser models, reports the record its handler fails (order o-2) by sequence number. With
    bisection that record is cut out and, once its one retry is spent, dead-lettered alone; every other change is
    handled."""
    from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
    from aws_lambda_powertools.utilities.data_classes import DynamoDBStreamEvent
    from aws_lambda_powertools.utilities.parser import parse
    from aws_lambda_powertools.utilities.parser.models import DynamoDBStreamModel, DynamoDBStreamRecordModel

    stream = MemoryStream(TABLE)
    o2 = {"id": {"S": "o-2"}}
    end = put(
        stream,
        0,
        [
            Change("INSERT", ORDER, new=INSERTED),
            Change("INSERT", o2, new={**o2, "total": {"N": "3"}}),
            Change("MODIFY", ORDER, new=MODIFIED, old=INSERTED),
            Change("REMOVE", ORDER, old=MODIFIED, ttl=True),
        ],
    )
    sequences = stream.shards[SHARD].positions
    models = records_as == "parser models"
    processor = BatchProcessor(
        event_type=EventType.DynamoDBStreams, model=DynamoDBStreamRecordModel if models else None
    )
    handled: list[tuple[str, Any, Any, Any]] = []
    parsed: list[tuple[str, str, Any]] = []
    responses: list[Any] = []
    dlq = MemoryDestination("dlq")
    app = App("ddb")

    def record_handler(record: Any) -> None:
        if models:
            change = (record.eventName, record.dynamodb.Keys, record.dynamodb.NewImage, record.dynamodb.OldImage)
        else:
            images = (record.dynamodb.keys, record.dynamodb.new_image, record.dynamodb.old_image)
            change = (record.event_name.name, *images)
        if change[1] == {"id": "o-2"}:
            raise ValueError("order o-2 is refused")
        handled.append(change)

    @app.function(
        source=source(stream),
        batch_size=10,
        backoff=FAST,
        function_response_types=["ReportBatchItemFailures"],
        bisect_batch_on_function_error=True,
        maximum_retry_attempts=1,
        on_failure=dlq,
    )
    def handler(event: dict[str, Any], context: Any) -> Any:
        model = parse(event=event, model=DynamoDBStreamModel)  # the whole event validates as Powertools models it
        parsed.extend((r.eventName, r.awsRegion, r.userIdentity) for r in model.Records)
        assert [r.dynamodb.sequence_number for r in DynamoDBStreamEvent(event).records] == [
            r.dynamodb.SequenceNumber for r in model.Records
        ]
        response = process_partial_response(
            event=event, record_handler=record_handler, processor=processor, context=context
        )
        responses.append(response)
        return response

    await run_until(app, committed(stream, end), "the end committed")
    # The first invocation handles every change but o-2's; the retries from o-2 on handle the later ones again.
    assert handled[:3] == [
        ("INSERT", {"id": "o-1"}, {"id": "o-1", "total": Decimal(10), "customer": "c-7"}, None if models else {}),
        (
            "MODIFY",
            {"id": "o-1"},
            {"id": "o-1", "total": Decimal("12.5"), "customer": "c-7"},
            {"id": "o-1", "total": Decimal(10), "customer": "c-7"},
        ),
        ("REMOVE", {"id": "o-1"}, None if models else {}, {"id": "o-1", "total": Decimal("12.5"), "customer": "c-7"}),
    ]
    assert all(change in handled[:3] for change in handled[3:])
    assert responses[0] == {"batchItemFailures": [{"itemIdentifier": str(sequences[1])}]}
    assert [(name, region) for name, region, _ in parsed[:4]] == [
        ("INSERT", REGION),
        ("INSERT", REGION),
        ("MODIFY", REGION),
        ("REMOVE", REGION),
    ]
    identities = [None if user is None else (user.type, user.principalId) for _, _, user in parsed[:4]]
    assert identities == [None, None, None, ("Service", "dynamodb.amazonaws.com")]
    [letter] = dlq.letters
    assert (letter.offset, letter.condition) == (sequences[1], "RetryAttemptsExhausted")
    assert letter.record["DDBStreamBatchInfo"]["startSequenceNumber"] == str(sequences[1])


def test_ddb_batch_info_writes_arrival_times_to_the_second_as_aws_does() -> None:
    from streamfn.connectors.dynamodb.dialect import arrival

    assert [arrival(1_573_690_399_000), arrival(1_573_690_399_999)] == ["2019-11-14T00:13:19Z"] * 2


async def test_with_parallelization_each_items_changes_stay_in_order() -> None:
    """Records are routed to lanes by their key, the item's `Keys`: with 4 lanes, every item's changes are handled in
    stream order while the items interleave."""
    stream = MemoryStream(TABLE)
    changes = [
        Change("MODIFY", {"id": {"S": f"o-{n % 5}"}}, new={"id": {"S": f"o-{n % 5}"}, "v": {"N": str(n // 5)}})
        for n in range(40)
    ]
    end = put(stream, 0, changes)
    handled: list[tuple[str, int]] = []
    app = App("ddb")

    @app.function(source=source(stream), batch_size=2, parallelization_factor=4)
    async def handler(records: list[Record]) -> None:
        await asyncio.sleep(0.001)
        handled.extend((r.key["id"], int(r.value.new_image["v"])) for r in records)

    await run_until(app, committed(stream, end), "the end committed")
    assert sorted(handled) == sorted((f"o-{n % 5}", n // 5) for n in range(40))
    for item in {f"o-{n}" for n in range(5)}:
        assert [v for i, v in handled if i == item] == list(range(8))
