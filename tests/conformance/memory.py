"""The memory harness: a MemoryStream per stream (positions 10, 20, 30...; checkpoints name the last record handled)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from conformance.harness import Letter, Put
from streamfn.connectors.memory import MemoryDestination, MemorySource, MemoryStream

_streams = itertools.count()


@dataclass
class MemoryHarnessStream:
    """The harness's view of one MemoryStream; `memory` is the stream itself, for what only it can do (take a lease,
    split, merge)."""

    memory: MemoryStream
    on_failure: MemoryDestination
    group = "g"  # the stream is the test's own

    async def put(self, records: Sequence[Put]) -> None:
        for r in records:
            self.memory.put(r.partition, r.value, key=r.key)

    def source(self, group: str) -> MemorySource:
        return MemorySource(self.memory, group_id=group)

    async def covered(self, group: str) -> dict[int, int]:
        committed = self.memory.committed(group)
        return {int(p.partition): shard.covered(committed.get(p, 0)) for p, shard in self.memory.shards.items()}

    async def letters(self) -> list[Letter]:
        return [
            Letter(int(letter.partition.partition), orjson.loads(letter.value or b"")["id"], letter.condition)
            for letter in self.on_failure.letters
        ]

    def take(self, group: str, partition: int) -> None:
        self.memory.take(group, partition)

    def refused(self, group: str) -> list[Any]:
        return list(self.memory.refused(group))

    def split(self, partition: int) -> tuple[int, int]:
        a, b = self.memory.split(partition)
        return int(a.partition), int(b.partition)

    def merge(self, a: int, b: int) -> int:
        return int(self.memory.merge(a, b).partition)

    def finished(self, group: str) -> set[int]:
        return {int(p.partition) for p in self.memory.finished(group)}


class MemoryHarness:
    name = "memory"
    servers = None
    leases = True
    shard_ends = True

    async def stream(self, partitions: int) -> MemoryHarnessStream:
        n = next(_streams)
        return MemoryHarnessStream(MemoryStream(f"s{n}", shards=partitions), MemoryDestination(f"dlq{n}"))

    async def close(self) -> None: ...
