"""A dead letter as a KafkaTopic destination writes it, always writable, and what redrive reads back from it.

The value is Lambda's on-failure record for Kafka-topic destinations (requestContext, responseContext, version,
timestamp, the source's batch-info block: KafkaBatchInfo from the Kafka dialect, all from streamfn.failures.record,
which every destination shares; payload with the record in the Lambda event format) plus errorType, errorMessage and a
truncated stackTrace. The key is the original key. The headers are the original ones, exactly, then the `streamfn.*`
provenance block (PROVENANCE, always last), so letters can be filtered without parsing the value and redrive gives the
record its headers back as they were.

streamfn adds a `streamfn` object to the value only when needed:
- `originalValue`: the base64 of the record's exact value when the payload's is not (a schema registry's record,
  delivered decoded or without its header), so that redrive puts back the original bytes.
- `payloadDropped`: the letter would have been larger than the destination takes (`max_message_bytes`), so the
  payload was left out (Lambda drops it too past its destinations' limits); the note says why and where the
  record stays: its source topic, partition and offset (a stream's sequence number as text: it passes 64 bits), from
  which redrive reads it back.

Text that UTF-8 cannot carry (lone surrogates, e.g. from `surrogateescape`) is kept with backslash escapes: a
letter that could never be encoded would hold its partition for ever.
"""

from __future__ import annotations

import traceback
from base64 import b64decode, b64encode
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from streamfn.failures.model import FailedRecord, FailureOrigin, error_type
from streamfn.failures.record import failure_payload, failure_record

PROVENANCE = (
    "streamfn.source.topic",
    "streamfn.source.partition",
    "streamfn.source.offset",
    "streamfn.error.condition",
    "streamfn.error.type",
)
"""The headers a letter ends with, in this order."""
STACK_LINES = 20
ERROR_CHARS = 1000
"""What is left of an error message in a letter too large even without its payload."""

Headers = list[tuple[str, bytes | None]]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    key: bytes | None
    value: bytes
    headers: Headers


def dead_letter(origin: FailureOrigin, failure: FailedRecord, max_bytes: int) -> DeadLetter:
    """The letter of one failure, at most `max_bytes` as Kafka counts a record. What makes it larger goes, in this
    order, each step saying so in `streamfn.payloadDropped.dropped`: the payload (the record stays in its source
    topic), then the stack trace and most of the error message, then the record's own key and headers."""
    record = failure.record
    message = _message(origin, failure)
    provenance = _provenance(failure)
    letter = DeadLetter(record.key, orjson.dumps(message), [*record.headers, *provenance])
    if _fits(letter, max_bytes):
        return letter
    dropped = ["payload"]
    note = {
        "reason": f"MaximumPayloadSizeExceeded: the dead letter would be {_size(letter)} bytes, over the "
        f"destination's max_message_bytes={max_bytes}; the record stays in its source topic",
        "record": {"topic": record.topic, "partition": record.partition, "offset": _position(record.offset)},
        "dropped": dropped,
    }
    del message["payload"]
    message["streamfn"] = {"payloadDropped": note}
    letter = DeadLetter(record.key, orjson.dumps(message), letter.headers)
    if _fits(letter, max_bytes):
        return letter
    if failure.error is not None:
        message["errorMessage"] = message["errorMessage"][:ERROR_CHARS]
        del message["stackTrace"]
        dropped += ["stackTrace", f"errorMessage after {ERROR_CHARS} characters"]
        letter = DeadLetter(record.key, orjson.dumps(message), letter.headers)
        if _fits(letter, max_bytes):
            return letter
    dropped += ["key", "headers"]
    return DeadLetter(None, orjson.dumps(message), list(provenance))


def _message(origin: FailureOrigin, failure: FailedRecord) -> dict[str, Any]:
    record = failure.record
    window = failure.window  # a tumbling window's final invocation: its event stands for the record
    payload = failure_payload(origin, failure)
    message = failure_record(origin, failure, payload)  # Lambda's metadata, shared with every destination
    if failure.error is not None:
        message["errorType"] = _text(error_type(failure.error))
        message["errorMessage"] = _error_message(failure.error)
        message["stackTrace"] = [_text(line) for line in traceback.format_exception(failure.error)[-STACK_LINES:]]
    message["payload"] = payload
    if window is not None:  # its records were handled and committed with the state: nothing to restore
        return message
    if "records" not in payload:  # another source's event (Kinesis's `Records`): it carries the original bytes
        return message
    original = None if record.value is None else b64encode(record.value).decode("ascii")
    (item,) = payload["records"][str(failure.partition)]
    if item.get("value") != original:
        message["streamfn"] = {"originalValue": original}
    return message


def _position(offset: int) -> int | str:
    """An offset as JSON: a number, or as text past 64 bits (a stream's sequence number, as AWS writes it), which
    JSON numbers do not carry exactly (and orjson refuses: the letter could never be written)."""
    return offset if offset < 2**63 else str(offset)


def _provenance(failure: FailedRecord) -> Headers:
    record = failure.record
    kind = error_type(failure.error) if failure.error is not None else str(failure.condition)
    values = (record.topic, str(record.partition), str(record.offset), str(failure.condition), _text(kind))
    return [(name, value.encode()) for name, value in zip(PROVENANCE, values, strict=True)]


def _error_message(error: BaseException) -> str:
    try:
        return _text(str(error))
    except Exception:  # an exception whose __str__ raises (traceback says the same)
        return "<exception str() failed>"


def _text(text: str) -> str:
    """`text` as UTF-8 can carry it: lone surrogates become backslash escapes (`\\udcff`), the rest is unchanged."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _size(letter: DeadLetter) -> int:
    """The record's size as the producer counts it against its max_request_size (an upper bound of the batch)."""
    return int(DefaultRecordBatchBuilder.estimate_size_in_bytes(letter.key, letter.value, letter.headers))


def _fits(letter: DeadLetter, max_bytes: int) -> bool:
    return _size(letter) <= max_bytes


@dataclass(frozen=True, slots=True)
class Letter:
    """What redrive reads in a dead letter: where its record came from and, unless dropped, the record itself."""

    topic: str
    partition: int | str
    """Kafka: the partition number; a stream's: the shard id."""
    offset: int
    condition: str
    original: tuple[bytes | None, bytes | None, Headers] | None
    """The record's key, value and headers, exactly; None if the letter dropped its payload for size (the record
    is in its source topic at `offset`) or stands for a window."""
    window: bool = False
    """A tumbling window's failed final invocation: its records were handled, there is no record to put back."""


STREAM_LOCATION = ("eventSource", "awsRegion", "eventSourceARN")
"""What a DynamoDB Streams dialect adds to the stored record from where the stream is."""


def _stream_record(key: bytes | None, item: dict[str, Any]) -> tuple[bytes | None, bytes | None, Headers]:
    """A stream's record as its source stored it, from its Lambda event record. Kinesis: the partition key and the
    exact data. DynamoDB Streams: the letter's key (the item's Keys) and the event record without what the dialect
    adds (connectors/dynamodb/api.py's `stream_record`: orjson, same order, so the same bytes)."""
    if "kinesis" in item:
        stream = item["kinesis"]
        return stream["partitionKey"].encode(), b64decode(stream["data"]), []
    return key, orjson.dumps({name: value for name, value in item.items() if name not in STREAM_LOCATION}), []


class NotADeadLetter(ValueError):
    """A record of the dead-letter topic that streamfn did not write (no provenance block at the end)."""


def read_letter(key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes | None]]) -> Letter:
    """Read a letter back (also one written before the original headers were kept whole: its provenance block is
    the same, the originals' own streamfn.* headers were left out)."""
    block = len(PROVENANCE)
    if [name for name, _ in headers[-block:]] != list(PROVENANCE):
        raise NotADeadLetter("its headers do not end with streamfn's provenance")
    topic, partition, offset, condition, _ = (v.decode() if v is not None else "" for _, v in headers[-block:])
    body = orjson.loads(value) if value is not None else {}
    extra = body.get("streamfn", {})
    original = None
    payload = body.get("payload", {})
    stored = int(partition) if partition.isdigit() else partition  # a stream's: a shard id
    if "windowInfo" in body.get("KafkaBatchInfo", {}) or "isFinalInvokeForWindow" in payload:  # streams: no windowInfo
        return Letter(topic, stored, int(offset), condition, None, window=True)
    if "Records" in payload:  # a stream's record (Kinesis's, DynamoDB's event)
        (item,) = payload["Records"]
        return Letter(topic, partition, int(offset), condition, _stream_record(key, item))
    if "payloadDropped" not in extra:
        (item,) = payload["records"][f"{topic}-{partition}"]
        data = extra["originalValue"] if "originalValue" in extra else item.get("value")
        original = (key, None if data is None else b64decode(data), list(headers[:-block]))
    return Letter(topic, stored, int(offset), condition, original)
