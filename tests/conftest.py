"""Shared fixtures: one real Tansu broker per test session, and helpers that talk to it with plain aiokafka.

Assertions read the broker's truth (committed offsets through an independent consumer, produced counts we know),
never the engine's own bookkeeping alone.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streamfn import App
from streamfn.connectors.kafka import KafkaSource
from streamfn.connectors.kafka.embedded import EmbeddedBroker
from streamfn.connectors.kafka.source import SERVERS_ENV
from streamfn.engine.worker import FunctionSummary, Worker

SESSION_MS = 6000  # Tansu makes every group join wait half the session timeout
_names = itertools.count()


@pytest.fixture(scope="session")
def broker() -> Iterator[str]:
    """The session's broker; sources that name no servers find it in STREAMFN_BOOTSTRAP_SERVERS, as they do under
    `streamfn run` (subprocesses get it only when a test passes `servers`: see start_cli)."""
    with EmbeddedBroker() as embedded:
        os.environ[SERVERS_ENV] = embedded.address
        try:
            yield embedded.address
        finally:
            del os.environ[SERVERS_ENV]


@pytest.fixture
def name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Unique topic/group names per test (the broker is shared by the whole session)."""
    base = request.node.name.replace("[", "-").replace("]", "").replace("_", "-")[:40]

    def make(kind: str) -> str:
        return f"{base}-{kind}-{next(_names)}"

    return make


def source(topic: str | list[str], group: str, **kw: Any) -> KafkaSource:
    topics = [topic] if isinstance(topic, str) else topic
    return KafkaSource(topics=topics, consumer_group_id=group, session_timeout_ms=SESSION_MS, **kw)


async def create_topic(servers: str, topic: str, partitions: int = 4) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


@dataclass
class Out:
    value: bytes | None
    key: bytes | None = None
    partition: int | None = None
    headers: Sequence[tuple[str, bytes]] | None = None
    timestamp_ms: int | None = None


async def produce(servers: str, topic: str, records: Sequence[Out]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=servers, linger_ms=5, max_request_size=16 * 1024 * 1024)
    await producer.start()
    try:
        futures = [
            await producer.send(
                topic,
                r.value,
                key=r.key,
                partition=r.partition,
                headers=list(r.headers or []),
                timestamp_ms=r.timestamp_ms,
            )
            for r in records
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def produce_values(servers: str, topic: str, count: int, partitions: int = 4, start: int = 0) -> None:
    """`count` JSON records {"n": i} spread round-robin over the partitions, keyed "k<i>"."""
    await produce(
        servers,
        topic,
        [Out(b'{"n": %d}' % i, key=b"k%d" % i, partition=i % partitions) for i in range(start, start + count)],
    )


async def committed(servers: str, group: str, topic: str, partitions: int = 4) -> dict[int, int | None]:
    """The group's committed offsets, read by an independent consumer."""
    consumer = AIOKafkaConsumer(bootstrap_servers=servers, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in range(partitions)}
    finally:
        await consumer.stop()


async def run_worker(
    app: App, servers: str | None, until: Callable[[], bool], *, timeout: float = 60, settle: float = 0.0
) -> list[FunctionSummary]:
    """Run `app` in-process until `until()` holds (then `settle` seconds more), stop it gracefully, return.
    `servers`: the broker of its Kafka sources that name none (the session's, in STREAMFN_BOOTSTRAP_SERVERS); None
    for an app whose sources need none (the memory source)."""
    if servers is not None:
        assert os.environ.get(SERVERS_ENV) == servers, "sources that name no servers use the session's broker"
    worker = Worker(app)
    task = asyncio.create_task(worker.run(handle_signals=False))
    deadline = time.monotonic() + timeout
    while not until():
        if task.done():
            task.result()
            raise AssertionError("worker stopped before the condition held")
        if time.monotonic() > deadline:
            worker.stop()
            await task
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.05)
    await asyncio.sleep(settle)
    worker.stop()
    return await task


# --- subprocess workers (kill -9, rebalances, signals, CLI) -------------------------------------------------------


def write_pipeline(directory: Path, body: str) -> Path:
    path = directory / "pipeline.py"
    path.write_text(body)
    return path


def start_cli(
    *args: str, servers: str | None = None, extra_env: dict[str, str] | None = None, **popen: Any
) -> subprocess.Popen[str]:
    env = dict(os.environ, **(extra_env or {}))
    env.pop(SERVERS_ENV, None)
    if servers:
        env[SERVERS_ENV] = servers
    return subprocess.Popen(
        [sys.executable, "-m", "streamfn", *args],
        env=env,
        text=True,
        stdout=popen.pop("stdout", subprocess.PIPE),
        stderr=popen.pop("stderr", subprocess.PIPE),
        **popen,
    )


def run_cli(
    *args: str, servers: str | None = None, timeout: float = 60, **popen: Any
) -> subprocess.CompletedProcess[str]:
    process = start_cli(*args, servers=servers, **popen)
    stdout, stderr = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def launch_pipeline(directory: Path, body: str, servers: str, **env: str) -> subprocess.Popen[str]:
    """`streamfn run` of a pipeline written from `body` into `directory`, with `env`; its log in `directory`."""
    pipeline = write_pipeline(directory, body)
    log = (directory / f"worker-{time.monotonic_ns()}.log").open("w")
    return start_cli("run", str(pipeline), servers=servers, extra_env=env, stdout=subprocess.DEVNULL, stderr=log)


async def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def read_handled(path: Path) -> list[tuple[int, int]]:
    """(partition, offset) lines a test handler appended, one per handled record."""
    if not path.exists():
        return []
    return [tuple(map(int, line.split())) for line in path.read_text().splitlines() if line]  # type: ignore[misc]


async def read_topic(servers: str, topic: str, count: int, timeout: float = 20) -> list[Any]:
    """The first `count` records of `topic` (all partitions), read by an independent consumer."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=servers, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    found: list[Any] = []
    try:
        deadline = time.monotonic() + timeout
        while len(found) < count and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                found.extend(records)
    finally:
        await consumer.stop()
    return sorted(found, key=lambda r: (r.partition, r.offset))


async def run_until_read(app: App, servers: str, wanted: dict[str, int], timeout: float = 40) -> dict[str, list[Any]]:
    """Run `app` until `wanted[topic]` records can be read from each topic (dead letters, say); return them."""
    found: dict[str, list[Any]] = {}

    async def read() -> None:
        for topic, count in wanted.items():
            found[topic] = await read_topic(servers, topic, count, timeout=timeout)

    reader = asyncio.create_task(read())
    await run_worker(app, servers, reader.done, timeout=timeout + 10)
    return found


# --- PostgreSQL (Table sink tests) ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgresql() -> Iterator[str]:
    """A throwaway PostgreSQL cluster for the session, started only when a test asks for it; yields its url.

    PostgreSQL refuses to run as root, so as root initdb and the server run as the `postgres` system user (in a
    temp dir it owns). Trust authentication on 127.0.0.1, no fsync: nothing here needs to survive the session.
    """
    import glob
    import shutil
    import tempfile

    from streamfn.connectors.kafka.embedded import free_port

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.fail("PostgreSQL is not installed: run scripts/test.sh, or apt-get install postgresql")
    bin_dir = Path(found[-1]).parent
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    directory = Path(tempfile.mkdtemp(prefix="streamfn-pg-"))
    if as_postgres:
        shutil.chown(directory, "postgres", "postgres")
    data, port = directory / "data", free_port()

    def pg(*command: str) -> None:
        subprocess.run([*as_postgres, *command], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    try:
        pg(str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
        options = f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
        pg(str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(directory / "log"), "-w", "start")
        try:
            yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
        finally:
            pg(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# --- servers the tests start ---------------------------------------------------------------------------------------


def wait_listening(port: int, process: subprocess.Popen[Any], what: str, timeout: float = 30.0) -> None:
    """Until `process` (a server the test started) accepts connections on `port`; raise if it exits or is late."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout:g} s")


# --- AWS (moto in server mode) --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's server on a free port for the session, started only when a test asks for it: its endpoint URL."""
    from streamfn.connectors.kafka.embedded import free_port

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(port, process, "moto_server")
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


# --- the fault-injection suite's figures ----------------------------------------------------------------------------


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The figures each fault test recorded (`record_property("fault_figures", ...)`), shown without `-s`."""
    lines = [
        value
        for outcome in ("passed", "failed")
        for report in terminalreporter.stats.get(outcome, [])
        for key, value in getattr(report, "user_properties", [])
        if key == "fault_figures"
    ]
    if lines:
        terminalreporter.section("fault-injection figures")
        for line in lines:
            terminalreporter.write_line(line)


# --- order: the slow tests first --------------------------------------------------------------------------------------


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The `slow` tests (processes, kill -9, several workers; the longest, at 10 to 35 s each) run first, so that
    pytest-xdist spreads them over its workers from the start and the run does not end waiting on one of them while
    the other workers are idle. The order is otherwise unchanged (a stable sort)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


# --- Kinesis (moto) ------------------------------------------------------------------------------------------------


@pytest.fixture
def aws(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """moto's endpoint, with dummy credentials and region in the environment (as the AWS chain reads them), and
    caught-up Kinesis shards polled every 0.1 s instead of Lambda's 1 s, to keep tests fast."""
    from streamfn.connectors.kinesis.api import KinesisApi

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setattr(KinesisApi, "poll_interval", 0.1)
    return moto_endpoint


# --- Kinesis (kinesalite: resharding and shard ends as AWS does them; the lease table stays on moto) ---------------

KINESALITE_DIR = Path(os.environ.get("STREAMFN_KINESALITE_DIR", Path.home() / ".cache" / "streamfn" / "kinesalite"))
"""Where scripts/test.sh installs kinesalite (npm install --prefix), unless it is on the PATH."""


@pytest.fixture(scope="session")
def kinesalite_endpoint() -> Iterator[str]:
    """kinesalite (in memory, streams ACTIVE at once) on a free port for the session, started only when a test asks
    for it: its endpoint URL. moto writes a split parent's keys into the parent and never ends a closed shard;
    kinesalite routes them to the children and ends a drained closed shard with a null NextShardIterator."""
    import shutil

    from streamfn.connectors.kafka.embedded import free_port

    installed = KINESALITE_DIR / "node_modules" / ".bin" / "kinesalite"
    binary = str(installed) if installed.exists() else shutil.which("kinesalite")
    if binary is None:
        pytest.fail(
            f"kinesalite is not installed: run scripts/test.sh, or npm install --prefix {KINESALITE_DIR} kinesalite"
        )
    port = free_port()
    options = ["--createStreamMs", "0", "--deleteStreamMs", "0", "--updateStreamMs", "0", "--shardLimit", "100"]
    process = subprocess.Popen(
        [binary, "--port", str(port), *options], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_listening(port, process, "kinesalite")
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
def kinesalite(aws: str, kinesalite_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Kinesis on kinesalite, everything else (the lease table's DynamoDB, STS) on moto, through the AWS chain's
    endpoint variables as a user would set them: kinesalite's endpoint."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws)
    monkeypatch.setenv("AWS_ENDPOINT_URL_KINESIS", kinesalite_endpoint)
    return kinesalite_endpoint


# --- DynamoDB Streams (moto for tables; a test double for shards that roll over) ----------------------------------


@pytest.fixture(scope="session")
def ddb_streams_double_server() -> Iterator[Any]:
    """The DynamoDB Streams double (tests/ddb_streams_double.py) for the session, started when a test asks for it."""
    from ddb_streams_double import StreamsDouble

    double = StreamsDouble()
    try:
        yield double
    finally:
        double.close()


@pytest.fixture
def ddb_streams(aws: str, ddb_streams_double_server: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """DynamoDB Streams on the double, everything else (tables, DescribeTable, the lease table) on moto, through
    the AWS chain's endpoint variables as a user would set them: the double."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws)
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB_STREAMS", ddb_streams_double_server.endpoint)
    return ddb_streams_double_server
