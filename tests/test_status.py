"""`streamfn status`: what an operator reads (offsets, lag, members, dead letters), checked against the broker."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    SESSION_MS,
    Out,
    committed,
    create_topic,
    launch_pipeline,
    produce,
    run_cli,
    run_until_read,
    write_pipeline,
)

from streamfn.cli.loader import load_app
from streamfn.connectors.kafka.embedded import free_port

pytestmark = pytest.mark.slow  # every test here starts streamfn processes

PIPELINE = f"""
import os
from streamfn import App, Function
from streamfn.connectors.kafka import KafkaSource, KafkaTopic

app = App("status")

@app.function()
def audit(records): ...

@app.function(
    source=KafkaSource(topics=[os.environ["TOPIC"]], consumer_group_id=os.environ["GROUP"],
                       session_timeout_ms={SESSION_MS}),
    batch_size=10,
    maximum_batching_window_in_seconds=0.1,
    maximum_retry_attempts=0,
    bisect_batch_on_function_error=True,
    on_failure=KafkaTopic(os.environ["DLQ"]),
    outputs=[Function(audit)],
)
def handle(records):
    if any(r.value["bad"] for r in records):
        raise ValueError("bad record")
"""


def records(partition: int, count: int, bad: frozenset[int] = frozenset()) -> list[Out]:
    return [Out(b'{"bad": %s}' % (b"true" if i in bad else b"false"), partition=partition) for i in range(count)]


def status(pipeline: Path, broker: str) -> dict[str, Any]:
    result = run_cli("status", str(pipeline), "--json", servers=broker, timeout=30)
    assert result.returncode == 0, result.stderr
    functions = {f["function"]: f for f in json.loads(result.stdout)["functions"]}
    assert functions["audit"]["group_id"] is None and functions["audit"]["partitions"] == []  # fed by Function(...)
    handle: dict[str, Any] = functions["handle"]
    return handle


def offsets(function: dict[str, Any], key: str) -> dict[int, Any]:
    return {p["partition"]: p[key] for p in function["partitions"]}


async def test_status_reports_offsets_lag_members_and_dead_letters(
    broker: str, name: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    topic, group, dlq = name("t"), name("g"), name("dlq")
    env = {"TOPIC": topic, "GROUP": group, "DLQ": dlq}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    pipeline = write_pipeline(tmp_path, PIPELINE)
    await create_topic(broker, topic, 3)
    # partition 0: 6 records (offsets 1 and 4 fail), partition 1: 4 records (offset 2 fails), partition 2: none
    await produce(broker, topic, records(0, 6, frozenset({1, 4})) + records(1, 4, frozenset({2})))

    # 1. before any worker: nothing committed, so everything in the log is lag; no member
    before = status(pipeline, broker)
    assert before["group_id"] == group and before["members"] == [] and before["topics"] == [topic]
    assert offsets(before, "committed") == {0: None, 1: None, 2: None}
    # the true ends: after a batched produce, Tansu answers ListOffsets(latest) with less
    assert offsets(before, "end") == {0: 6, 1: 4, 2: 0}
    assert offsets(before, "lag") == {0: 6, 1: 4, 2: 0} and (before["total_lag"], before["max_lag"]) == (10, 6)
    assert before["dead_letters"] == 0 and before["on_failure"] == f"KafkaTopic({dlq!r})"

    # 2. a worker in this process handles everything, the 3 bad records to the dead-letter topic, and stops
    dead = (await run_until_read(load_app(pipeline), broker, {dlq: 3}))[dlq]
    assert len(dead) == 3
    assert await committed(broker, group, topic, 3) == {0: 6, 1: 4, 2: 0}
    await produce(broker, topic, records(0, 3) + records(1, 5))  # then 3 and 5 more arrive

    after = status(pipeline, broker)
    truth = await committed(broker, group, topic, 3)
    assert offsets(after, "committed") == truth == {0: 6, 1: 4, 2: 0}
    assert offsets(after, "end") == {0: 9, 1: 9, 2: 0}
    assert (
        offsets(after, "lag") == {p: end - truth[p] for p, end in offsets(after, "end").items()} == {0: 3, 1: 5, 2: 0}
    )
    assert (after["total_lag"], after["max_lag"]) == (8, 5)
    assert after["dead_letters"] == len(dead) == 3
    # Tansu keeps a member that stopped in generation 0 (aiokafka sends LeaveGroup only from generation 1), until
    # another member's join evicts it; Kafka would show none here.
    stale = after["members"]
    assert len(stale) <= 1

    # 3. a `streamfn run` process joins (evicting the stale member), catches up; status shows it alone
    worker = launch_pipeline(tmp_path, PIPELINE, broker, **env)
    try:
        deadline = time.monotonic() + 40
        while await committed(broker, group, topic, 3) != {0: 9, 1: 9, 2: 0}:
            assert worker.poll() is None and time.monotonic() < deadline, "the worker did not catch up"
            await asyncio.sleep(0.2)
        running = status(pipeline, broker)
        assert len(running["members"]) == 1 and running["members"] != stale and running["state"] == "Stable"
        assert offsets(running, "lag") == {0: 0, 1: 0, 2: 0} and running["dead_letters"] == 3
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    # 4. it left the group on SIGTERM (its generation was past 0): no member
    stopped = status(pipeline, broker)
    assert stopped["members"] == [] and offsets(stopped, "committed") == {0: 9, 1: 9, 2: 0}


def test_status_without_a_broker_fails_in_one_line(tmp_path: Path, monkeypatch: Any) -> None:
    for key, value in {"TOPIC": "t", "GROUP": "g", "DLQ": "dlq"}.items():
        monkeypatch.setenv(key, value)
    pipeline = write_pipeline(tmp_path, PIPELINE)
    none = run_cli("status", str(pipeline), servers=None)  # and STREAMFN_BOOTSTRAP_SERVERS unset
    assert none.returncode == 2 and none.stdout == ""
    assert none.stderr.splitlines() == [
        "error: status needs --bootstrap-servers or STREAMFN_BOOTSTRAP_SERVERS (the embedded broker keeps nothing)"
    ]
    closed = f"127.0.0.1:{free_port()}"  # nothing listens there
    down = run_cli("status", str(pipeline), "--bootstrap-servers", closed, "--timeout", "10")
    assert down.returncode == 1 and down.stdout == ""
    assert len(down.stderr.splitlines()) == 1 and down.stderr.startswith(
        f"error: cannot read consumer group 'g' from Kafka at {closed}: "
    )
