"""PostgreSQL through asyncpg: a small pool per writer, so the lanes of a function write concurrently."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg

from streamfn.connectors.table.schema import POSTGRESQL, Dialect, TableName

POOL_SIZE = 4
COLUMNS = """
SELECT a.attname, format_type(a.atttypid, NULL)
FROM pg_attribute a
WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""


class _Transaction:
    def __init__(self, connection: Any) -> None:
        self._connection = connection

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self._connection.executemany(sql, rows)

    async def fetch(self, sql: str, parameters: Sequence[Any]) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in await self._connection.fetch(sql, *parameters)]


class PostgresqlDatabase:
    def __init__(self, pool: Any) -> None:
        self._pool = pool

    @property
    def dialect(self) -> Dialect:
        return POSTGRESQL

    @classmethod
    async def open(cls, url: str) -> PostgresqlDatabase:
        return cls(await asyncpg.create_pool(url, min_size=1, max_size=POOL_SIZE))

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[_Transaction]:
        async with self._pool.acquire() as connection, connection.transaction():
            yield _Transaction(connection)

    async def execute(self, sql: str) -> None:
        await self._pool.execute(sql)

    async def fetch(self, sql: str, parameters: Sequence[Any]) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in await self._pool.fetch(sql, *parameters)]

    async def columns(self, table: TableName) -> dict[str, str]:
        return {name: declared for name, declared in await self._pool.fetch(COLUMNS, table.sql)}

    async def compile(self, sql: str, arity: int) -> None:
        # EXPLAIN plans without running; a prepare alone would not (ON CONFLICT's index is found when planning).
        await self._pool.fetch(f"EXPLAIN {sql}", *[None] * arity)

    def refuses(self, error: Exception) -> bool:
        """Data exceptions (class 22: a wrong type, also asyncpg's own encoding errors) and integrity violations
        (class 23), except a foreign key, whose parent row may still arrive."""
        if isinstance(error, asyncpg.ForeignKeyViolationError):
            return False
        return isinstance(error, asyncpg.DataError | asyncpg.IntegrityConstraintViolationError)

    async def close(self) -> None:
        await self._pool.close()
