"""The writer of one function's outputs to one table: each output value is a row, upserted by the key.

A write is one transaction: its rows all land or none do, so a batch replayed after a crash (at-least-once) just
writes the same rows again. Rows are checked before anything is sent, so a row that can never fit (not a dict,
no key, a column the table lacks) rejects the write at once instead of being retried.

With processing_guarantee="exactly_once" the same transaction also stores, per source partition, the offset after
the last record the rows cover (`Offsets`), and drops the outputs of partitions whose offsets are already stored: a
batch replayed after a crash, or written late by a worker that lost the partition, writes nothing again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel

from streamfn.connectors.table.database import Database, Transaction
from streamfn.connectors.table.schema import (
    OFFSETS_KEY,
    Adapter,
    TableName,
    claim_offsets,
    create_table,
    identifier_problem,
    model_columns,
    offsets_columns,
    offsets_table,
    read_position,
    row_columns,
    select_offsets,
    stored_partition,
    stored_position,
    upgrade_offsets,
    upsert,
)
from streamfn.errors import ConfigError
from streamfn.outputs.sink import Emitted, RejectedOutput, plain
from streamfn.record import Partition

log = logging.getLogger("streamfn.table")

Row = dict[str, Any]


def source_partition(output: Emitted) -> Partition:
    return Partition(output.source.topic, output.source.partition)


class Offsets:
    """The source offsets one consumer group's rows cover, in `streamfn_offsets` next to the table (shared by every
    table sink of the database's schema, one row per group and source partition).

    Claimed in the transaction that writes the rows, so a crash leaves both or neither: the stored offset of a
    partition is exactly how far its outputs are written, which is where the engine resumes it (`positions`).

    Partition ids may be ints or strs and checkpoint values integers of up to 128 bits (`offsets_columns`); the
    database returns ids as its column stores them, so they are matched to the engine's by their text."""

    def __init__(self, sink: str, database: Database, table: TableName, group: str) -> None:
        self._sink = sink
        self._database = database
        self._table = offsets_table(table)
        self._group = group
        self._claims: dict[int, str] = {}
        """The claim statement by how many partitions it covers."""

    async def start(self) -> None:
        """Create the offsets table if missing (IF NOT EXISTS, and a concurrent creation's error tolerated, as for
        the rows' table: the first writers of several workers or functions start together)."""
        columns = offsets_columns(self._database.dialect)
        existing = await self._database.columns(self._table)
        if not existing:
            try:
                await self._database.execute(create_table(self._table, columns, OFFSETS_KEY))
            except Exception:
                if not await self._database.columns(self._table):
                    raise
            existing = await self._database.columns(self._table)
        missing = [column for column in columns if column not in existing]
        if missing:
            raise ConfigError(
                f"{self._sink}: table {str(self._table)!r} is not streamfn's offsets table: it has no column(s) "
                f"{', '.join(map(repr, missing))}"
            )
        upgrade = upgrade_offsets(self._database.dialect, self._table, existing)
        if upgrade is not None:
            await self._database.execute(upgrade)
            log.info("%s: upgraded %s to store any source's partition ids and positions", self._sink, self._table)

    async def claim(self, transaction: Transaction, outputs: Sequence[Emitted]) -> set[Partition]:
        """Store, within `transaction`, the checkpoint value each source partition of `outputs` reaches (the
        source's, `Provenance.covers`) where that moves it forward; return those partitions, whose outputs are to be
        written. The others are already stored as far (or further): their outputs were written before."""
        reached: dict[Partition, int] = {}
        for output in outputs:
            partition, after = source_partition(output), output.source.covers
            if after is None:  # exactly_once is refused at declaration for functions without a source
                raise ValueError(f"{output.source}: an output without its source's checkpoint value")
            reached[partition] = max(reached.get(partition, after), after)
        if not reached:
            return set()
        statement = self._claims.get(len(reached))
        if statement is None:
            statement = self._claims[len(reached)] = claim_offsets(self._database.dialect, self._table, len(reached))
        # Sorted: concurrent claims lock the partitions they share in the same order, so they never deadlock.
        dialect, claimed = self._database.dialect, _by_text(reached)
        parameters = [
            value
            for (topic, text), partition in sorted(claimed.items())
            for value in (
                self._group,
                topic,
                stored_partition(dialect, partition.partition),
                stored_position(dialect, reached[partition]),
            )
        ]
        return {claimed[topic, str(number)] for topic, number in await transaction.fetch(statement, parameters)}

    async def positions(self, partitions: Sequence[Partition]) -> dict[Partition, int]:
        wanted = _by_text(partitions)
        stored = await self._database.fetch(select_offsets(self._database.dialect, self._table), [self._group])
        return {
            partition: read_position(position)
            for topic, number, position in stored
            if (partition := wanted.get((topic, str(number)))) is not None
        }


def _by_text(partitions: Iterable[Partition]) -> dict[tuple[str, str], Partition]:
    """Partitions by (topic, id as text): how a stored row names one, whatever type its column gave the id."""
    return {(partition.topic, str(partition.partition)): partition for partition in partitions}


class TableWriter:
    def __init__(
        self,
        sink: str,
        database: Database,
        table: TableName,
        key: tuple[str, ...],
        model: type[BaseModel] | None,
        offsets: Offsets | None = None,
    ) -> None:
        self._sink = sink
        self._offsets = offsets
        """Set when exactly once: the source offsets the rows cover, stored with them."""
        self._database = database
        self._dialect = database.dialect
        self._table = table
        self._key = key
        self._model = model
        self._adapters: dict[str, Adapter] = {}
        """The table's columns (empty until the table exists) and how each binds its values."""
        self._statements: dict[tuple[str, ...], str] = {}

    def __str__(self) -> str:
        return self._sink

    async def start(self) -> None:
        """Use the table if it exists, create it if a model describes it; else the first write creates it. The
        offsets table (exactly once) is created now, so `positions` can be asked before any write."""
        if self._offsets is not None:
            await self._offsets.start()
        if await self._load_columns():
            return
        if self._model is not None:
            await self._create(model_columns(self._model, self._dialect))

    async def write(self, outputs: Sequence[Emitted]) -> None:
        rows = self._rows(outputs)
        if not rows:
            return
        if not self._adapters:
            await self._create(self._columns_of(rows))
        await self._check_columns(rows)
        try:
            async with self._database.transaction() as transaction:
                if self._offsets is not None:
                    rows = await self._unwritten(self._offsets, transaction, outputs, rows)
                await self._upsert(transaction, [row for _, row in rows])
        except Exception as error:
            if self._database.refuses(error):
                which = f"output {outputs[0].id}" if len(outputs) == 1 else f"outputs {outputs[0].id}..{outputs[-1].id}"
                raise RejectedOutput(
                    f"{self._sink}: the database refused {which}: {type(error).__name__}: {error}"
                ) from error
            raise

    async def positions(self, partitions: Sequence[Partition]) -> dict[Partition, int]:
        """Per source partition, the offset after the last record whose outputs are stored (absent if none; always
        empty when not opened for exactly once, as nothing is stored then)."""
        return await self._offsets.positions(partitions) if self._offsets is not None else {}

    async def close(self) -> None:
        await self._database.close()

    async def _unwritten(
        self, offsets: Offsets, transaction: Transaction, outputs: Sequence[Emitted], rows: list[tuple[Emitted, Row]]
    ) -> list[tuple[Emitted, Row]]:
        """The rows of the outputs whose partitions `transaction` claims, their offsets stored along: the others'
        were written before. Their rows are made again from the kept outputs alone, so a key both have gets the
        kept row, not a skipped one that came later."""
        claimed = await offsets.claim(transaction, outputs)
        kept = [output for output in outputs if source_partition(output) in claimed]
        if len(kept) == len(outputs):
            return rows
        log.info(
            "%s: skipped %d of %d outputs, their source offsets already stored (a replayed or late batch)",
            self._sink,
            len(outputs) - len(kept),
            len(outputs),
        )
        return self._rows(kept)

    async def _upsert(self, transaction: Transaction, rows: Sequence[Row]) -> None:
        """Upsert `rows` within `transaction` (which a caller may use to write more in the same commit).

        Rows with the same columns share one statement, run with executemany; a column a row leaves out is not
        touched (its default on insert, its old value on update)."""
        groups: dict[tuple[str, ...], list[list[Any]]] = {}
        for row in rows:
            columns = tuple(row)
            groups.setdefault(columns, []).append([self._adapters[c](row[c]) for c in columns])
        for columns, values in groups.items():
            statement = self._statements.get(columns)
            if statement is None:
                statement = self._statements[columns] = upsert(self._dialect, self._table, columns, self._key)
            await transaction.executemany(statement, values)

    def _rows(self, outputs: Sequence[Emitted]) -> list[tuple[Emitted, Row]]:
        """The rows of `outputs`, checked, one per key: the last one wins, in the place of the key's first row
        (the order the rows would be inserted in if they were written one by one)."""
        rows: dict[tuple[Any, ...], tuple[Emitted, Row]] = {}
        for output in outputs:
            row = plain(output.value)
            if not isinstance(row, dict):
                raise self._rejected(output, f"is a {type(row).__name__}, not a row: return a dict or a pydantic model")
            missing = [c for c in self._key if row.get(c) is None]
            if missing:
                raise self._rejected(output, f"has no value for the key column(s) {', '.join(map(repr, missing))}")
            key = tuple(row[c] for c in self._key)
            try:
                rows[key] = (output, row)  # a key seen before keeps its place
            except TypeError:
                raise self._rejected(
                    output, f"has a key {key!r} that is not a plain value (number, string...)"
                ) from None
        return list(rows.values())

    async def _check_columns(self, rows: Sequence[tuple[Emitted, Row]]) -> None:
        """Every row's columns exist in the table (looked up again once: a column may have been added)."""
        if all(column in self._adapters for _, row in rows for column in row):
            return
        await self._load_columns()
        for output, row in rows:
            unknown = [column for column in row if column not in self._adapters]
            if unknown:
                raise self._rejected(
                    output,
                    f"has column(s) {', '.join(map(repr, unknown))} that table {str(self._table)!r} lacks "
                    f"(its columns: {', '.join(self._adapters)})",
                )

    def _columns_of(self, rows: Sequence[tuple[Emitted, Row]]) -> dict[str, str]:
        """The columns of a table made from `rows`, whose keys must all be usable as column names."""
        for output, row in rows:
            for column in row:
                problem = identifier_problem(column)
                if problem:
                    raise self._rejected(output, f"has a column named {column!r}, which {problem}")
        return row_columns((row for _, row in rows), self._dialect)

    def _rejected(self, output: Emitted, problem: str) -> RejectedOutput:
        return RejectedOutput(f"{self._sink}: output {output.id} {problem}")

    async def _create(self, columns: Mapping[str, str]) -> None:
        try:
            await self._database.execute(create_table(self._table, columns, self._key))
        except Exception:
            # PostgreSQL: a concurrent CREATE TABLE IF NOT EXISTS of the same table may fail instead of waiting.
            if await self._load_columns():
                return
            raise
        if not await self._load_columns():
            raise RuntimeError(f"{self._sink}: table {str(self._table)!r} is missing right after creating it")

    async def _load_columns(self) -> bool:
        """Read the table's columns; check that the key can be upserted on. False when there is no table."""
        columns = await self._database.columns(self._table)
        if not columns:
            return False
        missing = [c for c in self._key if c not in columns]
        if missing:
            raise ConfigError(
                f"{self._sink}: table {str(self._table)!r} has no key column(s) {', '.join(map(repr, missing))}; "
                f"its columns: {', '.join(columns)}"
            )
        if not self._adapters:
            try:
                await self._database.compile(upsert(self._dialect, self._table, self._key, self._key), len(self._key))
            except Exception as error:
                raise ConfigError(
                    f"{self._sink}: key {', '.join(self._key)} of table {str(self._table)!r} is not its primary key "
                    f"or a unique index, which upserts need ({type(error).__name__}: {error})"
                ) from None
        self._adapters = {column: self._dialect.adapter(declared) for column, declared in columns.items()}
        return True
