"""Redrive: dead letters go back to their source topic once, and a fixed handler then processes them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import (
    Out,
    committed,
    create_topic,
    produce,
    read_topic,
    run_cli,
    run_until_read,
    run_worker,
    source,
    write_pipeline,
)

from streamfn import App, Backoff, Record
from streamfn.connectors.kafka import KafkaTopic

PIPELINE = """
import os
from streamfn import App
from streamfn.connectors.kafka import KafkaSource, KafkaTopic

app = App("redrive")

@app.function(source=KafkaSource(topics=[os.environ["TOPIC"]], consumer_group_id=os.environ["GROUP"]),
              maximum_retry_attempts=0, on_failure=KafkaTopic(os.environ["DLQ"]))
def handle(records): ...
"""


async def test_redrive_round_trip(broker: str, name: Any, tmp_path: Path, monkeypatch: Any) -> None:
    topic, group, dlq = name("t"), name("g"), name("dlq")
    await create_topic(broker, topic, 2)
    await produce(
        broker,
        topic,
        [
            Out(
                b'{"n": %d, "bad": %s}' % (i, b"true" if i in (3, 6) else b"false"),
                key=b"k%d" % i,
                partition=i % 2,
                headers=[("origin", b"test")],
            )
            for i in range(8)
        ],
    )
    fixed = False
    handled: list[tuple[int, int, int]] = []

    def build() -> App:
        app = App("redrive")

        @app.function(
            source=source(topic, group),
            batch_size=10,
            maximum_batching_window_in_seconds=0.3,
            maximum_retry_attempts=0,
            backoff=Backoff(initial_seconds=0.01),
            on_failure=KafkaTopic(dlq),
        )
        def handle(records: list[Record]) -> None:
            if not fixed and any(r.value["bad"] for r in records):
                raise ValueError("not handled yet")
            handled.extend((r.partition, r.offset, r.value["n"]) for r in records)

        return app

    # 1. a buggy handler: partition 1's batch (1, 3, 5, 7) and partition 0's batch (0, 2, 4, 6) fail
    dead = (await run_until_read(build(), broker, {dlq: 8}))[dlq]
    assert len(dead) == 8 and handled == []
    assert await committed(broker, group, topic, 2) == {0: 4, 1: 4}

    pipeline = write_pipeline(tmp_path, PIPELINE)
    env = {"TOPIC": topic, "GROUP": group, "DLQ": dlq}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # 2. a dry run lists them and moves nothing
    dry = run_cli("redrive", str(pipeline), "--function", "handle", "--dry-run", servers=broker)
    assert dry.returncode == 0, dry.stderr
    assert (
        "would redrive 8 records" in dry.stdout and f"would redrive {topic}-1@3 (RetryAttemptsExhausted)" in dry.stdout
    )
    # 3. a redrive puts the originals back, once
    done = run_cli("redrive", str(pipeline), "--function", "handle", servers=broker)
    assert done.returncode == 0 and "redrove 8 records" in done.stdout, done.stderr
    again = run_cli("redrive", str(pipeline), "--function", "handle", servers=broker)
    assert again.returncode == 0 and "redrove 0 records" in again.stdout, again.stderr
    back = await read_topic(broker, topic, 16)
    redriven = [r for r in back if r.offset >= 4]
    assert sorted((r.partition, r.key, r.value, list(r.headers)) for r in redriven) == sorted(
        (i % 2, b"k%d" % i, b'{"n": %d, "bad": %s}' % (i, b"true" if i in (3, 6) else b"false"), [("origin", b"test")])
        for i in range(8)
    )
    # 4. the fixed handler processes the redriven records
    fixed = True
    await run_worker(build(), broker, lambda: len(handled) >= 8, settle=0.5)
    assert sorted(n for _, _, n in handled) == list(range(8))
    assert await committed(broker, group, topic, 2) == {0: 8, 1: 8}
