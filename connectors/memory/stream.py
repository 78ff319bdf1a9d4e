"""MemoryStream: shards of records, each group's checkpoints and leases, split and merge.

Positions start at 10 and step by 10 per shard, so that any "next = last + 1" left in the engine shows. A checkpoint
value is the position of the last record handled (0: none), as Kinesis's. The started readers of a group share its
shards evenly; a reader that joins or leaves moves shards (revoked, then assigned, as Kafka's rebalance), `take`
moves one lease at once (its reader finds it `lost`), and the children of a split or merge are handed out only
once every parent's end was checkpointed by the group.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from streamfn.record import Partition, RawRecord
from streamfn.source import CommitRefused
from streamfn.state.changelog import ChangelogEntry

POSITION_STEP = 10
PHANTOM = "phantom"
"""The owner of a lease taken by no reader of this process (another worker, somewhere)."""


class MemoryReader(Protocol):
    """What the stream needs of a reader (streamfn.connectors.memory.reader.MemoryReader), which imports it."""

    @property
    def ending(self) -> set[Partition]:
        """The shards whose end its engine is draining: they stay with it."""

    def wake(self) -> None:
        """Something changed: a record arrived, a lease or the group moved."""


class ShardEnded(Exception):
    """A record put into a shard that was split or merged."""


@dataclass(slots=True)
class Shard:
    partition: Partition
    parents: tuple[Partition, ...] = ()
    records: list[RawRecord] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    ended: bool = False

    def covered(self, checkpoint: int) -> int:
        """How many of its records `checkpoint` covers (the index of the first it does not)."""
        return bisect_right(self.positions, checkpoint)


@dataclass(slots=True)
class Group:
    readers: list[MemoryReader] = field(default_factory=list)
    """Started readers, in the order they joined."""
    owners: dict[Partition, MemoryReader | str] = field(default_factory=dict)
    """Who holds each shard's lease now."""
    target: dict[Partition, MemoryReader | str] = field(default_factory=dict)
    """Who should hold it once the readers have settled (revoked what they give up)."""
    taken: dict[Partition, MemoryReader | str] = field(default_factory=dict)
    """Leases moved by `take`: they stay with their taker."""
    checkpoints: dict[Partition, int] = field(default_factory=dict)
    finished: set[Partition] = field(default_factory=set)
    changelog: dict[Partition, list[ChangelogEntry]] = field(default_factory=dict)
    refused: list[tuple[Partition, int]] = field(default_factory=list)
    """Commits refused because the committing reader had lost the lease (a bug in the engine if ever non-empty)."""


class MemoryStream:
    def __init__(self, name: str, shards: int = 1) -> None:
        self.name = name
        self.shards: dict[Partition, Shard] = {}
        for _ in range(shards):
            self._add()
        self._groups: dict[str, Group] = {}
        self._readers: list[MemoryReader] = []

    def __repr__(self) -> str:
        return f"memory://{self.name}"

    def _add(self, parents: tuple[Partition, ...] = ()) -> Partition:
        partition = Partition(self.name, len(self.shards))
        self.shards[partition] = Shard(partition, parents)
        return partition

    def partition(self, shard: int | str | Partition) -> Partition:
        partition = shard if isinstance(shard, Partition) else Partition(self.name, shard)
        if partition not in self.shards:
            raise KeyError(f"{self}: no shard {partition.partition!r}")
        return partition

    def put(
        self,
        shard: int | str,
        value: bytes,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
        timestamp: int | None = None,
        position: int | None = None,
    ) -> int:
        """Append a record (`timestamp`: epoch ms, by default now, as Kinesis's arrival time); its position: by
        default the last one's + 10, or `position` (past the last), e.g. the sequence number the value names."""
        target = self.shards[self.partition(shard)]
        if target.ended:
            raise ShardEnded(f"{self}: shard {target.partition.partition!r} has ended (split or merged)")
        last = target.positions[-1] if target.positions else 0
        if position is None:
            position = last + POSITION_STEP
        elif position <= last:
            raise ValueError(f"{self}: position {position} is not past the shard's last, {last}")
        now = int(time.time() * 1000) if timestamp is None else timestamp
        target.records.append(RawRecord(self.name, target.partition.partition, position, now, key, value, headers))
        target.positions.append(position)
        self._wake()
        return position

    def split(self, shard: int | str) -> tuple[Partition, Partition]:
        """End the shard; two children take its place."""
        parent = self._end(shard)
        children = (self._add((parent,)), self._add((parent,)))
        self._changed()
        return children

    def merge(self, a: int | str, b: int | str) -> Partition:
        """End both shards; one child takes their place."""
        parents = (self._end(a), self._end(b))
        child = self._add(parents)
        self._changed()
        return child

    def _end(self, shard: int | str) -> Partition:
        partition = self.partition(shard)
        if self.shards[partition].ended:
            raise ShardEnded(f"{self}: shard {partition.partition!r} has ended already")
        self.shards[partition].ended = True
        return partition

    def committed(self, group_id: str) -> dict[Partition, int]:
        """The group's checkpoint values."""
        return dict(self.group(group_id).checkpoints)

    def finished(self, group_id: str) -> set[Partition]:
        """The shards whose end the group has checkpointed."""
        return set(self.group(group_id).finished)

    def refused(self, group_id: str) -> list[tuple[Partition, int]]:
        """Commits of shards whose lease the committing reader no longer held (none, if the engine is right)."""
        return list(self.group(group_id).refused)

    def owner(self, group_id: str, shard: int | str | Partition) -> MemoryReader | str | None:
        return self.group(group_id).owners.get(self.partition(shard))

    def take(self, group_id: str, partition: int | str | Partition, by: MemoryReader | None = None) -> None:
        """Move a shard's lease (`partition`: the shard or its Partition) to `by` (another reader of the group) or to
        a phantom owner outside this process, at once: its current reader finds it lost."""
        group = self.group(group_id)
        partition = self.partition(partition)
        owner: MemoryReader | str = PHANTOM if by is None else by
        group.owners[partition] = group.taken[partition] = owner
        self._changed()

    def group(self, group_id: str) -> Group:
        return self._groups.setdefault(group_id, Group())

    # --- what readers ask ------------------------------------------------------------------------------------

    def join(self, group_id: str, reader: MemoryReader) -> None:
        self.group(group_id).readers.append(reader)
        self._readers.append(reader)
        self._changed()

    def leave(self, group_id: str, reader: MemoryReader) -> None:
        group = self.group(group_id)
        group.readers.remove(reader)
        self._readers.remove(reader)
        for partition in [p for p, owner in group.owners.items() if owner is reader]:
            del group.owners[partition]
        for partition in [p for p, owner in group.taken.items() if owner is reader]:
            del group.taken[partition]
        self._changed()

    def release(self, group_id: str, partitions: set[Partition], reader: MemoryReader) -> None:
        """The reader gave the shards up (revoked): free for their next owner."""
        group = self.group(group_id)
        for partition in partitions:
            if group.owners.get(partition) is reader:
                del group.owners[partition]
        self._wake()

    def acquire(self, group_id: str, partition: Partition, reader: MemoryReader) -> bool:
        """Whether `reader` holds the shard's lease now: one `take` gave it, or a free one the group means for it."""
        group = self.group(group_id)
        owner = group.owners.get(partition)
        if owner is None and group.target.get(partition) is reader:
            group.owners[partition] = owner = reader
        return owner is reader

    def commit(self, group_id: str, offsets: dict[Partition, int], reader: MemoryReader) -> None:
        group = self.group(group_id)
        lost = {p: v for p, v in offsets.items() if group.owners.get(p) is not reader}
        for partition, value in offsets.items():
            if partition not in lost:
                group.checkpoints[partition] = value
        if lost:
            group.refused += lost.items()
            raise CommitRefused(set(lost), f"{self}: group {group_id}: no lease on {', '.join(map(str, lost))}")

    def finish(self, group_id: str, partition: Partition, reader: MemoryReader) -> None:
        """The reader handled and checkpointed the shard's end: its children may start."""
        group = self.group(group_id)
        group.finished.add(partition)
        if group.owners.get(partition) is reader:
            del group.owners[partition]
        self._changed()

    def ready(self, group_id: str) -> list[Partition]:
        """The shards the group may read: not finished, every parent finished."""
        group = self.group(group_id)
        return [
            p
            for p, shard in self.shards.items()
            if p not in group.finished and all(parent in group.finished for parent in shard.parents)
        ]

    def _changed(self) -> None:
        for group_id in self._groups:
            self._balance(group_id)
        self._wake()

    def _balance(self, group_id: str) -> None:
        """Who should hold each ready shard: taken leases stay, a shard being ended stays with its reader, the rest
        evenly over the started readers, each keeping what it holds as far as its share allows."""
        group = self.group(group_id)
        readers = group.readers
        target: dict[Partition, MemoryReader | str] = {}
        rest = []
        for partition in self.ready(group_id):
            owner = group.owners.get(partition)
            if partition in group.taken:
                target[partition] = group.taken[partition]
            elif owner is not None and not isinstance(owner, str) and partition in owner.ending:
                target[partition] = owner
            else:
                rest.append(partition)
        if readers:
            held = {id(r): [p for p in rest if group.owners.get(p) is r] for r in readers}
            base, extra = divmod(len(rest), len(readers))
            by_held = sorted(readers, key=lambda r: -len(held[id(r)]))
            cap = {id(r): base + (1 if i < extra else 0) for i, r in enumerate(by_held)}
            count = dict.fromkeys(cap, 0)
            for reader in readers:
                for partition in held[id(reader)][: cap[id(reader)]]:
                    target[partition] = reader
                    count[id(reader)] += 1
            for partition in rest:
                if partition not in target:
                    reader = next(r for r in readers if count[id(r)] < cap[id(r)])
                    target[partition] = reader
                    count[id(reader)] += 1
        group.target = target

    def _wake(self) -> None:
        for reader in self._readers:
            reader.wake()
