"""Table as a user declares it: a database url, a table and its key, validated into one-line ConfigErrors.

The declared object is configuration only (one may serve several functions); `open()` gives each function its own
writer with its own connection (SQLite) or pool (PostgreSQL).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any, ClassVar
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, field_validator, model_validator

from streamfn.connectors.table.database import POSTGRESQL_SCHEMES, SQLITE_PREFIX, connect
from streamfn.connectors.table.schema import TableName, identifier_problem
from streamfn.connectors.table.writer import Offsets, TableWriter
from streamfn.errors import ConfigError, StrictModel
from streamfn.outputs.sink import SinkContext, SinkRetry


class Table(StrictModel):
    """A SQLite or PostgreSQL table: each output is a row (a dict or a pydantic model), upserted by `key`."""

    owner = "Table"
    stores_offsets: ClassVar[bool] = True
    """Serves processing_guarantee="exactly_once": opened with `SinkContext.exactly_once`, its writer stores the
    source offsets in the rows' transaction and skips what is already stored."""

    url: str = Field(repr=False)
    """`sqlite:///relative/path.db`, `sqlite:////absolute/path.db` or `postgresql://user:password@host:port/db`."""
    table: str
    """`name`, or `schema.name`; created when missing."""
    key: tuple[str, ...]
    """The column(s) rows are upserted by: a redelivered row replaces itself instead of being added again."""
    model: type[BaseModel] | None = None
    """The rows' pydantic model, whose fields and types make the table's columns when it is created; without it
    the table is made from the columns and value types of the rows of the first write."""
    retry: SinkRetry = Field(default_factory=SinkRetry)

    def __init__(self, url: str | None = None, table: str | None = None, /, **values: Any) -> None:
        positional = {name: value for name, value in (("url", url), ("table", table)) if value is not None}
        super().__init__(**positional, **values)

    def __str__(self) -> str:
        return f"Table({display_url(self.url)!r}, {self.table!r})"

    @field_validator("url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        if value.startswith(SQLITE_PREFIX):
            if not value.removeprefix(SQLITE_PREFIX):
                raise ValueError("names no file: sqlite:///relative/path.db or sqlite:////absolute/path.db")
            return value
        if urlsplit(value).scheme not in POSTGRESQL_SCHEMES:
            raise ValueError(
                "must be sqlite:///relative/path.db, sqlite:////absolute/path.db or "
                "postgresql://user:password@host:port/database"
            )
        if importlib.util.find_spec("asyncpg") is None:
            raise ValueError("needs asyncpg for PostgreSQL: pip install 'streamfn[postgresql]'")
        return value

    @field_validator("table")
    @classmethod
    def _table_name(cls, value: str) -> str:
        parts = value.split(".")
        if len(parts) > 2:
            raise ValueError("must be a table name or schema.name")
        for part in parts:
            problem = identifier_problem(part)
            if problem:
                raise ValueError(problem if len(parts) == 1 else f"each part of schema.name {problem}")
        return value

    @field_validator("key", mode="before")
    @classmethod
    def _columns(cls, value: Any) -> Any:
        columns = (value,) if isinstance(value, str) else value
        if not isinstance(columns, list | tuple):
            raise ValueError("must be a column name or a list of column names")
        if not columns:
            raise ValueError("must name at least one column")
        for column in columns:
            problem = identifier_problem(column)
            if problem:
                raise ValueError(f"column {column!r} {problem}")
        if len(set(columns)) < len(columns):
            raise ValueError("names a column twice")
        return tuple(columns)

    @model_validator(mode="after")
    def _key_in_model(self) -> Table:
        if self.model is not None:
            fields = self.model.model_fields
            missing = [c for c in self.key if c not in fields]
            if missing:
                raise ValueError(
                    f"key column(s) {', '.join(map(repr, missing))} are not fields of model {self.model.__name__} "
                    f"(its fields: {', '.join(fields)})"
                )
            for field in fields:
                problem = identifier_problem(field)
                if problem:
                    raise ValueError(f"field {field!r} of model {self.model.__name__} cannot be a column: {problem}")
        return self

    def check(self, source_topics: Sequence[str]) -> None:
        """A table can serve any function."""

    async def open(self, context: SinkContext) -> TableWriter:
        if context.exactly_once and not context.group:
            raise ConfigError(f"{self}: exactly_once needs the function's consumer group to store offsets under")
        table = TableName.parse(self.table)
        database = await connect(self.url)
        offsets = Offsets(str(self), database, table, context.group) if context.exactly_once else None
        writer = TableWriter(str(self), database, table, self.key, self.model, offsets)
        try:
            await writer.start()
        except BaseException:
            await database.close()
            raise
        return writer


def display_url(url: str) -> str:
    """The url without its password, for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{parts.username}:***@{host}").geturl()
