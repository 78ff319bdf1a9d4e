"""Health probes for orchestrators: `/ready` (readiness) and `/live` (liveness), as routes for an `Endpoint`.

Kubernetes asks two different questions. Readiness: has this worker joined its consumer groups and been given
its share of partitions? Until then it does no work, and a rolling update should wait for it before stopping the
next old worker. Liveness: is it making progress? A partition whose records have been pending for longer than
`stuck_after` seconds without the partition moving on (a handler hung past any sensible time, a deadlocked sync
handler, a blocked event loop) will not heal by itself, so the probe fails and the orchestrator restarts the worker.
That is safe: offsets are committed only for handled records, so the restarted worker (or whichever member the
group gives the partition to) replays from the last commit and nothing is lost.

Both routes run on the endpoint's server thread, not the event loop: they only read the worker's state, copying
each container before iterating it, and never await or lock anything the loop holds.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import orjson

from streamfn.observability.endpoint import Route

if TYPE_CHECKING:
    from streamfn.engine.worker import Worker

JSON = "application/json"
DEFAULT_STUCK_AFTER_SECONDS = 300.0
"""`streamfn run --stuck-after`'s default: a hung partition is noticed within minutes, while a batch with the
default timeout (3 s) and a few retries (backoff capped at 30 s) never comes near it. A batch counts as progress
only when it is done, retries included: set it above the longest time a batch may take with all its attempts."""


class Health:
    def __init__(self, worker: Worker, stuck_after: float = DEFAULT_STUCK_AFTER_SECONDS) -> None:
        self.worker = worker
        self.stuck_after = stuck_after

    def routes(self) -> dict[str, Route]:
        """`/ready`, `/live`, and `/health` (an alias of `/live`, the name many load balancers probe)."""
        return {"/ready": self.ready, "/live": self.live, "/health": self.live}

    def ready(self) -> tuple[int, str, bytes]:
        """200 once every function's poller has had an assignment from its group (possibly empty), else 503.

        It stays 200 through later rebalances: a worker between two assignments is still a member doing its
        share, and taking it out of rotation would only make the rebalance slower."""
        functions: dict[str, Any] = {}
        for poller in list(self.worker.pollers):
            functions[poller.function.name] = {
                "group": poller.function.group_id,
                "assigned": poller.ever_assigned,
                "partitions": sorted(str(p) for p in list(poller.workers)),
            }
        ready = all(f["assigned"] for f in functions.values())
        return _json(200 if ready else 503, {"ready": ready, "functions": functions})

    def live(self) -> tuple[int, str, bytes]:
        """200 unless a partition has had records pending for more than `stuck_after` seconds without moving on,
        or has been held that long (records that failed with nowhere to go, retried each round): then 503, naming
        each stuck function and partition, for how long, and what it holds. Also 503 while the event loop is
        blocked right now (`event_loop_blocked_seconds`; the watchdog logs which async handler) or the worker is
        stopping after an engine failure (`failure`: it exits 70 once it has committed what was done)."""
        now = time.monotonic()
        stuck = []
        for poller in list(self.worker.pollers):
            for worker in list(poller.workers.values()):
                holds = [h for h in list(worker.runner.holds) if h.partition == worker.partition]
                held = min(holds, key=lambda h: h.offset, default=None)
                waited = max(worker.stuck_for(now), 0.0 if held is None else now - held.since)
                if waited > self.stuck_after:
                    entry: dict[str, Any] = {
                        "function": poller.function.name,
                        "partition": str(worker.partition),
                        "stuck_for_seconds": round(waited, 1),
                        "in_flight": worker.in_flight,
                    }
                    if held is not None:
                        entry["held"] = {"offset": held.offset, "reason": held.reason, "rounds": held.rounds}
                    stuck.append(entry)
        blocked = self.worker.watchdog.blocked_for(now)
        failure = self.worker.supervisor.failure
        live = not stuck and not blocked and failure is None
        body: dict[str, Any] = {"live": live, "stuck_after_seconds": self.stuck_after, "stuck": stuck}
        if blocked:
            body["event_loop_blocked_seconds"] = round(blocked, 1)
        if failure is not None:
            body["failure"] = failure
        return _json(200 if live else 503, body)


def _json(status: int, body: dict[str, Any]) -> tuple[int, str, bytes]:
    return status, JSON, orjson.dumps(body, option=orjson.OPT_APPEND_NEWLINE)
