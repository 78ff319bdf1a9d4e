"""Shard lineage: which leases to create for a listing, which leases may be taken, which finished ones may go.

The rules (the reference's shard-lifecycle section; KCL's HierarchicalShardSyncer, BlockOnParentShardTask and
LeaseCleanupManager):
- A new lineage (no lease on any ancestor) starts at the initial position: TRIM_HORIZON and AT_TIMESTAMP create
  leases for the oldest listed ancestors and everything below them (children blocked until their parents end);
  LATEST creates leases for the open shards only (their closed ancestors are skipped for good).
- Below a shard that has a lease, every listed child gets a lease at TRIM_HORIZON, whatever the initial
  position, so no record between the parent's end and the child's first read is skipped.
- A shard that has a descendant with a lease never gets one (it was finished and cleaned up, or deliberately
  skipped at LATEST): that is what keeps a periodic sync from replaying a finished lineage.
- A lease may be taken only when every parent lease is at SHARD_END or gone (a missing parent lease counts as
  finished, as in KCL: parents expired from the stream, skipped at LATEST, or cleaned up), so a key's records
  keep their order across a split or merge.
- A finished lease may be deleted once its parents' leases are gone and every child has started (its checkpoint
  is past the initial sentinels), after a delay (the stream's retention): deleting it earlier would unblock, or
  replay, part of the lineage. A finished lease whose shard is no longer listed (expired) goes at once.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from streamfn.connectors.shards.lease import LATEST, TRIM_HORIZON, UNSTARTED, Lease, Shard


def plan(shards: Sequence[Shard], leases: Collection[str], initial: str) -> list[Lease]:
    """The leases to create for `shards` (as listed) given the shards that have leases, parents before children."""
    listed = {shard.id: shard for shard in shards}
    children: dict[str, list[str]] = {}
    for shard in shards:
        for parent in shard.parents:
            children.setdefault(parent, []).append(shard.id)
    existing = set(leases)
    covered = set(existing)  # shards whose lineage is under way: their children start at TRIM_HORIZON
    created: dict[str, Lease] = {}
    for shard in _parents_first(listed):
        if shard.id in covered:
            continue
        if _descendants(shard.id, children) & existing:
            covered.add(shard.id)
            continue
        listed_parents = [parent for parent in shard.parents if parent in listed]
        if any(parent in covered for parent in listed_parents):
            start = TRIM_HORIZON
        elif any(parent in created for parent in listed_parents):
            start = TRIM_HORIZON if initial == LATEST else initial
        elif initial == LATEST and shard.closed:
            continue
        else:
            start = initial
        created[shard.id] = Lease(key=shard.id, checkpoint=start, parents=frozenset(shard.parents))
    return list(created.values())


def takeable(lease: Lease, leases: Mapping[str, Lease]) -> bool:
    """Whether the shard may be processed now: not finished, and every parent finished or without a lease."""
    return not lease.ended and all(parent not in leases or leases[parent].ended for parent in lease.parents)


def cleanable(lease: Lease, leases: Mapping[str, Lease]) -> bool:
    """Whether a lease may be deleted: finished, its parents' leases gone, each child's lease started."""
    if not lease.ended or any(parent in leases for parent in lease.parents) or not lease.children:
        return False
    return all(child in leases and leases[child].checkpoint not in UNSTARTED for child in lease.children)


def vanished(lease: Lease, leases: Mapping[str, Lease], listed: Collection[str]) -> bool:
    """Whether a finished lease's shard has expired from the stream (not listed): deletable once its parents'
    leases are gone (oldest first), as no listing can bring it back and a missing lease counts as finished."""
    return lease.ended and lease.key not in listed and not any(parent in leases for parent in lease.parents)


def _parents_first(listed: Mapping[str, Shard]) -> list[Shard]:
    """The listed shards in an order where every listed parent comes before its children (then by id)."""
    order: list[Shard] = []
    placed: set[str] = set()

    def place(shard: Shard) -> None:
        if shard.id in placed:
            return
        placed.add(shard.id)
        for parent in sorted(shard.parents):
            if parent in listed:
                place(listed[parent])
        order.append(shard)

    for key in sorted(listed):
        place(listed[key])
    return order


def _descendants(shard: str, children: Mapping[str, list[str]]) -> set[str]:
    found: set[str] = set()
    pending = list(children.get(shard, ()))
    while pending:
        child = pending.pop()
        if child not in found:
            found.add(child)
            pending.extend(children.get(child, ()))
    return found
