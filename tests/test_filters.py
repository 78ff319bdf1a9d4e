"""Lambda filter criteria on Kafka and DynamoDB stream records: a conformance suite of AWS's documented examples.

Each group cites the page its examples come from. Patterns are given as dicts for readability and passed to
`compile_criteria` as JSON strings, Lambda's exact shape. Records are aiokafka ConsumerRecords, as the Kafka
connector delivers them; no broker is needed.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from aiokafka.structs import ConsumerRecord

from streamfn.connectors.kafka.dialect import RECORD_FIELDS
from streamfn.errors import ConfigError
from streamfn.filters.criteria import FilterCriteria, RecordFilter, compile_criteria


def record(
    value: Any = None,
    *,
    key: Any = None,
    topic: str = "mytopic",
    partition: int = 0,
    offset: int = 15,
    timestamp: int = 1545084650987,
    timestamp_type: int = 0,
    headers: tuple[tuple[str, bytes | None], ...] = (),
) -> ConsumerRecord[bytes, bytes]:
    """A Kafka record as aiokafka delivers it: dicts and lists are written as JSON, strings as UTF-8."""
    return ConsumerRecord(
        topic=topic,
        partition=partition,
        offset=offset,
        timestamp=timestamp,
        timestamp_type=timestamp_type,
        key=encode(key),
        value=encode(value),
        checksum=None,
        serialized_key_size=0,
        serialized_value_size=0,
        headers=list(headers),  # type: ignore[arg-type]  # a null header value, as Kafka allows
    )


def encode(data: Any) -> bytes | None:
    if data is None or isinstance(data, bytes):
        return data
    return data.encode() if isinstance(data, str) else orjson.dumps(data)


def criteria(*patterns: dict[str, Any]) -> RecordFilter:
    compiled = compile_criteria({"Filters": [{"Pattern": json.dumps(pattern)} for pattern in patterns]}, RECORD_FIELDS)
    assert compiled is not None
    return compiled


def value(pattern: dict[str, Any]) -> dict[str, Any]:
    """A pattern on the record's JSON value (Lambda's Kafka filters are on the `value` key)."""
    return {"value": pattern}


# Kafka-filtering page: the producer's JSON message.
DEVICE = {"device_ID": "AB1234", "session": {"start_time": "2024-01-01T00:00:00", "duration": 162}}
# Event Ruler README "Ruler by Example": the detail of the EC2 example event.
DETAIL = {"c-count": 5, "d-count": 3, "x-limit": 301.8, "source-ip": "10.0.0.33", "state": "running"}
# Event Ruler README "JSON Array Matching".
EMPLOYEES = {
    "employees": [
        {"firstName": "John", "lastName": "Doe"},
        {"firstName": "Anna", "lastName": "Smith"},
        {"firstName": "Peter", "lastName": "Jones"},
    ]
}
NOT_UTF8 = b"\xff\xfe\x00{"

MATCHING: dict[str, tuple[dict[str, Any], ConsumerRecord[bytes, bytes], bool]] = {
    # Lambda "Control which events Lambda sends to your function" (invocation-eventfiltering), Filter rule syntax:
    # one example per comparison operator of its table.
    "null matches a JSON null": (value({"UserID": [None]}), record({"UserID": None}), True),
    "null does not match a string": (value({"UserID": [None]}), record({"UserID": "u1"}), False),
    "null does not match a missing field": (value({"UserID": [None]}), record({"Other": 1}), False),
    "empty matches an empty string": (value({"LastName": [""]}), record({"LastName": ""}), True),
    "empty does not match null": (value({"LastName": [""]}), record({"LastName": None}), False),
    "equals matches the exact string": (value({"Name": ["Alice"]}), record({"Name": "Alice"}), True),
    "equals is case sensitive": (value({"Name": ["Alice"]}), record({"Name": "alice"}), False),
    "equals-ignore-case matches any casing": (
        value({"Name": [{"equals-ignore-case": "alice"}]}),
        record({"Name": "ALICE"}),
        True,
    ),
    "equals-ignore-case is still equality": (
        value({"Name": [{"equals-ignore-case": "alice"}]}),
        record({"Name": "Alicia"}),
        False,
    ),
    "and: both fields match": (
        value({"Location": ["New York"], "Day": ["Monday"]}),
        record({"Location": "New York", "Day": "Monday"}),
        True,
    ),
    "and: one field does not match": (
        value({"Location": ["New York"], "Day": ["Monday"]}),
        record({"Location": "New York", "Day": "Sunday"}),
        False,
    ),
    "or: any listed value": (value({"PaymentType": ["Credit", "Debit"]}), record({"PaymentType": "Debit"}), True),
    "or: none of the listed values": (
        value({"PaymentType": ["Credit", "Debit"]}),
        record({"PaymentType": "Cash"}),
        False,
    ),
    "or across fields: the second branch": (
        value({"$or": [{"Location": ["New York"]}, {"Day": ["Monday"]}]}),
        record({"Location": "Paris", "Day": "Monday"}),
        True,
    ),
    "or across fields: no branch": (
        value({"$or": [{"Location": ["New York"]}, {"Day": ["Monday"]}]}),
        record({"Location": "Paris", "Day": "Sunday"}),
        False,
    ),
    "not: another value": (value({"Weather": [{"anything-but": ["Raining"]}]}), record({"Weather": "Sunny"}), True),
    "not: the excluded value": (
        value({"Weather": [{"anything-but": ["Raining"]}]}),
        record({"Weather": "Raining"}),
        False,
    ),
    "not: a missing field has no value to compare": (
        value({"Weather": [{"anything-but": ["Raining"]}]}),
        record({"City": "Seattle"}),
        False,
    ),
    "numeric equals": (value({"Price": [{"numeric": ["=", 100]}]}), record({"Price": 100}), True),
    "numeric equals compares values, not text": (
        value({"Price": [{"numeric": ["=", 100]}]}),
        record({"Price": 100.0}),
        True,
    ),
    "numeric equals: another number": (value({"Price": [{"numeric": ["=", 100]}]}), record({"Price": 101}), False),
    "numeric never matches a string": (value({"Price": [{"numeric": ["=", 100]}]}), record({"Price": "100"}), False),
    "numeric range: the closed top": (
        value({"Price": [{"numeric": [">", 10, "<=", 20]}]}),
        record({"Price": 20}),
        True,
    ),
    "numeric range: the open bottom": (
        value({"Price": [{"numeric": [">", 10, "<=", 20]}]}),
        record({"Price": 10}),
        False,
    ),
    "numeric range: above the top": (
        value({"Price": [{"numeric": [">", 10, "<=", 20]}]}),
        record({"Price": 20.5}),
        False,
    ),
    "exists: present": (value({"ProductName": [{"exists": True}]}), record({"ProductName": "Bike"}), True),
    "exists: present with a null value": (
        value({"ProductName": [{"exists": True}]}),
        record({"ProductName": None}),
        True,
    ),
    "exists: missing": (value({"ProductName": [{"exists": True}]}), record({"Price": 1}), False),
    "does not exist: missing": (value({"ProductName": [{"exists": False}]}), record({"Price": 1}), True),
    "does not exist: present": (value({"ProductName": [{"exists": False}]}), record({"ProductName": "Bike"}), False),
    "begins with": (value({"Region": [{"prefix": "us-"}]}), record({"Region": "us-east-1"}), True),
    "begins with: another prefix": (value({"Region": [{"prefix": "us-"}]}), record({"Region": "eu-west-1"}), False),
    "ends with": (value({"FileName": [{"suffix": ".png"}]}), record({"FileName": "image.png"}), True),
    "ends with: another suffix": (value({"FileName": [{"suffix": ".png"}]}), record({"FileName": "image.jpg"}), False),
    # Lambda "Filtering events from Amazon MSK and self-managed Apache Kafka event sources" (kafka-filtering).
    "kafka: device_ID begins with AB": (value({"device_ID": [{"prefix": "AB"}]}), record(DEVICE), True),
    "kafka: device_ID begins with CD": (
        value({"device_ID": [{"prefix": "AB"}]}),
        record({**DEVICE, "device_ID": "CD1234"}),
        False,
    ),
    "kafka: nested session field": (
        value({"session": {"duration": [{"numeric": [">", 100]}]}}),
        record(DEVICE),
        True,
    ),
    "kafka: plain string other than error": (
        {"value": [{"anything-but": ["error"]}]},
        record("Hello, this is a test."),
        True,
    ),
    "kafka: plain string error is ignored": ({"value": [{"anything-but": ["error"]}]}, record("error"), False),
    # kafka-filtering, its table of message format x pattern format (one case per row; plain/plain and JSON/JSON
    # are the cases above). "Lambda filters on the other metadata properties only": the value part of a pattern of
    # the other format cannot match, so the record is filtered out unless metadata alone decides.
    "format: plain string, metadata-only pattern": ({"topic": ["mytopic"]}, record("just text"), True),
    "format: plain string, JSON pattern": (value({"device_ID": [{"prefix": "AB"}]}), record("AB1234"), False),
    "format: JSON, plain string pattern": ({"value": [{"anything-but": ["error"]}]}, record(DEVICE), False),
    "format: JSON, metadata-only pattern": ({"partition": [0]}, record(DEVICE), True),
    "format: not UTF-8, metadata-only pattern": ({"topic": ["mytopic"]}, record(NOT_UTF8), True),
    "format: not UTF-8, value pattern": ({"topic": ["mytopic"], "value": ["x"]}, record(NOT_UTF8), False),
    "format: JSON that is not an object is a plain string": ({"value": ["42"]}, record(b"42"), True),
    "format: a tombstone has no value": ({"value": [{"exists": False}]}, record(None), True),
    # EventBridge "Comparison operators for use in event patterns" (eb-create-pattern-operators), by its table.
    "anything-but a single string": (
        value({"state": [{"anything-but": "initializing"}]}),
        record({"state": "initializing"}),
        False,
    ),
    "anything-but a single number": (value({"x-limit": [{"anything-but": 123}]}), record(DETAIL), True),
    "anything-but numbers: excluded": (
        value({"x-limit": [{"anything-but": [100, 200, 300]}]}),
        record({"x-limit": 200}),
        False,
    ),
    "anything-but numbers: a string is not excluded": (
        value({"x-limit": [{"anything-but": [100, 200, 300]}]}),
        record({"x-limit": "200"}),
        True,
    ),
    "anything-but begins with: another region": (
        value({"Region": [{"anything-but": {"prefix": "us-"}}]}),
        record({"Region": "eu-west-1"}),
        True,
    ),
    "anything-but begins with: excluded": (
        value({"Region": [{"anything-but": {"prefix": "us-"}}]}),
        record({"Region": "us-east-1"}),
        False,
    ),
    "anything-but ends with: excluded": (
        value({"FileName": [{"anything-but": {"suffix": ".png"}}]}),
        record({"FileName": "logo.png"}),
        False,
    ),
    "anything-but ends with: another extension": (
        value({"FileName": [{"anything-but": {"suffix": ".png"}}]}),
        record({"FileName": "logo.svg"}),
        True,
    ),
    "anything-but ignoring case: excluded in capitals": (
        value({"state": [{"anything-but": {"equals-ignore-case": "initializing"}}]}),
        record({"state": "INITIALIZING"}),
        False,
    ),
    "anything-but ignoring case: another state": (
        value({"state": [{"anything-but": {"equals-ignore-case": ["initializing", "stopped"]}}]}),
        record({"state": "running"}),
        True,
    ),
    "anything-but wildcard: a /lib/ path is excluded": (
        value({"FilePath": [{"anything-but": {"wildcard": "*/lib/*"}}]}),
        record({"FilePath": "/usr/lib/libc.so"}),
        False,
    ),
    "anything-but wildcard: another path": (
        value({"FilePath": [{"anything-but": {"wildcard": "*/lib/*"}}]}),
        record({"FilePath": "/usr/bin/env"}),
        True,
    ),
    "begins with, ignoring case": (
        value({"service": [{"prefix": {"equals-ignore-case": "eventb"}}]}),
        record({"service": "EventBridge"}),
        True,
    ),
    "begins with, ignoring case: another service": (
        value({"service": [{"prefix": {"equals-ignore-case": "eventb"}}]}),
        record({"service": "Lambda"}),
        False,
    ),
    "ends with, ignoring case": (
        value({"service": [{"suffix": {"equals-ignore-case": "tbridge"}}]}),
        record({"service": "EVENTBRIDGE"}),
        True,
    ),
    "ends with, ignoring case: another service": (
        value({"service": [{"suffix": {"equals-ignore-case": "tbridge"}}]}),
        record({"service": "EventBus"}),
        False,
    ),
    "wildcard: a png in dir": (
        value({"FileName": [{"wildcard": "dir/*.png"}]}),
        record({"FileName": "dir/a.png"}),
        True,
    ),
    "wildcard: * crosses slashes": (
        value({"FileName": [{"wildcard": "dir/*.png"}]}),
        record({"FileName": "dir/sub/a.png"}),
        True,
    ),
    "wildcard: another extension": (
        value({"FileName": [{"wildcard": "dir/*.png"}]}),
        record({"FileName": "dir/a.jpg"}),
        False,
    ),
    "wildcard: * matches no character too": (
        value({"source": [{"wildcard": "Simple*Service"}]}),
        record({"source": "SimpleService"}),
        True,
    ),
    "wildcard: an escaped asterisk is literal": (
        value({"name": [{"wildcard": "a\\*b"}]}),
        record({"name": "a*b"}),
        True,
    ),
    "wildcard: an escaped asterisk is not a wildcard": (
        value({"name": [{"wildcard": "a\\*b"}]}),
        record({"name": "axb"}),
        False,
    ),
    "cidr: inside the block": (
        value({"sourceIPAddress": [{"cidr": "10.0.0.0/24"}]}),
        record({"sourceIPAddress": "10.0.0.255"}),
        True,
    ),
    "cidr: outside the block": (
        value({"sourceIPAddress": [{"cidr": "10.0.0.0/24"}]}),
        record({"sourceIPAddress": "10.0.1.1"}),
        False,
    ),
    "cidr: IPv6": (value({"ip": [{"cidr": "2001:db8::/32"}]}), record({"ip": "2001:db8::7"}), True),
    "cidr: not an address": (value({"ip": [{"cidr": "10.0.0.0/8"}]}), record({"ip": "localhost"}), False),
    # EventBridge "Content filtering" (eb-event-patterns-content-based-filtering) numeric and complex examples,
    # with the Event Ruler README's example event.
    "numeric: all three fields": (
        value(
            {
                "c-count": [{"numeric": [">", 0, "<=", 5]}],
                "d-count": [{"numeric": ["<", 10]}],
                "x-limit": [{"numeric": ["=", 3.018e2]}],
            }
        ),
        record(DETAIL),
        True,
    ),
    "numeric: c-count out of range": (
        value({"c-count": [{"numeric": [">", 0, "<=", 5]}], "d-count": [{"numeric": ["<", 10]}]}),
        record({**DETAIL, "c-count": 6}),
        False,
    ),
    "complex example": (
        value(
            {
                "state": [{"anything-but": "initializing"}],
                "c-count": [{"numeric": [">", 0, "<=", 5]}],
                "x-limit": [{"anything-but": [100, 200, 300]}],
                "source-ip": [{"cidr": "10.0.0.0/8"}],
            }
        ),
        record(DETAIL),
        True,
    ),
    "exists false on an intermediate node": (
        value({"detail": {"c-count": [{"exists": False}]}}),
        record({"detail": {"state": "running", "c-count": {"c1": 100}}}),
        True,
    ),
    "exists true on an intermediate node": (
        value({"detail": {"c-count": [{"exists": True}]}}),
        record({"detail": {"c-count": {"c1": 100}}}),
        False,
    ),
    # EventBridge "Arrays in event patterns" (eb-event-patterns-arrays) and the Event Ruler README's
    # "JSON Array Matching".
    "array: any element matches": (
        value({"resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-b188560f"]}),
        record({"resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-b188560f", "other"]}),
        True,
    ),
    "array: no element matches": (value({"resources": ["a", "b"]}), record({"resources": ["c", "d"]}), False),
    "array of objects: one element": (value({"employees": {"firstName": ["Anna"]}}), record(EMPLOYEES), True),
    "array of objects: fields of one element": (
        value({"employees": {"firstName": ["Anna"], "lastName": ["Smith"]}}),
        record(EMPLOYEES),
        True,
    ),
    "array of objects: fields of different elements": (
        value({"employees": {"firstName": ["Anna"], "lastName": ["Jones"]}}),
        record(EMPLOYEES),
        False,
    ),
    "array of arrays is flattened": (
        value({"employees": {"firstName": ["Peter"]}}),
        record({"employees": [EMPLOYEES["employees"][:2], EMPLOYEES["employees"][2:]]}),
        True,
    ),
    "anything-but on an array: one element is not excluded": (
        value({"tags": [{"anything-but": "a"}]}),
        record({"tags": ["a", "b"]}),
        True,
    ),
    "an empty array is an absent field": (value({"tags": [{"exists": False}]}), record({"tags": []}), True),
    # Event Ruler README, "The $or primitive": "Or has an And inside" and "Parallel Or".
    "$or with an and inside": (
        value(
            {
                "source": ["aws.cloudwatch"],
                "$or": [{"metricName": ["CPUUtilization"]}, {"metricType": ["MetricType"], "namespace": ["AWS/EC2"]}],
            }
        ),
        record({"source": "aws.cloudwatch", "metricType": "MetricType", "namespace": "AWS/EC2"}),
        True,
    ),
    "$or in parallel, nested": (
        value(
            {
                "$or": [{"metricName": ["CPUUtilization"]}, {"namespace": ["AWS/EC2"]}],
                "detail": {"$or": [{"source": ["aws.cloudwatch"]}, {"detail-type": ["Alarm"]}]},
            }
        ),
        record({"namespace": "AWS/EC2", "detail": {"source": "aws.s3"}}),
        False,
    ),
    # EventBridge "Event pattern syntax" (eb-create-pattern): values follow JSON rules. streamfn compares numbers by
    # value, as Event Ruler does (its compiler adds a numeric match for every number), and a bool is never 1.
    "a number matches its other spellings": (value({"n": [300]}), record(b'{"n": 3.0e2}'), True),
    "true is not the number 1": (value({"n": [1]}), record({"n": True}), False),
    "1 is not true": (value({"n": [True]}), record({"n": 1}), False),
    "a number is not its string": (value({"n": [300]}), record({"n": "300"}), False),
    # The record's metadata (streamfn's extension: AWS documents filtering on `value` only).
    "metadata: topic": ({"topic": ["mytopic", "other"]}, record(DEVICE), True),
    "metadata: another topic": ({"topic": ["other"]}, record(DEVICE), False),
    "metadata: offset range": ({"offset": [{"numeric": [">=", 10, "<", 20]}]}, record(DEVICE, offset=15), True),
    "metadata: timestamp in ms": (
        {"timestamp": [{"numeric": [">", 1545084650000]}]},
        record(DEVICE, timestamp=1545084650987),
        True,
    ),
    "metadata: timestampType": ({"timestampType": ["LOG_APPEND_TIME"]}, record(DEVICE, timestamp_type=1), True),
    "metadata: and with the value": (
        {"partition": [1], "value": {"device_ID": [{"prefix": "AB"}]}},
        record(DEVICE, partition=0),
        False,
    ),
    "key: a plain string": ({"key": [{"prefix": "user-"}]}, record(DEVICE, key="user-42"), True),
    "key: a JSON object": ({"key": {"tenant": ["acme"]}}, record(DEVICE, key={"tenant": "acme"}), True),
    "key: null is absent": ({"key": [{"exists": False}]}, record(DEVICE, key=None), True),
    "headers: by name": ({"headers": {"type": ["order"]}}, record(DEVICE, headers=(("type", b"order"),)), True),
    "headers: a repeated name is an array": (
        {"headers": {"tag": ["b"]}},
        record(DEVICE, headers=(("tag", b"a"), ("tag", b"b"))),
        True,
    ),
    "headers: a null value": ({"headers": {"trace": [None]}}, record(DEVICE, headers=(("trace", None),)), True),
    "headers: a value that is not UTF-8 is absent": (
        {"headers": {"blob": [{"exists": False}]}},
        record(DEVICE, headers=(("blob", b"\xff"),)),
        True,
    ),
}


@pytest.mark.parametrize("case", list(MATCHING))
def test_pattern_matches_as_aws_documents(case: str) -> None:
    pattern, kafka_record, expected = MATCHING[case]
    assert criteria(pattern).matches(kafka_record) is expected


def test_filters_are_ored() -> None:
    # Lambda invocation-eventfiltering: "If a record ... satisfies one or more of your filters, Lambda includes
    # the record".
    either = criteria(value({"Name": ["Alice"]}), {"topic": ["audit"]})
    assert [
        either.matches(record({"Name": "Alice"})),
        either.matches(record({"Name": "Bob"}, topic="audit")),
        either.matches(record({"Name": "Bob"})),
    ] == [True, True, False]


def test_a_decoded_value_is_used_instead_of_the_bytes() -> None:
    compiled = criteria(value({"amount": [{"numeric": [">", 10]}]}))
    raw = record(b"\x00avro-encoded bytes")
    assert [compiled.matches(raw), compiled.matches(raw, decoded={"amount": 12})] == [False, True]


def test_a_pattern_may_be_a_dict_and_keys_snake_case() -> None:
    compiled = compile_criteria({"filters": [{"pattern": {"value": {"Name": ["Alice"]}}}]}, RECORD_FIELDS)
    assert compiled is not None
    assert compiled.patterns == ('{"value":{"Name":["Alice"]}}',)
    assert compiled.matches(record({"Name": "Alice"}))


# DynamoDB Streams: Lambda "Using event filtering with a DynamoDB event source" (with-ddb-filtering), its example
# record (primary key CustomerName) and each of its examples; the CDK's DynamoEventSource example (eventName, a BOOL
# attribute) and DynamoDB's TTL guide (userIdentity), which filter outside `dynamodb` too. Records are built as the
# DynamoDB Streams reader delivers them (tests/dynamodb_records.py); patterns are JSON texts, as Lambda takes them.
CUSTOMER = {"CustomerName": {"S": "AnyCompany Industries"}}
ACCOUNT = {"AccountManager": {"S": "Pat Candella"}, "PaymentTerms": {"S": "60 days"}, **CUSTOMER}
ORGANIZATIONS = {
    "UserID": {"S": "12345"},
    "Name": {"S": "John Doe"},
    "Organizations": {"L": [{"S": "Sales"}, {"S": "Marketing"}, {"S": "Support"}]},
}
KEYS_PATTERN = '{ "dynamodb" : { "Keys" : { "CustomerName" : { "S" : [ "AnyCompany Industries" ] } } } }'
MANAGERS_PATTERN = (
    '{ "dynamodb" : { "NewImage" : { "AccountManager" : { "S" : [ "Pat Candella", "Shirley Rodriguez" ] } } } }'
)
AWS_AND_PATTERN = (  # as the page writes it: `dynamodb` twice, so the last wins (EventBridge's JSON rule)
    '{ "dynamodb" : { "NewImage" : { "AccountManager" : { "S" : [ "Pat Candella" ] } } } , '
    '"dynamodb" : { "OldImage" : { "AccountManager" : { "S" : [ "Terry Whitlock" ] } } } }'
)
AND_PATTERN = (  # the AND the page means, written with one `dynamodb`
    '{ "dynamodb" : { "NewImage" : { "AccountManager" : { "S" : [ "Pat Candella" ] } }, '
    '"OldImage" : { "AccountManager" : { "S" : [ "Terry Whitlock" ] } } } }'
)
TTL_PATTERN = '{ "userIdentity": { "type": [ "Service" ], "principalId": [ "dynamodb.amazonaws.com" ] } }'


def ddb(event_name: str = "INSERT", keys: Any = None, new: Any = None, old: Any = None, ttl: bool = False) -> Any:
    from dynamodb_records import Change, raw_record

    return raw_record(Change(event_name, keys or CUSTOMER, new, old, ttl), 100000000000000000111)


def managed(new: str, old: str) -> Any:
    return ddb("MODIFY", new={**ACCOUNT, "AccountManager": {"S": new}}, old={**ACCOUNT, "AccountManager": {"S": old}})


DYNAMODB_MATCHING: dict[str, tuple[str, Any, bool]] = {
    "keys: the primary key": (KEYS_PATTERN, ddb(new=ACCOUNT), True),
    "keys: another primary key": (KEYS_PATTERN, ddb(keys={"CustomerName": {"S": "Other"}}), False),
    "attributes: one of the new image's values": (MANAGERS_PATTERN, managed("Shirley Rodriguez", "x"), True),
    "attributes: another value": (MANAGERS_PATTERN, managed("Terry Whitlock", "Pat Candella"), False),
    "attributes: a REMOVE has no new image": (MANAGERS_PATTERN, ddb("REMOVE", old=ACCOUNT), False),
    "boolean, as AWS writes it: both images match": (AWS_AND_PATTERN, managed("Pat Candella", "Terry Whitlock"), True),
    "boolean, as AWS writes it: the last `dynamodb` wins": (AWS_AND_PATTERN, managed("Other", "Terry Whitlock"), True),
    "boolean, one `dynamodb`: both images match": (AND_PATTERN, managed("Pat Candella", "Terry Whitlock"), True),
    "boolean, one `dynamodb`: the new image does not": (AND_PATTERN, managed("Other", "Terry Whitlock"), False),
    # "DynamoDB event filtering doesn't support the use of numeric operators ... converted to strings"
    "numbers are strings: numeric never matches": (
        '{"dynamodb": {"NewImage": {"total": {"N": [{"numeric": [">", 10]}]}}}}',
        ddb(new={**CUSTOMER, "total": {"N": "15"}}),
        False,
    ),
    "numbers are strings: their text matches": (
        '{"dynamodb": {"NewImage": {"total": {"N": ["15"]}}}}',
        ddb(new={**CUSTOMER, "total": {"N": "15"}}),
        True,
    ),
    "exists on an intermediate node never matches": (
        '{ "dynamodb" : { "NewImage" : { "Organizations" : [ { "exists": true } ] } } }',
        ddb(new=ORGANIZATIONS),
        False,
    ),
    "exists on the leaf": (
        '{ "dynamodb" : { "NewImage" : {"Organizations": {"L": {"S": [ {"exists": true } ] } } } } }',
        ddb(new=ORGANIZATIONS),
        True,
    ),
    "CDK: eventName and a BOOL attribute": (
        '{"eventName": ["INSERT"], "dynamodb": {"NewImage": {"id": {"BOOL": [true]}}}}',
        ddb(new={**CUSTOMER, "id": {"BOOL": True}}),
        True,
    ),
    "CDK: another eventName": ('{"eventName": ["INSERT"]}', ddb("MODIFY", new=ACCOUNT, old=ACCOUNT), False),
    "TTL guide: a deletion by time to live": (TTL_PATTERN, ddb("REMOVE", old=ACCOUNT, ttl=True), True),
    "TTL guide: a deletion by a client": (TTL_PATTERN, ddb("REMOVE", old=ACCOUNT), False),
    "eventSource is the stream's": ('{"eventSource": ["aws:dynamodb"]}', ddb(new=ACCOUNT), True),
    "the region of a stream whose location is known": ('{"awsRegion": ["eu-west-1"]}', ddb(new=ACCOUNT), True),
    "the stream's ARN": ('{"eventSourceARN": [{"prefix": "arn:aws:dynamodb:eu-west-1:"}]}', ddb(new=ACCOUNT), True),
}


@pytest.mark.parametrize("case", list(DYNAMODB_MATCHING))
def test_dynamodb_patterns_match_as_aws_documents(case: str) -> None:
    from dynamodb_records import location

    from streamfn.connectors.dynamodb.dialect import record_fields

    pattern, stream_record, expected = DYNAMODB_MATCHING[case]
    compiled = compile_criteria({"Filters": [{"Pattern": pattern}]}, record_fields(location()))
    assert compiled is not None
    assert compiled.matches(stream_record) is expected


def test_a_dynamodb_record_that_is_not_json_is_dropped_by_a_pattern_on_its_data() -> None:
    """Lambda's DynamoDB data-format table: non-JSON data and a JSON pattern on it: the record is dropped."""
    from dynamodb_records import location

    from streamfn.connectors.dynamodb.dialect import record_fields
    from streamfn.record import RawRecord

    compiled = compile_criteria({"Filters": [{"Pattern": KEYS_PATTERN}]}, record_fields(location()))
    assert compiled is not None
    assert compiled.matches(RawRecord("orders", "shardId-1", 1, 0, None, b"not json")) is False


NO_FILTERS: dict[str, Any] = {"no criteria": None, "no filters": {"Filters": []}, "an empty model": FilterCriteria()}


@pytest.mark.parametrize("case", list(NO_FILTERS))
def test_no_filters_means_no_filtering(case: str) -> None:
    assert compile_criteria(NO_FILTERS[case], RECORD_FIELDS) is None


def test_compiled_criteria_validate_as_themselves() -> None:
    compiled = criteria({"topic": ["mytopic"]})
    assert compile_criteria(compiled, RECORD_FIELDS) is compiled


def test_a_pattern_of_4096_characters_is_allowed() -> None:
    compiled = compile_criteria({"Filters": [{"Pattern": padded(4096)}]}, RECORD_FIELDS)
    assert compiled is not None
    assert compiled.matches(record(DEVICE))


def test_five_filters_are_allowed() -> None:
    compiled = criteria(*({"partition": [number]} for number in range(5)))
    assert [compiled.matches(record(DEVICE, partition=number)) for number in (4, 5)] == [True, False]


PREFIX = "Invalid filter pattern definition. Filters[0].Pattern"


def padded(length: int) -> str:
    """A valid pattern of exactly `length` characters (JSON whitespace pads it)."""
    start, end = '{"topic": ["mytopic"]', "}"
    return start + " " * (length - len(start) - len(end)) + end


INVALID: dict[str, tuple[Any, str]] = {
    # The pattern as a whole (Lambda invocation-eventfiltering: Pattern is a string of a JSON object, at most 4096).
    "not JSON": (
        '{"value": ',
        f"{PREFIX}: Filter is not valid JSON (unexpected end of data: line 1 column 11 (char 10))",
    ),
    "not an object": ('["value"]', f"{PREFIX}: Filter is not an object"),
    "empty object": ("{}", f"{PREFIX}: Empty objects are not allowed"),
    "too long": (padded(4097), f"{PREFIX}: the pattern is 4097 characters long; at most 4096 allowed"),
    "too long and not JSON": ("[" * 5000, f"{PREFIX}: the pattern is 5000 characters long; at most 4096 allowed"),
    "unknown record field": (
        {"Value": {"a": ["x"]}},
        f"{PREFIX}: a Kafka record has no field 'Value'; its fields are topic, partition, offset, timestamp, "
        "timestampType, key, value, headers",
    ),
    # Structure (Event Ruler's rule compiler, whose messages EventBridge returns).
    "leaf not a list": ({"value": {"a": "x"}}, f"{PREFIX} at 'value.a': \"a\" must be an object or an array"),
    "empty list": ({"value": {"a": []}}, f"{PREFIX} at 'value.a': Empty arrays are not allowed"),
    "empty nested object": ({"value": {}}, f"{PREFIX} at 'value': Empty objects are not allowed"),
    "nested list value": (
        {"value": {"a": [["x"]]}},
        f"{PREFIX} at 'value.a': Match value must be String, number, true, false, or null",
    ),
    "unknown operator": ({"value": {"a": [{"prefx": "x"}]}}, f"{PREFIX} at 'value.a': Unrecognized match type prefx"),
    "two operators in one object": (
        {"value": {"a": [{"prefix": "x", "suffix": "y"}]}},
        f"{PREFIX} at 'value.a': Only one key allowed in match expression",
    ),
    "operator without a name": ({"value": {"a": [{}]}}, f"{PREFIX} at 'value.a': Match expression name not found"),
    # $or
    "$or with one object": (
        {"value": {"$or": [{"a": ["x"]}]}},
        f"{PREFIX} at 'value.$or': $or needs at least 2 objects",
    ),
    "$or not an array": ({"$or": {"topic": ["t"]}}, f"{PREFIX} at '$or': $or must be an array of objects"),
    "$or with a string": (
        {"$or": [{"topic": ["t"]}, "partition"]},
        f"{PREFIX} at '$or': Only JSON objects are allowed in a $or array",
    ),
    "$or with an operator as a field": (
        {"value": {"$or": [{"numeric": [1]}, {"prefix": ["a"]}]}},
        f"{PREFIX} at 'value.numeric': 'numeric' is an operator and cannot be a field name inside $or",
    ),
    # numeric
    "numeric not an array": (
        {"value": {"n": [{"numeric": 5}]}},
        f"{PREFIX} at 'value.n': Value of numeric must be an array.",
    ),
    "numeric empty": (
        {"value": {"n": [{"numeric": []}]}},
        f"{PREFIX} at 'value.n': Invalid member in numeric match: ]",
    ),
    "numeric without an operator": (
        {"value": {"n": [{"numeric": [5]}]}},
        f"{PREFIX} at 'value.n': Invalid member in numeric match: 5",
    ),
    "numeric unknown operator": (
        {"value": {"n": [{"numeric": ["!=", 5]}]}},
        f"{PREFIX} at 'value.n': Unrecognized numeric range operator: !=",
    ),
    "numeric string operand": (
        {"value": {"n": [{"numeric": [">", "5"]}]}},
        f"{PREFIX} at 'value.n': Value of > must be numeric",
    ),
    "numeric equals a bool": (
        {"value": {"n": [{"numeric": ["=", True]}]}},
        f"{PREFIX} at 'value.n': Value of equals must be numeric",
    ),
    "numeric range after <": (
        {"value": {"n": [{"numeric": ["<", 10, ">", 0]}]}},
        f"{PREFIX} at 'value.n': Too many elements in numeric expression",
    ),
    "numeric range with two bottoms": (
        {"value": {"n": [{"numeric": [">", 0, ">", 5]}]}},
        f"{PREFIX} at 'value.n': Bad numeric range operator: >",
    ),
    "numeric inverted range": (
        {"value": {"n": [{"numeric": [">", 10, "<", 5]}]}},
        f"{PREFIX} at 'value.n': Bottom must be less than top",
    ),
    "numeric empty range": (
        {"value": {"n": [{"numeric": [">=", 5, "<", 5]}]}},
        f"{PREFIX} at 'value.n': Bottom must be less than top",
    ),
    "numeric too many terms": (
        {"value": {"n": [{"numeric": [">", 0, "<", 5, "<", 6]}]}},
        f"{PREFIX} at 'value.n': Too many terms in numeric range expression",
    ),
    # exists, string operators
    "exists not a bool": (
        {"value": {"a": [{"exists": "yes"}]}},
        f"{PREFIX} at 'value.a': exists match pattern must be either true or false.",
    ),
    "prefix not a string": (
        {"value": {"a": [{"prefix": 1}]}},
        f"{PREFIX} at 'value.a': prefix match pattern must be a string",
    ),
    "prefix with another option": (
        {"value": {"a": [{"prefix": {"wildcard": "x"}}]}},
        f"{PREFIX} at 'value.a': Unsupported prefix pattern: wildcard",
    ),
    "suffix ignoring case of a number": (
        {"value": {"a": [{"suffix": {"equals-ignore-case": 1}}]}},
        f"{PREFIX} at 'value.a': equals-ignore-case match pattern must be a string",
    ),
    "equals-ignore-case of a list": (
        {"value": {"a": [{"equals-ignore-case": ["x"]}]}},
        f"{PREFIX} at 'value.a': equals-ignore-case match pattern must be a string",
    ),
    "wildcard with consecutive asterisks": (
        {"value": {"a": [{"wildcard": "a**b"}]}},
        f"{PREFIX} at 'value.a': Consecutive wildcard characters at pos 2",
    ),
    "wildcard with a bad escape": (
        {"value": {"a": [{"wildcard": "a\\b"}]}},
        f"{PREFIX} at 'value.a': Invalid escape character at pos 2",
    ),
    "wildcard not a string": (
        {"value": {"a": [{"wildcard": 5}]}},
        f"{PREFIX} at 'value.a': wildcard match pattern must be a string",
    ),
    "cidr without a mask": (
        {"value": {"ip": [{"cidr": "10.0.0.1"}]}},
        f"{PREFIX} at 'value.ip': Malformed CIDR, one '/' required",
    ),
    "cidr with a bad mask": (
        {"value": {"ip": [{"cidr": "10.0.0.0/x"}]}},
        f"{PREFIX} at 'value.ip': Malformed CIDR, mask bits must be an integer",
    ),
    "cidr with a bad address": (
        {"value": {"ip": [{"cidr": "10.0.0/24"}]}},
        f"{PREFIX} at 'value.ip': Malformed CIDR ('10.0.0/24' does not appear to be an IPv4 or IPv6 network)",
    ),
    # anything-but
    "anything-but of mixed types": (
        {"value": {"a": [{"anything-but": ["x", 1]}]}},
        f"{PREFIX} at 'value.a': Inside anything-but list, either all values are numbers or all are strings",
    ),
    "anything-but null": (
        {"value": {"a": [{"anything-but": None}]}},
        f"{PREFIX} at 'value.a': Value of anything-but must be an array or single string/number value.",
    ),
    "anything-but empty list": (
        {"value": {"a": [{"anything-but": []}]}},
        f"{PREFIX} at 'value.a': Empty arrays are not allowed",
    ),
    "anything-but numeric": (
        {"value": {"a": [{"anything-but": {"numeric": [">", 1]}}]}},
        f"{PREFIX} at 'value.a': Unsupported anything-but pattern: numeric",
    ),
    "anything-but empty prefix": (
        {"value": {"a": [{"anything-but": {"prefix": ""}}]}},
        f"{PREFIX} at 'value.a': Null prefix/suffix not allowed",
    ),
    "anything-but suffix of a number": (
        {"value": {"a": [{"anything-but": {"suffix": [1]}}]}},
        f"{PREFIX} at 'value.a': Inside anything-but/suffix, only strings are supported",
    ),
    "anything-but wildcard with consecutive asterisks": (
        {"value": {"a": [{"anything-but": {"wildcard": ["ok", "*/**"]}}]}},
        f"{PREFIX} at 'value.a': Consecutive wildcard characters at pos 3",
    ),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_pattern_is_a_config_error_naming_the_filter_and_reason(case: str) -> None:
    pattern, message = INVALID[case]
    text = pattern if isinstance(pattern, str) else json.dumps(pattern)
    with pytest.raises(ConfigError) as raised:
        compile_criteria({"Filters": [{"Pattern": text}]}, RECORD_FIELDS)
    assert str(raised.value) == message


CRITERIA_ERRORS: dict[str, tuple[Any, str]] = {
    "six filters (Lambda's default quota is 5)": (
        {"Filters": [{"Pattern": json.dumps({"partition": [n]})} for n in range(6)]},
        "Invalid filter pattern definition. 6 filters given; at most 5 are allowed (Lambda's default quota)",
    ),
    "the second filter is invalid": (
        {"Filters": [{"Pattern": '{"topic": ["a"]}'}, {"Pattern": '{"topic": "a"}'}]},
        "Invalid filter pattern definition. Filters[1].Pattern at 'topic': \"topic\" must be an object or an array",
    ),
    "a misspelt key": (
        {"Filter": [{"Pattern": '{"topic": ["a"]}'}]},
        "Invalid filter pattern definition. FilterCriteria: unknown parameter 'Filter' (did you mean 'filters'?); "
        "allowed: filters",
    ),
    "an unknown key in a filter": (
        {"Filters": [{"Pattern": '{"topic": ["a"]}', "Kind": "x"}]},
        "Invalid filter pattern definition. FilterCriteria: unknown parameter 'Filters.0.Kind'; allowed: filters",
    ),
    "a pattern that is a number": (
        {"Filters": [{"Pattern": 5}]},
        "Invalid filter pattern definition. FilterCriteria: Filters.0.Pattern=5 is invalid: "
        "must be a JSON string (or a dict), not int",
    ),
    "a dict pattern that is not JSON": (
        {"Filters": [{"Pattern": {"value": {1: ["x"]}}}]},
        "Invalid filter pattern definition. Filters[0].Pattern: Filter is not valid JSON (Dict key must be str)",
    ),
    "not a mapping": (
        ['{"topic": ["a"]}'],
        'Invalid filter pattern definition. expected {"Filters": [{"Pattern": "<json>"}]}, not list',
    ),
}


@pytest.mark.parametrize("case", list(CRITERIA_ERRORS))
def test_invalid_criteria_is_a_config_error(case: str) -> None:
    given, message = CRITERIA_ERRORS[case]
    with pytest.raises(ConfigError) as raised:
        compile_criteria(given, RECORD_FIELDS)
    assert str(raised.value) == message
