"""A lane: one ordered sequence of batches within a partition, invoked one at a time.

A partition has `parallelization_factor` lanes; records of one key always go to the same lane, so they are never
in flight together and are handled in offset order. A lane cuts its own batches (size, 6 MB, window) and has the
function's runner take each to the end in two halves: invoke (decode, the handler, the failure policy), then
complete (outputs written to every sink, failures to the destination); only then is the batch done for the
partition's commit. The next batch's invocation overlaps the previous batch's completion, which hides a sink's
round trip; completions stay in order, one at a time, so a key's outputs keep their order and a batch whose sink
is down holds everything after it: the lane takes no further batch, its buffer fills and pauses the partition.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any, Protocol

from streamfn.app import StreamFunction
from streamfn.engine.batch import Batch, PartitionBuffer
from streamfn.engine.runner import FunctionRunner, Invoked
from streamfn.engine.supervision import spawn
from streamfn.engine.threads import LaneThreads, use
from streamfn.observability.logs import bind
from streamfn.record import Partition, Position

log = logging.getLogger("streamfn.lane")

IDLE_CHECK_SECONDS = 1.0
"""How often a stateful lane without records checks whether its partition's windows are due to close."""


class LaneOwner(Protocol):
    """What a lane needs of the partition worker that owns it (streamfn.engine.partition.PartitionWorker), so the
    lane does not import the module that creates it."""

    function: StreamFunction
    partition: Partition
    runner: FunctionRunner
    stopping: bool
    last_arrival: float
    predecoded: dict[Position, Any] | None

    def hold(self, lane: int) -> None: ...

    def release(self, lane: int) -> None: ...

    def applied(self) -> Position | None: ...

    def lane_done(self) -> None: ...


class Lane:
    def __init__(self, owner: LaneOwner, index: int) -> None:
        self._owner = owner
        self.index = index
        config = owner.function.config
        self.buffer = PartitionBuffer(
            owner.partition,
            batch_size=config.batch_size,
            window=config.maximum_batching_window_in_seconds,
            pause=lambda: owner.hold(index),
            resume=lambda: owner.release(index),
        )
        self.in_flight: deque[Batch] = deque()
        """Batches taken and not done yet, oldest first: at most one completing and one being invoked."""
        self.busy = 0
        """Invocations and sink writes under way: on stop, they may finish within the grace period."""
        self._completing: asyncio.Task[None] | None = None
        self.restored = asyncio.Event()
        """Set once the partition's state (a stateful function's) is restored, before the lane's first batch."""
        self.name = f"streamfn:{owner.function.name}:{owner.partition}:{index}"
        self._task = spawn(self._run(), name=self.name)

    @property
    def stopping(self) -> bool:
        return self._owner.stopping

    @property
    def idle(self) -> bool:
        """Nothing buffered and nothing in flight."""
        return not self.in_flight and self.buffer.buffered == 0

    def lowest_pending(self) -> Position | None:
        """The lowest position of this lane not handled yet (in flight or buffered), if any."""
        return self.in_flight[0].first_offset if self.in_flight else self.buffer.first_offset

    async def stop(self, grace: float) -> None:
        """Take no new batch; let an invocation under way finish within `grace` seconds; never complete after."""
        self.buffer.close()
        if not self.busy:
            self._task.cancel()  # waiting for records, backing off or for the destination: nothing to finish
        done, _ = await asyncio.wait((self._task,), timeout=grace)
        if not done and self.busy:
            log.warning(
                "function %s: %s: abandoning an invocation still running after %.1f s; its batch is not committed",
                self._owner.function.name,
                self._owner.partition,
                grace,
            )
        if not done:
            self._task.cancel()
        await asyncio.wait((self._task,))  # how it ended is its supervisor's business (a death stops the worker)

    async def _next_batch(self) -> Batch | None:
        """The next batch; for a stateful function, idle checks meanwhile (windows of a quiet partition close)."""
        runner, owner = self._owner.runner, self._owner
        if runner.stateful is None:
            return await self.buffer.next_batch()
        idle_seconds = runner.stateful.idle_seconds
        while True:
            quiet = time.monotonic() - owner.last_arrival
            try:
                return await asyncio.wait_for(self.buffer.next_batch(), max(idle_seconds - quiet, IDLE_CHECK_SECONDS))
            except TimeoutError:
                applied = owner.applied()
                if applied is not None and self.idle:
                    await runner.idle(owner.partition, applied, time.monotonic() - owner.last_arrival, self)

    async def _run(self) -> None:
        runner, partition = self._owner.runner, self._owner.partition
        bind(function=self._owner.function.name, topic=partition.topic, partition=partition.partition)  # this task's
        threads = LaneThreads(self.name)
        use(threads)  # this task's and its completions' sync calls (chained functions' too)
        overlap = runner.stateful is None
        """A stateful batch completes before the next is invoked: the state staged for a commit then reflects
        exactly the batches completed, whose outputs and dead letters are written."""
        try:
            await runner.restore(partition)
            self.restored.set()
            while (batch := await self._next_batch()) is not None:
                self.in_flight.append(batch)
                invoked = await runner.invoke(partition, batch.records, self, self._owner.predecoded)
                if self._completing is not None:
                    await self._completing  # the previous batch's writes first: completions stay in order
                    self._completing = None
                if overlap and (invoked.invocations or invoked.failures):  # overlap the writes with the next batch
                    self._completing = spawn(self._complete(invoked), name=f"{self.name}:completing")
                else:
                    await self._complete(invoked)
            if self._completing is not None:
                await self._completing
        finally:
            threads.close()
            completing = self._completing
            if completing is not None and not completing.done():
                completing.cancel()  # stopped while a write was under way: its batch is not committed
            elif completing is not None and not completing.cancelled():
                completing.exception()  # raised while this task was being cancelled: retrieved, not logged

    async def _complete(self, invoked: Invoked) -> None:
        await self._owner.runner.complete(invoked, self)
        self.in_flight.popleft()
        self._owner.lane_done()
