"""Lambda's event filtering: `filter_criteria={"Filters": [{"Pattern": "<json>"}]}`.

Up to 5 filters (Lambda's default quota), ORed: a record is handled when any pattern matches it, else it is
filtered out. Patterns use EventBridge's syntax (streamfn.filters.patterns) on the record as the source's Lambda
event shows it: its fields are the source's (`RecordFields`, given by the source's dialect; Kafka: topic,
partition, offset, timestamp, timestampType, key, value, headers), some of them payloads readable as data.

Payloads follow Lambda's filtering tables: bytes are decoded as UTF-8; a JSON object is matched by a nested
pattern (`{"value": {"device_ID": [...]}}`), any other UTF-8 text as a plain string by a list
(`{"value": [{"anything-but": ["error"]}]}`). A payload of the other format, not UTF-8, or null cannot satisfy that
part of a pattern: "Lambda processes metadata filters only". `headers` (see `headers`) is a dict of header name to
its UTF-8 value (a list when the name repeats), not Lambda's lists of byte values, which no pattern could match
usefully.

Each record is seen through a view that computes a field on first access, so a pattern that fails on `topic`
never parses the value, and one on `value` alone never builds headers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson
from pydantic import AliasChoices, BaseModel, Field, field_validator

from streamfn.errors import ConfigError, StrictModel
from streamfn.filters.patterns import MISSING, Check, PatternError, any_of, compile_pattern, parse_pattern
from streamfn.record import SourceRecord

INVALID: Final = "Invalid filter pattern definition."
"""Lambda's message for any invalid FilterCriteria; streamfn adds which filter and what is wrong."""
MAX_FILTERS: Final = 5
"""Lambda's default quota of filters per event source mapping (AWS raises it to 10 on request)."""
MAX_PATTERN_CHARS: Final = 4096
"""Lambda's limit on one Pattern string (CreateEventSourceMapping's API model)."""
AS_TEXT: Final = "#text"
"""Suffix of a payload's plain-string form in the view: `value` is the JSON object, `value#text` the string."""


@dataclass(frozen=True, slots=True)
class RecordFields:
    """What filter patterns see of one source's records (its dialect's `filter_fields`): Lambda's filtering view."""

    kind: str
    """How errors name such a record ("a Kafka record")."""
    fields: Mapping[str, Callable[[SourceRecord], Any]]
    """Each top-level field a pattern may name, in the order errors list them, and how it is read from a record."""
    payloads: frozenset[str]
    """The fields read as data (a JSON object or plain text; their readers return bytes or None)."""
    value: str
    """The payload that holds the record's value: a value the source's format already decoded stands for it."""


class Filter(BaseModel):
    """One filter: its pattern as a JSON string (Lambda's form), or the same pattern as a dict. Not a StrictModel:
    its errors are reported by FilterCriteria's, which knows the filter's position."""

    model_config = StrictModel.model_config

    pattern: str | dict[str, Any] = Field(validation_alias=AliasChoices("pattern", "Pattern"))

    @field_validator("pattern", mode="before")
    @classmethod
    def _text_or_dict(cls, value: Any) -> Any:
        if not isinstance(value, str | dict):
            raise ValueError(f"must be a JSON string (or a dict), not {type(value).__name__}")
        return value


class FilterCriteria(StrictModel):
    """Lambda's FilterCriteria, with its key names (`Filters`, `Pattern`) or snake_case ones."""

    owner = "FilterCriteria"

    filters: list[Filter] = Field(default_factory=list, validation_alias=AliasChoices("filters", "Filters"))


class RecordFilter:
    """Compiled filter criteria: `matches(record)` is whether any filter's pattern matches the record."""

    __slots__ = ("_check", "_value", "_view", "patterns")

    def __init__(self, checks: Sequence[Check], patterns: Sequence[str], fields: RecordFields) -> None:
        self._check = any_of(checks)
        self._view = _view_of(fields)
        self._value = fields.value
        self.patterns = tuple(patterns)
        """The patterns as JSON texts, for logs."""

    def __repr__(self) -> str:
        return f"RecordFilter({list(self.patterns)!r})"

    def matches(self, record: SourceRecord, decoded: dict[str, Any] | None = None) -> bool:
        """`decoded`: the value as the source's format already decoded it, when that is an object (JSON, Avro):
        used instead of parsing the bytes again."""
        view = self._view()  # filled here: a Python-level __init__ would cost as much as a simple pattern
        view.record = record
        if decoded is not None:
            view[self._value], view[self._value + AS_TEXT] = decoded, MISSING
        return self._check(view)


def criteria_of(
    value: FilterCriteria | Mapping[str, Any] | RecordFilter | None,
) -> FilterCriteria | RecordFilter | None:
    """The validator of `filter_criteria`: the criteria checked as far as they can be without the source (their
    shape and Lambda's quota); None when there is nothing to filter (no criteria, or an empty Filters list, which
    is how Lambda removes filtering). Raises a one-line ConfigError starting with Lambda's "Invalid filter pattern
    definition." for anything Lambda would refuse."""
    if value is None or isinstance(value, RecordFilter):
        return value
    if isinstance(value, Mapping):
        try:
            value = FilterCriteria(**value)
        except ConfigError as error:
            raise ConfigError(f"{INVALID} {error.message}") from None
    if not isinstance(value, FilterCriteria):
        raise ConfigError(f'{INVALID} expected {{"Filters": [{{"Pattern": "<json>"}}]}}, not {type(value).__name__}')
    if len(value.filters) > MAX_FILTERS:
        raise ConfigError(
            f"{INVALID} {len(value.filters)} filters given; at most {MAX_FILTERS} are allowed (Lambda's default quota)"
        )
    return value if value.filters else None


def compile_criteria(
    value: FilterCriteria | Mapping[str, Any] | RecordFilter | None, fields: RecordFields
) -> RecordFilter | None:
    """The criteria compiled once, for records with these `fields` (the source's): None when there is nothing to
    filter; a one-line ConfigError as `criteria_of`'s, or naming a field such records do not have."""
    value = criteria_of(value)
    if value is None or isinstance(value, RecordFilter):
        return value
    checks, texts = [], []
    for index, item in enumerate(value.filters):
        try:
            pattern, text = parse_pattern(item.pattern, MAX_PATTERN_CHARS)
            checks.append(compile_pattern(pattern, _field_of(fields)))
        except PatternError as error:
            where = f" at {'.'.join(error.path)!r}" if error.path else ""
            raise ConfigError(f"{INVALID} Filters[{index}].Pattern{where}: {error.reason}") from None
        texts.append(text)
    return RecordFilter(checks, texts, fields)


def _field_of(fields: RecordFields) -> Callable[[str, bool], str]:
    """A pattern's top-level field as a key of the record view; a list on a payload reads the plain string."""

    def field(name: str, leaf: bool) -> str:
        if name not in fields.fields:
            raise PatternError(f"{fields.kind} has no field {name!r}; its fields are {', '.join(fields.fields)}")
        return name + AS_TEXT if leaf and name in fields.payloads else name

    return field


class _RecordView(dict[str, Any]):
    """A record's fields as a pattern reads them, each computed on first access (`__missing__`); one subclass per
    RecordFields (`_view_of`) carries them, so a view costs nothing more to make than a dict."""

    __slots__ = ("record",)
    record: SourceRecord
    fields: Mapping[str, Callable[[SourceRecord], Any]]
    payloads: frozenset[str]

    def __missing__(self, name: str) -> Any:
        field = name.removesuffix(AS_TEXT)
        if field in self.payloads:
            self[field], self[field + AS_TEXT] = payload(self.fields[field](self.record))
            return self[name]
        value = self[name] = self.fields[field](self.record)
        return value


def _view_of(fields: RecordFields) -> type[_RecordView]:
    return type("RecordView", (_RecordView,), {"__slots__": (), "fields": fields.fields, "payloads": fields.payloads})


def payload(raw: bytes | None) -> tuple[Any, Any]:
    """(JSON object, plain string) forms of a key or value: one of them, or neither (MISSING) for null or bytes that
    are not UTF-8. JSON that is not an object (a number, a quoted string, an array) is plain text **(choice)**."""
    if raw is None:
        return MISSING, MISSING
    if raw.lstrip(b" \t\r\n")[:1] == b"{":
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
        else:
            if isinstance(data, dict):
                return data, MISSING
    try:
        return MISSING, raw.decode("utf-8")
    except UnicodeDecodeError:
        return MISSING, MISSING


def headers(record: SourceRecord) -> dict[str, Any]:
    """Header name -> UTF-8 value (None for a null value, a list of them when the name repeats); a value that is
    not UTF-8 is left out."""
    fields: dict[str, Any] = {}
    for name, raw in record.headers:
        try:
            value = None if raw is None else raw.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if name not in fields:
            fields[name] = value
        elif isinstance(fields[name], list):
            fields[name].append(value)
        else:
            fields[name] = [fields[name], value]
    return fields
