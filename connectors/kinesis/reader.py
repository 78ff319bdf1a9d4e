"""KinesisReader: the engine's SourceReader over one Kinesis data stream, for one function of one worker.

Which shards it reads comes from the function's lease table (connectors/shards: a LeaseCoordinator per reader):
a lease acquired becomes the engine's `assigned` (from the lease's checkpoint), a lease lost its `lost`, a commit
a fenced checkpoint write, and a shard whose last record was handled `coordinator.end` with its children, which
start only once all their parents ended. Lifecycle events reach the engine from `fetch` (as the memory source and
a Kafka client's rebalance callbacks do); a shard's end is drained in a task of its own.

Polling, per owned shard, in a task of its own: GetShardIterator after the checkpoint (AFTER_SEQUENCE_NUMBER),
else at the lease's starting position; then GetRecords again at once while the shard has more
(MillisBehindLatest > 0), at Lambda's base rate of about once a second when caught up. One page per shard waits
for the engine at a time, and none is fetched while the engine pauses the shard (backpressure). Throttles
(ProvisionedThroughputExceeded, LimitExceeded) and service errors back off with full jitter and never reach the
handler; an expired iterator is renewed after the last record fetched. The shard ends when GetRecords returns no
NextShardIterator (AWS's signal; moto never sends it, kinesalite does); its children are the ChildShards AWS sends
with it, else (emulators send none) the listed shards that name it as ParentShardId or AdjacentParentShardId.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from streamfn.connectors.kinesis.dialect import StreamLocation
from streamfn.connectors.shards import (
    AT_TIMESTAMP,
    Acquired,
    AwsAccess,
    LeaseCoordinator,
    LeaseError,
    LeaseEvent,
    LeaseLost,
    LeaseTable,
    Shard,
)
from streamfn.errors import Unreachable
from streamfn.formats.codec import Codec, close_codecs, open_codecs
from streamfn.record import Partition, RawRecord, Record, SourceRecord
from streamfn.source import AssignmentListener

log = logging.getLogger("streamfn.kinesis")

MAX_RECORDS_PER_CALL = 10_000
"""GetRecords' most records per call (Kinesis's limit)."""
POLL_INTERVAL_SECONDS = 1.0
"""How often a caught-up shard is polled: Lambda's base rate for Kinesis."""
SHARD_SYNC_SECONDS = 60.0
"""How often the shard listing is synced into the lease table (KCL's default), besides at the start."""
BACKOFF_BASE_SECONDS = 0.2
BACKOFF_CAP_SECONDS = 5.0
THROTTLES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "LimitExceededException",
        "ThrottlingException",
        "KMSThrottlingException",
    }
)
MAX_LISTING_PAGES = 1_000
"""A bound on ListShards paging (emulators have been seen to repeat a page forever)."""


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
    """GetRecords returned no NextShardIterator: everything fetched is the shard's last."""
    children: list[Shard] = field(default_factory=list)
    """The ChildShards AWS names with the shard's end (emulators name none: then the listing says)."""
    behind: int | None = None
    """MillisBehindLatest of the last GetRecords."""
    pages: deque[tuple[int, int]] = field(default_factory=deque)
    """(last sequence number, first arrival ms) of each page fetched and not yet known committed (for the lag)."""
    task: asyncio.Task[None] | None = None
    throttled: int = 0
    """Throttles and errors in a row (the backoff's exponent)."""


def _record(stream: str, shard: str, item: dict[str, Any]) -> RawRecord:
    """A Kinesis record in the SourceRecord shape: the shard as partition, the sequence number as position, the
    partition key (UTF-8) as key, the approximate arrival time as timestamp (epoch milliseconds; Kafka's
    LOG_APPEND_TIME: set by the stream on arrival)."""
    arrival: datetime = item["ApproximateArrivalTimestamp"]
    return RawRecord(
        stream,
        shard,
        int(item["SequenceNumber"]),
        round(arrival.timestamp() * 1000),
        item["PartitionKey"].encode(),
        bytes(item["Data"]),
        timestamp_type=1,
    )


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


class KinesisReader:
    def __init__(
        self,
        stream: str,
        access: AwsAccess,
        *,
        lease_table: str,
        value_codec: Codec,
        key_codec: Codec | None,
        starting_position: str,
        starting_timestamp: float | None,
        lease_duration: float,
    ) -> None:
        self.stream = stream
        self.access = access
        self.lease_table = lease_table
        self.value_codec, self.key_codec = value_codec, key_codec
        self._starting_position = starting_position
        self._starting_timestamp = starting_timestamp
        self._lease_duration = lease_duration
        where = ", ".join(filter(None, [access.region_name, access.endpoint_url]))
        self.description = f"Kinesis stream {stream}" + (f" ({where})" if where else "")
        self.connection = StreamLocation(region=access.region_name or "", account="", identity_arn="")
        """Filled in by `connect` (the stream's ARN names its account and region)."""
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
        self._stack = AsyncExitStack()
        self._kinesis: Any = None
        self._table: LeaseTable | None = None
        self._listener: AssignmentListener | None = None
        self._wakeup = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._events: deque[LeaseEvent] = deque()
        self._random = random.Random()

    def __repr__(self) -> str:
        return f"KinesisReader({self.stream}, {self.lease_table})"

    # --- connecting ------------------------------------------------------------------------------------------------

    async def connect(self) -> None:
        try:
            if self._kinesis is None:
                self._kinesis = await self._stack.enter_async_context(self.access.client("kinesis"))
            summary = (await self._kinesis.describe_stream_summary(StreamName=self.stream))["StreamDescriptionSummary"]
            async with self.access.client("sts") as sts:
                identity = await sts.get_caller_identity()
            if self._table is None:
                self._table = await LeaseTable.open(self.lease_table, self.access)
        except ClientError as error:
            missing = _code(error) == "ResourceNotFoundException"
            raise Unreachable(f"{self.description}: " + ("no such stream" if missing else str(error))) from None
        except (BotoCoreError, OSError, LeaseError) as error:
            raise Unreachable(f"{self.description}: {error}") from None
        _, _, _, region, account, _ = summary["StreamARN"].split(":", 5)
        self.connection.region, self.connection.account = region, account
        self.connection.identity_arn = identity["Arn"]

    async def start(self, listener: AssignmentListener) -> None:
        assert self._table is not None, "connect first"
        await open_codecs(self.value_codec, self.key_codec)
        self._listener = listener
        self.coordinator = LeaseCoordinator(
            self._table, lease_duration=self._lease_duration, initial_position=self._starting_position
        )
        await self.coordinator.sync(await self.shards())
        self.coordinator.start()
        self._spawn(self._sync_loop(), "shard sync")
        self._spawn(self._pump(), "lease events")

    def _spawn(self, work: Any, name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(work, name=f"streamfn:kinesis:{self.stream}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def shards(self) -> list[Shard]:
        """The stream's shards now (ListShards, every page), with their parents."""
        assert self._kinesis is not None
        listed: list[Shard] = []
        arguments: dict[str, Any] = {"StreamName": self.stream}
        for _ in range(MAX_LISTING_PAGES):
            page = await self._kinesis.list_shards(**arguments)
            listed += [
                Shard(
                    shard["ShardId"],
                    tuple(p for p in (shard.get("ParentShardId"), shard.get("AdjacentParentShardId")) if p),
                    "EndingSequenceNumber" in shard.get("SequenceNumberRange", {}),
                )
                for shard in page.get("Shards", [])
            ]
            token = page.get("NextToken")
            if not token:
                break
            arguments = {"NextToken": token}
        return listed

    async def _sync_loop(self) -> None:
        assert self.coordinator is not None
        while True:
            await asyncio.sleep(SHARD_SYNC_SECONDS)
            try:
                await self.coordinator.sync(await self.shards())
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

    def _poll(self, partition: Partition, checkpoint: int | str) -> None:
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
            children = self._shards[partition].children or [s for s in await self.shards() if shard in s.parents]
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
            if isinstance(result, BaseException):
                raise result

    def position_after(self, record: SourceRecord | Record) -> int:
        """A checkpoint names the last record handled (Kinesis's and KCL's convention)."""
        position: int = record.offset
        return position

    def lag(self, partition: Partition, committed: int) -> int | None:
        """Milliseconds behind the tip: the shard's MillisBehindLatest, or the age of the oldest record fetched and
        not yet committed when that is more; None before the first GetRecords."""
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
        await self._stack.aclose()
        self._kinesis = None
        if self._listener is not None:
            self._listener = None
            await close_codecs(self.value_codec, self.key_codec)

    # --- polling one shard -------------------------------------------------------------------------------------------

    async def _read(self, shard: _Shard) -> None:
        kinesis, name = self._kinesis, str(shard.partition.partition)
        iterator: str | None = None
        while True:
            try:
                if iterator is None:
                    iterator = await self._iterator(shard)
                await shard.ready.wait()
                response = await kinesis.get_records(ShardIterator=iterator, Limit=MAX_RECORDS_PER_CALL)
            except ClientError as error:
                code = _code(error)
                if code == "ExpiredIteratorException":
                    iterator = None
                    continue
                if code == "ResourceNotFoundException":  # the shard expired: as KCL, an end
                    shard.closed = True
                    self._wakeup.set()
                    return
                await self._back_off(shard, code in THROTTLES, error)
                continue
            except (BotoCoreError, OSError, TimeoutError) as error:
                await self._back_off(shard, False, error)
                continue
            shard.throttled = 0
            records = [_record(self.stream, name, item) for item in response.get("Records", [])]
            shard.behind = int(response.get("MillisBehindLatest", 0))
            if records:
                shard.after = records[-1].offset
                shard.pages.append((records[-1].offset, records[0].timestamp))
                shard.page = records
                shard.ready.clear()
                self._wakeup.set()
            iterator = response.get("NextShardIterator")
            if iterator is None:
                shard.children = [
                    Shard(child["ShardId"], tuple(child.get("ParentShards", ())))
                    for child in response.get("ChildShards", [])
                ]
                shard.closed = True
                self._wakeup.set()
                return
            if not shard.behind and len(records) < MAX_RECORDS_PER_CALL:
                await asyncio.sleep(POLL_INTERVAL_SECONDS)

    async def _iterator(self, shard: _Shard) -> str:
        """An iterator after the last record fetched (or the checkpoint), else at the lease's starting position."""
        arguments: dict[str, Any] = {"StreamName": self.stream, "ShardId": str(shard.partition.partition)}
        if shard.after is not None:
            arguments |= {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "StartingSequenceNumber": str(shard.after)}
        elif shard.start == AT_TIMESTAMP:
            timestamp = datetime.fromtimestamp(self._starting_timestamp or 0, UTC)
            arguments |= {"ShardIteratorType": AT_TIMESTAMP, "Timestamp": timestamp}
        else:
            arguments["ShardIteratorType"] = shard.start
        response = await self._kinesis.get_shard_iterator(**arguments)
        return str(response["ShardIterator"])

    async def _back_off(self, shard: _Shard, throttled: bool, error: BaseException) -> None:
        """Full jitter, capped: a throttle or a failed call is tried again, never reported to the handler."""
        delay = self._random.uniform(0, min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2**shard.throttled))
        shard.throttled += 1
        level = logging.INFO if throttled else logging.WARNING
        log.log(level, "%s: shard %s: %s; again in %.2f s", self, shard.partition.partition, error, delay)
        await asyncio.sleep(delay)
