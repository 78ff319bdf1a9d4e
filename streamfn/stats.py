"""Per-function counters, named after Lambda's event source mapping metrics, for the run summary."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class FunctionStats:
    polled: int = 0
    """PolledEventCount: records fetched from the source."""
    filtered_out: int = 0
    """FilteredOutEventCount: records no filter matched, committed without an invocation (as Lambda's Kafka)."""
    invoked: int = 0
    """InvokedEventCount: records passed to the handler (retries count again, as in Lambda)."""
    handled: int = 0
    """Records whose batch the handler completed successfully."""
    batches: int = 0
    """Successful invocations."""
    failed_invocations: int = 0
    """Invocations that raised or timed out."""
    bisections: int = 0
    """Failing batches split (by halves, or at a reported failed item)."""
    dead_lettered: int = 0
    """OnFailureDestinationDeliveredEventCount: records written to the on_failure destination."""
    outputs: int = 0
    """Outputs written to every sink of the function (once each, however many sinks)."""
    dropped: int = 0
    """DroppedEventCount: records that failed for good with no destination, logged and skipped."""
    late: int = 0
    """Aggregations: records whose windows had all closed (routed to on_failure, or only counted)."""
    windows_closed: int = 0
    """Aggregations: window results emitted (one per key and window)."""
