"""The lease coordinator of one worker: which shards it holds, kept by renewing, found by scanning and taking.

KCL 2.x's algorithm (the reference's lease-table section), with these choices:
- **Expiry without clocks in the table** (balance.Expiry): a lease is available when nobody owns it or its
  counter has not moved for longer than the lease duration on this worker's own clock. Hosts' clocks never meet.
- **The holder gives up first.** A held lease is valid until the start of its last successful write plus the
  lease duration; past that (renewals failing or hanging) the holder drops it and reports it lost, before any
  other worker can see it expired. A renew or checkpoint refused on its condition loses the lease at once.
- **No two holders, even while stealing.** A lease taken from a live worker (a steal, to even the shares) is
  renewed at once but announced to the owner only one lease duration later: by then the previous holder has
  either been refused a renew or seen its own validity end, so the two never both believe they hold the shard
  (KCL 2.x announces at once, and the victim goes on processing until its next renew, #265). Expired and
  unowned leases are announced at once: their previous holder has already given them up.
- **Fair shares** (balance.choose): every take period, unowned and expired leases first, up to the target
  ceil(leases / workers) (a worker that just ended a shard counts), then steals from the most loaded worker,
  `max_steal` (default 1) at a time. Leases count only when workable: finished leases (SHARD_END, never owned)
  and children still waiting for their parents do not.
- **Renew and checkpoint never race.** Both bump the counter, so each lease has one asyncio lock around both.
- **Graceful release.** `release_all` gives leases up in the table (a conditional REMOVE of leaseOwner), so the
  next scan of another worker takes them, instead of KCL 2.x's wait for expiry.

The owner (a shard reader) learns what happens from `events`: `Acquired(shard, checkpoint)` when it may start
reading a shard from that checkpoint, `Lost(shard)` when another worker has it or may have it (stop at once and
commit nothing more for it). Its own `end`, `release_all` and `stop` produce no events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import socket
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from streamfn.connectors.shards.balance import Expiry, choose
from streamfn.connectors.shards.lease import SENTINELS, SHARD_END, TRIM_HORIZON, Checkpoint, Lease, Shard
from streamfn.connectors.shards.lineage import cleanable, plan, vanished
from streamfn.connectors.shards.table import LeaseError, LeaseLost, LeaseTable, LeaseTableError

log = logging.getLogger("streamfn.shards")

LEASE_DURATION_SECONDS = 10.0
"""KCL's failoverTimeMillis: a lease whose counter has not moved for this long is expired."""
CLEANUP_DELAY_SECONDS = 24 * 3600.0
"""How long a finished lease stays deletable before it is deleted: Kinesis's default retention, 24 h."""


@dataclass(frozen=True)
class Acquired:
    """This worker now holds `shard`: read it from `checkpoint` (a sequence number handled last, or a sentinel)."""

    shard: str
    checkpoint: Checkpoint
    at: float
    """When (the event loop's clock, monotonic) the worker started to hold it."""


@dataclass(frozen=True)
class Lost:
    """This worker no longer holds `shard`: another may already; stop it at once and commit nothing more."""

    shard: str
    at: float
    """When the lease stopped being this worker's (loop clock): its deadline when it expired (no write of this
    worker's can land after it: each runs under that deadline), else when the table refused a write. An event
    loop slowed by load may announce it later than that."""


LeaseEvent = Acquired | Lost
_Write = Callable[[Lease], Awaitable[Lease]]
"""A conditional write on a held lease (table.checkpoint, table.end...)."""


@dataclass(eq=False)
class _Held:
    lease: Lease
    valid_until: float
    """The start of the last successful write plus the lease duration: until then nobody else can take it."""
    next_renew: float
    announce_at: float | None
    """When a stolen lease is announced (None once it is)."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    keeper: asyncio.Task[None] | None = None


def default_worker_id() -> str:
    """Unique per process, readable by an operator: host, process id and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class LeaseCoordinator:
    """Holds a fair share of a lease table's shards for one worker, and fences its checkpoints."""

    def __init__(
        self,
        table: LeaseTable,
        worker_id: str | None = None,
        *,
        lease_duration: float = LEASE_DURATION_SECONDS,
        take_period: float | None = None,
        initial_position: str = TRIM_HORIZON,
        cleanup_delay: float = CLEANUP_DELAY_SECONDS,
        max_steal: int = 1,
    ) -> None:
        """`take_period` defaults to half the lease duration (a killed worker's leases move within about twice
        the duration); `cleanup_delay` is the stream's retention (a finished shard is still listed until then)."""
        if lease_duration <= 0 or (take_period is not None and take_period <= 0) or max_steal < 1:
            raise ValueError("lease_duration and take_period must be positive, max_steal at least 1")
        if initial_position not in SENTINELS - {SHARD_END}:
            raise ValueError(f"initial_position must be TRIM_HORIZON, LATEST or AT_TIMESTAMP: {initial_position!r}")
        self.table = table
        self.worker_id = worker_id or default_worker_id()
        self.lease_duration = lease_duration
        self.renew_period = lease_duration / 3
        self.take_period = take_period if take_period is not None else lease_duration / 2
        self.initial_position = initial_position
        self.cleanup_delay = cleanup_delay
        self.max_steal = max_steal
        self.events: asyncio.Queue[LeaseEvent] = asyncio.Queue()
        self._held: dict[str, _Held] = {}
        self._expiry = Expiry(lease_duration)
        self._cleanable_since: dict[str, float] = {}
        self._taker: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._random = random.Random()

    def __str__(self) -> str:
        return f"worker {self.worker_id!r} on {self.table}"

    # --- what the owner calls ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start scanning and taking (the first scan at once); held leases are renewed by their own tasks."""
        if self._taker is None:
            self._stopping.clear()
            self._taker = asyncio.create_task(self._take_loop(), name=f"lease taker {self.worker_id}")

    async def stop_taking(self) -> None:
        """Take no more leases (the first step of a graceful stop); held ones are still renewed. A scan under way
        finishes first: cancelled half way, a take could go through in the table unknown to this worker, which
        would then neither renew nor release that lease."""
        if self._taker is not None:
            self._stopping.set()
            await self._taker
            self._taker = None

    async def stop(self, release: bool = True) -> None:
        """Stop taking and renewing; with `release`, give every held lease up in the table first. Without it the
        leases stay owned and expire after the lease duration, as if the process had been killed (the taker is
        then cancelled at once, whatever it is doing)."""
        if release:
            await self.stop_taking()
            await self.release_all()
        elif self._taker is not None:
            self._taker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._taker
            self._taker = None
        for key in list(self._held):
            await self._forget(key)

    def held(self) -> dict[str, Checkpoint]:
        """The shards this worker holds (announced by `Acquired`), with their last checkpoint."""
        return {key: held.lease.checkpoint for key, held in self._held.items() if held.announce_at is None}

    def owns(self, shard: str) -> bool:
        held = self._held.get(shard)
        return held is not None and held.announce_at is None and _now() < held.valid_until

    async def sync(self, shards: Sequence[Shard]) -> list[str]:
        """Create the leases the listing (every shard the stream still has) calls for (see lineage.plan), and
        delete finished leases of shards it no longer has (lineage.vanished); the shards whose lease it created."""
        leases = {lease.key: lease for lease in await self.table.scan()}
        created = []
        for lease in plan(shards, leases.keys(), self.initial_position):
            if await self.table.create(lease):
                created.append(lease.key)
        if created:
            log.info("%s: created leases for %s", self, ", ".join(created))
        listed = {shard.id for shard in shards}
        for key, lease in leases.items():
            if vanished(lease, leases, listed) and await self.table.delete_ended(key):
                log.info("%s: deleted the finished lease of %s, a shard the stream no longer has", self, key)
        return created

    async def checkpoint(self, shard: str, sequence: int) -> None:
        """Record that `shard` is handled up to and including `sequence`. LeaseLost (and a Lost event) if it is not
        held any more: the table keeps the new holder's checkpoint. LeaseTableError if the table failed: the
        lease is still held, the checkpoint may be tried again."""
        await self._write(shard, "checkpoint", lambda lease: self.table.checkpoint(lease, sequence))

    async def end(self, shard: str, children: Sequence[Shard] = ()) -> None:
        """Record that `shard` is fully handled: create its children's leases (TRIM_HORIZON), then write SHARD_END
        with their ids and let the lease go; the children become takeable once all their parents ended."""
        for child in children:
            await self.table.create(Lease(key=child.id, parents=frozenset(child.parents)))
        ids = [child.id for child in children]
        await self._write(shard, "shard end", lambda lease: self.table.end(lease, ids), forget=True)
        log.info("%s: shard %s ended (children: %s)", self, shard, ", ".join(ids) or "none")

    async def release_all(self) -> None:
        """Give every held lease up (conditionally) so that other workers take them at their next scan."""
        await asyncio.gather(*(self._release(key) for key in list(self._held)))
        log.info("%s: released its leases", self)

    async def _release(self, shard: str) -> None:
        held = self._held.get(shard)
        if held is None:
            return
        async with held.lock:  # after a checkpoint under way; dropped before the write, so never held by two
            lease = held.lease
            await self._forget(shard)
        try:
            await self.table.release(lease)
        except LeaseError as error:  # lost meanwhile, or the table failed: then it expires
            log.info("%s: release of %s: %s", self, shard, error)

    # --- holding -------------------------------------------------------------------------------------------------

    async def _write(self, shard: str, action: str, write: _Write, forget: bool = False) -> None:
        """One conditional write on a held lease under its lock, within its validity; a refusal loses it. With
        `forget`, the lease is dropped under the same lock, so no renew follows the write."""
        held = self._held.get(shard)
        if held is None or held.announce_at is not None:
            raise LeaseLost(shard, f"{action} by {self.worker_id!r}: not held")
        try:
            async with asyncio.timeout_at(held.valid_until), held.lock:
                if self._held.get(shard) is not held:
                    raise LeaseLost(shard, f"{action} by {self.worker_id!r}: lost while waiting for the lease")
                started = _now()
                held.lease = await write(held.lease)
                held.valid_until = started + self.lease_duration
                if forget:
                    await self._forget(shard)
        except TimeoutError:
            await self._lose(shard, held, "its validity ended before the write")
            raise LeaseLost(shard, f"{action} by {self.worker_id!r}: not renewed within the lease duration") from None
        except LeaseLost as error:
            await self._lose(shard, held, str(error))
            raise

    async def _keep(self, shard: str, held: _Held) -> None:
        """Renew one lease every renew period until it is dropped; announce it when its time comes."""
        while self._held.get(shard) is held:
            wake = min(held.next_renew, held.valid_until, held.announce_at or math.inf)
            await asyncio.sleep(max(0.0, wake - _now()))
            if self._held.get(shard) is not held:
                return
            if _now() >= held.valid_until:
                await self._lose(shard, held, "not renewed within the lease duration")
                return
            if held.announce_at is not None and _now() >= held.announce_at:
                self._announce(held)
            if _now() >= held.next_renew:
                held.next_renew = _now() + self.renew_period
                await self._renew(shard, held)

    async def _renew(self, shard: str, held: _Held) -> None:
        try:
            async with asyncio.timeout_at(held.valid_until), held.lock:
                if self._held.get(shard) is not held:
                    return
                started = _now()
                held.lease = await self.table.renew(held.lease)
                held.valid_until = started + self.lease_duration
        except TimeoutError:
            await self._lose(shard, held, "renew did not finish within the lease duration")
        except LeaseLost as error:
            await self._lose(shard, held, str(error))
        except LeaseTableError as error:
            log.warning("%s: renew of %s failed, trying again: %s", self, shard, error)

    def _hold(self, lease: Lease, started: float, stolen: bool) -> None:
        valid_until = started + self.lease_duration
        held = _Held(
            lease=lease,
            valid_until=valid_until,
            next_renew=_now() + self.renew_period,
            announce_at=valid_until if stolen else None,
        )
        self._held[lease.key] = held
        if not stolen:
            self._announce(held)
        held.keeper = asyncio.create_task(self._keep(lease.key, held), name=f"lease {lease.key} {self.worker_id}")

    def _announce(self, held: _Held) -> None:
        held.announce_at = None
        log.info("%s: acquired %s at checkpoint %s", self, held.lease.key, held.lease.checkpoint)
        self.events.put_nowait(Acquired(held.lease.key, held.lease.checkpoint, _now()))

    async def _lose(self, shard: str, held: _Held, why: str) -> None:
        if self._held.get(shard) is not held:
            return
        announced = held.announce_at is None
        await self._forget(shard)
        log.warning("%s: lost %s: %s", self, shard, why)
        if announced:
            self.events.put_nowait(Lost(shard, min(_now(), held.valid_until)))

    async def _forget(self, shard: str) -> None:
        """Drop a lease locally (no event, no write) and stop its keeper."""
        held = self._held.pop(shard, None)
        if held is None or held.keeper is None or held.keeper is asyncio.current_task():
            return
        held.keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await held.keeper

    # --- taking --------------------------------------------------------------------------------------------------

    async def _take_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await self._take_pass()
            except LeaseTableError as error:
                log.warning("%s: lease scan failed, trying again: %s", self, error)
            except Exception:  # a bug must not end taking for good: log it, try again next period
                log.exception("%s: lease scan failed", self)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.take_period)

    async def _take_pass(self) -> None:
        """One scan: note counter changes, notice leases taken from this worker, clean up, take and steal."""
        leases = {lease.key: lease for lease in await self.table.scan()}
        now = _now()
        self._expiry.observe(leases, now)
        for key, held in list(self._held.items()):
            found = leases.get(key)
            if found is None or (found.owner != self.worker_id and found.counter > held.lease.counter):
                await self._lose(key, held, "the table shows it " + ("deleted" if found is None else "taken"))
        await self._clean(leases, now)

        available = {key: self._expiry.available(lease, now) for key, lease in leases.items()}
        choice = choose(
            leases,
            self._held.keys(),
            self.worker_id,
            available,
            self.max_steal,
            self._random,
            self._expiry.finishers(),
        )
        await asyncio.gather(*(self._take(lease, stolen=False) for lease in choice.take))
        for lease in choice.steal:
            await self._take(lease, stolen=True)

    async def _take(self, lease: Lease, stolen: bool) -> None:
        started = _now()
        try:
            taken = await self.table.take(lease, self.worker_id)
        except LeaseError as error:  # another worker took or renewed it first, or the table failed: next pass
            log.info("%s: could not take %s: %s", self, lease.key, error)
            return
        if stolen:
            log.info("%s: stole %s from %s (announced in %.1f s)", self, lease.key, lease.owner, self.lease_duration)
        self._hold(taken, started, stolen)

    async def _clean(self, leases: dict[str, Lease], now: float) -> None:
        """Delete finished leases that have been deletable (lineage.cleanable) for the cleanup delay."""
        ready = {key for key, lease in leases.items() if cleanable(lease, leases)}
        self._cleanable_since = {key: self._cleanable_since.get(key, now) for key in ready}
        for key, since in list(self._cleanable_since.items()):
            if now - since >= self.cleanup_delay and await self.table.delete_ended(key):
                log.info("%s: deleted the finished lease of %s", self, key)
                del self._cleanable_since[key]


def _now() -> float:
    return asyncio.get_running_loop().time()
