"""What native handlers of a DynamoDB stream get: each record's value as a `Change` of plain Python values, and its
key as the item's key attributes.

DynamoDB's typed attribute values (`{"N": "12.5"}`, `{"S": "x"}`, `{"M": {...}}`...) are converted by boto3's
TypeDeserializer (numbers as Decimal, sets as sets), except that binary values, base64 text in Lambda's event, are
bytes (boto3 would wrap them in its Binary).

A function's `value_model=` (pydantic) validates the new image: `change.new_image` is then the model's instance, and
a new image that does not validate makes the record fail (a DeserializationError with pydantic's message: to
`on_failure`, never to the handler). The old image stays a dict **(choice)**: it is what the item was, possibly
written before the model took its current shape, and a change must not be dead-lettered for its past; INSERT has
none, and KEYS_ONLY and OLD_IMAGE streams have no new image to validate.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from boto3.dynamodb.types import TypeDeserializer
from pydantic import BaseModel

from streamfn.formats.codec import PlainCodec

FORMAT = "dynamodb"
"""The value and key format of a DynamoDB stream source (fixed: the source's records are always these)."""


@dataclass(frozen=True, slots=True)
class Change:
    """One change of one item, as a DynamoDB stream recorded it."""

    event_name: Literal["INSERT", "MODIFY", "REMOVE"]
    keys: dict[str, Any]
    """The item's key attributes."""
    new_image: Any
    """The item after the change (a dict, or the function's `value_model`); None for REMOVE, and in streams of view
    type KEYS_ONLY or OLD_IMAGE."""
    old_image: dict[str, Any] | None
    """The item before the change; None for INSERT, and in streams of view type KEYS_ONLY or NEW_IMAGE."""
    sequence_number: str
    """The stream record's `SequenceNumber` (the record's offset, as an int)."""
    view_type: Literal["KEYS_ONLY", "NEW_IMAGE", "OLD_IMAGE", "NEW_AND_OLD_IMAGES"]
    """The stream's StreamViewType: which images its records carry."""
    expired: bool = False
    """A REMOVE by DynamoDB's time to live (the event's `userIdentity`), not by a client."""


class _Deserializer(TypeDeserializer):  # type: ignore[misc]  # boto3 ships no type hints
    """boto3's TypeDeserializer for Lambda's event JSON, whose binary values are base64 text: plain bytes."""

    def _deserialize_b(self, value: str) -> bytes:
        return base64.b64decode(value)


_DESERIALIZE: Callable[[dict[str, Any]], Any] = _Deserializer().deserialize


def attributes(typed: dict[str, Any]) -> dict[str, Any]:
    """An item (or its keys) in DynamoDB's JSON as plain Python values."""
    return {name: _DESERIALIZE(value) for name, value in typed.items()}


def decode_change(data: bytes | None) -> Change:
    """A record's value (Lambda's event record as the reader stored it) as a Change."""
    stored = orjson.loads(data or b"null")
    stream = stored["dynamodb"]
    new, old = stream.get("NewImage"), stream.get("OldImage")
    return Change(
        stored["eventName"],
        attributes(stream["Keys"]),
        None if new is None else attributes(new),
        None if old is None else attributes(old),
        stream["SequenceNumber"],
        stream["StreamViewType"],
        "userIdentity" in stored,
    )


def decode_keys(data: bytes | None) -> dict[str, Any]:
    """A record's key (the item's `Keys` in DynamoDB's JSON) as plain Python values."""
    return attributes(orjson.loads(data or b"{}"))


class ChangeCodec(PlainCodec):
    """The value format of a DynamoDB stream: Changes. A function's `value_model` validates their new images."""

    def __init__(self) -> None:
        super().__init__(FORMAT, decode_change)

    def validator(self, model: type[BaseModel]) -> Callable[[Any], Any]:
        validate = model.model_validate

        def validated(change: Change) -> Change:
            if change.new_image is None:
                return change
            return dataclasses.replace(change, new_image=validate(change.new_image))

        return validated


def change_codec() -> ChangeCodec:
    """The value codec of a DynamoDB stream source's reader (one per reader, as every codec)."""
    return ChangeCodec()


def keys_codec() -> PlainCodec:
    """The key codec of a DynamoDB stream source's reader: the item's key attributes as a dict."""
    return PlainCodec(FORMAT, decode_keys)
