"""The shard lease machinery (streamfn.connectors.shards) against moto's DynamoDB in server mode: fair shares,
takeover after a kill, graceful release, fenced checkpoints, no two holders at once, parents before children,
lease creation at LATEST and TRIM_HORIZON, cleanup; and the lineage rules on their own.

Lease durations are 1 s (take period 0.5 s) so every scenario takes seconds; each test has its own table.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from conftest import wait_for
from pydantic import SecretStr

from streamfn.connectors.shards import (
    LATEST,
    SHARD_END,
    TRIM_HORIZON,
    Acquired,
    AwsAccess,
    Lease,
    LeaseCoordinator,
    LeaseLost,
    LeaseTable,
    Lost,
    Shard,
    default_table_name,
)
from streamfn.connectors.shards.balance import Expiry, choose
from streamfn.connectors.shards.lineage import cleanable, plan, takeable, vanished

DURATION = 2.0
TAKE_PERIOD = 1.0
CLEANUP_DELAY = 0.6
_tables = itertools.count()
EIGHT = [Shard(f"shardId-{i:012d}") for i in range(8)]
# shardId-0 split into 3 and 4; shardId-1 and shardId-2 merged into 5.
RESHARDED = [
    Shard("s0", closed=True),
    Shard("s1", closed=True),
    Shard("s2", closed=True),
    Shard("s3", parents=("s0",)),
    Shard("s4", parents=("s0",)),
    Shard("s5", parents=("s1", "s2")),
]


def access(endpoint: str) -> AwsAccess:
    return AwsAccess(
        region_name="us-east-1",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key=SecretStr("testing"),
    )


@dataclass
class Holding:
    worker: str
    start: float
    end: float | None = None


@dataclass
class Fleet:
    """Coordinators on one table, each with its own client, and every holding their events announced."""

    endpoint: str
    name: str
    coordinators: dict[str, LeaseCoordinator] = field(default_factory=dict)
    holdings: dict[str, list[Holding]] = field(default_factory=dict)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self, worker: str, **options: Any) -> LeaseCoordinator:
        table = await LeaseTable.open(self.name, access(self.endpoint))
        options = {"lease_duration": DURATION, "take_period": TAKE_PERIOD, **options}
        coordinator = LeaseCoordinator(table, worker, **options)
        self.coordinators[worker] = coordinator
        self._tasks.append(asyncio.create_task(self._record(coordinator)))
        coordinator.start()
        return coordinator

    async def _record(self, coordinator: LeaseCoordinator) -> None:
        while True:
            self._note(coordinator, await coordinator.events.get())

    def _note(self, coordinator: LeaseCoordinator, event: Acquired | Lost) -> None:
        if isinstance(event, Lost):
            self._close(coordinator.worker_id, event.at, event.shard)
        elif self.coordinators.get(coordinator.worker_id) is coordinator:  # a stopping worker's late take: released
            self.holdings.setdefault(event.shard, []).append(Holding(coordinator.worker_id, event.at))

    def _close(self, worker: str, at: float, shard: str | None = None) -> None:
        for key, holdings in self.holdings.items():
            for holding in holdings:
                if holding.worker == worker and holding.end is None and shard in (None, key):
                    holding.end = at

    async def stop(self, worker: str, release: bool) -> None:
        """A graceful stop (release) or a kill -9 (tasks cancelled, nothing written); its holdings end now."""
        coordinator = self.coordinators[worker]
        while not coordinator.events.empty():  # what it said before the stop counts, however late it is read
            self._note(coordinator, coordinator.events.get_nowait())
        self.coordinators.pop(worker)
        self._close(worker, asyncio.get_running_loop().time())
        await coordinator.stop(release=release)
        await coordinator.table.close()

    def counts(self) -> dict[str, int]:
        return {worker: len(c.held()) for worker, c in self.coordinators.items()}

    async def close(self) -> None:
        for worker in list(self.coordinators):
            await self.stop(worker, release=False)
        for task in self._tasks:
            task.cancel()


@pytest.fixture
async def fleet(moto_endpoint: str) -> AsyncIterator[Fleet]:
    group = Fleet(moto_endpoint, f"leases-{next(_tables)}")
    try:
        yield group
    finally:
        await group.close()


@asynccontextmanager
async def opened(fleet: Fleet) -> AsyncIterator[LeaseTable]:
    """A client of the fleet's table, for setting it up and reading what the workers wrote."""
    table = await LeaseTable.open(fleet.name, access(fleet.endpoint))
    try:
        yield table
    finally:
        await table.close()


async def leases(table: LeaseTable) -> dict[str, Lease]:
    return {lease.key: lease for lease in await table.scan()}


def fair(counts: dict[str, int], shards: int) -> bool:
    return sum(counts.values()) == shards and max(counts.values()) - min(counts.values()) <= 1


async def timed(condition: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    await wait_for(condition, timeout, what)
    return time.monotonic() - started


# --- the table ------------------------------------------------------------------------------------------------------


async def test_table_is_created_on_demand_with_kcl_attribute_names(
    moto_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The standard AWS chain finds moto through AWS_ENDPOINT_URL_DYNAMODB; the items carry KCL 2.x's names."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", moto_endpoint)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    name = f"leases-{next(_tables)}"
    table = await LeaseTable.open(name)
    try:
        described = await table._client.describe_table(TableName=name)
        assert described["Table"]["TableStatus"] == "ACTIVE"
        assert described["Table"]["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
        assert described["Table"]["KeySchema"] == [{"AttributeName": "leaseKey", "KeyType": "HASH"}]
        await (await LeaseTable.open(name)).close()  # a second worker finds it
        assert await table.create(Lease("s5", parents=frozenset({"s1", "s2"})))
        assert not await table.create(Lease("s5"))  # attribute_not_exists(leaseKey): the first one stays
        taken = await table.take(Lease("s5", parents=frozenset({"s1", "s2"})), "worker-a")
        sequence = 49590338271490256608559692538361571095921575989136588898  # 56 digits, as Kinesis's
        checkpointed = await table.checkpoint(taken, sequence)
        ended = await table.end(checkpointed, ["s7"])
        item = (await table._client.get_item(TableName=name, Key={"leaseKey": {"S": "s5"}}))["Item"]
        assert item == {
            "leaseKey": {"S": "s5"},
            "leaseCounter": {"N": "3"},
            "checkpoint": {"S": SHARD_END},
            "checkpointSubSequenceNumber": {"N": "0"},
            "ownerSwitchesSinceCheckpoint": {"N": "0"},
            "parentShardId": {"SS": ["s1", "s2"]},
            "childShardIds": {"SS": ["s7"]},
        }
        assert ended == Lease.from_item(item)
        assert taken.owner_switches == 1 and checkpointed.checkpoint == sequence
    finally:
        await table.close()


async def test_writes_are_conditional_on_the_counter_and_a_retried_write_that_went_through_succeeds(
    fleet: Fleet,
) -> None:
    async with opened(fleet) as table:
        await table.create(Lease("s0"))
        seen = (await leases(table))["s0"]
        taken = await table.take(seen, "a")
        # botocore retried a take whose first attempt went through: the item holds what it meant to write
        assert await table.take(seen, "a") == taken
        with pytest.raises(LeaseLost, match="take refused \\(held by 'a', counter 1\\)"):
            await table.take(seen, "b")  # the counter moved on since `seen`
        renewed = await table.renew(taken)
        with pytest.raises(LeaseLost):
            await table.checkpoint(taken, 7)  # stale counter
        released = await table.release(renewed)
        assert released.owner is None and (await leases(table))["s0"] == released
        with pytest.raises(LeaseLost):
            await table.renew(renewed)
        assert not await table.delete_ended("s0")  # only finished leases are deleted


# --- sharing --------------------------------------------------------------------------------------------------------


async def test_two_then_three_workers_converge_to_a_fair_share(fleet: Fleet, record_property: Any) -> None:
    first = await fleet.start("a")
    assert len(await first.sync(EIGHT)) == 8
    await wait_for(lambda: fleet.counts() == {"a": 8}, 10, "one worker holds all eight")
    await fleet.start("b")
    two = await timed(lambda: fair(fleet.counts(), 8), 20, "a 4/4 share")
    assert sorted(fleet.counts().values()) == [4, 4]
    await fleet.start("c")
    three = await timed(lambda: fair(fleet.counts(), 8), 20, "a 3/3/2 share")
    assert sorted(fleet.counts().values()) == [2, 3, 3]
    async with opened(fleet) as table:
        owners = {key: lease.owner for key, lease in (await leases(table)).items()}
    assert owners == {shard: worker for worker, c in fleet.coordinators.items() for shard in c.held()}
    # stable once fair: nothing moves during two more lease durations
    before = {worker: set(c.held()) for worker, c in fleet.coordinators.items()}
    await asyncio.sleep(2 * DURATION)
    assert {worker: set(c.held()) for worker, c in fleet.coordinators.items()} == before
    record_property("fault_figures", f"leases: fair share of 8 shards in {two:.1f} s (2 workers), {three:.1f} s (3)")


async def test_a_killed_workers_leases_are_taken_within_the_lease_duration_and_two_take_periods(
    fleet: Fleet, record_property: Any
) -> None:
    first = await fleet.start("a")
    await first.sync(EIGHT)
    await fleet.start("b", max_steal=4)  # fair in one steal pass: not what this test is about
    await wait_for(lambda: fair(fleet.counts(), 8), 20, "a 4/4 share")
    await fleet.stop("b", release=False)  # kill -9: nothing written, its leases stay owned by "b"
    took = await timed(lambda: fleet.counts() == {"a": 8}, 20, "a holds all eight")
    # expired once its counter has not moved for DURATION (its last renew was at most DURATION/3 before the kill)
    assert DURATION * 2 / 3 < took < DURATION + 2 * TAKE_PERIOD + 1.0
    async with opened(fleet) as table:
        assert {lease.owner for lease in (await leases(table)).values()} == {"a"}
    record_property("fault_figures", f"leases: killed worker's 4 leases taken in {took:.2f} s (duration {DURATION} s)")


async def test_a_graceful_stop_releases_so_another_worker_takes_at_once(fleet: Fleet, record_property: Any) -> None:
    first = await fleet.start("a")
    await first.sync(EIGHT)
    await fleet.start("b", max_steal=4)  # fair in one steal pass: not what this test is about
    await wait_for(lambda: fair(fleet.counts(), 8), 20, "a 4/4 share")
    b_leases = set(fleet.coordinators["b"].held())
    started = time.monotonic()
    await fleet.stop("b", release=True)
    await wait_for(lambda: fleet.counts() == {"a": 8}, 10, "a holds all eight")
    took = time.monotonic() - started
    assert took < TAKE_PERIOD + 0.6 < DURATION  # the stop and one scan: no waiting for expiry
    async with opened(fleet) as table:
        assert {(await leases(table))[key].owner for key in b_leases} == {"a"}
    record_property("fault_figures", f"leases: released leases taken in {took:.2f} s (take period {TAKE_PERIOD} s)")


async def test_a_holder_that_cannot_renew_gives_the_lease_up_before_anyone_takes_it(
    fleet: Fleet, record_property: Any
) -> None:
    """The table stops answering one worker (its renewals hang): it reports the lease lost once the lease
    duration has passed since its last successful renew, and the other worker's takeover comes after that."""
    holder = await fleet.start("a")
    await holder.sync(EIGHT[:1])
    shard = EIGHT[0].id
    await wait_for(lambda: holder.owns(shard), 10, "a holds the shard")
    await fleet.start("b")

    async def unanswered(lease: Lease, *_: Any) -> Lease:
        await asyncio.Event().wait()
        raise AssertionError("never answered")

    # The table stops answering its writes (a slow machine would otherwise let it take the lease back itself).
    holder.table.renew = unanswered  # type: ignore[method-assign]
    holder.table.take = unanswered  # type: ignore[method-assign]
    await wait_for(lambda: len(fleet.holdings[shard]) == 2, 20, "b takes the shard")
    gave_up, taken = fleet.holdings[shard]
    assert (gave_up.worker, taken.worker) == ("a", "b")
    assert gave_up.end is not None and gave_up.end <= taken.start
    assert not holder.owns(shard) and holder.held() == {}
    margin = taken.start - gave_up.end
    record_property("fault_figures", f"leases: a lease its holder cannot renew is given up {margin:.2f} s before taken")


async def test_a_stale_checkpoint_after_a_steal_fails_and_leaves_the_table_alone(fleet: Fleet) -> None:
    """The holder has not renewed nor scanned since the steal (a long lease, taking stopped), so nothing but the
    checkpoint's condition can stop it."""
    holder = await fleet.start("a", lease_duration=30.0, take_period=0.2)
    await holder.sync(EIGHT[:1])
    shard = EIGHT[0].id
    await wait_for(lambda: holder.owns(shard), 10, "a holds the shard")
    await holder.stop_taking()
    await holder.checkpoint(shard, 100)
    async with opened(fleet) as table:
        stolen = await table.take((await leases(table))[shard], "thief")
        await table.checkpoint(stolen, 150)
        with pytest.raises(LeaseLost, match="checkpoint refused \\(held by 'thief'"):
            await holder.checkpoint(shard, 200)
        after = (await leases(table))[shard]
    assert (after.owner, after.checkpoint) == ("thief", 150)
    assert not holder.owns(shard) and holder.held() == {}
    with pytest.raises(LeaseLost, match="checkpoint by 'a': not held"):
        await holder.checkpoint(shard, 300)
    await wait_for(lambda: fleet.holdings[shard][0].end is not None, 4, "a's Lost event")
    assert [h.worker for h in fleet.holdings[shard]] == ["a"]


async def test_two_workers_never_both_hold_a_shard(fleet: Fleet) -> None:
    """Workers join, are killed and leave while all of them checkpoint what they hold as fast as they can: every
    shard's holdings (from the events) never overlap, and every checkpoint the table accepted was made inside a
    holding of its writer (it started inside one: a kill or a stop may end the holding while the write is on its
    way)."""
    accepted: list[tuple[str, str, float]] = []
    refused = 0
    sequence = itertools.count(1)

    async def checkpointing() -> None:
        nonlocal refused
        while True:
            for worker, coordinator in list(fleet.coordinators.items()):
                for shard in coordinator.held():
                    if fleet.coordinators.get(worker) is not coordinator:
                        break  # stopped (killed or released): its holdings ended, as for a reader that stops
                    started = asyncio.get_running_loop().time()
                    try:
                        await coordinator.checkpoint(shard, next(sequence))
                        accepted.append((shard, worker, started))
                    except LeaseLost:
                        refused += 1
            await asyncio.sleep(0.02)

    loop = asyncio.create_task(checkpointing())
    try:
        first = await fleet.start("a")
        await first.sync(EIGHT)
        await fleet.start("b")
        await fleet.start("c")
        await wait_for(lambda: fair(fleet.counts(), 8), 20, "a 3/3/2 share")
        await fleet.stop("a", release=False)
        await wait_for(lambda: fair(fleet.counts(), 8), 20, "b and c share eight")
        await fleet.start("d")
        await wait_for(lambda: fair(fleet.counts(), 8) and fleet.counts()["d"] >= 2, 20, "d has its share")
        await fleet.stop("b", release=True)
        await wait_for(lambda: fair(fleet.counts(), 8), 20, "c and d share eight")
    finally:
        loop.cancel()
    moved = 0
    for shard, holdings in fleet.holdings.items():
        ordered = sorted(holdings, key=lambda h: h.start)
        moved += len(ordered) - 1
        for earlier, later in itertools.pairwise(ordered):
            assert earlier.end is not None and earlier.end <= later.start, (shard, earlier, later)
    assert moved >= 8  # shards really changed hands
    for shard, worker, at in accepted:
        holdings = fleet.holdings[shard]
        assert any(h.worker == worker and h.start <= at and (h.end is None or at <= h.end) for h in holdings)
    assert len(accepted) > 100


# --- lineage --------------------------------------------------------------------------------------------------------


async def test_children_of_a_split_and_a_merge_wait_for_their_parents(fleet: Fleet) -> None:
    worker = await fleet.start("a")
    assert sorted(await worker.sync(RESHARDED)) == ["s0", "s1", "s2", "s3", "s4", "s5"]
    await wait_for(lambda: set(worker.held()) == {"s0", "s1", "s2"}, 10, "the parents are taken")
    await asyncio.sleep(2 * TAKE_PERIOD)  # two more take passes
    assert set(worker.held()) == {"s0", "s1", "s2"}  # the children are not takeable
    await worker.checkpoint("s0", 41)
    await worker.end("s0", [Shard("s3", ("s0",)), Shard("s4", ("s0",))])
    await wait_for(
        lambda: set(worker.held()) == {"s1", "s2", "s3", "s4"} and {"s3", "s4"} <= set(fleet.holdings),
        5,
        "the split's children are taken",
    )
    assert worker.held()["s3"] == TRIM_HORIZON
    await worker.end("s1", [Shard("s5", ("s1", "s2"))])
    await asyncio.sleep(2 * TAKE_PERIOD)  # two more take passes
    assert "s5" not in worker.held()  # one of the merge's parents has not ended
    await worker.end("s2", [Shard("s5", ("s1", "s2"))])
    await wait_for(lambda: "s5" in worker.held() and "s5" in fleet.holdings, 10, "the merge's child is taken")
    acquired = [h.start for shard in ("s0", "s3", "s5") for h in fleet.holdings[shard]]
    assert acquired == sorted(acquired)
    async with opened(fleet) as table:
        ended = (await leases(table))["s0"]
        assert (ended.checkpoint, ended.owner, ended.children) == (SHARD_END, None, {"s3", "s4"})
        # s0 expired from the stream: its finished lease goes; s1 and s2 are still listed and stay
        assert await worker.sync([shard for shard in RESHARDED if shard.id != "s0"]) == []
        assert sorted(await leases(table)) == ["s1", "s2", "s3", "s4", "s5"]


async def test_lease_creation_at_latest_and_trim_horizon(fleet: Fleet) -> None:
    latest = await fleet.start("latest", initial_position=LATEST)
    assert sorted(await latest.sync(RESHARDED)) == ["s3", "s4", "s5"]
    assert await latest.sync(RESHARDED) == []  # the closed parents are skipped for good
    async with opened(fleet) as table:
        found = await leases(table)
    assert {key: lease.checkpoint for key, lease in found.items()} == {"s3": LATEST, "s4": LATEST, "s5": LATEST}
    # the parents have no lease, which counts as finished: the children are takeable at once
    await wait_for(lambda: set(latest.held()) == {"s3", "s4", "s5"}, 10, "the open shards are taken")

    other = Fleet(fleet.endpoint, fleet.name + "-trim")
    try:
        trim = await other.start("trim", initial_position=TRIM_HORIZON)
        assert sorted(await trim.sync(RESHARDED)) == ["s0", "s1", "s2", "s3", "s4", "s5"]
        async with opened(other) as table:
            found = await leases(table)
        assert {lease.checkpoint for lease in found.values()} == {TRIM_HORIZON}
        assert found["s5"].parents == {"s1", "s2"} and found["s3"].parents == {"s0"}
    finally:
        await other.close()


async def test_finished_leases_are_cleaned_up_after_the_delay_and_not_recreated(fleet: Fleet) -> None:
    worker = await fleet.start("a", cleanup_delay=CLEANUP_DELAY)
    await worker.sync(RESHARDED[:1] + RESHARDED[3:5])  # s0 split into s3 and s4
    await wait_for(lambda: set(worker.held()) == {"s0"}, 10, "the parent is taken")
    await worker.end("s0", [Shard("s3", ("s0",)), Shard("s4", ("s0",))])
    await wait_for(lambda: set(worker.held()) == {"s3", "s4"}, 10, "the children are taken")
    await worker.checkpoint("s3", 5)
    async with opened(fleet) as table:
        await asyncio.sleep(CLEANUP_DELAY + 2 * TAKE_PERIOD)
        assert "s0" in await leases(table)  # s4 has not started: deleting s0 could replay it
        await worker.checkpoint("s4", 9)
        started = time.monotonic()
        while "s0" in await leases(table):
            assert time.monotonic() - started < 5, "the parent's lease is not deleted"
            await asyncio.sleep(0.05)
        assert time.monotonic() - started >= CLEANUP_DELAY
        assert await worker.sync(RESHARDED[:1] + RESHARDED[3:5]) == []  # still listed, not recreated
        assert set(await leases(table)) == {"s3", "s4"}


def test_default_table_name_is_one_dynamodb_accepts() -> None:
    assert default_table_name("clicks", "count") == "streamfn-clicks-count"
    assert default_table_name("my app", "handle:v2/ü") == "streamfn-my-app-handle-v2-"
    with pytest.raises(ValueError, match="not a DynamoDB table name"):
        LeaseTable(None, "a b")


def test_lineage_rules() -> None:
    # a chain 0 -> 1 -> 2 (each closed shard split into one child, for brevity)
    chain = [Shard("0", closed=True), Shard("1", ("0",), closed=True), Shard("2", ("1",))]
    assert [lease.key for lease in plan(chain, {"1"}, TRIM_HORIZON)] == ["2"]  # "0" ended and was cleaned up
    assert [(lease.key, lease.checkpoint) for lease in plan(chain, set(), LATEST)] == [("2", LATEST)]
    assert [lease.key for lease in plan(chain, {"2"}, TRIM_HORIZON)] == []
    # a child of a shard with a lease starts at TRIM_HORIZON whatever the initial position
    assert [(lease.key, lease.checkpoint) for lease in plan(chain, {"0"}, LATEST)] == [
        ("1", TRIM_HORIZON),
        ("2", TRIM_HORIZON),
    ]
    # parents not listed any more (expired) do not block the listing
    assert [lease.key for lease in plan([Shard("9", ("gone",))], set(), TRIM_HORIZON)] == ["9"]
    table = {
        "p": Lease("p", checkpoint=SHARD_END, children=frozenset({"c"})),
        "q": Lease("q", checkpoint=17),
        "c": Lease("c", parents=frozenset({"p", "q"})),
        "d": Lease("d", parents=frozenset({"p", "gone"})),
    }
    assert not takeable(table["c"], table)  # q has not ended
    assert takeable(table["d"], table)  # p ended, "gone" has no lease
    assert not takeable(table["p"], table)  # finished leases are never taken
    assert not cleanable(table["p"], table)  # its child c has not started
    table["c"] = Lease("c", checkpoint=3, parents=frozenset({"p", "q"}))
    assert cleanable(table["p"], table)
    assert vanished(table["p"], table, {"q", "c", "d"}) and not vanished(table["p"], table, {"p"})
    assert not vanished(table["q"], table, set())  # not finished
    table["q"] = Lease("q", checkpoint=SHARD_END, parents=frozenset({"p"}))
    assert not vanished(table["q"], table, set())  # its parent's lease goes first


def test_expiry_is_counted_on_this_workers_clock_from_the_last_counter_change() -> None:
    expiry = Expiry(duration=10)
    owned, unowned = Lease("s0", counter=4, owner="a"), Lease("s1", counter=9)
    expiry.observe({"s0": owned, "s1": unowned}, now=100)
    assert not expiry.available(owned, 109) and expiry.available(unowned, 100)  # first sight: the clock starts
    expiry.observe({"s0": owned}, now=105)
    assert expiry.available(owned, 110.5)  # unchanged since 100
    renewed = Lease("s0", counter=5, owner="a")
    expiry.observe({"s0": renewed}, now=110.6)
    assert not expiry.available(renewed, 120) and expiry.available(renewed, 120.7)


def test_a_worker_that_ended_a_shard_counts_as_live_for_one_lease_duration() -> None:
    expiry = Expiry(duration=10)
    expiry.observe({"s0": Lease("s0", counter=4, owner="a"), "s1": Lease("s1", counter=2, owner="b")}, now=100)
    assert expiry.finishers() == set()
    ended = Lease("s0", counter=5, checkpoint=SHARD_END)  # a finished lease has no owner
    released = Lease("s1", counter=3)  # a lease given up (a worker leaving) is no sign of life
    expiry.observe({"s0": ended, "s1": released}, now=101)
    assert expiry.finishers() == {"a"}
    expiry.observe({"s0": ended, "s1": released}, now=111)
    assert expiry.finishers() == {"a"}
    expiry.observe({"s0": ended, "s1": released}, now=111.5)
    assert expiry.finishers() == set()


def test_fair_share_choice() -> None:
    def table(**owners: str | None) -> dict[str, Lease]:
        return {key: Lease(key, owner=owner) for key, owner in owners.items()}

    def chosen(
        leases: dict[str, Lease],
        mine: set[str],
        expired: frozenset[str] = frozenset(),
        steal: int = 1,
        finishers: frozenset[str] = frozenset(),
    ) -> Any:
        available = {key: lease.owner is None or key in expired for key, lease in leases.items()}
        choice = choose(leases, mine, "me", available, steal, random.Random(7), finishers)
        return sorted(lease.key for lease in choice.take), [lease.owner for lease in choice.steal]

    eight = {f"s{i}": None for i in range(8)}
    assert chosen(table(**eight), set()) == ([f"s{i}" for i in range(8)], [])  # alone: everything
    all_a = table(**dict.fromkeys(eight, "a"))
    assert chosen(all_a, set()) == ([], ["a"])  # target 4: one steal per scan
    assert chosen(all_a, set(), steal=8) == ([], ["a"] * 4)  # never below the target
    four_four = table(**{f"s{i}": "a" if i < 4 else "b" for i in range(8)})
    assert chosen(four_four, set()) == ([], ["a"])  # target 3; a is above it
    three_three_two = table(**{f"s{i}": "a" if i < 3 else "b" if i < 6 else "me" for i in range(8)})
    assert chosen(three_three_two, {"s6", "s7"}) == ([], [])  # fair: 3/3/2 is ceil(8/3) at most
    # an expired lease is taken before anything is stolen, and its dead owner is not counted as a worker
    assert chosen(four_four, set(), expired=frozenset({"s7"})) == (["s7"], [])
    # finished leases and children waiting for their parents do not count
    lineage = {
        "p": Lease("p", owner="a"),
        "c": Lease("c", parents=frozenset({"p"})),
        "done": Lease("done", checkpoint=SHARD_END),
    }
    assert chosen(lineage, set()) == ([], [])
    # a rollover: every shard ended at once (their leases unowned); the worker that ended the others still counts
    rolled = {f"c{i}": Lease(f"c{i}", parents=frozenset({f"p{i}"})) for i in range(4)}
    rolled |= {f"p{i}": Lease(f"p{i}", checkpoint=SHARD_END) for i in range(4)}
    assert len(chosen(rolled, set())[0]) == 4  # alone
    assert len(chosen(rolled, set(), finishers=frozenset({"b"}))[0]) == 2
    assert len(chosen(rolled, set(), finishers=frozenset({"b", "me"}))[0]) == 2
