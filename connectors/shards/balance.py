"""What a worker takes at each scan: expiry as this worker observes it, and KCL 2.x's fair-share choice.

Kept apart from the coordinator's I/O so the arithmetic can be read (and tested) on its own:
- **Expiry** (KCL's DynamoDBLeaseTaker.updateAllLeases): there is no time in the table. Each scan notes, on this
  worker's monotonic clock, when it first saw each lease's current counter (the time the Scan answered, never
  earlier than the write); a lease is available when nobody owns it or its counter has not moved for longer than
  the lease duration. A new worker therefore needs two scans a lease duration apart to call a lease expired.
- **Fair share** (computeLeasesToTake, chooseLeasesToSteal): workable leases (not finished, parents done) are
  shared by the live owners plus this worker, target ceil(leases / workers), where a worker seen ending a shard
  within the last lease duration counts as live (a finished lease has no owner: at a rollover every worker may
  own nothing workable for a moment). Available leases go first (shuffled,
  so workers starting together collide less); only when none is available does the worker steal from the single
  most loaded worker while that one is above the target (or at it, when this worker needs two or more), at most
  `max_steal` per scan.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from streamfn.connectors.shards.lease import Lease
from streamfn.connectors.shards.lineage import takeable


class Expiry:
    """When this worker last saw each lease's counter move, and which workers recently finished a shard."""

    def __init__(self, duration: float) -> None:
        self.duration = duration
        self._seen: dict[str, tuple[int, float]] = {}
        self._owners: dict[str, str] = {}
        self._finished: dict[str, float] = {}

    def observe(self, leases: Mapping[str, Lease], now: float) -> None:
        """Note a scan that answered at `now`; leases no longer in the table are forgotten."""
        self._seen = {
            key: seen
            if (seen := self._seen.get(key)) is not None and seen[0] == lease.counter
            else (lease.counter, now)
            for key, lease in leases.items()
        }
        for key, lease in leases.items():
            owner = self._owners.get(key)
            if owner is not None and lease.ended:
                self._finished[owner] = now
        self._owners = {key: lease.owner for key, lease in leases.items() if lease.owner is not None}
        self._finished = {owner: at for owner, at in self._finished.items() if now - at <= self.duration}

    def finishers(self) -> set[str]:
        """Workers seen ending a shard within the last lease duration (a finished lease has no owner), alive though
        they may hold nothing workable for a moment: at a rollover every worker's shards end at once, and without
        them this worker would count itself alone and take every child, to have half of them stolen back."""
        return set(self._finished)

    def available(self, lease: Lease, now: float) -> bool:
        """Unowned, or its counter unchanged for longer than the lease duration."""
        seen = self._seen.get(lease.key)
        return lease.owner is None or (seen is not None and now - seen[1] > self.duration)


@dataclass(frozen=True)
class Choice:
    take: list[Lease]
    """Unowned or expired leases: announced to the owner at once."""
    steal: list[Lease]
    """Leases of a live worker: announced one lease duration after the take."""


def choose(
    leases: Mapping[str, Lease],
    mine: Collection[str],
    me: str,
    available: Mapping[str, bool],
    max_steal: int,
    rng: random.Random,
    finishers: Collection[str] = (),
) -> Choice:
    """What to take from a scan (`leases`), holding `mine`; `available` tells, per lease, whether it expired;
    `finishers` are workers alive though they may own nothing workable (Expiry.finishers)."""
    workable = {key: lease for key, lease in leases.items() if takeable(lease, leases)}
    live = {key: lease for key, lease in workable.items() if not available[key]}
    loads = Counter(lease.owner for key, lease in live.items() if key not in mine)
    loads.pop(me, None)
    workers = set(loads) | set(finishers) | {me}
    target = math.ceil(len(workable) / len(workers))
    needed = target - len(mine)
    if needed <= 0:
        return Choice([], [])
    free = [lease for key, lease in workable.items() if key not in live and key not in mine]
    if free:
        rng.shuffle(free)
        return Choice(free[:needed], [])
    if not loads:
        return Choice([], [])
    victim, load = loads.most_common(1)[0]
    steal = min(needed, load - target) if load > target else (1 if load == target and needed > 1 else 0)
    candidates = [lease for lease in live.values() if lease.owner == victim]
    return Choice([], rng.sample(candidates, min(steal, max_steal, len(candidates))))
