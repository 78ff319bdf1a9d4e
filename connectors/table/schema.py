"""What differs between SQL databases, as data: type names, placeholders, how values are bound. And the SQL text.

The writer is one mechanism for every database; a `Dialect` is all it needs to know about one. Identifiers are
always quoted (a double quote inside one is doubled), so names are used exactly as given, never parsed as SQL.
"""

from __future__ import annotations

import enum
import types
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import orjson
from pydantic import BaseModel

MAX_IDENTIFIER_BYTES = 63
"""PostgreSQL silently truncates longer names, which would make the table's columns differ from the rows' keys."""

Adapter = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class Dialect:
    name: str
    types: Sequence[tuple[type, str]]
    """Python type -> column type, most specific first (bool before int, datetime before date)."""
    json_type: str
    """The column type of anything else: dicts, lists, nested models, unions of several types."""
    placeholder: Callable[[int], str]
    """The parameter marker of the n-th (1-based) value of a statement."""
    adapter: Callable[[str], Adapter]
    """How a value is bound to a column of this declared type."""

    def column_type(self, python_type: type | None) -> str:
        if python_type is not None:
            for candidate, sql in self.types:
                if issubclass(python_type, candidate):
                    return sql
        return self.json_type


# --- values --------------------------------------------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, set | frozenset):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def to_json(value: Any) -> str | None:
    """JSON text of a value for a JSON (or SQLite TEXT) column; None stays SQL NULL."""
    if value is None:
        return None
    return orjson.dumps(value, default=_json_default).decode()


def sqlite_value(value: Any) -> Any:
    """SQLite binds None, int, float, str and bytes; everything else is stored as text (dates as ISO 8601)."""
    if isinstance(value, enum.Enum):
        value = value.value
    if value is None or isinstance(value, int | float | str | bytes):
        return value
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal | uuid.UUID):
        return str(value)
    return to_json(value)


def _postgresql_value(value: Any) -> Any:
    return value.value if isinstance(value, enum.Enum) else value


def _postgresql_timestamptz(value: Any) -> Any:
    """A naive datetime is taken as UTC (asyncpg would take it as the machine's local time)."""
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _postgresql_adapter(column_type: str) -> Adapter:
    """asyncpg binds Python values of the column's type; JSON columns take any value as JSON text."""
    if column_type in ("json", "jsonb"):
        return to_json
    if column_type == "timestamp with time zone":
        return _postgresql_timestamptz
    return _postgresql_value


SQLITE = Dialect(
    name="sqlite",
    types=(
        (bool, "INTEGER"),
        (int, "INTEGER"),
        (float, "REAL"),
        (str, "TEXT"),
        (bytes, "BLOB"),
        (datetime, "TEXT"),
        (date, "TEXT"),
        (Decimal, "TEXT"),
        (uuid.UUID, "TEXT"),
    ),
    json_type="TEXT",
    placeholder=lambda n: "?",
    adapter=lambda column_type: sqlite_value,
)

POSTGRESQL = Dialect(
    name="postgresql",
    types=(
        (bool, "BOOLEAN"),
        (int, "BIGINT"),
        (float, "DOUBLE PRECISION"),
        (str, "TEXT"),
        (bytes, "BYTEA"),
        (datetime, "TIMESTAMPTZ"),
        (date, "DATE"),
        (Decimal, "NUMERIC"),
        (uuid.UUID, "UUID"),
    ),
    json_type="JSONB",
    placeholder=lambda n: f"${n}",
    adapter=_postgresql_adapter,
)


# --- column types from a model or from rows ------------------------------------------------------------------------


def annotation_type(annotation: Any) -> type | None:
    """The Python type a field's values have (Optional unwrapped), or None when only JSON can hold them."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return annotation_type(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        present = [arg for arg in get_args(annotation) if arg is not type(None)]
        return annotation_type(present[0]) if len(present) == 1 else None
    if origin is Literal:
        kinds = {type(arg) for arg in get_args(annotation)}
        return kinds.pop() if len(kinds) == 1 else None
    if origin is not None or not isinstance(annotation, type):
        return None  # list[...], dict[...], Any, ...: JSON
    if issubclass(annotation, enum.Enum):
        kinds = {type(member.value) for member in annotation}
        return kinds.pop() if len(kinds) == 1 else None
    return annotation


def model_columns(model: type[BaseModel], dialect: Dialect) -> dict[str, str]:
    """Column -> type for every field of `model` (rows are its `model_dump()`: field names, not aliases)."""
    return {name: dialect.column_type(annotation_type(field.annotation)) for name, field in model.model_fields.items()}


def value_type(value: Any) -> type:
    return type(value.value) if isinstance(value, enum.Enum) else type(value)


def row_columns(rows: Iterable[Mapping[str, Any]], dialect: Dialect) -> dict[str, str]:
    """Column -> type for a table made from rows: every column they have, in order of appearance, typed by its
    first non-null value (int widened to float when a float occurs too); a column only ever null is JSON."""
    found: dict[str, type | None] = {}
    for row in rows:
        for column, value in row.items():
            if value is None:
                found.setdefault(column, None)
                continue
            kind, seen = value_type(value), found.get(column)
            if seen is None or (seen is int and kind is float):
                found[column] = kind
    return {column: dialect.column_type(kind) for column, kind in found.items()}


# --- names and statements ------------------------------------------------------------------------------------------


def identifier_problem(name: Any) -> str | None:
    """Why `name` cannot name a table, schema or column, or None when it can."""
    if not isinstance(name, str) or not name:
        return "must be a non-empty string"
    if len(name.encode()) > MAX_IDENTIFIER_BYTES:
        return f"must be at most {MAX_IDENTIFIER_BYTES} bytes long"
    if any(ord(char) < 32 or ord(char) == 127 for char in name):
        return "must not contain control characters"
    return None


def quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


@dataclass(frozen=True, slots=True)
class TableName:
    """`name` or `schema.name` (a PostgreSQL schema; an attached database in SQLite)."""

    schema: str | None
    name: str

    @classmethod
    def parse(cls, text: str) -> TableName:
        schema, _, name = text.rpartition(".")
        return cls(schema or None, name)

    @property
    def sql(self) -> str:
        return f"{quote(self.schema)}.{quote(self.name)}" if self.schema else quote(self.name)

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name


def create_table(table: TableName, columns: Mapping[str, str], key: Sequence[str]) -> str:
    """DDL for a missing table; IF NOT EXISTS because another worker may be creating it at the same moment."""
    definitions = [f"{quote(c)} {sql}{' NOT NULL' if c in key else ''}" for c, sql in columns.items()]
    return (
        f"CREATE TABLE IF NOT EXISTS {table.sql} ({', '.join(definitions)}, PRIMARY KEY ({', '.join(map(quote, key))}))"
    )


def upsert(dialect: Dialect, table: TableName, columns: Sequence[str], key: Sequence[str]) -> str:
    """One row's INSERT that updates the row's other columns when its key exists (both dialects' syntax)."""
    markers = ", ".join(dialect.placeholder(n) for n in range(1, len(columns) + 1))
    others = [c for c in columns if c not in key]
    action = (
        "DO UPDATE SET " + ", ".join(f"{quote(c)} = excluded.{quote(c)}" for c in others) if others else "DO NOTHING"
    )
    return (
        f"INSERT INTO {table.sql} ({', '.join(map(quote, columns))}) VALUES ({markers}) "
        f"ON CONFLICT ({', '.join(map(quote, key))}) {action}"
    )


# --- source offsets stored with the rows (processing_guarantee="exactly_once") --------------------------------------

OFFSETS_TABLE = "streamfn_offsets"
OFFSETS_KEY = ("consumer_group", "topic", "partition")

POSITION_LIMIT = 10**39
"""Stored checkpoint values are integers below this (39 digits): Kafka's offsets, Kinesis's 128-bit sequence
numbers."""

SQLITE_INTEGER_LIMIT = 2**63
"""SQLite's INTEGER is 64-bit signed: a checkpoint value from here on is stored as text (`_sqlite_position`)."""


def offsets_table(table: TableName) -> TableName:
    """Where the offsets of `table`'s writers are: next to it, in its schema (or the default one)."""
    return TableName(table.schema, OFFSETS_TABLE)


def offsets_columns(dialect: Dialect) -> dict[str, str]:
    """The offsets table's columns: one row per consumer group and source partition, shared by all its tables (so
    by functions of any source). A partition id is an int (Kafka) or a str (a Kinesis shard); a checkpoint value
    (`next_offset`: what the source commits for "handled up to here") is an integer of up to 128 bits.

    PostgreSQL: TEXT ids and NUMERIC(39,0) values. SQLite types values per row, so its INTEGER columns hold ids of
    either kind as given and values of up to 63 bits as integers, larger ones as text that sorts after them
    (`_sqlite_position`); they are the columns tables made before sources other than Kafka had, unchanged."""
    if dialect is POSTGRESQL:
        return {"consumer_group": "TEXT", "topic": "TEXT", "partition": "TEXT", "next_offset": "NUMERIC(39,0)"}
    return {"consumer_group": "TEXT", "topic": "TEXT", "partition": "INTEGER", "next_offset": "INTEGER"}


def upgrade_offsets(dialect: Dialect, table: TableName, declared: Mapping[str, str]) -> str | None:
    """The statement that turns an offsets table made for Kafka alone (PostgreSQL: INTEGER ids, BIGINT offsets)
    into one any source can use, keeping what it stores; None when `declared` (its column types) needs none.
    Running it twice is harmless, so workers starting together may all run it."""
    if dialect is not POSTGRESQL or (declared["partition"], declared["next_offset"]) == ("text", "numeric"):
        return None
    return (
        f'ALTER TABLE {table.sql} ALTER COLUMN "partition" TYPE TEXT USING "partition"::text, '
        'ALTER COLUMN "next_offset" TYPE NUMERIC(39,0)'
    )


def stored_partition(dialect: Dialect, partition: int | str) -> int | str:
    """A partition id as its column binds it (PostgreSQL: text); read back, it is matched by its text."""
    return str(partition) if dialect is POSTGRESQL else partition


def stored_position(dialect: Dialect, position: int) -> Any:
    """A checkpoint value as its column binds it, such that the database orders stored values as integers."""
    if not 0 <= position < POSITION_LIMIT:
        raise ValueError(f"a stored source position must be an integer in [0, 10^39), not {position!r}")
    return position if dialect is POSTGRESQL else _sqlite_position(position)


def _sqlite_position(position: int) -> int | str:
    """Below 2^63 the integer itself; from there "#" and 39 digits. SQLite orders every integer before every text
    and texts bytewise, so stored values compare as the integers they are. The "#" keeps SQLite's INTEGER affinity
    from turning the digits into a (rounded) REAL."""
    return position if position < SQLITE_INTEGER_LIMIT else f"#{position:039d}"


def read_position(stored: Any) -> int:
    """A stored checkpoint value back as the integer it is (SQLite: an int or "#digits"; PostgreSQL: a Decimal)."""
    return int(stored[1:]) if isinstance(stored, str) else int(stored)


def claim_offsets(dialect: Dialect, table: TableName, count: int) -> str:
    """Store the next offset of `count` partitions (parameters: group, topic, partition, next_offset for each),
    only where it moves forward, and return the (topic, partition) of those that moved: the writer writes the
    outputs of those and drops the rest (already stored: a replayed batch, or a late one of a lost partition).

    One statement reads, compares and writes: the row it inserts or updates stays locked until the transaction
    ends, even a row that did not exist yet (a SELECT ... FOR UPDATE locks nothing then, letting two first writes
    of a partition both through), so a concurrent claim of the same partition waits and then sees this one's."""
    columns = (*OFFSETS_KEY, "next_offset")
    values = ", ".join(
        "(" + ", ".join(dialect.placeholder(row * len(columns) + n) for n in range(1, len(columns) + 1)) + ")"
        for row in range(count)
    )
    return (
        f'INSERT INTO {table.sql} AS "stored" ({", ".join(map(quote, columns))}) VALUES {values} '
        f"ON CONFLICT ({', '.join(map(quote, OFFSETS_KEY))}) "
        'DO UPDATE SET "next_offset" = excluded."next_offset" '
        'WHERE "stored"."next_offset" < excluded."next_offset" '
        'RETURNING "topic", "partition"'
    )


def select_offsets(dialect: Dialect, table: TableName) -> str:
    """The stored (topic, partition, next_offset) of one consumer group (its one parameter)."""
    return (
        f'SELECT "topic", "partition", "next_offset" FROM {table.sql} WHERE "consumer_group" = {dialect.placeholder(1)}'
    )
