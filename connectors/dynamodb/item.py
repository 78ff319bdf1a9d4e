"""An output as a DynamoDB item: its attributes in DynamoDB's typed form, its key, its size, and why it cannot be
stored when it cannot.

Values are converted by boto3's TypeSerializer (the converter the source's TypeDeserializer mirrors), after three
conversions it does not make, so that what a handler naturally returns can be stored:
- a float becomes the Decimal of its shortest text (`0.1` -> `Decimal("0.1")`, not the binary expansion
  `0.1000000000000000055511151231257827...`, which DynamoDB would refuse as inexact); NaN and infinities are refused;
- a tuple is a list (L);
- a datetime, date or time is its ISO 8601 text (S).
Everything else TypeSerializer does not know (and a number DynamoDB cannot hold: over 38 significant digits, out of
its range) makes the output a RejectedOutput with the reason, as do what DynamoDB itself would refuse without
saying which item of a BatchWriteItem it was: an empty set, a key attribute missing, of the wrong type or empty,
an attribute name that is not a non-empty string, and an item over 400 KB by AWS's published sizing rules.
"""

from __future__ import annotations

import datetime
import decimal
import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeSerializer

from streamfn.outputs.sink import Delete, Emitted, RejectedOutput, plain

MAX_ITEM_BYTES = 400 * 1024
"""DynamoDB's limit on one item: its attribute names and values, by AWS's sizing rules (`item_size`)."""
KEY_TYPES = {"S": "a string", "N": "a number", "B": "binary"}

_serializer = TypeSerializer()
_AS_THEY_ARE = (str, int, bytes, Decimal, type(None))
"""Values TypeSerializer takes as they are (bool is an int)."""
Typed = dict[str, Any]
"""An attribute value in DynamoDB's typed form ({"S": "text"}, {"N": "1"}, {"M": {...}}...)."""


@dataclass(frozen=True, slots=True)
class KeySchema:
    """A table's key, from DescribeTable: (attribute, type S|N|B), the partition key first."""

    attributes: tuple[tuple[str, str], ...]

    def __str__(self) -> str:
        return ", ".join(f"{name} ({kind})" for name, kind in self.attributes)

    def table_keys(self) -> list[tuple[str, str, str]]:
        """The key as a table is created with it (connectors/shards/aws.py's `ensure_table`): (attribute, HASH or
        RANGE, type)."""
        return [(name, "RANGE" if i else "HASH", kind) for i, (name, kind) in enumerate(self.attributes)]

    @classmethod
    def described(cls, table: Mapping[str, Any]) -> KeySchema:
        """The key of DescribeTable's `Table`."""
        types = {d["AttributeName"]: d["AttributeType"] for d in table["AttributeDefinitions"]}
        ordered = sorted(table["KeySchema"], key=lambda k: k["KeyType"] != "HASH")
        return cls(tuple((k["AttributeName"], types[k["AttributeName"]]) for k in ordered))


class Invalid(ValueError):
    """Why a value cannot be a DynamoDB item (the caller adds which output it is)."""


@dataclass(frozen=True, slots=True)
class Item:
    """One output as a write: a put of `item` or (`item` None) a delete of `key`; `identity` tells keys apart."""

    key: dict[str, Typed]
    item: dict[str, Typed] | None
    identity: tuple[Any, ...]


def item_of(output: Emitted, key: KeySchema, position: tuple[str, Typed] | None) -> Item:
    """The write an output stands for, with `position` (attribute, value) added to a put; RejectedOutput when
    DynamoDB could never store it."""
    try:
        if isinstance(output.value, Delete):
            given = plain(output.value.key)
            if not isinstance(given, Mapping):
                raise Invalid(f"is a Delete of a {type(given).__name__}: its key must be a dict or a pydantic model")
            wanted = {name: given[name] for name, _ in key.attributes if name in given}  # the rest is ignored
            typed_key = key_of(serialized(wanted, "the Delete's key"), key)
            return Item(typed_key, None, identity(typed_key))
        typed, typed_key = put_item(plain(output.value), key, "the output", position)
        return Item(typed_key, typed, identity(typed_key))
    except Invalid as problem:
        raise RejectedOutput(f"output {output.id} {problem}") from None


def put_item(
    value: Any, key: KeySchema, what: str, position: tuple[str, Typed] | None = None
) -> tuple[dict[str, Typed], dict[str, Typed]]:
    """A plain value (`what`: how the message names it) as a whole item and its key, in DynamoDB's typed form, with
    `position` added; Invalid when DynamoDB could never store it (also the seeds of connectors/dynamodb/produce.py)."""
    typed = serialized(value, what)
    typed_key = key_of(typed, key)
    if position is not None:
        typed[position[0]] = position[1]
    size = item_size(typed)
    if size > MAX_ITEM_BYTES:
        raise Invalid(f"is {size} bytes as a DynamoDB item, over DynamoDB's limit of {MAX_ITEM_BYTES} bytes")
    return typed, typed_key


def serialized(value: Any, what: str) -> dict[str, Typed]:
    """A dict's attributes in DynamoDB's typed form (Invalid: why not)."""
    if not isinstance(value, Mapping):
        raise Invalid(f"is a {type(value).__name__}: {what} must be a dict or a pydantic model")
    attributes: dict[str, Typed] = {}
    for name, attribute in value.items():
        if not isinstance(name, str) or not name:
            raise Invalid(f"has an attribute named {name!r}: names must be non-empty strings")
        try:
            attributes[name] = _serializer.serialize(_storable(attribute, name))
        except decimal.DecimalException:  # TypeSerializer's context traps Inexact, Rounded, Overflow, Underflow
            raise Invalid(
                f"has attribute {name!r} holding a number DynamoDB cannot store (at most 38 significant digits, "
                "magnitude 1E-130 to under 1E+126)"
            ) from None
        except (TypeError, ValueError) as error:
            raise Invalid(f"has attribute {name!r} that DynamoDB cannot store: {error}") from None
    return attributes


def _storable(value: Any, name: str) -> Any:
    """`value` with what TypeSerializer refuses but has an obvious DynamoDB form converted (module docstring)."""
    if isinstance(value, _AS_THEY_ARE):  # the common case first
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise Invalid(f"has attribute {name!r} = {value}: DynamoDB numbers are finite")
        return Decimal(repr(value))
    if isinstance(value, Mapping):
        return {k: _storable(v, name) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_storable(v, name) for v in value]
    if isinstance(value, set | frozenset):
        if not value:
            raise Invalid(f"has attribute {name!r}, an empty set: DynamoDB stores no empty set")
        return {_storable(v, name) for v in value}
    if isinstance(value, datetime.date | datetime.time):  # datetime is a date
        return value.isoformat()
    return value


def key_of(typed: Mapping[str, Typed], key: KeySchema) -> dict[str, Typed]:
    """The key attributes of an item or of a Delete's key, checked against the table's key schema."""
    found: dict[str, Typed] = {}
    for name, kind in key.attributes:
        value = typed.get(name)
        if value is None:
            raise Invalid(f"has no key attribute {name!r} (the table's key: {key})")
        if kind not in value:
            raise Invalid(f"has key attribute {name!r} that is not {KEY_TYPES[kind]} (the table's key: {key})")
        if kind != "N" and not value[kind]:
            raise Invalid(f"has key attribute {name!r} empty: DynamoDB keys are never empty")
        found[name] = value
    return found


def identity(typed_key: Mapping[str, Typed]) -> tuple[Any, ...]:
    """A hashable identity of a typed key (strings, number texts, bytes)."""
    return tuple((name, *value.items()) for name, value in sorted(typed_key.items()))


def item_size(typed: Mapping[str, Typed]) -> int:
    """An item's size as DynamoDB counts it against 400 KB (AWS's "Item sizes and formats"): per attribute its
    name's UTF-8 bytes and its value's size."""
    return sum(len(name.encode()) + _size(value) for name, value in typed.items())


def _size(typed: Typed) -> int:
    kind, value = next(iter(typed.items()))  # the one entry
    if kind == "S":
        return len(value.encode())
    if kind == "B":
        return len(value)
    if kind == "N":
        return _number_size(value)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "SS":
        return sum(len(v.encode()) for v in value)
    if kind == "BS":
        return sum(len(v) for v in value)
    if kind == "NS":
        return sum(_number_size(v) for v in value)
    if kind == "L":
        return 3 + sum(1 + _size(v) for v in value)
    return 3 + sum(len(name.encode()) + 1 + _size(v) for name, v in value.items())  # M


def _number_size(text: str) -> int:
    """1 byte per two significant digits, plus 1 (`text` as TypeSerializer writes it: "-12.5", "1E+2")."""
    significant = text.lstrip("-").partition("E")[0].replace(".", "").strip("0")
    return (max(len(significant), 1) + 1) // 2 + 1
