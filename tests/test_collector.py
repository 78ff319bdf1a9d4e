"""The garbage collector while workers run (streamfn/engine/collector.py): the heap at start frozen and a larger
young generation while any worker of the process runs, the process's own settings back once the last one stops."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest
from conftest import wait_for

from streamfn import App, Record
from streamfn.connectors.memory import MemorySource, MemoryStream
from streamfn.engine.collector import YOUNG_THRESHOLD
from streamfn.engine.worker import Worker


@pytest.fixture
def thresholds() -> Iterator[tuple[int, int, int]]:
    """The process's collector settings, put back after the test whatever it did."""
    saved = gc.get_threshold()
    yield saved
    gc.set_threshold(*saved)
    gc.unfreeze()


def counting_app(stream: MemoryStream, seen: list[tuple[int, int, int]]) -> App:
    """An app whose handler notes the collector's thresholds and frozen objects during each invocation."""
    app = App("gc")

    @app.function(source=MemorySource(stream, group_id=stream.name))
    async def note(records: list[Record]) -> None:
        seen.append((gc.get_threshold()[0], gc.get_freeze_count(), len(records)))

    return app


async def test_workers_collect_rarely_while_any_runs_and_restore_the_process_settings(
    thresholds: tuple[int, int, int],
) -> None:
    gc.set_threshold(700, 10, 10)
    first_seen: list[tuple[int, int, int]] = []
    second_seen: list[tuple[int, int, int]] = []
    first_stream, second_stream = MemoryStream("one"), MemoryStream("two")
    first = Worker(counting_app(first_stream, first_seen))
    second = Worker(counting_app(second_stream, second_seen))
    first_run = asyncio.create_task(first.run(handle_signals=False))
    second_run = asyncio.create_task(second.run(handle_signals=False))

    first_stream.put(0, b"{}")
    await wait_for(lambda: bool(first_seen), 10, "the first worker's invocation")
    young, frozen, _ = first_seen[0]
    assert young == YOUNG_THRESHOLD and frozen > 0  # the heap at start is left out of collections

    first.stop()
    await first_run
    assert gc.get_threshold()[0] == YOUNG_THRESHOLD  # the second worker still runs
    second_stream.put(0, b"{}")
    await wait_for(lambda: bool(second_seen), 10, "the second worker's invocation")
    assert second_seen[0][0] == YOUNG_THRESHOLD and second_seen[0][1] > 0

    second.stop()
    await second_run
    assert gc.get_threshold() == (700, 10, 10)  # the last one out restores the process's settings
    assert gc.get_freeze_count() == 0


async def test_a_process_that_turned_automatic_collection_off_keeps_it_off(thresholds: tuple[int, int, int]) -> None:
    gc.set_threshold(0, 10, 10)
    seen: list[tuple[int, int, int]] = []
    stream = MemoryStream("off")
    worker = Worker(counting_app(stream, seen))
    running = asyncio.create_task(worker.run(handle_signals=False))
    stream.put(0, b"{}")
    await wait_for(lambda: bool(seen), 10, "an invocation")
    assert seen[0][0] == 0
    worker.stop()
    await running
    assert gc.get_threshold() == (0, 10, 10)
