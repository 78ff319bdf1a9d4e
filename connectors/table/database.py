"""The little a writer needs from a database driver, so one writer serves SQLite and PostgreSQL alike."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from streamfn.connectors.table.schema import Dialect, TableName

SQLITE_PREFIX = "sqlite:///"
POSTGRESQL_SCHEMES = ("postgresql", "postgres")


class Transaction(Protocol):
    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    async def fetch(self, sql: str, parameters: Sequence[Any]) -> list[tuple[Any, ...]]:
        """The rows a statement returns (a query, or a write with RETURNING)."""


class Database(Protocol):
    """One function's connection (SQLite) or pool (PostgreSQL)."""

    @property
    def dialect(self) -> Dialect: ...

    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        """Committed when the block ends, rolled back when it raises."""

    async def execute(self, sql: str) -> None:
        """A statement on its own (DDL)."""

    async def fetch(self, sql: str, parameters: Sequence[Any]) -> list[tuple[Any, ...]]:
        """The rows of a query on its own, outside any transaction of the writer."""

    async def columns(self, table: TableName) -> dict[str, str]:
        """The table's columns and their declared types, in order; empty when there is no such table."""

    async def compile(self, sql: str, arity: int) -> None:
        """Raise the database's error if `sql` (with `arity` parameters) could not run: plan it, do not run it."""

    def refuses(self, error: Exception) -> bool:
        """Whether `error` is the database refusing the data (a constraint, a wrong type), which no retry fixes."""

    async def close(self) -> None: ...


async def connect(url: str) -> Database:
    """The database at `url` (already validated by Table), opened; drivers are imported only when used."""
    if url.startswith(SQLITE_PREFIX):
        from streamfn.connectors.table.sqlite import SqliteDatabase

        return await SqliteDatabase.open(url.removeprefix(SQLITE_PREFIX))
    from streamfn.connectors.table.postgresql import PostgresqlDatabase

    return await PostgresqlDatabase.open(url)
