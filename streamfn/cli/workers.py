"""`streamfn run --workers N`: one supervisor process and N worker processes sharing each function's group.

One worker process is bound by one core (the GIL), and Kafka already spreads partitions over the members of a
consumer group; so scaling out on one machine is starting more worker processes. The supervisor runs no function:
it starts N children running the same `streamfn run` (without `--workers`, `--seed` and `--key-field`; the
embedded broker, the `--local` systems and the seeding are done once, here; the children inherit the
environment that points at them), forwards SIGTERM/SIGINT to them, restarts a child that dies
(its partitions move to the others meanwhile, by the group's rebalance), and adds the children's summaries up
into one. Each child writes its summary as JSON to the file named by `REPORT_ENV` instead of printing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import json
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from streamfn.cli.systems import SERVERS_ENV
from streamfn.engine.worker import FunctionSummary
from streamfn.errors import ConfigError
from streamfn.observability.stats import COUNTS, Counts
from streamfn.record import Partition

log = logging.getLogger("streamfn.workers")

REPORT_ENV = "STREAMFN_WORKER_REPORT"
"""Set by the supervisor: the file a child writes its run summary to (JSON) instead of printing it."""

CANNOT_START_EXITS = (1, 2)
"""A child's exit codes that no restart can fix (unreachable brokers, a configuration error): the supervisor stops
the others and exits with the same code; the child has printed the one line that says why."""

STABLE_SECONDS = 30.0
"""A child that ran this long before dying is restarted as if it had never failed before."""
QUICK_FAILURES = 5
"""Children that die this many times in a row, each within STABLE_SECONDS of its start: the supervisor gives up."""
MAX_BACKOFF_SECONDS = 8.0

PR_SET_PDEATHSIG = 1
"""prctl(2): the signal a process gets when its parent dies."""

_PARENT_ONLY = ("--workers", "--seed", "--key-field", "--metrics-port", "--health-port", "--local")
"""Options the supervisor acts on itself (ports: each child gets its own, see `child_args`)."""


def worker_count(value: str) -> int:
    """`--workers`: a positive number, or `auto` for the machine's cores."""
    if value == "auto":
        return os.cpu_count() or 1
    if value.isdigit() and int(value) >= 1:
        return int(value)
    raise ConfigError(f"--workers {value!r} is not allowed; allowed: a number of processes >= 1, or auto")


def child_args(argv: Iterable[str], index: int, metrics_port: int | None, health_port: int | None) -> list[str]:
    """The `streamfn run` arguments of child `index` (0-based): the supervisor's own, minus what only the
    supervisor does, with the metrics and health ports shifted by `index` so that every child serves its own."""
    args: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _PARENT_ONLY:
            skip = True
        elif not arg.startswith(tuple(f"{option}=" for option in _PARENT_ONLY)):
            args.append(arg)
    if metrics_port is not None:
        args += ["--metrics-port", str(metrics_port + index)]
    if health_port is not None:
        args += ["--health-port", str(health_port + index)]
    return args


def write_report(summaries: list[FunctionSummary]) -> bool:
    """In a child: write the run summary for the supervisor; False when not a child (print it as usual)."""
    path = os.environ.get(REPORT_ENV)
    if not path:
        return False
    Path(path).write_text(
        json.dumps(
            [
                {
                    "name": s.name,
                    "group_id": s.group_id,
                    "stats": dataclasses.asdict(s.stats),
                    "committed_records": s.committed_records,
                    "offsets": [[p.topic, p.partition, o] for p, o in s.offsets.items()],
                }
                for s in summaries
            ]
        )
    )
    return True


def combine(reports: list[list[dict[str, Any]]]) -> list[FunctionSummary]:
    """One summary from every child run's: counts added up; per partition the highest offset any child committed
    (a partition moves between children on rebalances and restarts; committed offsets only move forward)."""
    combined: dict[str, FunctionSummary] = {}
    for report in reports:
        for entry in report:
            stats = Counts(**entry["stats"])
            offsets = {Partition(topic, partition): offset for topic, partition, offset in entry["offsets"]}
            known = combined.get(entry["name"])
            if known is not None:
                for field in COUNTS:
                    setattr(stats, field, getattr(known.stats, field) + getattr(stats, field))
                offsets = {p: max(o, offsets.get(p, o)) for p, o in known.offsets.items()} | {
                    p: o for p, o in offsets.items() if p not in known.offsets
                }
            committed = entry["committed_records"] + (known.committed_records if known else 0)
            combined[entry["name"]] = FunctionSummary(entry["name"], entry["group_id"], stats, committed, offsets)
    return list(combined.values())


class GaveUp(Exception):
    def __init__(self, code: int, reason: str | None) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Supervisor:
    """Keeps `count` children running until a signal (or, with `--until-idle`, until each has stopped by itself)."""

    def __init__(self, count: int, argv: list[str], servers: str | None, ports: tuple[int | None, int | None]):
        self.count = count
        self.argv = argv
        self.servers = servers
        self.ports = ports
        self.stopping = asyncio.Event()
        self.children: dict[int, asyncio.subprocess.Process] = {}
        self.reports: list[list[dict[str, Any]]] = []
        self._directory = tempfile.TemporaryDirectory(prefix="streamfn-workers-")
        self._runs = 0

    async def run(self) -> list[FunctionSummary]:
        """Every child's exit, then the combined summary; `SystemExit` with the code if the children cannot be kept
        running (after stopping the others)."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._forward, signum)
        log.info("starting %d worker processes", self.count)
        try:
            codes = await asyncio.gather(*(self._keep(index) for index in range(self.count)))
        except GaveUp as gave_up:
            self._forward(signal.SIGTERM)
            await asyncio.gather(*(child.wait() for child in list(self.children.values())))
            if gave_up.reason:
                print(f"error: {gave_up.reason}", file=sys.stderr)
            raise SystemExit(gave_up.code) from None
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
            self._directory.cleanup()
        failed = [code for code in codes if code != 0]
        if failed:  # a second signal made the children exit at once: what they did is committed, not reported
            raise SystemExit(failed[0])
        return combine(self.reports)

    def _forward(self, signum: int) -> None:
        if self.stopping.is_set():
            log.warning("second %s: the workers exit now", signal.Signals(signum).name)
        else:
            log.info("%s: telling the %d workers to finish and commit", signal.Signals(signum).name, len(self.children))
        self.stopping.set()
        for child in self.children.values():
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signum)

    async def _keep(self, index: int) -> int:
        """Run child `index` until it exits when asked to (or by itself with 0); restart it when it dies."""
        quick_failures = 0
        while True:
            started = time.monotonic()
            child, report = await self._start(index)
            code, _ = await asyncio.gather(child.wait(), _prefix_lines(child, index))
            del self.children[index]
            if report.exists():
                self.reports.append(json.loads(report.read_text()))
            if self.stopping.is_set():
                # a child the signal reached before it installed its handlers ended before handling anything
                return 0 if code in (-signal.SIGTERM, -signal.SIGINT) else code
            if code == 0:
                return 0
            if code in CANNOT_START_EXITS:
                raise GaveUp(code, None)
            quick_failures = quick_failures + 1 if time.monotonic() - started < STABLE_SECONDS else 1
            how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
            if quick_failures >= QUICK_FAILURES:
                raise GaveUp(
                    code if code > 0 else 128 - code,
                    f"worker {index} {how} {quick_failures} times in a row, each within {STABLE_SECONDS:g} s of its "
                    "start; stopping the others",
                )
            delay = min(2.0 ** (quick_failures - 1) / 2, MAX_BACKOFF_SECONDS)
            log.warning("worker %d (pid %d) %s; restarting it in %g s", index, child.pid, how, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)
            if self.stopping.is_set():
                return 0

    async def _start(self, index: int) -> tuple[asyncio.subprocess.Process, Path]:
        self._runs += 1
        report = Path(self._directory.name) / f"report-{self._runs}.json"
        env = dict(os.environ, **{REPORT_ENV: str(report)})
        if self.servers is not None:
            env[SERVERS_ENV] = self.servers
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "streamfn",
            *child_args(self.argv, index, *self.ports),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            start_new_session=True,  # a terminal's Ctrl-C reaches the supervisor only, which forwards it once
            preexec_fn=_end_with_parent,
        )
        self.children[index] = child
        if self.stopping.is_set():  # the signal came while it was being started
            child.send_signal(signal.SIGTERM)
        log.info("worker %d started (pid %d)", index, child.pid)
        return child, report


def _end_with_parent() -> None:
    """In the child, before it runs: on Linux, get SIGTERM when the supervisor dies (even by SIGKILL), so that no
    worker is left running without it (the children are in their own sessions, out of reach of a terminal)."""
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


async def _prefix_lines(child: asyncio.subprocess.Process, index: int) -> None:
    """A child's standard output (its progress lines), each line prefixed with the worker's number."""
    assert child.stdout is not None
    async for line in child.stdout:
        sys.stdout.write(f"[worker {index}] {line.decode(errors='replace')}")
        sys.stdout.flush()


async def supervise(
    count: int, servers: str | None, metrics_port: int | None, health_port: int | None
) -> list[FunctionSummary]:
    """Run `count` worker processes of this `streamfn run` (sys.argv) and return their combined summary."""
    return await Supervisor(count, sys.argv[1:], servers, (metrics_port, health_port)).run()
