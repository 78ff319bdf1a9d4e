"""A lease as the table holds it (KCL 2.x's attribute names), and a shard as a source lists it.

Both are plain values: the table reads and writes leases, the lineage rules and the coordinator reason about them,
and a source maps its own listing (Kinesis ListShards, DynamoDB Streams DescribeStream) onto `Shard`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TRIM_HORIZON = "TRIM_HORIZON"
LATEST = "LATEST"
AT_TIMESTAMP = "AT_TIMESTAMP"
SHARD_END = "SHARD_END"
SENTINELS = frozenset({TRIM_HORIZON, LATEST, AT_TIMESTAMP, SHARD_END})
"""Checkpoints that are not a sequence number: where to start (the first three) and "fully handled"."""
UNSTARTED = frozenset({TRIM_HORIZON, LATEST, AT_TIMESTAMP})
"""Checkpoints of a lease nobody has handled a record of yet."""

Checkpoint = int | str
"""A sequence number (the last one handled, as an int) or one of the SENTINELS."""


@dataclass(frozen=True)
class Shard:
    """One shard as a source lists it: enough to build and order leases, nothing source-specific.

    `parents`: Kinesis's ParentShardId and AdjacentParentShardId (a merge has two), DynamoDB Streams'
    ParentShardId; `closed`: the shard has an ending sequence number (no more records will be added).
    """

    id: str
    parents: tuple[str, ...] = ()
    closed: bool = False
    start: int = 0
    """The first sequence number of its range (as listed; `streamfn status` shows it)."""
    end: int | None = None
    """The last sequence number of a closed shard's range, as listed (None while open, or unknown)."""

    @classmethod
    def described(cls, shard: dict[str, Any]) -> Shard:
        """A shard as AWS describes it (Kinesis ListShards, DescribeStream of both services): its parents, its
        sequence number range, closed when the range has an end."""
        parents = tuple(p for p in (shard.get("ParentShardId"), shard.get("AdjacentParentShardId")) if p)
        ranges = shard.get("SequenceNumberRange", {})
        end = ranges.get("EndingSequenceNumber")
        start = int(ranges.get("StartingSequenceNumber", 0))
        return cls(shard["ShardId"], parents, end is not None, start, None if end is None else int(end))


@dataclass(frozen=True)
class Lease:
    """One item of the lease table: who holds a shard, the fencing counter, where its processing stands."""

    key: str
    """leaseKey: the shard id."""
    counter: int = 0
    """leaseCounter: +1 on every write (renew, take, checkpoint, release); conditions compare it."""
    checkpoint: Checkpoint = TRIM_HORIZON
    owner: str | None = None
    """leaseOwner: the worker id, absent when nobody holds the lease."""
    owner_switches: int = 0
    """ownerSwitchesSinceCheckpoint."""
    parents: frozenset[str] = field(default_factory=frozenset)
    """parentShardId: every parent (a merge has two), despite KCL's singular name."""
    children: frozenset[str] = field(default_factory=frozenset)
    """childShardIds, written when the shard ends."""

    @property
    def ended(self) -> bool:
        return self.checkpoint == SHARD_END

    def item(self) -> dict[str, Any]:
        """The DynamoDB item (typed attribute values); empty sets are left out, as DynamoDB refuses them."""
        item: dict[str, Any] = {
            "leaseKey": {"S": self.key},
            "leaseCounter": {"N": str(self.counter)},
            "checkpoint": {"S": str(self.checkpoint)},
            "checkpointSubSequenceNumber": {"N": "0"},
            "ownerSwitchesSinceCheckpoint": {"N": str(self.owner_switches)},
        }
        if self.owner is not None:
            item["leaseOwner"] = {"S": self.owner}
        if self.parents:
            item["parentShardId"] = {"SS": sorted(self.parents)}
        if self.children:
            item["childShardIds"] = {"SS": sorted(self.children)}
        return item

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> Lease:
        return cls(
            key=item["leaseKey"]["S"],
            counter=int(item.get("leaseCounter", {"N": "0"})["N"]),
            checkpoint=parse_checkpoint(item.get("checkpoint", {"S": TRIM_HORIZON})["S"]),
            owner=item["leaseOwner"]["S"] if "leaseOwner" in item else None,
            owner_switches=int(item.get("ownerSwitchesSinceCheckpoint", {"N": "0"})["N"]),
            parents=frozenset(item.get("parentShardId", {}).get("SS", ())),
            children=frozenset(item.get("childShardIds", {}).get("SS", ())),
        )


def parse_checkpoint(value: str) -> Checkpoint:
    """A stored checkpoint: a sentinel stays a string, a sequence number becomes an int (ordered as numbers)."""
    if value in SENTINELS:
        return value
    if not value.isdigit():
        raise ValueError(f"not a sequence number nor one of {sorted(SENTINELS)}: {value!r}")
    return int(value)
