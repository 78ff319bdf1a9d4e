"""Nothing lost, nothing wedged silently: a record that cannot be handled and has nowhere to go holds its partition
(visible in the health probe, the live view and once per retry round in the log) unless the user set a policy to
drop it; what is dead-lettered or dropped is logged at WARNING, rate-limited."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from typing import Any

import orjson
import pytest
from conftest import Out, committed, create_topic, produce, run_worker, source, wait_for

from streamfn import App, Backoff, Record
from streamfn.cli.health import Health
from streamfn.cli.live import progress_line, snapshot
from streamfn.connectors.kafka import KafkaTopic
from streamfn.engine.worker import Worker
from streamfn.outputs.sink import Emitted, SinkContext, SinkRetry

NOT_JSON = repr(orjson.JSONDecodeError("invalid literal, expected 'null'", "not json", 0))
"""How the log shows the json codec's error for b"not json"."""
ROUNDS = Backoff(initial_seconds=0.1, max_seconds=0.2)
HELD = re.compile(
    r"function poison: (\S+) offset (\d+) held \(DeserializationError: .*\), 1 record\(s\) in all: .* round (\d+),"
)


async def test_an_undecodable_record_without_destination_or_policy_holds_its_partition_visibly(
    broker: str, name: Any, caplog: pytest.LogCaptureFixture
) -> None:
    topic, group = name("t"), name("g")
    await create_topic(broker, topic, 2)
    await produce(
        broker, topic, [Out(b'{"n": 0}', partition=0), Out(b"not json", partition=0), Out(b'{"n": 2}', partition=0)]
    )
    handled: list[tuple[int, int]] = []
    app = App("poison")

    @app.function(source=source(topic, group), batch_size=1, maximum_batching_window_in_seconds=0, backoff=ROUNDS)
    def poison(records: list[Record]) -> None:  # the defaults: retries -1, no record age, no on_failure
        handled.extend((r.partition, r.offset) for r in records)

    caplog.set_level(logging.WARNING, "streamfn")
    worker = Worker(app)
    run = asyncio.create_task(worker.run(handle_signals=False))
    try:
        await wait_for(lambda: (0, 2) in handled, 30, "the record after the poison one invoked")
        await produce(broker, topic, [Out(b'{"n": %d}' % n, partition=1) for n in range(5)])
        await wait_for(lambda: len([h for h in handled if h[0] == 1]) == 5, 30, "partition 1 handled")
        await wait_for(lambda: len(HELD.findall(caplog.text)) >= 5, 30, "five rounds")
        assert await committed(broker, group, topic, 2) == {0: 1, 1: 5}  # never past the held record

        # The health probe: not live once the hold is older than stuck_after, naming the record and why.
        await wait_for(lambda: Health(worker, stuck_after=0.5).live()[0] == 503, 10, "/live 503")
        _, _, body = Health(worker, stuck_after=0.5).live()
        assert b'"partition":"%s-0"' % topic.encode() in body
        assert b'"held":{"offset":1,"reason":"DeserializationError: JSONDecodeError(' in body
        assert Health(worker, stuck_after=600).live()[0] == 200
        # The live view: the held partition and offset, and why.
        [row] = snapshot(worker)
        assert [(p, o) for p, o, _ in row.held] == [(f"{topic}-0", 1)]
        assert f"; held {topic}-0 offset 1 (DeserializationError: JSONDecodeError(" in progress_line(row)
    finally:
        worker.stop()
        [summary] = await run

    # One line per round (rounds 1, 2, 3, ... each once), with the backoff between them; nothing dropped.
    rounds = [(p, int(o), int(n)) for p, o, n in HELD.findall(caplog.text)]
    assert rounds == [(f"{topic}-0", 1, n) for n in range(1, len(rounds) + 1)]
    assert (0, 1) not in handled and handled.count((0, 2)) == 1
    assert summary.stats.dropped == 0 and summary.stats.dead_lettered == 0
    assert await committed(broker, group, topic, 2) == {0: 1, 1: 5}


async def test_with_an_explicit_policy_an_undecodable_record_is_dropped_logged_and_committed_past(
    broker: str, name: Any, caplog: pytest.LogCaptureFixture
) -> None:
    topic, group = name("t"), name("g")
    await create_topic(broker, topic, 1)
    await produce(broker, topic, [Out(b'{"n": 0}'), Out(b"not json"), Out(b'{"n": 2}')])
    handled: list[int] = []
    app = App("poison")

    @app.function(
        source=source(topic, group), batch_size=1, maximum_batching_window_in_seconds=0, maximum_retry_attempts=0
    )
    def poison(records: list[Record]) -> None:
        handled.extend(r.offset for r in records)

    [summary] = await run_worker(app, broker, lambda: handled == [0, 2], settle=0.5)
    assert summary.stats.dropped == 1
    assert await committed(broker, group, topic, 1) == {0: 3}
    [line] = [r for r in caplog.records if r.name == "streamfn.failures"]
    assert line.levelno == logging.WARNING
    assert line.getMessage() == (
        f"function poison: {topic}-0 offset 1 dropped (DeserializationError after 0 invocations): "
        f"{NOT_JSON}; "
        "no on_failure, policy maximum_retry_attempts=0"
    )
    assert "held" not in caplog.text


async def test_a_dead_lettered_record_is_logged_with_where_it_went(
    broker: str, name: Any, caplog: pytest.LogCaptureFixture
) -> None:
    topic, group, dlq = name("t"), name("g"), name("dlq")
    await create_topic(broker, topic, 1)
    await produce(broker, topic, [Out(b"not json"), Out(b'{"n": 1}')])
    handled: list[int] = []
    app = App("poison")

    @app.function(source=source(topic, group), maximum_batching_window_in_seconds=0, on_failure=KafkaTopic(dlq))
    def poison(records: list[Record]) -> None:
        handled.extend(r.offset for r in records)

    [summary] = await run_worker(app, broker, lambda: handled == [1], settle=0.5)
    assert summary.stats.dead_lettered == 1
    [line] = [r for r in caplog.records if r.name == "streamfn.failures"]
    assert line.levelno == logging.WARNING
    assert line.getMessage() == (
        f"function poison: {topic}-0 offset 0 dead-lettered (DeserializationError after 0 invocations): "
        f"{NOT_JSON}; to KafkaTopic('{dlq}')"
    )


async def test_thousands_of_failures_at_once_log_a_few_lines_then_one_count(
    broker: str, name: Any, caplog: pytest.LogCaptureFixture
) -> None:
    topic, group = name("t"), name("g")
    await create_topic(broker, topic, 1)
    await produce(broker, topic, [Out(b"not json %d" % n) for n in range(5000)])
    app = App("poison")

    @app.function(source=source(topic, group), batch_size=1000, maximum_retry_attempts=0)
    def poison(records: list[Record]) -> None:
        raise AssertionError("no record decodes")

    worker = Worker(app)
    run = asyncio.create_task(worker.run(handle_signals=False))
    await wait_for(lambda: worker.stats["poison"].total().dropped == 5000, 40, "5000 records dropped")
    worker.stop()
    await run

    lines = [r.getMessage() for r in caplog.records if r.name == "streamfn.failures"]
    one_by_one = [line for line in lines if " dropped (DeserializationError after 0 invocations)" in line]
    summaries = [re.match(r"function poison: (\d+) more records left without a line each", line) for line in lines]
    counted = sum(int(m.group(1)) for m in summaries if m)
    assert len(lines) == len(one_by_one) + len([m for m in summaries if m])
    assert 1 <= len(one_by_one) <= 20 and len(lines) <= 24, lines  # 10 per 10 s, and a summary per interval
    assert len(one_by_one) + counted == 5000
    assert lines[-1].endswith("DeserializationError dropped (no on_failure, policy maximum_retry_attempts=0)")
    assert await committed(broker, group, topic, 1) == {0: 5000}


class FlakySink:
    """A sink whose first `failures` writes fail (a sink outage), each given up at once (one attempt)."""

    retry = SinkRetry(max_attempts=1)

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.written: list[list[Any]] = []

    def check(self, source_topics: Sequence[str]) -> None:
        pass

    async def open(self, context: SinkContext) -> FlakySink:
        return self

    async def write(self, outputs: Sequence[Emitted]) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("sink down")
        self.written.append([o.value for o in outputs])

    async def close(self) -> None:
        pass


async def test_a_held_batch_recovers_by_itself_once_its_sink_is_back(
    broker: str, name: Any, caplog: pytest.LogCaptureFixture
) -> None:
    topic, group = name("t"), name("g")
    await create_topic(broker, topic, 1)
    await produce(broker, topic, [Out(b'{"n": %d}' % n) for n in range(3)])
    sink = FlakySink(failures=3)
    invoked: list[list[int]] = []
    app = App("poison")

    @app.function(source=source(topic, group), maximum_batching_window_in_seconds=0.2, backoff=ROUNDS, outputs=[sink])
    def poison(records: list[Record]) -> list[int]:
        invoked.append([r.offset for r in records])
        return [r.value["n"] for r in records]

    [summary] = await run_worker(app, broker, lambda: bool(sink.written), settle=0.5)
    assert invoked == [[0, 1, 2]] * 4  # the first invocation, then one per round until the sink took the outputs
    assert sink.written == [[0, 1, 2]]
    held = re.findall(
        r"offset 0 held \(OutputDeliveryFailed: ConnectionError\('sink down'\)\), 3 record\(s\) in all: "
        r".* round (\d+),",
        caplog.text,
    )
    assert held == ["1", "2", "3"]
    assert summary.stats.dropped == 0 and summary.stats.handled == 3
    assert await committed(broker, group, topic, 1) == {0: 3}
