"""Starting `streamfn run`: a cluster that cannot be reached ends the run in one line within --connect-timeout; one
that comes up within it is waited for; a source topic that does not exist is named in a warning."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from conftest import SESSION_MS, committed, create_topic, produce_values, run_cli, start_cli, wait_for, write_pipeline

from streamfn.connectors.kafka.embedded import free_port

pytestmark = pytest.mark.slow  # every test here starts streamfn processes

PIPELINE = """
from streamfn import App
from streamfn.connectors.kafka import KafkaSource, KafkaTopic

app = App("startup")
source = KafkaSource(topics={topics!r}, bootstrap_servers={servers!r}, session_timeout_ms={session})


@app.function(source=source, on_failure=KafkaTopic("{prefix}-dlq"), outputs=[KafkaTopic("{prefix}-out")])
def first(records):
    return [r.value for r in records]


@app.function(source=source, on_failure=KafkaTopic("{prefix}-dlq"))
def second(records):
    pass
"""


def _pipeline(directory: Path, topics: list[str], servers: str) -> Path:
    return write_pipeline(
        directory, PIPELINE.format(topics=topics, servers=servers, session=SESSION_MS, prefix=directory.name)
    )


def _lines(text: str) -> list[str]:
    return text.splitlines()


def _assigned(log: Path, partition: str) -> int:
    """How many functions logged `partition` among their assigned partitions."""
    return sum(partition in line for line in _lines(log.read_text()) if "partitions assigned:" in line)


def test_an_unreachable_cluster_ends_the_run_in_one_line_within_the_connect_timeout(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    servers = f"127.0.0.1:{port}"
    began = time.monotonic()
    pipeline = _pipeline(tmp_path, ["orders"], servers)
    process = start_cli("run", str(pipeline), extra_env={"STREAMFN_CONNECT_TIMEOUT": "2"})
    stdout, stderr = process.communicate(timeout=30)
    took = time.monotonic() - began

    assert process.returncode == 1, stderr
    refused = f"Unable connect to \"{servers}\": [Errno 111] Connect call failed ('127.0.0.1', {port})"
    reason = f"cannot connect to Kafka at {servers} ({refused})"
    errors = [line for line in _lines(stdout + stderr) if line.startswith("error:")]
    # One line, of whichever function gave up first (both wait on the same cluster; on a loaded machine either).
    assert errors in (
        [f"error: function '{function}': {reason}; gave up after 2 s (--connect-timeout)"]
        for function in ("first", "second")
    ), errors
    # The rest that names the cluster: the pollers' retries, one line each, both functions waiting.
    retries = [line for line in _lines(stderr) if servers in line and not line.startswith("error:")]
    assert retries, stderr
    assert all(" WARNING streamfn.poller: function " in line and "; trying again in " in line for line in retries)
    assert {line.split("function ")[1].split(":")[0] for line in retries} == {"first", "second"}
    assert "Traceback" not in stdout + stderr
    assert "Unclosed" not in stderr
    assert took < 2 + 8  # the bound, plus starting Python and closing


@contextlib.asynccontextmanager
async def _late_listener(port: int, broker: str, when: Callable[[], bool]) -> AsyncIterator[None]:
    """A TCP proxy to `broker` on `port` that starts listening only once `when()` holds."""
    host, broker_port = broker.split(":")

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def forward(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(host, int(broker_port))
        await asyncio.gather(
            pipe(client_reader, upstream_writer), pipe(upstream_reader, client_writer), return_exceptions=True
        )

    await wait_for(when, 20, "the run to retry its connection")
    server = await asyncio.start_server(forward, "127.0.0.1", port)
    try:
        yield
    finally:
        server.close()


async def test_a_cluster_that_answers_within_the_connect_timeout_is_waited_for(
    broker: str, name: Callable[[str], str], tmp_path: Path
) -> None:
    topic = name("orders")
    await create_topic(broker, topic)
    await produce_values(broker, topic, 20)
    port = free_port()
    log = tmp_path / "run.log"
    with log.open("w") as stderr:
        process = start_cli(
            "run",
            str(_pipeline(tmp_path, [topic], f"127.0.0.1:{port}")),
            "--connect-timeout",
            "20",
            "--until-idle",
            "1",
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        async with _late_listener(port, broker, lambda: "trying again in" in log.read_text()):
            await wait_for(lambda: process.poll() is not None, 45, "the run to finish")
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, log.read_text()[-3000:]
    for group in ("startup-first", "startup-second"):
        assert await committed(broker, group, topic) == {0: 5, 1: 5, 2: 5, 3: 5}
    assert "Unclosed" not in log.read_text()


async def test_a_source_topic_that_does_not_exist_is_named_in_a_warning(
    broker: str, name: Callable[[str], str], tmp_path: Path
) -> None:
    existing, missing = name("orders"), name("misspelt")
    await create_topic(broker, existing)
    log = tmp_path / "run.log"
    with log.open("w") as stderr:
        process = start_cli(
            "run", str(_pipeline(tmp_path, [existing, missing], broker)), stdout=subprocess.DEVNULL, stderr=stderr
        )
    try:
        # Both functions then read the topic the broker created: its partitions are assigned to each group.
        await wait_for(lambda: _assigned(log, f"{missing}-0") == 2, 30, "both groups to be assigned")
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(process.wait, 30)
    warnings = sorted(line.split(" ", 2)[2] for line in _lines(log.read_text()) if " WARNING " in line)
    assert warnings == [
        f"WARNING streamfn.kafka: group startup-{function}: source topic {missing!r} did not exist on {broker}: the "
        f"broker created it (auto-creation, 4 partitions) and it is empty; is the name right? [function={function}]"
        for function in ("first", "second")
    ]
    assert process.returncode == 0, log.read_text()[-3000:]


def test_produce_to_an_unreachable_cluster_fails_in_one_line(tmp_path: Path) -> None:
    port = free_port()
    servers = f"127.0.0.1:{port}"
    lines = tmp_path / "orders.jsonl"
    lines.write_text('{"n": 1}\n')
    result = run_cli("produce", "orders", str(lines), servers=servers)
    assert result.returncode == 1, result.stderr
    refused = f"Unable connect to \"{servers}\": [Errno 111] Connect call failed ('127.0.0.1', {port})"
    assert _lines(result.stderr) == [f"error: cannot connect to Kafka at {servers} ({refused})"]
