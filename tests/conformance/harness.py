"""What a source's harness does for the scenarios, and the ledger that checks a run against the source's truth.

A scenario knows records by their id (the JSON value `{"id": n}`) and by (partition, index): the index-th record
put into that partition. The harness turns the source's checkpoints into "how many records of each partition are
covered", so scenarios never see positions or the source's checkpoint convention (Kafka commits the next offset,
a stream the position of the last record handled).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
import pytest
from conftest import run_worker

from streamfn import App
from streamfn.source import Source


@dataclass(frozen=True)
class Put:
    """A record a scenario puts: into `partition`, with `key`; its value is `{"id": id}`."""

    partition: int
    id: int
    key: bytes | None = None

    @property
    def value(self) -> bytes:
        return orjson.dumps({"id": self.id})


@dataclass(frozen=True)
class Letter:
    """A dead letter as every source's destination can say it: which record (partition, id) and why."""

    partition: int
    id: int
    condition: str


class Stream(Protocol):
    """A stream (Kafka: a topic) of the harness's source with its partitions (shards), made for one test."""

    group: str
    """A checkpoint group (Kafka: consumer group) of this stream's own, for the functions of the test."""
    on_failure: Any
    """The dead-letter destination a function of this test names."""

    async def put(self, records: Sequence[Put]) -> None:
        """Append the records, each partition's in the order given."""

    def source(self, group: str) -> Source:
        """The Source a function reading this stream in checkpoint group `group` declares."""

    async def covered(self, group: str) -> dict[int, int]:
        """Per partition, how many of its records (counted from its first) the group's checkpoint covers."""

    async def letters(self) -> list[Letter]:
        """Every dead letter `on_failure` holds, in order."""

    # Only with the harness's `leases` capability:
    def take(self, group: str, partition: int) -> None:
        """Another worker (outside this process) takes the partition's lease now: its reader finds it lost."""

    def refused(self, group: str) -> list[Any]:
        """Checkpoints the source refused because the committing worker no longer held the lease."""

    # Only with the harness's `shard_ends` capability:
    def split(self, partition: int) -> tuple[int, int]:
        """End the partition; its two children take its place."""

    def merge(self, a: int, b: int) -> int:
        """End both partitions; their one child takes their place."""

    def finished(self, group: str) -> set[int]:
        """The partitions whose end the group has checkpointed."""


class Harness(Protocol):
    name: str
    servers: str | None
    """What a Worker is given as its default servers (None for a source that needs none)."""
    leases: bool
    """The source's partitions are leases another worker can take while this one runs (the `lost` event)."""
    shard_ends: bool
    """The source's partitions can end, with children (a split or a merge) that start once their parents ended."""

    async def stream(self, partitions: int) -> Stream: ...

    async def close(self) -> None:
        """Release what the streams of the test hold (clients)."""


MAX_VIOLATIONS = 10
"""A ledger stops checking after this many: the first ones say what went wrong."""


def needs(harness: Harness, capability: str, why: str) -> None:
    """Skip the scenario, saying so, for a source without `capability` (one of the harness's flags)."""
    if not getattr(harness, capability):
        pytest.skip(f"{harness.name} cannot express this: {why}")


@dataclass(repr=False)  # its records and samples would bury an assertion's message
class Ledger:
    """What the handlers of a run did, and every checkpoint sampled while it ran, checked against each other.

    The scenario's handler calls `started(records)` when an invocation begins and `handled(records)` for the records
    it succeeded with, before returning. `watch` samples the group's checkpoints until stopped and checks, at each
    sample, that the commit covers only records handled by then (or `poison`: records meant for the dead-letter
    destination), and that checkpoints never move back; `check_no_replay_past_commits` checks afterwards that no
    invocation began, after a sample, for a record that sample showed covered (nothing redone once committed).
    """

    index: dict[int, tuple[int, int]] = field(default_factory=dict)
    """id -> (partition, index in the partition)."""
    ids: dict[tuple[int, int], int] = field(default_factory=dict)
    poison: set[int] = field(default_factory=set)
    starts: dict[int, list[float]] = field(default_factory=lambda: defaultdict(list))
    handled_at: dict[int, list[float]] = field(default_factory=lambda: defaultdict(list))
    samples: list[tuple[float, dict[int, int]]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    def plan(self, records: Sequence[Put]) -> list[Put]:
        """Know `records` (put in this order, after any planned before): their partitions and indexes."""
        counts = Counter(partition for partition, _ in self.ids)
        for put in records:
            position = (put.partition, counts[put.partition])
            counts[put.partition] += 1
            self.index[put.id], self.ids[position] = position, put.id
        return list(records)

    def started(self, ids: Sequence[int]) -> None:
        now = time.monotonic()
        for i in ids:
            self.starts[i].append(now)

    def handled(self, ids: Sequence[int]) -> None:
        now = time.monotonic()
        for i in ids:
            self.handled_at[i].append(now)

    def all_handled(self) -> bool:
        return set(self.handled_at) | self.poison == set(self.index)

    def times_handled(self, i: int) -> int:
        return len(self.handled_at.get(i, ()))

    def covers(self, counts: dict[int, int]) -> bool:
        """The last sample showed these counts covered."""
        return bool(self.samples) and self.samples[-1][1] == counts

    async def watch(self, stream: Stream, group: str, every: float = 0.05) -> None:
        """Sample until cancelled."""
        while True:
            covered = await stream.covered(group)
            now = time.monotonic()
            self._check(now, covered)
            self.samples.append((now, covered))
            await asyncio.sleep(every)

    def _check(self, now: float, covered: dict[int, int]) -> None:
        if len(self.violations) >= MAX_VIOLATIONS:
            return
        if self.samples:
            before = self.samples[-1][1]
            back = {p: (before.get(p, 0), n) for p, n in covered.items() if n < before.get(p, 0)}
            if back:
                self.violations.append(f"checkpoints moved back (partition: before, now): {back}")
        for partition, count in covered.items():
            for index in range(count):
                i = self.ids.get((partition, index))
                if i is None:
                    self.violations.append(f"partition {partition}: covers {count} records, only {index} were put")
                    break
                if i not in self.poison and not any(t <= now for t in self.handled_at.get(i, ())):
                    self.violations.append(f"partition {partition}: commit covers record {i} (index {index}) unhandled")
                    break

    def check_no_replay_past_commits(self) -> list[str]:
        """Invocations that began after a sample showed their record covered (the record was done again)."""
        replays = []
        for sampled, covered in self.samples:
            for i, starts in self.starts.items():
                partition, index = self.index[i]
                if index < covered.get(partition, 0) and any(t > sampled for t in starts):
                    replays.append(f"record {i} invoked after the commit covered it")
        return sorted(set(replays))


async def run_until_covered(
    harness: Harness, app: App, stream: Stream, ledger: Ledger, done: dict[int, int], timeout: float = 40
) -> None:
    """Run `app` in a worker, the ledger watching its group, until every record was handled (or is poison) and the
    checkpoints cover `done`; then check the ledger."""
    watching = asyncio.create_task(ledger.watch(stream, stream.group))
    try:
        await run_worker(app, harness.servers, lambda: ledger.all_handled() and ledger.covers(done), timeout=timeout)
    finally:
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching
    assert ledger.violations == []
    assert ledger.check_no_replay_past_commits() == []
    assert await stream.covered(stream.group) == done
