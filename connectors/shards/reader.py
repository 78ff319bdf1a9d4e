"""ShardReader: the engine's SourceReader over one sharded stream (a Kinesis data stream, a DynamoDB table's
stream), for one function of one worker. What differs between the services is a `ShardApi`
(connectors/kinesis/api.py, connectors/dynamodb/api.py): how to list the shards, get an iterator, read a page.

Which shards it reads comes from the function's lease table (connectors/shards: a LeaseCoordinator per reader):
a lease acquired becomes the engine's `assigned` (from the lease's checkpoint), a lease lost its `lost`, a commit
a fenced checkpoint write, and a shard whose last record was handled `coordinator.end` with its children, which
start only once all their parents ended. Lifecycle events reach the engine from `fetch` (as the memory source and
a Kafka client's rebalance callbacks do); a shard's end is drained in a task of its own.

Polling, per owned shard, in a task of its own: an iterator after the checkpoint (AFTER_SEQUENCE_NUMBER), else at
the lease's starting position; then GetRecords again at once while the shard has more (the service says it is
behind, or the page was full), at the service's base rate when caught up (`ShardApi.poll_interval`). One page
per shard waits for the engine at a time, and none is fetched while the engine pauses the shard (backpressure).
Throttles (`ShardApi.throttles`) and service errors back off with full jitter and never reach the handler; an
expired iterator (`ShardApi.expired`) is renewed after the last record fetched. The shard ends when GetRecords
returns no next iterator (AWS's signal for both services) or the shard is gone (`ShardApi.gone`: expired from the
stream, as KCL treats it); its children are the ones the service names with the end (Kinesis's ChildShards),
else the listed shards that name it as a parent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from streamfn.connectors.shards.aws import AwsAccess, error_code
from streamfn.connectors.shards.coordinator import Acquired, LeaseCoordinator, LeaseEvent
from streamfn.connectors.shards.lease import Checkpoint, Shard
from streamfn.connectors.shards.table import LeaseError, LeaseLost, LeaseTable
from streamfn.errors import Unreachable
from streamfn.formats.codec import Codec, close_codecs, open_codecs
from streamfn.record import Partition, RawRecord, Record, SourceRecord
from streamfn.source import AssignmentListener, CommitRefused

log = logging.getLogger("streamfn.shards")

SHARD_SYNC_SECONDS = 60.0
"""How often the shard listing is synced into the lease table (KCL's default), besides at the start."""
BACKOFF_BASE_SECONDS = 0.2
BACKOFF_CAP_SECONDS = 5.0


MAX_LISTING_PAGES = 1_000
"""A bound on a stream's shard listing pages (ListShards, DescribeStream): emulators have been seen to repeat a page
for ever, and a stream holds a few shards per partition and retention period."""


@dataclass(frozen=True)
class Page:
    """One GetRecords answer, in the reader's terms."""

    records: list[RawRecord]
    next_iterator: str | None
    """None: the shard is closed and every record of it was returned."""
    behind: int | None = None
    """Milliseconds behind the shard's tip (Kinesis's MillisBehindLatest); None when the service does not say."""
    children: list[Shard] = field(default_factory=list)
    """The children the service names with the shard's end (Kinesis's ChildShards); else the listing says."""


class ShardApi(Protocol):
    """What a shard service (Kinesis, DynamoDB Streams) answers the reader. Its methods raise botocore's errors
    (ClientError: the reader reads the code against `throttles`, `expired`, `gone`; `connect` may raise Unreachable
    with a line of its own)."""

    topic: str
    """The partitions' topic: the stream's name (Kinesis), the table's (DynamoDB Streams)."""
    access: AwsAccess
    """How its clients (and the lease table's) reach AWS."""
    description: str
    """What the source reads, for messages: "Kinesis stream orders (us-east-1)"."""
    service: str
    """A short name for task names: "kinesis", "dynamodb"."""
    missing: str
    """What a ResourceNotFoundException at connect means: "no such stream"."""
    state: str
    """The stream's status as the service said it at `connect` (Kinesis: ACTIVE...; DynamoDB Streams: ENABLED...)."""
    connection: Any
    """The reader's `connection` (where the stream is, as the dialect names it), filled in by `connect`."""
    max_records: int
    """GetRecords' most records per call."""
    poll_interval: float
    """How often a caught-up shard is polled (Lambda's base rate for the service)."""
    throttles: frozenset[str]
    """Error codes that are throttles: backed off like any failed call, logged at INFO (expected under load)."""
    expired: frozenset[str]
    """Error codes after which a new iterator is taken after the last record fetched."""
    gone: frozenset[str]
    """Error codes of GetRecords meaning the shard no longer exists: its end."""

    async def connect(self) -> None:
        """Open the service's client (once) and find the stream; fill in `connection`."""

    async def shards(self) -> list[Shard]:
        """Every shard listed now, with its parents and whether it is closed."""

    async def iterator(self, shard: str, after: int | None, start: str) -> str:
        """An iterator after sequence number `after`, else at `start` (TRIM_HORIZON, LATEST, AT_TIMESTAMP)."""

    async def records(self, shard: str, iterator: str, limit: int | None = None) -> Page:
        """One GetRecords call (at most `limit`, by default `max_records`)."""

    async def close(self) -> None:
        """Close the client."""


@dataclass(eq=False)
class _Shard:
    """The polling state of one owned shard."""

    partition: Partition
    start: str
    """The lease's starting position when it has no checkpoint (TRIM_HORIZON, LATEST, AT_TIMESTAMP)."""
    after: int | None
    """The last sequence number fetched (else the checkpoint): an iterator is renewed after it."""
    page: list[RawRecord] | None = None
    """Fetched and not yet delivered to the engine."""
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    """Set while another page may be fetched: not paused and no page waiting."""
    paused: bool = False
    closed: bool = False
    """GetRecords returned no next iterator: everything fetched is the shard's last."""
    children: list[Shard] = field(default_factory=list)
    """The children the service named with the shard's end (else the listing says)."""
    behind: int | None = None
    """Milliseconds behind the tip the last GetRecords said (0 when the service does not say); None before the first
    GetRecords answered (the lag is not known)."""
    pages: deque[tuple[int, int]] = field(default_factory=deque)
    """(last sequence number, first arrival ms) of each page fetched and not yet known committed (for the lag)."""
    task: asyncio.Task[None] | None = None
    throttled: int = 0
    """Throttles and errors in a row (the backoff's exponent)."""


class ShardReader:
    """The SourceReader of a shard source: `api` reaches the stream, and with its `access` the lease table
    (DynamoDB)."""

    def __init__(
        self,
        api: ShardApi,
        *,
        lease_table: str,
        value_codec: Codec,
        key_codec: Codec | None,
        starting_position: str,
        lease_duration: float,
    ) -> None:
        self.api = api
        self.stream = api.topic
        self.lease_table = lease_table
        self.value_codec, self.key_codec = value_codec, key_codec
        self._starting_position = starting_position
        self._lease_duration = lease_duration
        self.description = api.description
        self.connection = api.connection
        self.coordinator: LeaseCoordinator | None = None
        self.accepted: set[Partition] = set()
        """Shards the engine has a worker for."""
        self.ending: set[Partition] = set()
        """Shards whose end the engine is draining."""
        self.refused: list[tuple[Partition, int]] = []
        """Checkpoints of shards the engine had been told were lost (or never had), refused by the lease table: the
        engine commits nothing for a lost shard, so this stays empty (the conformance suite checks it). A commit
        made before the loss was known (another worker took the lease since the last renew) is refused by the
        table's fence too, as it must be, and is not counted here: nothing could have prevented the attempt."""
        self._shards: dict[Partition, _Shard] = {}
        self._table: LeaseTable | None = None
        self._listener: AssignmentListener | None = None
        self._wakeup = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._events: deque[LeaseEvent] = deque()
        self._random = random.Random()

    def __repr__(self) -> str:
        return f"ShardReader({self.description}, {self.lease_table})"

    # --- connecting ------------------------------------------------------------------------------------------------

    async def connect(self) -> None:
        try:
            await self.api.connect()
            if self._table is None:
                self._table = await LeaseTable.open(self.lease_table, self.api.access)
        except ClientError as error:
            missing = error_code(error) == "ResourceNotFoundException"
            raise Unreachable(f"{self.description}: " + (self.api.missing if missing else str(error))) from None
        except (BotoCoreError, OSError, LeaseError) as error:
            raise Unreachable(f"{self.description}: {error}") from None

    async def start(self, listener: AssignmentListener) -> None:
        assert self._table is not None, "connect first"
        await open_codecs(self.value_codec, self.key_codec)
        self._listener = listener
        self.coordinator = LeaseCoordinator(
            self._table, lease_duration=self._lease_duration, initial_position=self._starting_position
        )
        await self.coordinator.sync(await self.api.shards())
        self.coordinator.start()
        self._spawn(self._sync_loop(), "shard sync")
        self._spawn(self._pump(), "lease events")

    def _spawn(self, work: Any, name: str) -> asyncio.Task[None]:
        task_name = f"streamfn:{self.api.service}:{self.stream}:{name}"
        task: asyncio.Task[None] = asyncio.create_task(work, name=task_name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _sync_loop(self) -> None:
        assert self.coordinator is not None
        while True:
            await asyncio.sleep(SHARD_SYNC_SECONDS)
            try:
                await self.coordinator.sync(await self.api.shards())
            except (ClientError, BotoCoreError, OSError, LeaseError) as error:
                log.warning("%s: shard sync failed, trying again in %.0f s: %s", self, SHARD_SYNC_SECONDS, error)

    async def _pump(self) -> None:
        """Move the coordinator's news to `fetch`, which tells the engine, in order, and wake it."""
        assert self.coordinator is not None
        while True:
            self._events.append(await self.coordinator.events.get())
            self._wakeup.set()

    # --- the engine's calls ------------------------------------------------------------------------------------------

    async def fetch(self, timeout: float) -> Mapping[Partition, Sequence[SourceRecord]]:
        self._wakeup.clear()
        await self._settle()
        fetched = self._available()
        if fetched:
            return fetched
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout)
        await self._settle()
        return self._available()

    def _available(self) -> dict[Partition, Sequence[SourceRecord]]:
        fetched: dict[Partition, Sequence[SourceRecord]] = {}
        for partition in self.accepted - self.ending:
            shard = self._shards[partition]
            if shard.page is not None and not shard.paused:
                fetched[partition], shard.page = shard.page, None
                shard.ready.set()
        return fetched

    async def _settle(self) -> None:
        """Tell the listener what the leases did since the last fetch, in order; start draining ended shards."""
        listener = self._listener
        assert listener is not None
        while self._events:
            event = self._events.popleft()
            partition = Partition(self.stream, event.shard)
            if isinstance(event, Acquired):
                checkpoint = event.checkpoint if isinstance(event.checkpoint, int) else 0
                await listener.assigned({partition: checkpoint})
                self.accepted.add(partition)
                self._poll(partition, event.checkpoint)
            elif partition in self.accepted:
                self._drop(partition)
                await listener.lost({partition})
        for partition in self.accepted - self.ending:
            shard = self._shards[partition]
            if shard.closed and shard.page is None:
                self.ending.add(partition)
                self._spawn(self._end(partition), f"{partition.partition}:ended")

    def _poll(self, partition: Partition, checkpoint: Checkpoint) -> None:
        after = checkpoint if isinstance(checkpoint, int) else None
        start = checkpoint if isinstance(checkpoint, str) else "AFTER_SEQUENCE_NUMBER"
        shard = self._shards[partition] = _Shard(partition, start, after)
        shard.ready.set()
        shard.task = self._spawn(self._read(shard), f"{partition.partition}")

    def _drop(self, partition: Partition) -> None:
        """Forget a shard: stop its polling, drop what it fetched."""
        self.accepted.discard(partition)
        self.ending.discard(partition)
        shard = self._shards.pop(partition, None)
        if shard is not None and shard.task is not None:
            shard.task.cancel()

    async def _end(self, partition: Partition) -> None:
        """The engine handles and commits the shard's last records; then its lease records the end (SHARD_END) and
        its children's leases are created, so they start once all their parents ended."""
        assert self._listener is not None and self.coordinator is not None
        await self._listener.ended(partition)
        if partition not in self.ending:  # lost meanwhile
            return
        shard = str(partition.partition)
        try:
            children = self._shards[partition].children or [s for s in await self.api.shards() if shard in s.parents]
            await self.coordinator.end(shard, children)
        except (ClientError, BotoCoreError, OSError, LeaseError) as error:
            log.warning("%s: the end of shard %s was not recorded (its next owner ends it): %s", self, shard, error)
        self._drop(partition)

    def seek(self, partition: Partition, offset: int) -> None:
        shard = self._shards[partition]
        if shard.task is not None:
            shard.task.cancel()
        self._poll(partition, offset)

    def pause(self, partition: Partition) -> None:
        shard = self._shards.get(partition)
        if shard is not None:
            shard.paused = True
            shard.ready.clear()

    def resume(self, partition: Partition) -> None:
        shard = self._shards.get(partition)
        if shard is not None:
            shard.paused = False
            if shard.page is None:
                shard.ready.set()
            self._wakeup.set()

    async def commit(self, offsets: Mapping[Partition, int]) -> None:
        """A fenced checkpoint per shard; LeaseLost if a lease is gone (the coordinator then reports it lost)."""
        assert self.coordinator is not None
        coordinator = self.coordinator
        moved = [(p, value, p in self.accepted) for p, value in offsets.items() if value]  # 0: nothing handled yet
        results = await asyncio.gather(
            *(coordinator.checkpoint(str(p.partition), value) for p, value, _ in moved), return_exceptions=True
        )
        for (partition, value, known), result in zip(moved, results, strict=True):
            if isinstance(result, LeaseLost) and not known:
                self.refused.append((partition, value))
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, LeaseLost):
                raise result
        lost = {p for (p, _, _), result in zip(moved, results, strict=True) if isinstance(result, LeaseLost)}
        if lost:  # the others are checkpointed: the engine must not wait to commit them again
            raise CommitRefused(lost, "; ".join(str(r) for r in results if isinstance(r, LeaseLost)))

    def position_after(self, record: SourceRecord | Record) -> int:
        """A checkpoint names the last record handled (Kinesis's and KCL's convention)."""
        position: int = record.offset
        return position

    def lag(self, partition: Partition, committed: int) -> int | None:
        """Milliseconds behind the tip: the age of the oldest record fetched and not yet committed, or what the
        service says (Kinesis's MillisBehindLatest) when that is more; 0 when caught up; None before the first
        GetRecords."""
        shard = self._shards.get(partition)
        if shard is None or shard.behind is None:
            return None
        pages = shard.pages
        while pages and pages[0][0] <= committed:
            pages.popleft()
        if not pages:
            return shard.behind
        age = round(datetime.now(UTC).timestamp() * 1000) - pages[0][1]
        return max(shard.behind, age, 1)

    async def stop(self) -> None:
        for shard in self._shards.values():
            if shard.task is not None:
                shard.task.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._shards.clear()
        if self.coordinator is not None:
            await self.coordinator.stop(release=True)
            self.coordinator = None
        if self._table is not None:
            await self._table.close()
            self._table = None
        await self.api.close()
        if self._listener is not None:
            self._listener = None
            await close_codecs(self.value_codec, self.key_codec)

    # --- polling one shard -------------------------------------------------------------------------------------------

    async def _read(self, shard: _Shard) -> None:
        api, name = self.api, str(shard.partition.partition)
        iterator: str | None = None
        while True:
            try:
                if iterator is None:
                    iterator = await api.iterator(name, shard.after, shard.start)
                await shard.ready.wait()
                page = await api.records(name, iterator)
            except ClientError as error:
                code = error_code(error)
                if code in api.expired:
                    iterator = None
                    continue
                if code in api.gone:  # the shard expired: as KCL, an end
                    shard.closed = True
                    self._wakeup.set()
                    return
                await self._back_off(shard, code in api.throttles, error)
                continue
            except (BotoCoreError, OSError, TimeoutError) as error:
                await self._back_off(shard, False, error)
                continue
            shard.throttled = 0
            records = page.records
            shard.behind = page.behind or 0
            if records:
                shard.after = records[-1].offset
                shard.pages.append((records[-1].offset, records[0].timestamp))
                shard.page = records
                shard.ready.clear()
                self._wakeup.set()
            iterator = page.next_iterator
            if iterator is None:
                shard.children = page.children
                shard.closed = True
                self._wakeup.set()
                return
            if not shard.behind and len(records) < api.max_records:
                await asyncio.sleep(api.poll_interval)

    async def _back_off(self, shard: _Shard, throttled: bool, error: BaseException) -> None:
        """Full jitter, capped: a throttle or a failed call is tried again, never reported to the handler."""
        delay = self._random.uniform(0, min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2**shard.throttled))
        shard.throttled += 1
        level = logging.INFO if throttled else logging.WARNING
        log.log(level, "%s: shard %s: %s; again in %.2f s", self, shard.partition.partition, error, delay)
        await asyncio.sleep(delay)
