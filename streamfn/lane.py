"""A lane: one ordered sequence of batches within a partition, run one at a time.

A partition has `parallelization_factor` lanes; records of one key always go to the same lane, so they are never
in flight together and are handled in offset order. A lane cuts its own batches (size, 6 MB, window) and has the
function's runner take each to the end (outputs written, failures delivered) before telling its partition the
batch is done. While a batch's sink is down the lane takes no new batch, so its buffer fills and pauses the
partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from streamfn.batch import Batch, PartitionBuffer
from streamfn.failure import StopProcessing

if TYPE_CHECKING:
    from streamfn.partition import PartitionWorker

log = logging.getLogger("streamfn.lane")


class Lane:
    def __init__(self, owner: PartitionWorker, index: int) -> None:
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
        self.in_flight: Batch | None = None
        self.busy = False
        """An invocation or a sink write is under way: on stop, it may finish within the grace period."""
        self._task = asyncio.create_task(self._run(), name=f"streamfn:{owner.function.name}:{owner.partition}:{index}")

    @property
    def stopping(self) -> bool:
        return self._owner.stopping

    @property
    def idle(self) -> bool:
        """Nothing buffered and nothing in flight."""
        return self.in_flight is None and self.buffer.buffered == 0

    def lowest_pending(self) -> int | None:
        """The lowest offset of this lane not handled yet (in flight or buffered), if any."""
        return self.in_flight.first_offset if self.in_flight is not None else self.buffer.first_offset

    async def stop(self, grace: float) -> None:
        """Take no new batch; let an invocation under way finish within `grace` seconds; never complete after."""
        self.buffer.close()
        if not self.busy:
            self._task.cancel()  # waiting for records, backing off or for the destination: nothing to finish
        done, _ = await asyncio.wait((self._task,), timeout=grace)
        if not done:
            log.warning(
                "function %s: %s: abandoning an invocation still running after %.1f s; its batch is not committed",
                self._owner.function.name,
                self._owner.partition,
                grace,
            )
            self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, StopProcessing):
            await self._task

    async def _run(self) -> None:
        while (batch := await self.buffer.next_batch()) is not None:
            self.in_flight = batch
            await self._owner.runner.run(self._owner.partition, batch.records, self, self._owner.predecoded)
            self.in_flight = None
            self._owner.lane_done()
