"""Every engine task has a supervisor: a task that dies (a bug in the engine, not a record's failure) is logged at
CRITICAL with its traceback, the worker stops after committing what was done, and `streamfn run` exits 70."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from conftest import committed, create_topic, produce_values, run_cli, run_worker, source, write_pipeline

from streamfn import App, Record
from streamfn.engine.lane import Lane
from streamfn.engine.supervision import ENGINE_FAILURE_EXIT, EngineFailure

BROKEN_LANE = """
import asyncio

from streamfn.engine.lane import Lane

completed = {}
original = Lane._complete


async def _complete(self, invoked):
    first = invoked.records[0]
    if (first.partition, first.offset) == (0, 5):
        while completed.get(1, 0) < 10:  # partition 1 done first: what is committed is then certain
            await asyncio.sleep(0.05)
        raise RuntimeError("engine bug")
    await original(self, invoked)
    completed[first.partition] = invoked.records[-1].offset + 1


Lane._complete = _complete
"""
"""Lane._complete fails for partition 0's batch at offset 5, once partition 1's 10 records are done: an engine task
dies mid-run."""


async def test_an_engine_task_that_dies_stops_the_worker_loudly_after_committing(
    broker: str, name: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    topic, group = name("t"), name("g")
    await create_topic(broker, topic, 2)
    await produce_values(broker, topic, 20, partitions=2)
    namespace: dict[str, Any] = {}
    monkeypatch.setattr(Lane, "_complete", Lane._complete)  # restored after the test: BROKEN_LANE patches it too
    exec(BROKEN_LANE, namespace)
    app = App("engine")

    @app.function(source=source(topic, group), batch_size=1)
    def handler(records: list[Record]) -> None:
        pass

    with pytest.raises(EngineFailure) as stopped:
        await run_worker(app, broker, lambda: False, timeout=40)
    assert str(stopped.value).startswith("engine task streamfn:handler:")
    assert str(stopped.value).endswith(f"{topic}-0:0 died: RuntimeError: engine bug")  # partition 0's lane
    critical = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(critical) == 1
    assert critical[0].exc_info is not None and str(critical[0].exc_info[1]) == "engine bug"
    assert namespace["completed"] == {0: 5, 1: 10}
    assert await committed(broker, group, topic, 2) == {0: 5, 1: 10}


@pytest.mark.slow
def test_the_cli_exits_70_after_an_engine_failure(broker: str, name: Any, tmp_path: Path) -> None:
    topic, group = name("t"), name("g")
    asyncio.run(create_topic(broker, topic, 2))
    asyncio.run(produce_values(broker, topic, 20, partitions=2))
    pipeline = write_pipeline(
        tmp_path,
        BROKEN_LANE
        + f"""
from streamfn import App
from streamfn.connectors.kafka import KafkaSource

app = App("engine")


source = KafkaSource(topics=["{topic}"], consumer_group_id="{group}", session_timeout_ms=6000)


@app.function(source=source, batch_size=1)
def handler(records):
    pass
""",
    )
    result = run_cli("run", str(pipeline), servers=broker, timeout=50)
    assert result.returncode == ENGINE_FAILURE_EXIT, result.stderr
    assert "CRITICAL" in result.stderr and "Traceback" in result.stderr and "RuntimeError: engine bug" in result.stderr
    assert (
        result.stderr.rstrip()
        .splitlines()[-1]
        .endswith(f"{topic}-0:0 died: RuntimeError: engine bug: what was handled is committed; exiting 70")
    )
    assert asyncio.run(committed(broker, group, topic, 2)) == {0: 5, 1: 10}
