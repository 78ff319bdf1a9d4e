"""`streamfn run --workers N`: a supervisor and N worker processes sharing each function's consumer group.

The handler appends "pid partition offset" per handled record; the assertions compare that file, the group's
committed offsets (read independently) and the supervisor's combined summary with what was produced.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    SESSION_MS,
    committed,
    create_topic,
    produce_values,
    run_cli,
    start_cli,
    wait_for,
    write_pipeline,
)

pytestmark = pytest.mark.slow  # every test here starts streamfn processes

PIPELINE = f"""
import os, time
from streamfn import App
from streamfn.connectors.kafka import KafkaSource

app = App("workers")

@app.function(
    source=KafkaSource(topics=[os.environ["TOPIC"]], consumer_group_id=os.environ["GROUP"],
                       session_timeout_ms={SESSION_MS}),
    batch_size=10,
    maximum_batching_window_in_seconds=0.1,
)
def handler(records):
    time.sleep(float(os.environ.get("SLEEP", "0")))
    with open(os.environ["OUT"], "a") as out:  # one write per batch: a kill -9 cannot leave half of it
        out.write("".join(f"{{os.getpid()}} {{r.partition}} {{r.offset}}\\n" for r in records))
"""


def short_topic() -> str:
    """A topic name short enough for the summary's offsets column to stay on one line."""
    return f"w{uuid.uuid4().hex[:8]}"


def handled(path: Path) -> list[tuple[int, int, int]]:
    if not path.exists():
        return []
    return [tuple(map(int, line.split())) for line in path.read_text().splitlines() if line]  # type: ignore[misc]


def start(tmp_path: Path, broker: str, topic: str, group: str, *options: str, **env: str) -> subprocess.Popen[str]:
    pipeline = write_pipeline(tmp_path, PIPELINE)
    environment = {"TOPIC": topic, "GROUP": group, "OUT": str(tmp_path / "handled.txt"), **env}
    log = (tmp_path / "supervisor.log").open("w")
    return start_cli("run", str(pipeline), *options, servers=broker, extra_env=environment, stderr=log)


def log_text(tmp_path: Path) -> str:
    return (tmp_path / "supervisor.log").read_text()


def both_assigned_two(tmp_path: Path) -> bool:
    """Two children each logged an assignment of two partitions (the generation in which both are members)."""
    lines = [line for line in log_text(tmp_path).splitlines() if "partitions assigned" in line]
    return sum(1 for line in lines[-2:] if line.count(", ") == 1) == 2


def summary_row(stdout: str) -> list[str]:
    """The cells of the combined summary's one function row (the offsets cell unfolded)."""
    assert stdout.count("streamfn run summary") == 1, stdout
    rows = [[c.strip() for c in line.strip("│").split("│")] for line in stdout.splitlines() if line.startswith("│")]
    start = next(i for i, row in enumerate(rows) if row[0] == "handler")
    folded = [row[-1] for row in rows[start + 1 :] if not row[0]]
    return [*rows[start][:-1], " ".join([rows[start][-1], *folded])]


async def test_two_workers_share_the_group_and_stop_together_on_sigterm(broker: str, name: Any, tmp_path: Path) -> None:
    topic, group, out = short_topic(), name("g"), tmp_path / "handled.txt"
    await create_topic(broker, topic, 4)
    supervisor = start(tmp_path, broker, topic, group, "--workers", "2")
    await wait_for(lambda: both_assigned_two(tmp_path), 40, "both workers to own two partitions each")
    await produce_values(broker, topic, 400)
    await wait_for(lambda: len(handled(out)) >= 400, 40, "every record to be handled")
    supervisor.send_signal(signal.SIGTERM)
    stdout, _ = supervisor.communicate(timeout=40)
    assert supervisor.returncode == 0, log_text(tmp_path)

    records = handled(out)
    assert sorted((p, o) for _, p, o in records) == [(p, o) for p in range(4) for o in range(100)]
    owners: dict[int, set[int]] = defaultdict(set)
    for pid, partition, _ in records:
        owners[pid].add(partition)
    assert sorted(len(partitions) for partitions in owners.values()) == [2, 2]  # two processes, disjoint halves
    assert supervisor.pid not in owners  # the supervisor runs no function
    assert await committed(broker, group, topic) == {0: 100, 1: 100, 2: 100, 3: 100}
    row = summary_row(stdout)
    assert row[2] == "400" and row[6] == "400" and row[-2] == "400", row  # polled, handled, committed
    assert row[-1] == ", ".join(f"{topic}-{p}@100" for p in range(4))
    log = log_text(tmp_path)
    assert "SIGTERM: telling the 2 workers to finish and commit" in log
    assert "restarting" not in log


async def test_a_killed_worker_is_restarted_and_nothing_is_lost(broker: str, name: Any, tmp_path: Path) -> None:
    topic, group, out = short_topic(), name("g"), tmp_path / "handled.txt"
    await create_topic(broker, topic, 4)
    await produce_values(broker, topic, 2000)
    supervisor = start(tmp_path, broker, topic, group, "--workers", "2", SLEEP="0.05")
    await wait_for(lambda: len(handled(out)) >= 300, 60, "300 records to be handled")
    victim = handled(out)[-1][0]
    assert victim != supervisor.pid
    os.kill(victim, signal.SIGKILL)
    await wait_for(
        lambda: (
            re.search(rf"worker \d \(pid {victim}\) was killed by SIGKILL; restarting it in", log_text(tmp_path))
            is not None
        ),
        20,
        "the restart's log line",
    )
    await wait_for(lambda: len({(p, o) for _, p, o in handled(out)}) >= 2000, 90, "every record to be handled")
    await wait_for(lambda: log_text(tmp_path).count(" started (pid ") == 3, 20, "the restart")
    supervisor.send_signal(signal.SIGTERM)
    stdout, _ = supervisor.communicate(timeout=40)
    assert supervisor.returncode == 0, log_text(tmp_path)
    assert {(p, o) for _, p, o in handled(out)} == {(p, o) for p in range(4) for o in range(500)}
    assert await committed(broker, group, topic) == {0: 500, 1: 500, 2: 500, 3: 500}
    assert summary_row(stdout)[-1] == ", ".join(f"{topic}-{p}@500" for p in range(4))


async def test_workers_stop_when_the_supervisor_is_killed(broker: str, name: Any, tmp_path: Path) -> None:
    """The children are in their own sessions (a terminal's Ctrl-C reaches only the supervisor, which forwards it
    once); a supervisor killed by SIGKILL must still not leave them running."""
    topic, group = short_topic(), name("g")
    await create_topic(broker, topic, 4)
    supervisor = start(tmp_path, broker, topic, group, "--workers", "2")
    await wait_for(lambda: both_assigned_two(tmp_path), 40, "both workers to own two partitions each")
    children = [int(pid) for pid in re.findall(r"worker \d started \(pid (\d+)\)", log_text(tmp_path))]
    assert len(children) == 2
    supervisor.send_signal(signal.SIGKILL)
    supervisor.wait(10)
    await wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in children), 30, "the workers to exit")
    assert log_text(tmp_path).count("SIGTERM: finishing in-flight batches, committing, leaving the groups") == 2


@contextlib.contextmanager
def taken_port_before_a_free_one() -> Iterator[int]:
    """A port this test listens on, whose next port was free a moment ago (other processes share the machine)."""
    while True:
        with socket.socket() as taken:
            taken.bind(("0.0.0.0", 0))
            taken.listen()
            port: int = taken.getsockname()[1]
            with socket.socket() as probe:
                try:
                    probe.bind(("0.0.0.0", port + 1))
                except OSError:
                    continue
            yield port
            return


async def test_a_worker_that_cannot_start_ends_the_supervisor_with_its_exit_code(
    broker: str, name: Any, tmp_path: Path
) -> None:
    topic, group = name("t"), name("g")
    await create_topic(broker, topic, 4)
    with taken_port_before_a_free_one() as port:  # worker 0 serves --health-port, worker 1 the port after it
        supervisor = start(tmp_path, broker, topic, group, "--workers", "2", "--health-port", str(port))
        supervisor.communicate(timeout=40)
    assert supervisor.returncode == 2, log_text(tmp_path)
    errors = [line for line in log_text(tmp_path).splitlines() if line.startswith("error:")]
    assert errors == [f"error: port {port} cannot be served: Address already in use"], log_text(tmp_path)
    assert log_text(tmp_path).count("started (pid") == 2  # no restart


def test_workers_must_be_a_positive_number_or_auto(tmp_path: Path) -> None:
    pipeline = write_pipeline(tmp_path, PIPELINE)
    result = run_cli("run", str(pipeline), "--workers", "0")
    assert result.returncode == 2
    assert result.stderr == "error: --workers '0' is not allowed; allowed: a number of processes >= 1, or auto\n"


def test_embedded_broker_and_seed_once_until_idle(tmp_path: Path) -> None:
    """Without --bootstrap-servers the supervisor starts the embedded broker and seeds it once; with --until-idle
    each worker stops when caught up and idle, and the supervisor once all have."""
    seed = tmp_path / "in.jsonl"
    seed.write_text("".join(f'{{"n": {i}, "k": "k{i}"}}\n' for i in range(300)))
    out = tmp_path / "handled.txt"
    pipeline = write_pipeline(tmp_path, PIPELINE.replace('os.environ["GROUP"]', '"g"'))
    result = run_cli(
        "run",
        str(pipeline),
        "--workers",
        "2",
        "--seed",
        f"seeded={seed}",
        "--key-field",
        "k",
        "--until-idle",
        "1",
        extra_env={"TOPIC": "seeded", "OUT": str(out)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("embedded Kafka broker") == 1
    assert result.stdout.count("seeded 300 records") == 1
    records = handled(out)
    assert len(records) == 300 and len({(p, o) for _, p, o in records}) == 300
    row = summary_row(result.stdout)
    assert row[2] == "300" and row[6] == "300" and row[-2] == "300", row
