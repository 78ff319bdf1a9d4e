"""The poller of one function: fetches from its source and feeds the workers of the partitions it owns.

One poller per function, all in one event loop. The fetch loop never waits on a handler, so the consumer keeps
polling (and heartbeating) while handlers are slow; backpressure is per partition, through pause and resume.
Assignment changes come from the source's group protocol: a revoked partition's worker finishes (or abandons)
its in-flight batch and its checkpoint is committed before the partition is given up. A lost partition (another
worker took its lease) is dropped at once, committing nothing more; an ended one (a shard's last record was
delivered) is drained, committed and then forgotten, so its children may start.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import suppress

from streamfn.app import StreamFunction
from streamfn.engine.chain import Chains
from streamfn.engine.checkpoint import COMMIT_RETRY_SECONDS, Checkpoint
from streamfn.engine.partition import PartitionWorker
from streamfn.engine.runner import FunctionRunner
from streamfn.engine.supervision import spawn
from streamfn.errors import Refused, Unreachable
from streamfn.formats.codec import is_plain
from streamfn.observability.logs import bind
from streamfn.observability.stats import FunctionStats
from streamfn.observability.telemetry import NO_TELEMETRY, FunctionTelemetry
from streamfn.record import Partition, Position
from streamfn.source import SourceReader
from streamfn.state.changelog import Changelog

log = logging.getLogger("streamfn.poller")

FETCH_TIMEOUT_SECONDS = 0.2
FETCH_ERROR_BACKOFF_SECONDS = 1.0
CONNECT_TIMEOUT_SECONDS = 30.0
"""How long a poller tries to reach its source at start (`run --connect-timeout`) before the run fails."""
CONNECT_RETRY_SECONDS = (1.0, 2.0, 4.0, 5.0)
"""Pauses between connection attempts at start, the last repeated."""
LAST_ATTEMPT_SECONDS = 1.0


class Poller:
    def __init__(
        self,
        function: StreamFunction,
        reader: SourceReader,
        stats: FunctionStats,
        chains: Chains,
        changelog: Changelog | None = None,
        telemetry: FunctionTelemetry = NO_TELEMETRY,
        connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
    ) -> None:
        self.function = function
        self.reader = reader
        self.stats = stats
        self.workers: dict[Partition, PartitionWorker] = {}
        self.last_fetch = time.monotonic()
        self.ever_assigned = False
        assert function.source is not None, "a poller reads a source"
        dialect = self.dialect = function.source.dialect
        self.lag_metric = dialect.lag_metric
        """How the source names the lag (`lag()`) in metrics."""
        self._runner = FunctionRunner(
            function,
            stats=stats,
            dialect=dialect,
            connection=reader.connection,
            value_codec=reader.value_codec,
            key_codec=reader.key_codec,
            changelog=changelog,
            position_after=reader.position_after,
            telemetry=telemetry,
        )
        state = self._runner.stateful
        self.checkpoint = Checkpoint(reader, function.name, stats, state.store.write if state is not None else None)
        self._chains = chains
        self._connect_timeout = connect_timeout
        self._stopping = asyncio.Event()
        self._resolve_for_filters = function.config.filter_criteria is not None and not is_plain(reader.value_codec)

    @property
    def grace(self) -> float:
        """How long an in-flight invocation may run on after a revoke or a shutdown: its timeout."""
        return self.function.config.timeout

    async def run(self) -> None:
        """Poll until `stop()`, then finish in-flight batches, commit, and leave the group."""
        bind(function=self.function.name)  # this task's log lines (the poller's own task: never unbound)
        try:  # whatever fails, every client opened so far is closed
            await self._runner.open(self._chains.context(self.function.name, self.dialect, self.reader.connection))
            if not await self._connect():
                return
            await self.reader.start(self)
            log.info(
                "function %s: poller started (%s, group %s, batch_size %d, window %gs)",
                self.function.name,
                self.reader.description,
                self.function.group_id,
                self.function.config.batch_size,
                self.function.config.maximum_batching_window_in_seconds,
            )
            committer = spawn(self.checkpoint.run(), name=f"streamfn:{self.function.name}:commit")
            try:
                await self._fetch_until_stopped()
            finally:
                await self._release(set(self.workers))
                committer.cancel()
        finally:
            await self.reader.stop()
            await self._runner.close()
            log.info("function %s: poller stopped", self.function.name)

    async def _connect(self) -> bool:
        """Connect the reader, trying again while its source is unreachable, for at most the connect timeout; False
        if stopped meanwhile. Only the start is bounded: a source unreachable from the start is a wrong address or
        a cluster that is down, said in one line; one that goes away later is waited for by the fetch loop."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._connect_timeout
        pauses = iter(CONNECT_RETRY_SECONDS)
        pause = CONNECT_RETRY_SECONDS[0]
        while not self._stopping.is_set():
            try:
                # The attempt made at the deadline still gets a moment: a broker that refuses answers at once.
                async with asyncio.timeout_at(max(deadline, loop.time() + LAST_ATTEMPT_SECONDS)):
                    await self.reader.connect()
                return True
            except Refused:  # the cluster answered and refused our settings (TLS): waiting will not change that
                raise
            except (Unreachable, TimeoutError) as error:
                failure = str(error) if isinstance(error, Unreachable) else f"no answer from {self.reader.description}"
            left = deadline - loop.time()
            if left <= 0:
                raise Unreachable(
                    f"function {self.function.name!r}: {failure}; gave up after {self._connect_timeout:g} s "
                    "(--connect-timeout)"
                )
            pause = min(next(pauses, pause), left)
            log.warning(
                "function %s: %s; trying again in %.1f s (gives up in %.0f s)", self.function.name, failure, pause, left
            )
            with suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), pause)
        return False

    def stop(self) -> None:
        self._stopping.set()

    def caught_up(self) -> bool:
        """Every record up to each owned partition's end is handled and committed; nothing is in flight."""
        committed = self.checkpoint.offsets()
        return (
            all(
                worker.idle and p in committed and self.reader.lag(p, committed[p]) == 0
                for p, worker in self.workers.items()
            )
            and self.checkpoint.is_settled()
        )

    def lag(self) -> dict[Partition, int]:
        """The lag of each owned partition whose end is known, in the source's unit (Kafka: OffsetLag, records past
        the committed offset)."""
        lag = self.reader.lag
        return {p: behind for p, value in self.checkpoint.offsets().items() if (behind := lag(p, value)) is not None}

    async def _fetch_until_stopped(self) -> None:
        while not self._stopping.is_set():
            try:
                fetched = await self.reader.fetch(FETCH_TIMEOUT_SECONDS)
            except Exception as error:  # the client reconnects by itself; keep polling
                self.stats.polling_errors += 1
                log.warning("function %s: fetch failed: %r", self.function.name, error)
                await asyncio.sleep(FETCH_ERROR_BACKOFF_SECONDS)
                continue
            if not fetched:
                continue
            self.last_fetch = time.monotonic()
            if self._resolve_for_filters:  # Avro through a registry: filters read decoded values
                await self.reader.value_codec.resolve([r.value for rs in fetched.values() for r in rs])
            for partition, records in fetched.items():
                worker = self.workers.get(partition)
                if worker is not None:
                    worker.counts.polled += len(records)
                    worker.feed(records)

    async def assigned(self, offsets: dict[Partition, Position]) -> None:
        self.ever_assigned = True
        self.last_fetch = time.monotonic()
        stored = await self._stored_positions(list(offsets))
        if self._stopping.is_set():
            # A rebalance that lands while this worker stops (the group client calls back until the reader has
            # stopped): the partitions get no worker, which `run` would not release (it has taken its list) and
            # whose lanes would restore state from a changelog being closed. Nothing is committed for them: the
            # group's next owner starts from their commits.
            log.info(
                "function %s: partitions assigned while stopping, left: %s", self.function.name, _names(set(offsets))
            )
            return
        for partition, committed in offsets.items():
            self.checkpoint.track(partition, committed)
            resume = stored.get(partition, committed)
            if resume > committed:  # the outputs were stored past the commit (exactly_once): go on from there
                log.info(
                    "function %s: %s: outputs stored up to offset %s, committed %s: resuming at %s",
                    self.function.name,
                    partition,
                    resume,
                    committed,
                    resume,
                )
                self.reader.seek(partition, resume)
                self.checkpoint.completed(partition, resume)
            self.workers[partition] = PartitionWorker(
                self.function,
                partition,
                reader=self.reader,
                runner=self._runner,
                checkpoint=self.checkpoint,
            )
        log.info("function %s: partitions assigned: %s", self.function.name, _names(set(offsets)))

    async def _stored_positions(self, partitions: list[Partition]) -> dict[Partition, Position]:
        """exactly_once: where the sinks' stored outputs stop, asked until they answer. The source's group client
        logs and drops an error of the assignment callback, which would leave the partitions assigned to this
        worker and never processed; a sink that is down holds them instead, as it holds their writes."""
        attempt = 0
        while True:
            try:
                return await self._runner.stored_positions(partitions)
            except Exception as error:
                if self._stopping.is_set():
                    raise
                attempt += 1
                delay = self._runner.delay(attempt)
                log.error(
                    "function %s: reading the outputs' stored offsets of %s failed (attempt %d): %r; retry in %.2f s",
                    self.function.name,
                    _names(set(partitions)),
                    attempt,
                    error,
                    delay,
                )
                await asyncio.sleep(delay)

    async def revoked(self, partitions: set[Partition]) -> None:
        await self._release(partitions)
        log.info("function %s: partitions revoked: %s", self.function.name, _names(partitions))

    async def lost(self, partitions: set[Partition]) -> None:
        """Another worker owns the partitions now: forgotten first, so that nothing completing from here on is
        committed, then their workers are stopped without waiting for what is in flight."""
        self.checkpoint.forget(partitions)
        workers = [self.workers.pop(p) for p in partitions if p in self.workers]
        await asyncio.gather(*(w.stop(0) for w in workers))
        self._runner.release([w.partition for w in workers])
        log.info("function %s: partitions lost: %s", self.function.name, _names(partitions))

    async def ended(self, partition: Partition) -> None:
        """The partition's last record was delivered: once every record is handled, what its state holds open is
        closed (a window's final invocation) and all of it is committed, forget it. Stopped meanwhile (the worker
        stops, the lease is lost), it raises StopProcessing: the end is not recorded, the next owner ends it."""
        worker = self.workers.get(partition)
        if worker is not None:
            await worker.drained()
            await worker.ended()
        while True:  # the end must be committed before the reader lets the partition's children start
            if await self.checkpoint.flush({partition}):
                break
            await asyncio.sleep(COMMIT_RETRY_SECONDS)
        await self._release({partition})
        log.info("function %s: partition ended: %s", self.function.name, partition)

    async def _release(self, partitions: set[Partition]) -> None:
        """Stop the partitions' workers, commit what they completed, and stop tracking them."""
        workers = [self.workers.pop(p) for p in partitions if p in self.workers]
        await asyncio.gather(*(w.stop(self.grace) for w in workers))
        await self.checkpoint.flush(partitions)
        self.checkpoint.forget(partitions)
        self._runner.release([w.partition for w in workers])


def _names(partitions: set[Partition]) -> str:
    return ", ".join(str(p) for p in sorted(partitions)) or "none"
