"""One output as one SQS message: its text body, its message attributes, its FIFO ids and its size.

SQS's limits, as its API reference for SendMessageBatch (botocore's sqs model, 2025) and its message quotas page
document them: a message and a whole SendMessageBatch request each carry at most 1 MiB (1,048,576 bytes; raised
from 256 KiB in 2025), counting bodies and message attributes (name, data type and value); at most 10 entries per
batch and 10 attributes per message; bodies and String values are text of the XML character set.

Why these choices:
- A body is `encode(value)` as UTF-8 text. A bytes value that is not such text (not UTF-8, or a character SQS
  refuses) is sent base64-encoded with the attribute `streamfn.encoding` = `base64`, so binary outputs (Avro,
  protobuf) still arrive and a consumer can tell; a str or JSON value SQS cannot carry (an unsendable character,
  empty, over 1 MiB) is a RejectedOutput, since no retry would change it.
- Attributes come from the output's headers, most useful first, and the rest are dropped (SQS allows 10):
  `streamfn.encoding`, the `streamfn.source.*` provenance, `traceparent`, `streamfn.key` (SQS has no message key,
  so the output's key travels as an attribute), the handler's own headers, then `tracestate`. A header whose value
  is not SQS text goes as a Binary attribute; a header SQS cannot name (characters other than letters, digits,
  `-`, `_`, `.`; an `AWS.`/`Amazon.` prefix) or with an empty value is dropped too.
- FIFO: the group is `message_group_id`, else the output's key (its SHA-256 when the key is not a valid group
  id), else the function's name, so outputs of one key keep their order; the deduplication id is the SHA-256 of
  `Emitted.id`, which stays the same when a batch is replayed, so SQS drops the replay within its 5-minute window.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from streamfn.observability.tracing import TRACE_HEADERS
from streamfn.outputs.sink import SOURCE_HEADER_PREFIX, Emitted, RejectedOutput, encode

MAX_MESSAGE_BYTES = 1_048_576
"""1 MiB: the most one message may carry, body and attributes (SQS's documented quota since 2025)."""
MAX_BATCH_BYTES = 1_048_576
"""1 MiB: the most one SendMessageBatch request may carry, all its messages together."""
MAX_BATCH_ENTRIES = 10
MAX_ATTRIBUTES = 10

ENCODING_ATTRIBUTE = "streamfn.encoding"
KEY_ATTRIBUTE = "streamfn.key"

_INVALID_TEXT = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
"""A character outside the XML character set that SQS accepts in bodies and String attribute values."""
_ATTRIBUTE_NAME = re.compile(r"^(?!\.)(?!.*\.\.)(?!.*\.$)[A-Za-z0-9_.-]{1,256}$")
_RESERVED_NAME = re.compile(r"^(aws|amazon)\.", re.IGNORECASE)
GROUP_ID = re.compile(r"^[!-~]{1,128}$")
"""A valid MessageGroupId: 1-128 letters, digits and punctuation."""


@dataclass(frozen=True, slots=True)
class Message:
    """A SendMessageBatch entry without its Id (the Id is its index within the request)."""

    entry: dict[str, Any]
    size: int
    """Bytes it counts for against SQS's message and batch limits."""
    dropped: tuple[str, ...] = field(default=())
    """Header names that could not become attributes."""


def is_text(value: str) -> bool:
    """Whether SQS accepts `value` as a body or String attribute value."""
    return _INVALID_TEXT.search(value) is None


def attribute_name_ok(name: str) -> bool:
    return bool(_ATTRIBUTE_NAME.match(name)) and not _RESERVED_NAME.match(name)


def body(output: Emitted) -> tuple[str, bool]:
    """The message body of `output` and whether it is base64 (binary), or RejectedOutput."""
    value = output.value
    if isinstance(value, bytes | bytearray):
        raw = bytes(value)
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            text = ""
        if text and is_text(text):
            return text, False
        if not raw:
            raise RejectedOutput(f"output {output.id}: SQS refuses an empty message body")
        return base64.b64encode(raw).decode("ascii"), True
    try:
        text = encode(value).decode()
    except (TypeError, UnicodeError) as error:  # orjson's JSONEncodeError is a TypeError
        raise RejectedOutput(f"output {output.id}: cannot be a message body ({error})") from None
    if not text:
        raise RejectedOutput(f"output {output.id}: SQS refuses an empty message body")
    bad = _INVALID_TEXT.search(text)
    if bad:
        raise RejectedOutput(
            f"output {output.id}: its body holds character U+{ord(bad.group()):04X}, which SQS refuses in messages"
        )
    return text, False


def _attribute(value: bytes) -> tuple[dict[str, Any], int]:
    """A String attribute when `value` is SQS text, else Binary; with its size (data type and value)."""
    try:
        text = value.decode()
    except UnicodeDecodeError:
        text = None
    if text is not None and is_text(text):
        return {"DataType": "String", "StringValue": text}, len("String") + len(value)
    return {"DataType": "Binary", "BinaryValue": value}, len("Binary") + len(value)


def _ranked(output: Emitted, binary: bool) -> list[tuple[str, bytes]]:
    """Candidate attributes, most useful first (see the module docstring)."""
    own = [(n, v) for n, v in output.headers if not n.startswith(SOURCE_HEADER_PREFIX) and n not in TRACE_HEADERS]
    return [
        *([(ENCODING_ATTRIBUTE, b"base64")] if binary else []),
        *[(n, v) for n, v in output.headers if n.startswith(SOURCE_HEADER_PREFIX)],
        *[(n, v) for n, v in output.headers if n == "traceparent"],
        *([(KEY_ATTRIBUTE, output.key)] if output.key is not None else []),
        *own,
        *[(n, v) for n, v in output.headers if n == "tracestate"],
    ]


def attributes(output: Emitted, binary: bool) -> tuple[dict[str, dict[str, Any]], int, list[str]]:
    """The message attributes of `output`, their size, and the header names left out."""
    chosen: dict[str, dict[str, Any]] = {}
    size = 0
    dropped: list[str] = []
    for name, value in _ranked(output, binary):
        if name in chosen or len(chosen) == MAX_ATTRIBUTES or not value or not attribute_name_ok(name):
            dropped.append(name)
            continue
        attribute, attribute_size = _attribute(value)
        chosen[name] = attribute
        size += len(name.encode()) + attribute_size
    return chosen, size, dropped


def group_id(key: bytes | None, default: str) -> str:
    """The FIFO group of an output without a configured group: its key, or `default` when it has none."""
    if key is None:
        return default
    text = key.decode("ascii", errors="replace")
    return text if GROUP_ID.match(text) else hashlib.sha256(key).hexdigest()


def deduplication_id(output: Emitted) -> str:
    return hashlib.sha256(output.id.encode()).hexdigest()


def message(output: Emitted, *, fifo: bool, group: str | None, function: str) -> Message:
    """The SendMessageBatch entry for `output`, or RejectedOutput when SQS could never accept it."""
    text, binary = body(output)
    chosen, attributes_size, dropped = attributes(output, binary)
    entry: dict[str, Any] = {"MessageBody": text}
    if chosen:
        entry["MessageAttributes"] = chosen
    if fifo:
        entry["MessageGroupId"] = group or group_id(output.key, function)
        entry["MessageDeduplicationId"] = deduplication_id(output)
    elif group:
        entry["MessageGroupId"] = group  # a standard queue uses it for fair queueing
    size = len(text.encode()) + attributes_size
    if size > MAX_MESSAGE_BYTES:
        raise RejectedOutput(
            f"output {output.id}: {size} bytes as an SQS message (body and attributes), "
            f"over SQS's limit of {MAX_MESSAGE_BYTES} bytes"
        )
    return Message(entry, size, tuple(dropped))
