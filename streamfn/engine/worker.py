"""A worker process: runs every function of an app concurrently, one poller each, until told to stop.

Several workers of the same app share partitions through each function's consumer group, which is how streamfn
scales out. SIGTERM or SIGINT stops polling, lets in-flight batches finish (bounded by each function's timeout),
commits and leaves the groups; a second signal exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from dataclasses import dataclass

from streamfn.app import App
from streamfn.engine.chain import Chains
from streamfn.engine.collector import collecting_for_worker
from streamfn.engine.poller import CONNECT_TIMEOUT_SECONDS, Poller
from streamfn.engine.supervision import EngineFailure, Supervisor
from streamfn.engine.watchdog import LoopWatchdog
from streamfn.observability.stats import Counts, FunctionStats
from streamfn.observability.telemetry import Telemetry
from streamfn.record import Partition, Position

log = logging.getLogger("streamfn.worker")

IDLE_CHECK_SECONDS = 0.2
WINDOW_CLOSE_SECONDS = 2.0
"""A lane checks for windows to close every second; then their results are written."""


@dataclass(frozen=True)
class FunctionSummary:
    name: str
    group_id: str
    stats: Counts
    """The function's counts, all partitions added up."""
    committed_records: int
    offsets: dict[Partition, Position]


class Worker:
    def __init__(
        self,
        app: App,
        telemetry: Telemetry | None = None,
        *,
        connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
    ) -> None:
        self.app = app
        telemetry = telemetry or Telemetry()
        self.stats = {name: FunctionStats() for name in app.functions}
        self.chains = Chains(app, self.stats, telemetry)
        self.pollers = [
            Poller(
                f,
                f.source.reader(group_id=f.group_id),
                self.stats[f.name],
                self.chains,
                f.source.changelog(group_id=f.group_id) if f.stateful else None,
                telemetry.function(f.name),
                connect_timeout,
            )
            for f in app.functions.values()
            if f.source is not None and f.config.enabled
        ]
        for f in app.functions.values():
            if not f.config.enabled:
                log.info("function %s: Enabled=False: not polling its source (declared, not run)", f.name)
        self.watchdog = LoopWatchdog()
        """Notices an event loop blocked (by an async handler) and names the handler."""
        if telemetry.instruments is not None:
            telemetry.instruments.observe(self.stats, self.pollers)
            telemetry.instruments.observe_loop(self.watchdog)
        self._signals = 0
        self.supervisor = Supervisor(self.stop)
        """Told when an engine task dies: it stops the worker, and `run` then raises EngineFailure."""

    def stop(self) -> None:
        for poller in self.pollers:
            poller.stop()

    async def run(self, *, until_idle: float | None = None, handle_signals: bool = True) -> list[FunctionSummary]:
        """Run until stopped (by a signal, `stop()`, or `until_idle` seconds with everything caught up)."""
        with collecting_for_worker():  # the collector's cost per record (streamfn/engine/collector.py)
            return await self._run(until_idle, handle_signals)

    async def _run(self, until_idle: float | None, handle_signals: bool) -> list[FunctionSummary]:
        if handle_signals:
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, self._on_signal, signum)
        installed = self.supervisor.install()  # every task the pollers create inherits it
        spawn = self.supervisor.spawn
        tasks = [spawn(p.run(), name=f"streamfn:{p.function.name}") for p in self.pollers]
        if not tasks:
            log.warning("no function to run: every function with a source has Enabled=False")
            await self.chains.close()
            installed.var.reset(installed)
            return self.summary()
        heartbeat = spawn(self.watchdog.run(), name="streamfn:watchdog")
        watcher = None
        if until_idle is not None:
            watcher = spawn(self._stop_when_idle(until_idle), name="streamfn:until-idle")
        try:
            await asyncio.gather(*tasks, return_exceptions=True)  # a death stops them all (the supervisor)
        finally:
            heartbeat.cancel()
            if watcher:
                watcher.cancel()
            await self.chains.close()
            installed.var.reset(installed)
        if self.supervisor.user_error is not None:
            raise self.supervisor.user_error
        if self.supervisor.failure is not None:
            raise EngineFailure(self.supervisor.failure, self.summary())
        return self.summary()

    def summary(self) -> list[FunctionSummary]:
        """Every function, in declaration order; functions fed only through `Function(...)` have no offsets."""
        pollers = {p.function.name: p for p in self.pollers}
        return [
            FunctionSummary(
                name,
                function.group_id,
                self.stats[name].total(),
                p.checkpoint.committed_records if (p := pollers.get(name)) else 0,
                p.checkpoint.reached() if p else {},
            )
            for name, function in self.app.functions.items()
        ]

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning("second %s: exiting now without waiting for in-flight batches", signal.Signals(signum).name)
            os._exit(128 + signum)
        log.info("%s: finishing in-flight batches, committing, leaving the groups", signal.Signals(signum).name)
        self.stop()

    async def _stop_when_idle(self, idle_seconds: float) -> None:
        while True:
            await asyncio.sleep(IDLE_CHECK_SECONDS)
            now = time.monotonic()
            if all(
                p.ever_assigned and p.caught_up() and now - p.last_fetch >= _quiet(p, idle_seconds)
                for p in self.pollers
            ):
                log.info("caught up and idle for %g s: stopping", idle_seconds)
                self.stop()
                return


def _quiet(poller: Poller, idle_seconds: float) -> float:
    """How long a poller must be quiet before `--until-idle` stops it: a stateful function whose windows close
    within that time (window_idle_seconds) gets the lane's idle check and the write of its results too."""
    function = poller.function
    if function.stateful and function.config.window_idle_seconds <= idle_seconds:
        return max(idle_seconds, function.config.window_idle_seconds + WINDOW_CLOSE_SECONDS)
    return idle_seconds
