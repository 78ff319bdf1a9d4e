"""One WARNING line per record that leaves a partition without being handled, rate-limited.

A record that is dead-lettered or dropped under an explicit policy must never vanish silently: the line names the
function, partition, offset, condition, error and where the record went. But a poison deploy or a sink outage can
fail thousands of records at once, and a line each would bury everything else; so each function logs at most
`burst` lines per `interval` seconds, and the records beyond are counted and reported in one summary line when
the interval ends (or when the function closes). Dead letters and drops share the one limiter.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Sequence

from streamfn.failures.model import FailedRecord

log = logging.getLogger("streamfn.failures")

BURST_LINES = 10
"""Lines one by one per function and interval."""
INTERVAL_SECONDS = 10.0


class FailureLog:
    def __init__(self, function: str, *, burst: int = BURST_LINES, interval: float = INTERVAL_SECONDS) -> None:
        self._function = function
        self._burst = burst
        self._interval = interval
        self._ends = 0.0
        """When the current interval ends (time.monotonic())."""
        self._logged = 0
        self._unlogged: Counter[tuple[str, str]] = Counter()
        """Records past the burst in this interval, by (what happened to them, condition)."""
        self._summary: asyncio.TimerHandle | None = None

    def left(self, failures: Sequence[FailedRecord], verb: str, where: str) -> None:
        """`failures` left the partition: `verb` ("dead-lettered", "dropped") and `where` (the destination, or
        the policy that dropped them)."""
        now = time.monotonic()
        if now >= self._ends:
            self.flush()
            self._ends, self._logged = now + self._interval, 0
        for f in failures:
            if self._logged < self._burst:
                self._logged += 1
                log.warning(
                    "function %s: %s offset %d %s (%s after %d invocations): %r; %s",
                    self._function,
                    f.partition,
                    f.record.offset,
                    verb,
                    f.condition,
                    f.invoke_count,
                    f.error,
                    where,
                )
            else:
                self._unlogged[(f"{verb} ({where})", str(f.condition))] += 1
        if self._unlogged and self._summary is None:
            self._summary = asyncio.get_running_loop().call_later(self._ends - now, self.flush)

    def flush(self) -> None:
        """The summary of the records not logged one by one, if any (at the interval's end, and on close)."""
        if self._summary is not None:
            self._summary.cancel()
            self._summary = None
        if not self._unlogged:
            return
        total = sum(self._unlogged.values())
        parts = "; ".join(f"{n} {condition} {what}" for (what, condition), n in sorted(self._unlogged.items()))
        self._unlogged.clear()
        log.warning(
            "function %s: %d more records left without a line each (at most %d lines per %.0f s): %s",
            self._function,
            total,
            self._burst,
            self._interval,
            parts,
        )
