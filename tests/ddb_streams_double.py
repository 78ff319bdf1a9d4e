"""A DynamoDB Streams test double whose shards roll over on command: what moto cannot do (moto gives a table's
stream one shard that never closes).

It is a small HTTP server speaking DynamoDB Streams' JSON protocol (`X-Amz-Target: DynamoDBStreams_20120810.*`:
DescribeStream, GetShardIterator, GetRecords, ListStreams), so the source under test talks to it through its real
aiobotocore client: point AWS_ENDPOINT_URL_DYNAMODB_STREAMS at `endpoint` (the table, DescribeTable and the lease
table stay on moto through AWS_ENDPOINT_URL). The test registers a stream under the ARN moto gave the table
(`create`), puts change records (`put`), and rolls shards over (`roll`: each open shard is closed, its
SequenceNumberRange gets an EndingSequenceNumber, and one child naming it as ParentShardId takes its place) or
splits one (`split`: two children), as DynamoDB does on its own every few hours or when a partition splits.

What it models, as AWS documents it: shard ids of AWS's shape and length; sequence numbers of 21+ digits that
keep increasing across the stream; DescribeStream paged by Limit / ExclusiveStartShardId / LastEvaluatedShardId;
iterators TRIM_HORIZON, LATEST, AT_SEQUENCE_NUMBER, AFTER_SEQUENCE_NUMBER; GetRecords' Limit (at most 1,000) and,
on a closed shard read to its end, no NextShardIterator; ResourceNotFoundException for an unknown stream or shard;
`trim`: the oldest records of a shard go, as the 24-hour retention trims them (TrimmedDataAccessException for an
iterator asked before the trim point, or one that points at trimmed records);
records as the API returns them (eventVersion "1.1", eventSource, awsRegion, ApproximateCreationDateTime in epoch
seconds, SizeBytes); `throttle(n)`: the next n GetRecords answer LimitExceededException; `empty(n)`: the next n
GetRecords answer an empty page whose NextShardIterator points where they were asked to read (AWS may answer so
while records follow).
What it does not: iterator expiry (15 minutes), trimming by time (only on command), empty pages on an
open shard that still has records, stream labels or view types changing, authentication (any signature passes),
and it writes no change of its own: `put` says what happened to which item (no table behind it).
Keys are routed to open shards by a hash of their Keys over "slots": a roll keeps each slot's lineage (a key's
changes go down one parent/child chain, as in DynamoDB); after a `split` name the shard explicitly.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

TARGET = "DynamoDBStreams_20120810."
FIRST_SEQUENCE = 10**20
"""21 digits: botocore refuses shorter sequence numbers (AWS's are 21 to 40 digits)."""


class ApiError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class _Shard:
    id: str
    parent: str | None
    start: int
    end: int | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    """What is left of the shard's records (the trimmed ones are gone)."""
    trimmed: int = 0
    """How many records were trimmed from its front: positions in iterators count them."""
    trim_point: int = 0
    """The sequence number of the last record trimmed."""

    def described(self) -> dict[str, Any]:
        ranges: dict[str, str] = {"StartingSequenceNumber": str(self.start)}
        if self.end is not None:
            ranges["EndingSequenceNumber"] = str(self.end)
        return {"ShardId": self.id, "SequenceNumberRange": ranges} | (
            {"ParentShardId": self.parent} if self.parent else {}
        )


@dataclass
class _Stream:
    arn: str
    table: str
    view_type: str
    region: str
    shards: list[_Shard] = field(default_factory=list)
    slots: list[str] = field(default_factory=list)
    """The open shard of each key slot."""
    sequence: int = FIRST_SEQUENCE

    def next_sequence(self) -> int:
        self.sequence += 1
        return self.sequence

    def shard(self, shard_id: str) -> _Shard:
        for shard in self.shards:
            if shard.id == shard_id:
                return shard
        raise ApiError("ResourceNotFoundException", f"Requested resource not found: Shard: {shard_id} in Stream")


class StreamsDouble:
    """The double's state and its HTTP server (a thread); `endpoint` is its URL."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._streams: dict[str, _Stream] = {}
        self._shard_numbers = itertools.count(1)
        self._throttles = 0
        self._empties = 0
        self.calls: list[str] = []
        """Every operation answered, in order (the tests count GetRecords calls with it)."""
        double = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                operation = self.headers.get("X-Amz-Target", "").removeprefix(TARGET)
                try:
                    status, answer = 200, double.answer(operation, orjson.loads(body or b"{}"))
                except ApiError as error:
                    status = 400
                    answer = {"__type": f"com.amazonaws.dynamodb.v20120810#{error.code}", "message": str(error)}
                payload = orjson.dumps(answer)
                self.send_response(status)
                self.send_header("Content-Type", "application/x-amz-json-1.0")
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("x-amzn-RequestId", uuid.uuid4().hex)
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="ddb-streams-double", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # --- what tests do -----------------------------------------------------------------------------------------------

    def create(self, arn: str, table: str, *, view_type: str = "NEW_AND_OLD_IMAGES", shards: int = 1) -> list[str]:
        """A stream at `arn` (the one moto named for `table`) with `shards` open shards: their ids."""
        region = arn.split(":")[3]
        with self._lock:
            stream = self._streams[arn] = _Stream(arn, table, view_type, region)
            for _ in range(shards):
                stream.slots.append(self._open(stream, None).id)
            return list(stream.slots)

    def put(
        self,
        arn: str,
        keys: dict[str, Any],
        event_name: str = "INSERT",
        *,
        new_image: dict[str, Any] | None = None,
        old_image: dict[str, Any] | None = None,
        shard: str | None = None,
    ) -> tuple[str, int]:
        """A change of the item `keys` (DynamoDB JSON) on its slot's open shard (or `shard`): (shard id, sequence
        number). The images are kept as the view type keeps them."""
        with self._lock:
            stream = self._streams[arn]
            target = stream.shard(shard) if shard is not None else stream.shard(stream.slots[_slot(keys, stream)])
            assert target.end is None, f"shard {target.id} is closed"
            sequence = stream.next_sequence()
            change: dict[str, Any] = {"ApproximateCreationDateTime": int(time.time()), "Keys": keys}
            if new_image is not None and stream.view_type in ("NEW_IMAGE", "NEW_AND_OLD_IMAGES"):
                change["NewImage"] = new_image
            if old_image is not None and stream.view_type in ("OLD_IMAGE", "NEW_AND_OLD_IMAGES"):
                change["OldImage"] = old_image
            change |= {
                "SequenceNumber": str(sequence),
                "SizeBytes": len(orjson.dumps(change)),
                "StreamViewType": stream.view_type,
            }
            target.records.append(
                {
                    "eventID": uuid.uuid4().hex,
                    "eventName": event_name,
                    "eventVersion": "1.1",
                    "eventSource": "aws:dynamodb",
                    "awsRegion": stream.region,
                    "dynamodb": change,
                }
            )
            return target.id, sequence

    def roll(self, arn: str) -> dict[str, str]:
        """Close every open shard and open one child in its place: {parent: child}."""
        with self._lock:
            stream = self._streams[arn]
            rolled = {}
            for index, parent in enumerate(stream.slots):
                self._close(stream, stream.shard(parent))
                stream.slots[index] = rolled[parent] = self._open(stream, parent).id
            return rolled

    def split(self, arn: str, shard: str) -> tuple[str, str]:
        """Close `shard`; two children name it as their parent (the first takes its slot)."""
        with self._lock:
            stream = self._streams[arn]
            self._close(stream, stream.shard(shard))
            left, right = self._open(stream, shard).id, self._open(stream, shard).id
            stream.slots[stream.slots.index(shard)] = left
            return left, right

    def trim(self, arn: str, shard: str, count: int) -> None:
        """Trim the shard's `count` oldest records, as the 24-hour retention does."""
        with self._lock:
            target = self._streams[arn].shard(shard)
            gone, target.records = target.records[:count], target.records[count:]
            target.trimmed += len(gone)
            target.trim_point = int(gone[-1]["dynamodb"]["SequenceNumber"])

    def throttle(self, times: int) -> None:
        """The next `times` GetRecords calls answer LimitExceededException."""
        with self._lock:
            self._throttles = times

    def empty(self, times: int) -> None:
        """The next `times` GetRecords calls answer an empty page, the next iterator where they were asked to read."""
        with self._lock:
            self._empties = times

    def _open(self, stream: _Stream, parent: str | None) -> _Shard:
        number = next(self._shard_numbers)
        shard = _Shard(f"shardId-{int(time.time() * 1000):020d}-{number:08x}", parent, stream.next_sequence())
        stream.shards.append(shard)
        return shard

    def _close(self, stream: _Stream, shard: _Shard) -> None:
        assert shard.end is None, f"shard {shard.id} is closed already"
        shard.end = stream.next_sequence()

    # --- the API -----------------------------------------------------------------------------------------------------

    def answer(self, operation: str, request: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.calls.append(operation)
            if operation == "ListStreams":
                return {
                    "Streams": [
                        {"StreamArn": s.arn, "TableName": s.table, "StreamLabel": s.arn.rsplit("/", 1)[1]}
                        for s in self._streams.values()
                        if request.get("TableName") in (None, s.table)
                    ]
                }
            if operation == "GetRecords":
                return self._get_records(request)
            stream = self._stream(request.get("StreamArn", ""))
            if operation == "DescribeStream":
                return self._describe(stream, request)
            if operation == "GetShardIterator":
                return self._iterator(stream, request)
        raise ApiError("UnknownOperationException", f"not modelled: {operation}")

    def _stream(self, arn: str) -> _Stream:
        if arn not in self._streams:
            raise ApiError("ResourceNotFoundException", f"Requested resource not found: Stream: {arn} not found")
        return self._streams[arn]

    def _describe(self, stream: _Stream, request: dict[str, Any]) -> dict[str, Any]:
        shards = stream.shards
        after = request.get("ExclusiveStartShardId")
        if after is not None:
            shards = shards[[s.id for s in shards].index(after) + 1 :] if any(s.id == after for s in shards) else []
        limit = int(request.get("Limit", 100))
        page = shards[:limit]
        description: dict[str, Any] = {
            "StreamArn": stream.arn,
            "StreamLabel": stream.arn.rsplit("/", 1)[1],
            "StreamStatus": "ENABLED",
            "StreamViewType": stream.view_type,
            "TableName": stream.table,
            "Shards": [s.described() for s in page],
        }
        if len(shards) > limit:
            description["LastEvaluatedShardId"] = page[-1].id
        return {"StreamDescription": description}

    def _iterator(self, stream: _Stream, request: dict[str, Any]) -> dict[str, Any]:
        shard = stream.shard(request["ShardId"])
        kind = request["ShardIteratorType"]
        sequences = [int(r["dynamodb"]["SequenceNumber"]) for r in shard.records]
        if kind == "TRIM_HORIZON":
            index = 0
        elif kind == "LATEST":
            index = len(sequences)
        elif kind in ("AT_SEQUENCE_NUMBER", "AFTER_SEQUENCE_NUMBER"):
            wanted = int(request["SequenceNumber"])
            at_or_after_trimmed = wanted < shard.trim_point or (wanted == shard.trim_point and kind.startswith("AT_"))
            if shard.trimmed and at_or_after_trimmed:
                raise ApiError("TrimmedDataAccessException", f"{wanted} is before the trim point of {shard.id}")
            index = next(
                (i for i, s in enumerate(sequences) if s > wanted or (s == wanted and kind == "AT_SEQUENCE_NUMBER")),
                len(sequences),
            )
        else:
            raise ApiError("ValidationException", f"unknown ShardIteratorType {kind}")
        return {"ShardIterator": _token(stream.arn, shard.id, shard.trimmed + index)}

    def _get_records(self, request: dict[str, Any]) -> dict[str, Any]:
        if self._throttles:
            self._throttles -= 1
            raise ApiError("LimitExceededException", "Rate exceeded for stream")
        arn, shard_id, position = orjson.loads(base64.b64decode(request["ShardIterator"]))
        shard = self._stream(arn).shard(shard_id)
        index = position - shard.trimmed
        if index < 0:
            raise ApiError("TrimmedDataAccessException", f"the iterator points at trimmed records of {shard_id}")
        limit = min(int(request.get("Limit", 1000)), 1000)
        if self._empties:
            self._empties -= 1
            limit = 0
        records = shard.records[index : index + limit]
        answer: dict[str, Any] = {"Records": records}
        following = index + len(records)
        if shard.end is None or following < len(shard.records):
            answer["NextShardIterator"] = _token(arn, shard_id, shard.trimmed + following)
        return answer


def _token(arn: str, shard: str, index: int) -> str:
    return base64.b64encode(orjson.dumps([arn, shard, index])).decode()


def _slot(keys: dict[str, Any], stream: _Stream) -> int:
    digest = hashlib.md5(orjson.dumps(keys, option=orjson.OPT_SORT_KEYS)).digest()
    return int.from_bytes(digest[:8], "big") % len(stream.slots)
