"""Checkpoints: which checkpoint value of each partition is safe to commit, and the commits that store it.

A partition's checkpoint only moves when the worker reports a batch fully handled, so a commit never passes a
record still in flight. Checkpoint values are the source's (`SourceReader.position_after`), only compared here.
Commits are coalesced: one commit request is in flight at a time and carries every partition that moved meanwhile,
which keeps the broker round trips per second flat as throughput grows.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping

from streamfn.observability.stats import FunctionStats
from streamfn.record import Partition, Position
from streamfn.source import CommitRefused, SourceReader

log = logging.getLogger("streamfn.checkpoint")

COMMIT_RETRY_SECONDS = 1.0


class Checkpoint:
    def __init__(
        self,
        reader: SourceReader,
        function: str,
        stats: FunctionStats,
        before_commit: Callable[[Mapping[Partition, Position]], Awaitable[None]] | None = None,
    ) -> None:
        self._reader = reader
        self._function = function
        self._stats = stats
        self._before_commit = before_commit
        """Makes durable what a commit covers beyond the source (a stateful function's changelog) first."""
        self._owned: set[Partition] = set()
        self._done: dict[Partition, Position] = {}
        self._committed: dict[Partition, Position] = {}
        self._covered: dict[Partition, int] = {}
        """Records handled per partition since it was assigned, up to `_done` (the counts commits move by)."""
        self._covered_committed: dict[Partition, int] = {}
        self._reached: dict[Partition, Position] = {}
        """The last committed value of every partition this process owned, kept after it is revoked (the summary)."""
        self._moved = asyncio.Event()
        self._lock = asyncio.Lock()
        self.committed_records = 0
        """Records covered by successful commits, all partitions (per partition: the stats' `committed`)."""

    def track(self, partition: Partition, committed: Position) -> None:
        """Start tracking a newly assigned partition from its committed value."""
        self._owned.add(partition)
        self._done[partition] = self._committed[partition] = committed
        self._covered[partition] = self._covered_committed[partition] = 0
        self._reached[partition] = max(committed, self._reached.get(partition, committed))

    def forget(self, partitions: Iterable[Partition]) -> None:
        """Stop committing for partitions this process no longer owns."""
        for partition in partitions:
            self._owned.discard(partition)
            self._done.pop(partition, None)
            self._committed.pop(partition, None)
            self._covered.pop(partition, None)
            self._covered_committed.pop(partition, None)

    def completed(self, partition: Partition, checkpoint: Position, records: int = 0) -> None:
        """Every record of `partition` that `checkpoint` covers is handled, `records` more of them than before."""
        if partition in self._owned:  # a late completion for a revoked or lost partition must not be committed
            self._done[partition] = max(checkpoint, self._done[partition])
            self._covered[partition] += records
            self._moved.set()

    def done(self, partition: Partition) -> Position | None:
        """How far `partition` is handled (committed or about to be)."""
        return self._done.get(partition)

    def offsets(self) -> dict[Partition, Position]:
        """The committed value of each owned partition (for status and idle detection)."""
        return dict(self._committed)

    def reached(self) -> dict[Partition, Position]:
        """The last committed value of every partition owned during this run, including the final commits made
        when partitions were revoked or the worker stopped."""
        return dict(self._reached)

    def is_settled(self) -> bool:
        """Everything completed has been committed."""
        return all(self._committed.get(p) == o for p, o in self._done.items())

    async def run(self) -> None:
        """Commit whatever moved, one request at a time, until cancelled."""
        while True:
            await self._moved.wait()
            self._moved.clear()
            if not await self.flush():
                await asyncio.sleep(COMMIT_RETRY_SECONDS)
                self._moved.set()

    async def flush(self, partitions: Iterable[Partition] | None = None) -> bool:
        """Commit completed values now (of `partitions`, or all). False if the commit failed."""
        async with self._lock:
            wanted = self._done if partitions is None else {p: self._done[p] for p in partitions if p in self._done}
            pending = {p: o for p, o in wanted.items() if self._committed.get(p) != o}
            if not pending:
                return True
            covered = {p: self._covered[p] for p in pending}
            refused: set[Partition] = set()
            try:
                if self._before_commit is not None:
                    await self._before_commit(pending)
                await self._reader.commit(pending)
            except CommitRefused as error:  # lost partitions only: the others are committed, and go on at once
                refused = error.partitions
                log.warning("function %s: commit of %s refused: %s", self._function, _describe(pending), error)
            except Exception as error:  # the broker or the group said no; offsets stay pending
                for partition in pending:
                    self._stats.at(partition).commit_errors += 1
                log.warning("function %s: commit of %s failed: %r", self._function, _describe(pending), error)
                return False
            for partition, offset in pending.items():
                if partition in self._owned and partition not in refused:
                    # max: 0 for a partition forgotten and assigned again while the commit was under way
                    moved = max(0, covered[partition] - self._covered_committed[partition])
                    self.committed_records += moved
                    self._stats.at(partition).committed += moved
                    self._committed[partition] = self._reached[partition] = offset
                    self._covered_committed[partition] = covered[partition]
            log.debug("function %s: committed %s", self._function, _describe(pending))
            return True


def _describe(offsets: dict[Partition, Position]) -> str:
    return ", ".join(f"{p}@{o}" for p, o in sorted(offsets.items()))
