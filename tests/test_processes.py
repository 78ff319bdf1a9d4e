"""Worker processes as users run them: kill -9 and restart, two workers sharing partitions, signals.

The handler appends "partition offset" per handled record to a file; the assertions compare that file and the
group's committed offsets (read independently) with what was produced.
"""

from __future__ import annotations

import asyncio
import collections
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    SESSION_MS,
    committed,
    create_topic,
    launch_pipeline,
    produce_values,
    read_handled,
    wait_for,
)

pytestmark = pytest.mark.slow  # every test here starts streamfn processes

PIPELINE = f"""
import os, time
from streamfn import App
from streamfn.connectors.kafka import KafkaSource

app = App("proc")
OUT = os.environ["OUT"]
SLEEP = float(os.environ.get("SLEEP", "0"))

@app.function(
    source=KafkaSource(topics=[os.environ["TOPIC"]], consumer_group_id=os.environ["GROUP"],
                       session_timeout_ms={SESSION_MS}),
    batch_size=int(os.environ.get("BATCH", "10")),
    parallelization_factor=int(os.environ.get("FACTOR", "1")),
    maximum_batching_window_in_seconds=0.1,
    timeout=float(os.environ.get("TIMEOUT", "30")),
)
def handler(records):
    if os.environ.get("STARTED"):
        open(os.environ["STARTED"], "a").write("started\\n")
    time.sleep(SLEEP)
    with open(OUT, "a") as out:  # one write per batch: a kill -9 cannot leave half of it
        out.write("".join(f"{{r.partition}} {{r.offset}}\\n" for r in records))
"""


def launch(tmp_path: Path, broker: str, topic: str, group: str, out: Path, **env: str) -> subprocess.Popen[str]:
    return launch_pipeline(tmp_path, PIPELINE, broker, TOPIC=topic, GROUP=group, OUT=str(out), **env)


@pytest.mark.parametrize("factor", ["1", "5"])
async def test_kill_9_mid_stream_then_restart_loses_nothing(
    broker: str, name: Any, tmp_path: Path, factor: str
) -> None:
    topic, group, out = name("t"), name("g"), tmp_path / "handled.txt"
    await create_topic(broker, topic, 4)
    await produce_values(broker, topic, 2000)
    first = launch(tmp_path, broker, topic, group, out, SLEEP="0.05", FACTOR=factor)
    await wait_for(lambda: len(read_handled(out)) >= 600, 60, "the first worker to handle 600 records")
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    handled_before_kill = len(read_handled(out))
    assert handled_before_kill < 2000

    second = launch(tmp_path, broker, topic, group, out, FACTOR=factor)
    await wait_for(lambda: len(set(read_handled(out))) >= 2000, 90, "every record to be handled")
    second.send_signal(signal.SIGTERM)
    assert second.wait(30) == 0

    handled = read_handled(out)
    expected = {(p, o) for p in range(4) for o in range(500)}
    assert set(handled) == expected  # at least once: nothing lost
    duplicates = len(handled) - len(expected)
    # Bounded: at most what was handled but not yet committed when killed: the batches in flight (4 partitions x
    # 5 lanes x 10) and what was handled during the commit under way (one commit request at a time: on a machine
    # running the whole suite a commit round trip takes long enough to handle as much again; seen: 272).
    assert duplicates <= 2 * 4 * 10 * 5, duplicates
    assert await committed(broker, group, topic) == {p: 500 for p in range(4)}


async def test_two_workers_share_partitions_and_rebalances_lose_nothing(broker: str, name: Any, tmp_path: Path) -> None:
    topic, group, out = name("t"), name("g"), tmp_path / "handled.txt"
    await create_topic(broker, topic, 4)
    total = 0

    async def keep_producing(seconds: float) -> None:
        nonlocal total
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await produce_values(broker, topic, 40, start=total)
            total += 40
            await asyncio.sleep(0.2)

    producing = asyncio.create_task(keep_producing(22))
    a = launch(tmp_path, broker, topic, group, out, SLEEP="0.02")
    await asyncio.sleep(6)
    b = launch(tmp_path, broker, topic, group, out, SLEEP="0.02", STARTED=str(tmp_path / "b-started"))
    await wait_for(lambda: (tmp_path / "b-started").exists(), 30, "the second worker to get partitions")
    await asyncio.sleep(4)
    b.send_signal(signal.SIGTERM)  # graceful: finishes in-flight, commits, leaves; a takes its partitions
    assert b.wait(40) == 0
    await producing
    await wait_for(lambda: len(set(read_handled(out))) >= total, 90, "every record to be handled")
    a.send_signal(signal.SIGTERM)
    assert a.wait(40) == 0

    handled = read_handled(out)
    per_partition = collections.Counter(p for p, _ in set(handled))
    assert set(handled) == {(i % 4, i // 4) for i in range(total)}
    assert sum(per_partition.values()) == total
    assert await committed(broker, group, topic) == {p: total // 4 for p in range(4)}


async def test_sigterm_finishes_the_in_flight_batch_commits_and_exits_0(broker: str, name: Any, tmp_path: Path) -> None:
    topic, group, out, started = name("t"), name("g"), tmp_path / "handled.txt", tmp_path / "started"
    await create_topic(broker, topic, 1)
    await produce_values(broker, topic, 30, partitions=1)
    worker = launch(tmp_path, broker, topic, group, out, SLEEP="2", STARTED=str(started))
    await wait_for(started.exists, 30, "the first invocation")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert read_handled(out) == [(0, o) for o in range(10)]  # the in-flight batch finished; no new one began
    assert await committed(broker, group, topic, 1) == {0: 10}


async def test_second_signal_exits_at_once_without_committing(broker: str, name: Any, tmp_path: Path) -> None:
    topic, group, out, started = name("t"), name("g"), tmp_path / "handled.txt", tmp_path / "started"
    await create_topic(broker, topic, 1)
    await produce_values(broker, topic, 10, partitions=1)
    worker = launch(tmp_path, broker, topic, group, out, SLEEP="20", STARTED=str(started))
    await wait_for(started.exists, 30, "the first invocation")
    worker.send_signal(signal.SIGINT)
    await asyncio.sleep(0.5)
    begun = time.monotonic()
    worker.send_signal(signal.SIGINT)
    assert worker.wait(10) != 0
    assert time.monotonic() - begun < 3
    assert read_handled(out) == []
    assert await committed(broker, group, topic, 1) == {0: 0}  # only the starting position
