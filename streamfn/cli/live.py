"""What `streamfn run` shows while it runs: is each function keeping up, and what failed?

On a terminal, a rich `Live` table redrawn every `interval` seconds; off a terminal (a pipe, a log collector),
one plain log line per function on the logger `streamfn.progress`, only when its numbers changed, so a quiet
worker logs nothing. Both render `Progress` snapshots, which are computed on the event loop from the worker's
counters (plain integers) and its pollers; rendering is pure, so tests check exactly what a user sees.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import IO, Any, cast

from rich.console import Console
from rich.file_proxy import FileProxy
from rich.live import Live
from rich.table import Table

from streamfn.engine.worker import Worker

log = logging.getLogger("streamfn.progress")

COLUMNS = (
    "function",
    "handled/s",
    "polled",
    "lag",
    "in flight",
    "failed invocations",
    "dead-lettered",
    "dropped",
    "committed",
    "partitions",
    "held",
)
"""`handled/s`: records whose invocation succeeded, per second over the last interval (polled/s would count
records merely fetched, which a stalled handler can keep high until its buffers fill). `held`: partitions that
cannot move on (`partition@offset`), empty when none."""

TOTAL = "total"


@dataclass(frozen=True)
class Progress:
    """One function's numbers at one moment (or all functions added up: `function == "total"`)."""

    function: str
    at: float
    """time.monotonic() when taken: the next snapshot's rate is measured from here."""
    handled: int
    handled_per_second: float
    polled: int
    lag: int | None
    """OffsetLag summed over the owned partitions whose end is known; None when no end is known yet, or for a
    function without a source (fed only through `Function(...)` outputs)."""
    in_flight: int
    failed_invocations: int
    dead_lettered: int
    dropped: int
    committed: int
    partitions: int | None
    """Partitions owned now; None for a function without a source."""
    held: tuple[tuple[str, int, str], ...] = ()
    """Partitions held (partition, lowest offset held, why): failures with nowhere to go and no policy to drop
    them, a window's final invocation or a destination that keeps failing."""


def snapshot(
    worker: Worker, previous: Mapping[str, Progress] | None = None, now: float | None = None
) -> list[Progress]:
    """Every function of the worker, in declaration order; rates against `previous` (by function), if given.

    Call it on the event loop: it reads the pollers' partition workers, which only the loop changes."""
    now = time.monotonic() if now is None else now
    pollers = {p.function.name: p for p in worker.pollers}
    rows = []
    for name in worker.app.functions:
        counts = worker.stats[name].total()
        poller = pollers.get(name)
        lag: int | None = None
        in_flight = 0
        partitions: int | None = None
        held: tuple[tuple[str, int, str], ...] = ()
        if poller is not None:
            workers = list(poller.workers.values())
            lags = poller.lag()
            lag = sum(lags.values()) if lags or not workers else None
            in_flight = sum(w.in_flight for w in workers)
            partitions = len(workers)
            if workers:
                held = tuple(sorted((str(h.partition), h.offset, h.reason) for h in list(workers[0].runner.holds)))
        before = previous.get(name) if previous else None
        elapsed = now - before.at if before else 0.0
        rate = (counts.handled - before.handled) / elapsed if before and elapsed > 0 else 0.0
        rows.append(
            Progress(
                function=name,
                at=now,
                handled=counts.handled,
                handled_per_second=max(0.0, rate),
                polled=counts.polled,
                lag=lag,
                in_flight=in_flight,
                failed_invocations=counts.failed_invocations,
                dead_lettered=counts.dead_lettered,
                dropped=counts.dropped,
                committed=counts.committed,
                partitions=partitions,
                held=held,
            )
        )
    return rows


def total(rows: Sequence[Progress]) -> Progress:
    """All functions added up (lag and partitions over the functions that have them)."""

    def added(name: str) -> Any:
        known = [value for r in rows if (value := getattr(r, name)) is not None]
        return sum(known) if known else None

    summed = {f.name: added(f.name) for f in fields(Progress) if f.name not in ("function", "at", "held")}
    held = tuple(h for r in rows for h in r.held)
    return Progress(function=TOTAL, at=max((r.at for r in rows), default=0.0), held=held, **summed)


def _rate(per_second: float) -> str:
    """Whole records per second, with a decimal below 10 so a slow function does not read as stopped."""
    return f"{per_second:.1f}" if 0 < per_second < 10 else f"{per_second:.0f}"


def _known(value: int | None) -> str:
    return "-" if value is None else str(value)


def _cells(row: Progress) -> tuple[str, ...]:
    return (
        row.function,
        _rate(row.handled_per_second),
        str(row.polled),
        _known(row.lag),
        str(row.in_flight),
        str(row.failed_invocations),
        str(row.dead_lettered),
        str(row.dropped),
        str(row.committed),
        _known(row.partitions),
        ", ".join(f"{partition}@{offset}" for partition, offset, _ in row.held),
    )


def progress_table(rows: Sequence[Progress]) -> Table:
    """The live table: one row per function, and a total row when there is more than one."""
    table = Table(title="streamfn run")
    for column in COLUMNS:
        table.add_column(column, justify="left" if column == "function" else "right", no_wrap=True)
    for row in rows:
        table.add_row(*_cells(row))
    if len(rows) > 1:
        table.add_section()
        table.add_row(*_cells(total(rows)), style="bold")
    return table


def progress_line(row: Progress) -> str:
    """The plain line: `function enrich: 1234 handled/s, polled 5000, lag 12, in flight 40, ...`, then what is
    held, if anything: `; held orders-0 offset 5 (DeserializationError: ...)`."""
    held = "".join(f"; held {partition} offset {offset} ({why})" for partition, offset, why in row.held)
    return (
        f"function {row.function}: {_rate(row.handled_per_second)} handled/s, polled {row.polled}, "
        f"lag {_known(row.lag)}, in flight {row.in_flight}, failed invocations {row.failed_invocations}, "
        f"dead-lettered {row.dead_lettered}, dropped {row.dropped}, committed {row.committed}, "
        f"partitions {_known(row.partitions)}{held}"
    )


async def show_progress(worker: Worker, *, console: Console, live: bool, interval: float) -> None:
    """Show the worker's progress every `interval` seconds until cancelled: a live table on `console` when `live`
    (a terminal), plain `streamfn.progress` log lines otherwise."""
    if live:
        await _show_live(worker, console, interval)
    else:
        await _log_lines(worker, interval)


async def _log_lines(worker: Worker, interval: float) -> None:
    """A function's line is logged only when it differs from its last one (its rate included, so the line after
    a burst says 0 handled/s once), which keeps an idle worker silent. The lines before the first tick count as
    logged, so a worker with nothing to do logs nothing but its assignment."""
    rows = {r.function: r for r in snapshot(worker)}
    logged = {name: progress_line(r) for name, r in rows.items()}
    while True:
        await asyncio.sleep(interval)
        rows = {r.function: r for r in snapshot(worker, rows)}
        for name, row in rows.items():
            line = progress_line(row)
            if line != logged.get(name):
                log.info("%s", line)
                logged[name] = line


async def _show_live(worker: Worker, console: Console, interval: float) -> None:
    """Redraw the table from the event loop (auto_refresh off: the numbers are read on the loop, never from
    rich's refresh thread). The table is transient: once cancelled it is erased, and the run summary that
    `streamfn run` prints next takes its place."""
    rows = {r.function: r for r in snapshot(worker)}
    with (
        Live(
            progress_table(list(rows.values())),
            console=console,
            auto_refresh=False,
            transient=True,
            redirect_stdout=True,
            redirect_stderr=True,
        ) as display,
        _logs_through(console),
    ):
        while True:
            await asyncio.sleep(interval)
            rows = {r.function: r for r in snapshot(worker, rows)}
            display.update(progress_table(list(rows.values())), refresh=True)


@contextmanager
def _logs_through(console: Console) -> Iterator[None]:
    """While live, log handlers that write to a terminal write through `console` instead, so each line is
    printed above the table and the table is redrawn below it.

    `Live(redirect_stderr=True)` alone does not do it: it swaps `sys.stderr`, but a logging StreamHandler keeps
    the stream it was given when it was created (`logging.basicConfig`, `streamfn.logs.configure`), so its lines
    would be written straight to the terminal, across the table, and the next redraw would leave torn copies of
    it behind. A `RichHandler` would print above the table too, but would replace the configured format (text
    or JSON, with the bound function/partition fields) by rich's own columns. So the handlers stay as they are
    and only their stream is swapped for rich's `FileProxy` of the console, the same proxy `redirect_stderr`
    uses (which still catches `print()` from handlers and tracebacks); restored when the view ends. While the
    view is up, those lines go to the console's file (stdout for `streamfn run`), where the table is drawn.
    """
    swapped: list[tuple[logging.StreamHandler[Any], IO[str]]] = []
    for handler in list(logging.getLogger().handlers):
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            stream = handler.stream
            if not isinstance(stream, FileProxy) and _is_terminal(stream):
                handler.setStream(cast(IO[str], FileProxy(console, stream)))
                swapped.append((handler, stream))
    try:
        yield
    finally:
        for handler, stream in swapped:
            handler.setStream(stream)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False
