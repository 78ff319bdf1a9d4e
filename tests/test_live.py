"""The live view of `streamfn run`: a table on a terminal, plain log lines elsewhere, with the run's exact numbers."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import re
from typing import Any

import pytest
from conftest import create_topic, produce_values, source, wait_for
from rich.console import Console

from streamfn import App, Record
from streamfn.cli.live import progress_line, progress_table, show_progress, snapshot
from streamfn.connectors.kafka import KafkaTopic
from streamfn.engine.worker import Worker

RECORDS, PARTITIONS = 40, 4
BAD = {3, 13, 23, 33}
"""Records whose invocation fails; with no retries each is one failed invocation and one dead letter."""
EXPECTED = (
    "function flaky: {rate} handled/s, polled 40, lag 0, in flight 0, failed invocations 4, dead-lettered 4, "
    "dropped 0, committed 40, partitions 4"
)


def _row(text: str, function: str) -> list[str]:
    """The cells of the last table row for `function` in rendered text."""
    rows = [line for line in text.splitlines() if re.match(rf"^\W*{function}\b", line)]
    assert rows, text
    return [cell.strip() for cell in rows[-1].split("│") if cell.strip()]


async def test_progress_shows_the_runs_exact_counts_live_and_as_log_lines(
    broker: str, name: Any, caplog: pytest.LogCaptureFixture
) -> None:
    topic, group, dlq = name("t"), name("g"), name("dlq")
    await create_topic(broker, topic, PARTITIONS)
    await produce_values(broker, topic, RECORDS, PARTITIONS)
    app = App("live")

    @app.function(
        source=source(topic, group),
        batch_size=1,
        maximum_batching_window_in_seconds=0,
        maximum_retry_attempts=0,
        on_failure=KafkaTopic(dlq),
    )
    async def flaky(records: list[Record]) -> None:
        if records[0].value["n"] in BAD:
            raise ValueError("bad record")

    # `streamfn run` on a terminal: its log handler writes to a tty, the live table to a terminal console.
    master, replica = os.openpty()
    os.set_blocking(master, False)
    terminal = os.fdopen(replica, "w", buffering=1)
    on_terminal = logging.StreamHandler(terminal)
    logging.getLogger().addHandler(on_terminal)
    screen = Console(file=io.StringIO(), force_terminal=True, record=True, width=200)
    caplog.set_level(logging.INFO, logger="streamfn.progress")

    worker = Worker(app)
    lines = asyncio.create_task(show_progress(worker, console=Console(), live=False, interval=0.3))
    table = asyncio.create_task(show_progress(worker, console=screen, live=True, interval=0.3))
    run = asyncio.create_task(worker.run(handle_signals=False))
    try:
        await wait_for(
            lambda: all(p.caught_up() for p in worker.pollers) and worker.stats["flaky"].total().committed == RECORDS,
            60,
            "every record committed",
        )
        await asyncio.sleep(1.0)  # a tick or more after the last change: the rate line of 0/s is out
        rows = snapshot(worker)
        progress = [r.getMessage() for r in caplog.records if r.name == "streamfn.progress"]
        await asyncio.sleep(1.0)  # idle for three more ticks
        idle = [r.getMessage() for r in caplog.records if r.name == "streamfn.progress"][len(progress) :]
        logging.getLogger("streamfn.test").warning("a line while the table is up")
        try:
            output = os.read(master, 65536)
        except BlockingIOError:  # nothing was written to the terminal
            output = b""
    finally:
        lines.cancel()
        table.cancel()
        await asyncio.gather(lines, table, return_exceptions=True)
        worker.stop()
        await run
        logging.getLogger().removeHandler(on_terminal)
        terminal.close()
        os.close(master)

    assert progress_line(rows[0]) == EXPECTED.format(rate=0)
    rendered = Console(record=True, width=200)
    rendered.print(progress_table(rows))
    assert _row(rendered.export_text(), "flaky") == ["flaky", "0", "40", "0", "0", "4", "4", "0", "40", "4"]

    # Off a terminal: the last line holds the final numbers, and an idle worker logs nothing more.
    assert progress and progress[-1] == EXPECTED.format(rate=0), progress
    assert all(line.startswith("function flaky: ") for line in progress)
    assert idle == []

    # On a terminal: the table's last redraw holds them, and log lines went through the console, not the tty.
    text = screen.export_text()
    assert _row(text, "flaky")[2:] == ["40", "0", "0", "4", "4", "0", "40", "4"]
    assert "handled/s" in text
    assert "partitions assigned" in text and "a line while the table is up" in text
    assert output == b""
    assert on_terminal.stream is terminal  # given back when the view ended
