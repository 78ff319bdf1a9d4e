"""Per-function, per-partition counters, named after Lambda's event source mapping metrics.

They are plain integers bumped on the hot path (a few per batch, never a lock or a call into a metrics library);
the run summary adds them up, and the OpenTelemetry instruments (observability/metrics.py) read them when a reader
collects, so counting costs the same whether metrics are exported or not.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from streamfn.record import Partition


@dataclass(slots=True)
class Counts:
    polled: int = 0
    """PolledEventCount: records fetched from the source."""
    filtered_out: int = 0
    """FilteredOutEventCount: records no filter matched, committed without an invocation (as Lambda's Kafka)."""
    invoked: int = 0
    """InvokedEventCount: records passed to the handler (retries count again, as in Lambda)."""
    failed_invoked: int = 0
    """FailedInvokeEventCount: records passed to invocations that raised, timed out or reported failed items
    (Lambda's count includes responses with a non-empty batchItemFailures)."""
    handled: int = 0
    """Records whose batch the handler completed successfully."""
    batches: int = 0
    """Successful invocations."""
    failed_invocations: int = 0
    """InvokeErrorCount: invocations that raised or timed out."""
    retries: int = 0
    """Invocations repeated after a function error (each retry of a batch or of a part of it)."""
    bisections: int = 0
    """Failing batches split (by halves, or at a reported failed item)."""
    dead_lettered: int = 0
    """OnFailureDestinationDeliveredEventCount: records written to the on_failure destination."""
    delivery_errors: int = 0
    """OnFailureDestinationDeliveryErrorCount: attempts to write failed records to the destination that failed."""
    outputs: int = 0
    """Outputs written to every sink of the function (once each, however many sinks)."""
    dropped: int = 0
    """DroppedEventCount: records that failed for good with no destination, logged and skipped."""
    committed: int = 0
    """CommittedEventCount: records covered by successful commits (filtered-out records included)."""
    commit_errors: int = 0
    """CommitErrorCount: commits of this partition's offset that failed (retried)."""
    late: int = 0
    """Aggregations: records whose windows had all closed (routed to on_failure, or only counted)."""
    windows_closed: int = 0
    """Aggregations: window results emitted (one per key and window)."""


COUNTS = tuple(f.name for f in fields(Counts))


class FunctionStats:
    """One function's counts, by the source partition they belong to (a chained function's: the caller's)."""

    __slots__ = ("partitions", "polling_errors")

    def __init__(self) -> None:
        self.partitions: dict[Partition, Counts] = {}
        self.polling_errors = 0
        """PollingErrorCount: fetches from the source that failed (the poller backs off and polls again)."""

    def at(self, partition: Partition) -> Counts:
        counts = self.partitions.get(partition)
        if counts is None:
            counts = self.partitions[partition] = Counts()
        return counts

    def total(self) -> Counts:
        """The counts of every partition this process has had, added up."""
        partitions = list(self.partitions.values())  # a metrics reader's thread may call this
        return Counts(**{name: sum(getattr(c, name) for c in partitions) for name in COUNTS})
