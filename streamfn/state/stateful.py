"""The one interface the runner drives a stateful function through, whichever kind it is.

An aggregation (state/aggregate.py: `Aggregator`) folds each record into window accumulators in the event loop;
Lambda's tumbling windows (state/tumbling.py: `LambdaWindows`) invoke the handler segment by segment with the
window's state in the event. Both keep their partitions' state in a `StateStore` and implement `Stateful`, so the
runner (engine/runner.py) never asks which one it has.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from streamfn.failures.model import FailedRecord
from streamfn.record import Partition, Position, Record, SourceRecord
from streamfn.state.store import Busy, StateStore

RunSegment = Callable[[Sequence[SourceRecord]], Awaitable[list[FailedRecord]]]
"""The runner's failure policy over some of a batch's records, invoking the handler (retries, bisection...)."""


class Stateful(Protocol):
    store: StateStore
    idle_seconds: float
    """How long a partition goes without records before `idle` may close what is due."""
    payload_limited: bool
    """Whether a batch reaches the handler as one invocation payload, so Lambda's 6 MB limit applies to a record
    alone; an aggregation hands the handler one record at a time and has no payload."""

    async def restore(self, partition: Partition) -> None:
        """Rebuild a newly assigned partition's state from the changelog, before its first batch."""

    def release(self, partitions: Sequence[Partition]) -> None:
        """Forget the state of partitions given up."""

    async def run(
        self,
        partition: Partition,
        records: Sequence[SourceRecord],
        decoded: Sequence[Record],
        run_segment: RunSegment,
        lane: Busy,
    ) -> list[FailedRecord]:
        """Apply a batch's records that decoded (`decoded`: as Records) to the state; the records that failed."""

    def fields(self, partition: Partition) -> dict[str, Any]:
        """What the partition's next invocation event carries besides the records."""

    async def accepted(self, partition: Partition, records: Sequence[SourceRecord], response: Any, lane: Busy) -> Any:
        """A successful invocation's response, with what the state takes from it taken out."""

    async def completed(self, partition: Partition, last: SourceRecord, lane: Busy) -> None:
        """After a batch (`last`: its last record): emit what it closed, then stage the state for the next commit."""

    async def idle(self, partition: Partition, applied: Position, quiet: float, lane: Busy) -> bool:
        """A partition without records for `quiet` seconds: close what is due; True if anything closed."""

    async def ended(self, partition: Partition, applied: Position, lane: Busy) -> bool:
        """The partition's shard ended (split, merged, closed) and every record of it is handled (`applied` covers
        them): close what is open on it now, as Lambda does ("When a shard ends, Lambda considers the current window
        to be closed, and any child shards will start their own window in a fresh state"), then stage the state.
        True if anything closed. Runs before the shard's end is committed, so its children start after it."""
