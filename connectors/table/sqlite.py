"""SQLite through aiosqlite: one connection per writer, in WAL mode with a busy timeout, so several worker
processes can write the same file (one writer at a time; readers never block)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from streamfn.connectors.table.schema import SQLITE, Dialect, TableName

BUSY_TIMEOUT_SECONDS = 10.0
"""How long a write waits for another process's transaction on the same file before it fails (and is retried)."""

REFUSALS = (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.InterfaceError, sqlite3.ProgrammingError)
"""A constraint (NOT NULL, CHECK, a non-integer INTEGER PRIMARY KEY), a value too big, a type it cannot bind."""


class _Transaction:
    """The statements of one open transaction (its connection's lock already held)."""

    def __init__(self, connection: aiosqlite.Connection) -> None:
        self._connection = connection

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        cursor = await self._connection.executemany(sql, rows)
        await cursor.close()

    async def fetch(self, sql: str, parameters: Sequence[Any]) -> list[tuple[Any, ...]]:
        async with self._connection.execute(sql, parameters) as cursor:
            return [tuple(row) for row in await cursor.fetchall()]


class SqliteDatabase:
    def __init__(self, connection: aiosqlite.Connection) -> None:
        self._connection = connection
        self._lock = asyncio.Lock()
        """One connection holds one transaction at a time; the function's lanes write concurrently."""

    @property
    def dialect(self) -> Dialect:
        return SQLITE

    @classmethod
    async def open(cls, path: str) -> SqliteDatabase:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: the sqlite3 module opens no transactions of its own; ours are explicit.
        connection = await aiosqlite.connect(path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
        try:
            cursor = await connection.execute("PRAGMA journal_mode=WAL")  # stays set in the file
            await cursor.close()
        except BaseException:
            await connection.close()
            raise
        return cls(connection)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[_Transaction]:
        async with self._lock:
            # IMMEDIATE takes the write lock now, waiting up to the busy timeout: a deferred transaction that
            # upgrades later fails at once when another process wrote in between.
            await self._connection.execute("BEGIN IMMEDIATE")
            try:
                yield _Transaction(self._connection)
            except BaseException:
                with contextlib.suppress(sqlite3.Error):  # some errors already rolled back
                    await self._connection.execute("ROLLBACK")
                raise
            await self._connection.execute("COMMIT")

    async def execute(self, sql: str) -> None:
        async with self._lock:
            cursor = await self._connection.execute(sql)
            await cursor.close()

    async def fetch(self, sql: str, parameters: Sequence[Any]) -> list[tuple[Any, ...]]:
        async with self._lock:
            return await _Transaction(self._connection).fetch(sql, parameters)

    async def columns(self, table: TableName) -> dict[str, str]:
        query, parameters = "SELECT name, type FROM pragma_table_info(?)", [table.name]
        if table.schema:
            query, parameters = "SELECT name, type FROM pragma_table_info(?, ?)", [table.name, table.schema]
        async with self._lock, self._connection.execute(query, parameters) as cursor:
            return {name: declared.upper() for name, declared in await cursor.fetchall()}

    async def compile(self, sql: str, arity: int) -> None:
        async with self._lock:
            cursor = await self._connection.execute(f"EXPLAIN {sql}", [None] * arity)
            await cursor.close()

    def refuses(self, error: Exception) -> bool:
        return isinstance(error, REFUSALS)

    async def close(self) -> None:
        await self._connection.close()
