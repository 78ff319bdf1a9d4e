"""Fault injection: the same pipeline runs while things go wrong, and the outcome must be exact.

The fault tests run PIPELINE in worker processes (`streamfn run`, as users run it) over records {"n": i}; every
POISON_EVERY-th record is poison (its handler always raises), the policy is bisection with 2 retries and a
KafkaTopic on_failure. Whatever the fault, `Ledger.verify` then asserts: every good record handled at least once,
every poison record dead-lettered (RetryAttemptsExhausted, after 1 + 2 invocations of it alone) and nothing else,
so lost = 0; the committed offsets at the log ends, and in every sample taken during the run never past a record
not yet handled or dead-lettered. Duplicates are counted, and the figures of each fault are printed at the end of
the test session (conftest's terminal summary). Kill -9 at random moments is in the storm (and in
test_processes.py).

The last two tests run a worker in-process: regression tests for wedges this suite found in the assignment path.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from conftest import (
    SESSION_MS,
    committed,
    create_topic,
    launch_pipeline,
    produce_values,
    read_handled,
    source,
    wait_for,
)
from faults import Figures, Ledger, Moto, Proxy, Tansu
from test_sink_http import Receiver

from streamfn import App, Backoff, Record
from streamfn.connectors.kafka.embedded import free_port
from streamfn.connectors.table import Table
from streamfn.engine.worker import Worker

pytestmark = [pytest.mark.faults, pytest.mark.slow]

POISON_EVERY = 37

PIPELINE = f"""
import os, time
from streamfn import App, Backoff
from streamfn.connectors.http import Http
from streamfn.connectors.kafka import KafkaSource, KafkaTopic
from streamfn.outputs.sink import SinkRetry

app = App("faults")
OUT, SLEEP, URL = os.environ["OUT"], float(os.environ.get("SLEEP", "0")), os.environ.get("HTTP_URL")

@app.function(
    source=KafkaSource(topics=[os.environ["TOPIC"]], consumer_group_id=os.environ["GROUP"],
                       session_timeout_ms={SESSION_MS}),
    batch_size=20,
    maximum_batching_window_in_seconds=0.1,
    bisect_batch_on_function_error=True,
    maximum_retry_attempts=2,
    backoff=Backoff(initial_seconds=0.01, max_seconds=0.05),
    on_failure=KafkaTopic(os.environ["DLQ"], bootstrap_servers=os.environ.get("DLQ_SERVERS")),
    outputs=[Http(URL, retry=SinkRetry(max_attempts=40, initial_seconds=0.1, max_seconds=0.5))] if URL else [],
)
def handler(records):
    poison = [r.value["n"] for r in records if r.value["n"] % {POISON_EVERY} == {POISON_EVERY} - 1]
    if poison:
        raise ValueError(f"poison {{poison[0]}}")
    time.sleep(SLEEP)
    with open(OUT, "a") as out:  # one write per batch: a kill -9 cannot leave half of it
        out.write("".join(f"{{r.partition}} {{r.offset}}\\n" for r in records))
    return [{{"p": r.partition, "o": r.offset}} for r in records]
"""


def poison(n: int) -> bool:
    return n % POISON_EVERY == POISON_EVERY - 1


class Workers:
    """The pipeline's worker processes of one test, each started with the same environment."""

    def __init__(self, directory: Path, servers: str, **env: str) -> None:
        self.directory = directory
        self.servers = servers
        self.env = env
        self.out = directory / "handled.txt"
        self.running: list[subprocess.Popen[str]] = []

    def start(self) -> subprocess.Popen[str]:
        worker = launch_pipeline(self.directory, PIPELINE, self.servers, OUT=str(self.out), **self.env)
        self.running.append(worker)
        return worker

    def handled(self) -> list[tuple[int, int]]:
        return read_handled(self.out)

    async def stop(self, worker: subprocess.Popen[str], how: signal.Signals) -> int | None:
        """Signal `worker` and wait for it to exit (without blocking the loop); its exit code."""
        self.running.remove(worker)
        worker.send_signal(how)
        await wait_for(lambda: worker.poll() is not None, 40, f"worker {worker.pid} to exit after {how.name}")
        return worker.returncode

    async def stop_all(self) -> list[int | None]:
        """SIGTERM every running worker: each finishes, commits and exits 0."""
        return [await self.stop(worker, signal.SIGTERM) for worker in list(self.running)]

    def kill_all(self) -> None:
        for worker in self.running:
            worker.kill()
            worker.wait()
        self.running.clear()

    def logs(self) -> str:
        return "\n".join(log.read_text()[-3000:] for log in sorted(self.directory.glob("worker-*.log")))


@pytest.fixture
async def ledgers() -> AsyncIterator[list[Ledger]]:
    made: list[Ledger] = []
    yield made
    for ledger in made:
        await ledger.close()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[..., Workers]]:
    made: list[Workers] = []

    def make(servers: str, **env: str) -> Workers:
        made.append(Workers(tmp_path, servers, **env))
        return made[-1]

    yield make
    for w in made:
        w.kill_all()  # a test that failed half way leaves no worker behind


def report(figures: Figures, record_property: Callable[[str, Any], None]) -> None:
    print("\n" + figures.line())
    record_property("fault_figures", figures.line())


async def drain(workers: Workers, ledger: Ledger, ends: dict[int, int]) -> None:
    """Wait until the group committed every partition's end, then stop the workers gracefully (exit 0 each)."""
    try:
        await wait_for(lambda: bool(ledger.samples) and ledger.samples[-1].committed == ends, 45, "the final commits")
    except AssertionError as timed_out:  # say where the group stands and what the workers logged
        last = ledger.samples[-1].committed if ledger.samples else None
        raise AssertionError(f"{timed_out}: committed {last}, ends {ends}\n{workers.logs()}") from None
    running = len(workers.running)
    assert await workers.stop_all() == [0] * running, workers.logs()


async def test_broker_killed_and_restarted_on_durable_storage_mid_run(
    tmp_path: Path, name: Any, ledgers: list[Ledger], workers: Callable[..., Workers], record_property: Any
) -> None:
    topic, group, dlq = name("t"), name("g"), name("dlq")
    with Moto(tmp_path) as s3, Tansu(tmp_path, s3=s3) as broker:
        await create_topic(broker.address, topic, 4)
        await produce_values(broker.address, topic, 400)
        pipeline = workers(broker.address, TOPIC=topic, GROUP=group, DLQ=dlq, SLEEP="0.1")
        ledger = Ledger(broker.address, topic, group, 4, poison, pipeline.handled)
        ledgers.append(ledger)
        pipeline.start()
        ledger.watch()
        # down for less than the session timeout, then for longer than it
        for how, at, down in ((signal.SIGKILL, 100, 2.0), (signal.SIGTERM, 350, 7.0)):
            await wait_for(lambda at=at: len(pipeline.handled()) >= at, 40, f"{at} records handled")  # type: ignore[misc]
            await broker.restart(how, down)
            await produce_values(broker.address, topic, 200, start=200 + 200 * broker.restarts)  # records flow on
        await drain(pipeline, ledger, {p: 50 * (2 + broker.restarts) for p in range(4)})
        figures = await ledger.verify("broker restart (s3)", broker.restarts, broker.address, dlq)
    report(figures, record_property)


async def test_sink_that_fails_then_recovers(
    broker: str, name: Any, ledgers: list[Ledger], workers: Callable[..., Workers], record_property: Any
) -> None:
    """An Http sink whose receiver answers 503 for a while, later refuses connections for a while: every output
    arrives, nothing is dead-lettered but the poison records (the outages are within the sink's retries)."""
    topic, group, dlq = name("t"), name("g"), name("dlq")
    await create_topic(broker, topic, 4)
    await produce_values(broker, topic, 800)
    receiver = Receiver()
    await receiver.start()
    try:

        def delivered() -> list[tuple[int, int]]:
            return [(item["p"], item["o"]) for request in receiver.accepted for item in request.json()]

        pipeline = workers(broker, TOPIC=topic, GROUP=group, DLQ=dlq, SLEEP="0.05", HTTP_URL=receiver.url)
        ledger = Ledger(broker, topic, group, 4, poison, delivered)
        ledgers.append(ledger)
        pipeline.start()
        ledger.watch()
        await wait_for(lambda: len(delivered()) >= 150, 30, "150 outputs delivered")
        receiver.status = 503
        await asyncio.sleep(3)
        refused = sum(r.status == 503 for r in receiver.requests)
        receiver.status = 200
        await wait_for(lambda: len(delivered()) >= 450, 30, "450 outputs delivered")
        await receiver.stop()  # connections refused
        await asyncio.sleep(3)
        await receiver.start()
        await drain(pipeline, ledger, {p: 200 for p in range(4)})
        figures = await ledger.verify(
            "sink fails then recovers (Http)", 2, broker, dlq, f"{refused} requests answered 503, then 3 s refused"
        )
    finally:
        await receiver.stop()
    assert refused > 0
    report(figures, record_property)


async def test_destination_that_refuses_writes_for_a_while(
    tmp_path: Path, broker: str, name: Any, ledgers: list[Ledger], workers: Callable[..., Workers], record_property: Any
) -> None:
    """The dead-letter cluster is reached through a proxy that twice drops every connection and refuses new ones
    for a few seconds: partitions wait (never committing past an undelivered dead letter), then every dead letter
    arrives."""
    topic, group, dlq = name("t"), name("g"), name("dlq")
    await create_topic(broker, topic, 4)
    await produce_values(broker, topic, 800)
    relay_port = free_port()  # the dead-letter broker tells clients to connect here: through the proxy
    with Tansu(tmp_path, advertised_port=relay_port) as dead_letters:
        proxy = Proxy(dead_letters.port, port=relay_port)
        await proxy.accept()
        relayed = f"127.0.0.1:{relay_port}"
        try:
            pipeline = workers(broker, TOPIC=topic, GROUP=group, DLQ=dlq, DLQ_SERVERS=relayed, SLEEP="0.05")
            ledger = Ledger(broker, topic, group, 4, poison, pipeline.handled)
            ledgers.append(ledger)
            pipeline.start()
            ledger.watch()
            for at in (150, 450):
                await wait_for(lambda at=at: len(pipeline.handled()) >= at, 40, f"{at} records handled")  # type: ignore[misc]
                await proxy.refuse()
                await asyncio.sleep(4)
                await proxy.accept()
            await drain(pipeline, ledger, {p: 200 for p in range(4)})
            windows = list(proxy.refused)
            figures = await ledger.verify("destination refuses writes", len(windows), relayed, dlq)
        finally:
            await proxy.refuse()
    # the refusals hit deliveries: dead letters sent while refused, which waited and were delivered afterwards
    held = sum(any(start <= letter.timestamp / 1000 <= end for start, end in windows) for letter in ledger.letters)
    assert held > 0
    figures.detail = f"{held} dead letters sent while refused, delivered after"
    report(figures, record_property)


async def test_rebalance_storm_of_three_workers(
    tmp_path: Path, broker: str, name: Any, ledgers: list[Ledger], workers: Callable[..., Workers], record_property: Any
) -> None:
    """Workers of one group join and leave while records flow, up to three at a time: join, join, leave, join,
    leave, leave, at random moments 2-3 s apart, the leaves by SIGTERM and kill -9 in turn (in a random order) and
    of a random worker. The seed is in the figures, to replay a run."""
    topic, group, dlq = name("t"), name("g"), name("dlq")
    seed = int(time.time())
    rng = random.Random(seed)
    await create_topic(broker, topic, 6)
    pipeline = workers(broker, TOPIC=topic, GROUP=group, DLQ=dlq, SLEEP="0.05")
    ledger = Ledger(broker, topic, group, 6, poison, pipeline.handled)
    ledgers.append(ledger)
    produced = 0
    storm_over = asyncio.Event()

    async def keep_producing() -> None:
        nonlocal produced
        while not storm_over.is_set():
            await produce_values(broker, topic, 60, partitions=6, start=produced)
            produced += 60
            await asyncio.sleep(0.25)

    producing = asyncio.create_task(keep_producing())
    ledger.watch()
    events: Counter[str] = Counter()
    leaves = itertools.cycle(rng.sample([signal.SIGTERM, signal.SIGKILL], 2))
    pipeline.start()
    for event in ("join", "join", "leave", "join", "leave", "leave"):  # 1, 2, 3, 2, 3, 2, 1 workers
        await asyncio.sleep(rng.uniform(2, 3))
        if event == "join":
            pipeline.start()
            events["joins"] += 1
        else:
            how = next(leaves)
            code = await pipeline.stop(rng.choice(pipeline.running), how)
            assert code == (0 if how is signal.SIGTERM else -9), pipeline.logs()
            events[how.name] += 1
    storm_over.set()
    await producing
    await drain(pipeline, ledger, {p: produced // 6 for p in range(6)})
    detail = f"seed {seed}: " + ", ".join(f"{n} {what}" for what, n in sorted(events.items()))
    figures = await ledger.verify("rebalance storm (3 workers)", sum(events.values()), broker, dlq, detail)
    report(figures, record_property)


async def test_sink_database_down_while_partitions_are_assigned(
    broker: str, name: Any, postgresql: str, caplog: pytest.LogCaptureFixture, record_property: Any
) -> None:
    """exactly_once asks the Table where its outputs stopped when partitions are assigned; with the database
    refusing connections at that moment, the partitions wait for it (the question is retried) and then run from
    there. Before, the assignment callback failed, aiokafka logged and dropped the error, and the partitions stayed
    assigned to a worker that never processed them: wedged, silently, until some later rebalance."""
    topic, group, table = name("t"), name("g"), name("rows").replace("-", "_")
    await create_topic(broker, topic, 4)
    await produce_values(broker, topic, 400)
    proxy = Proxy(urlparse(postgresql).port or 5432)
    await proxy.accept()
    url = f"postgresql://postgres@127.0.0.1:{proxy.port}/postgres"
    handled: list[tuple[int, int]] = []
    app = App("db-down")

    @app.function(
        source=source(topic, group),
        batch_size=20,
        maximum_batching_window_in_seconds=0.1,
        backoff=Backoff(initial_seconds=0.1, max_seconds=0.5),
        outputs=[Table(url, table, key="id")],
        processing_guarantee="exactly_once",
    )
    def handler(records: list[Record]) -> list[dict[str, Any]]:
        handled.extend((r.partition, r.offset) for r in records)
        return [{"id": r.value["n"], "partition": r.partition, "offset": r.offset} for r in records]

    worker = Worker(app)
    running = asyncio.create_task(worker.run(handle_signals=False))
    try:
        # the Table is open (connected) before the group's first join, which takes half the session timeout (3 s):
        # the database refuses connections meanwhile
        await wait_for(lambda: proxy.connections > 0, 20, "the Table to connect")
        await asyncio.sleep(0.5)
        assert "Setting newly assigned partitions" not in caplog.text
        await proxy.refuse()
        await wait_for(lambda: "Setting newly assigned partitions" in caplog.text, 20, "the group's assignment")
        await asyncio.sleep(2)
        assert handled == []  # nothing runs before the database says where the outputs stopped
        assert "function handler: reading the outputs' stored offsets of " in caplog.text  # and says so
        await proxy.accept()
        await wait_for(lambda: len(set(handled)) >= 400, 30, "every record handled once the database is back")
    finally:
        worker.stop()
        await running
        await proxy.refuse()
    rows = await asyncpg_rows(postgresql, f'SELECT id, partition, "offset" FROM {table} ORDER BY id')
    assert rows == [(n, n % 4, n // 4) for n in range(400)]
    assert len(handled) == 400  # nothing was replayed
    assert await committed(broker, group, topic) == {p: 100 for p in range(4)}
    record_property(
        "fault_figures",
        f"sink database down at assignment: records 400, faults injected 1, lost 0, duplicates {len(handled) - 400}",
    )


async def asyncpg_rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    import asyncpg

    connection = await asyncpg.connect(url)
    try:
        return [tuple(row) for row in await connection.fetch(sql)]
    finally:
        await connection.close()


async def test_bootstrap_servers_refusing_while_a_latest_start_is_resolved(
    broker: str, name: Any, caplog: pytest.LogCaptureFixture, record_property: Any
) -> None:
    """A new group starting at LATEST reads the log ends with a client of its own, through the bootstrap servers.
    With them refusing connections at the first assignment (a load balancer's hiccup), the start is resolved again
    until they answer. Before, the assignment callback failed, aiokafka logged and dropped the error, and the
    partitions stayed assigned and never processed: wedged, silently."""
    topic, group = name("t"), name("g")
    await create_topic(broker, topic, 4)
    proxy = Proxy(int(broker.rsplit(":", 1)[1]))  # only bootstraps through it: the broker advertises itself
    await proxy.accept()
    handled: list[tuple[int, int]] = []
    app = App("bootstrap-down")

    through_proxy = source(topic, group, starting_position="LATEST", bootstrap_servers=f"127.0.0.1:{proxy.port}")

    @app.function(source=through_proxy, maximum_batching_window_in_seconds=0.1)
    def handler(records: list[Record]) -> None:
        handled.extend((r.partition, r.offset) for r in records)

    worker = Worker(app)
    running = asyncio.create_task(worker.run(handle_signals=False))
    try:
        await wait_for(lambda: proxy.connections > 0, 20, "the consumer to bootstrap")
        await asyncio.sleep(0.5)
        assert "Setting newly assigned partitions" not in caplog.text  # the join takes half the session timeout
        await proxy.refuse()
        await wait_for(lambda: "Setting newly assigned partitions" in caplog.text, 20, "the group's assignment")
        await asyncio.sleep(2)
        assert "resolving the starting position (LATEST) of " in caplog.text  # retried, and says so
        await proxy.accept()
        await wait_for(lambda: "no committed offsets; starting at" in caplog.text, 20, "the start to be resolved")
        await produce_values(broker, topic, 40)
        await wait_for(lambda: len(handled) >= 40, 20, "the records produced after the start")
        await asyncio.sleep(0.5)
    finally:
        worker.stop()
        await running
        await proxy.refuse()
    assert sorted(handled) == [(p, o) for p in range(4) for o in range(10)]
    assert await committed(broker, group, topic) == {p: 10 for p in range(4)}
    record_property(
        "fault_figures",
        f"bootstrap refused at a LATEST start: records 40, faults injected 1, lost 0, duplicates {len(handled) - 40}",
    )
