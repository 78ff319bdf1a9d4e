"""Lambda-style tumbling windows (`tumbling_window_in_seconds`): the event's window fields, the state carried from
one invocation to the next, final invocations (on a later window's record, on quiet, on a state above 1 MB), the
failure policy applied to windowed invocations, and the state kept durable across a kill -9.

Records are produced with explicit timestamps on minute boundaries long past, so the windows are deterministic
(60 s windows, records 10 s apart: 6 per window); outputs are read back from a topic by an independent consumer and
the handlers log every invocation they get.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from conftest import (
    SESSION_MS,
    Out,
    committed,
    create_topic,
    produce,
    read_topic,
    run_worker,
    source,
    start_cli,
    wait_for,
)
from conftest import write_pipeline as write_file

from streamfn import App, Backoff
from streamfn.connectors.kafka import KafkaTopic
from streamfn.connectors.kafka.changelog import changelog_topic
from streamfn.state.changelog import APPLIED_HEADER
from streamfn.state.store import META_KEY

FAST = Backoff(initial_seconds=0.01, max_seconds=0.05)
MINUTE = 60_000
BASE = 1_700_000_000_000 - 1_700_000_000_000 % MINUTE  # 2023-11-14T22:13:00Z
STEP = 10_000  # record n is at BASE + n * STEP: window k holds n = 6k .. 6k+5


def at(n: int) -> int:
    return BASE + n * STEP


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def window(k: int, start: int = BASE) -> dict[str, str]:
    """Lambda's `window` of the k-th minute from `start`."""
    return {"start": iso(start + k * MINUTE), "end": iso(start + (k + 1) * MINUTE)}


def records(ns: range | list[int], partition: int = 0, ts: Callable[[int], int] = at) -> list[Out]:
    return [Out(b'{"n": %d}' % n, key=b"k%d" % n, partition=partition, timestamp_ms=ts(n)) for n in ns]


@dataclass
class Call:
    """One invocation as the handler saw it."""

    window: dict[str, str]
    state: dict[str, Any]
    final: bool
    early: bool
    ns: list[int]
    offsets: list[int]
    partition_keys: list[str]
    when: float


class Calls(list[Call]):
    """The invocations of a test's handler, in order (sync handlers run in a thread pool)."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def log(self, event: dict[str, Any]) -> Call:
        items = [r for rs in event["records"].values() for r in rs]
        call = Call(
            window=event["window"],
            state=json.loads(json.dumps(event["state"])),  # a copy, as the handler got it
            final=event["isFinalInvokeForWindow"],
            early=event["isWindowTerminatedEarly"],
            ns=[orjson.loads(base64.b64decode(r["value"]))["n"] for r in items],
            offsets=[r["offset"] for r in items],
            partition_keys=list(event["records"]),
            when=time.monotonic(),
        )
        with self._lock:
            self.append(call)
        return call

    def finals(self) -> list[Call]:
        return [c for c in self if c.final]


def fold(state: dict[str, Any], ns: list[int]) -> dict[str, Any]:
    """The test handlers' aggregation: a sum, a count and the numbers seen, in order."""
    return {
        "sum": state.get("sum", 0) + sum(ns),
        "count": state.get("count", 0) + len(ns),
        "seen": [*state.get("seen", []), *ns],
    }


def summing(calls: Calls, *, fail_finals: int = 0) -> Callable[[dict[str, Any], Any], dict[str, Any]]:
    """A Lambda-style handler folding each batch into the window's state; its final invocation emits the total.
    The first `fail_finals` final invocations raise."""
    failed = 0

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        nonlocal failed
        call = calls.log(event)
        if call.final:
            if failed < fail_finals:
                failed += 1
                event["state"]["sum"] = -1  # changed in place, then failed: the retry must get the state unchanged
                raise RuntimeError(f"final invocation failure {failed}")
            total = {"window": event["window"], "sum": call.state.get("sum", 0), "count": call.state.get("count", 0)}
            return {"state": event["state"], "outputs": [total]}
        return {"state": fold(event["state"], call.ns)}

    return handler


async def read_all(servers: str, topic: str, expected: int) -> list[dict[str, Any]]:
    """Everything in `topic` (read after the worker stopped: one more than expected proves there is no extra),
    sorted by window start then value, since outputs without a key land on any partition."""
    found = await read_topic(servers, topic, expected + 1, timeout=0.5)
    values = [orjson.loads(r.value) for r in found]
    return sorted(values, key=lambda v: (v.get("window", {}).get("start", ""), json.dumps(v, sort_keys=True)))


def check_window_invocations(calls: list[Call], windows: list[dict[str, str]], numbers: list[list[int]]) -> None:
    """Each window's invocations, in order: its records in batches (never another window's), each batch invoked
    with the state the previous one returned ({} first), then one final invocation without records and with the
    window's whole state; the windows one after the other, never interleaved."""
    assert [c.window for c in calls] == sorted((c.window for c in calls), key=lambda w: w["start"])
    assert sorted({c.window["start"] for c in calls}) == [w["start"] for w in windows]
    for shown, ns in zip(windows, numbers, strict=True):
        *batches, final = [c for c in calls if c.window == shown]
        assert [n for c in batches for n in c.ns] == ns
        assert not any(c.final or c.early for c in batches)
        state: dict[str, Any] = {}
        for c in batches:
            assert c.ns and c.state == state, (shown, c)
            state = fold(state, c.ns)
        assert (final.final, final.early, final.ns, final.state) == (True, False, [], state)


# --- 1. the event's window fields and the state round trip ------------------------------------------------------


async def test_window_fields_and_state_round_trip_per_invocation(broker: str, name: Any) -> None:
    topic, group, out = name("t"), name("g"), name("out")
    await create_topic(broker, topic, 1)
    await produce(broker, topic, records(range(20)))  # windows of 6, 6, 6 and 2 records
    calls = Calls()
    app = App("tumbling")
    app.function(
        source=source(topic, group),
        tumbling_window_in_seconds=60,
        window_idle_seconds=1,  # the last window closes once the partition is quiet
        batch_size=4,
        outputs=[KafkaTopic(out)],
    )(summing(calls))

    await run_worker(app, broker, lambda: len(calls.finals()) == 4, timeout=30)

    numbers = [list(range(0, 6)), list(range(6, 12)), list(range(12, 18)), [18, 19]]
    check_window_invocations(calls, [window(k) for k in range(4)], numbers)
    assert window(0) == {"start": "2023-11-14T22:13:00Z", "end": "2023-11-14T22:14:00Z"}
    assert all(len(c.ns) <= 4 for c in calls)  # batch_size still applies within a window
    # Lambda's Kafka event is unchanged around the window fields: the final one has the partition, no records.
    assert {tuple(c.partition_keys) for c in calls} == {(f"{topic}-0",)}
    assert [o for c in calls for o in c.offsets] == list(range(20))
    assert await read_all(broker, out, 4) == [
        {"window": window(k), "sum": sum(ns), "count": len(ns)} for k, ns in enumerate(numbers)
    ]
    assert await committed(broker, group, topic, 1) == {0: 20}


# --- 2. a response without `state` is a failed invocation --------------------------------------------------------


async def test_a_response_without_state_is_retried_then_dead_lettered(broker: str, name: Any) -> None:
    topic, group, out, dlq = name("t"), name("g"), name("out"), name("dlq")
    await create_topic(broker, topic, 1)
    await produce(broker, topic, records(range(12)))
    calls = Calls()
    app = App("tumbling")

    @app.function(
        source=source(topic, group),
        tumbling_window_in_seconds=60,
        window_idle_seconds=1,
        batch_size=1,  # one record per invocation: only record 7 fails
        maximum_retry_attempts=1,
        backoff=FAST,
        on_failure=KafkaTopic(dlq),
        outputs=[KafkaTopic(out)],
    )
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        call = calls.log(event)
        if call.final:
            return {"state": event["state"], "outputs": [{"window": event["window"], "sum": call.state["sum"]}]}
        state: dict[str, Any] = event["state"]  # changed in place, as AWS's examples do: lost if it fails
        state.update(fold(state, call.ns))
        if call.ns == [7]:
            return state  # the state, not wrapped in {"state": ...}: a failed invocation
        return {"state": state}

    await run_worker(app, broker, lambda: len(calls.finals()) == 2, timeout=30)

    sevens = [c for c in calls if c.ns == [7]]
    assert [c.state for c in sevens] == [fold({}, [6])] * 2  # the first attempt and 1 retry, with the same state
    after = next(c for c in calls if c.ns == [8])
    assert after.state == fold({}, [6])  # what the failed invocations returned was not taken
    check_window_invocations(
        [c for c in calls if c.ns != [7]], [window(0), window(1)], [list(range(6)), [6, 8, 9, 10, 11]]
    )
    assert await read_all(broker, out, 2) == [
        {"window": window(0), "sum": 15},
        {"window": window(1), "sum": 6 + 8 + 9 + 10 + 11},
    ]
    [letter] = await read_topic(broker, dlq, 2, timeout=1.0)
    dead = orjson.loads(letter.value)
    assert letter.key == b"k7"
    assert dict(letter.headers)["streamfn.source.offset"] == b"7"
    assert dict(letter.headers)["streamfn.error.condition"] == b"RetryAttemptsExhausted"
    assert dead["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert dead["requestContext"]["approximateInvokeCount"] == 2
    assert dead["errorType"] == "MissingState"
    assert "'state'" in dead["errorMessage"]
    [[record]] = dead["payload"]["records"].values()
    assert (record["offset"], base64.b64decode(record["value"])) == (7, b'{"n": 7}')
    assert await committed(broker, group, topic, 1) == {0: 12}


# --- 3. a failing final invocation follows the retry policy ---------------------------------------------------


async def test_a_failing_final_invocation_is_retried_until_it_succeeds_and_the_partition_waits(
    broker: str, name: Any
) -> None:
    topic, group, out = name("t"), name("g"), name("out")
    await create_topic(broker, topic, 1)
    await produce(broker, topic, records(range(12)))
    calls = Calls()
    app = App("tumbling")
    app.function(
        source=source(topic, group),
        tumbling_window_in_seconds=60,
        window_idle_seconds=1,
        batch_size=4,  # retries -1 (the default) and no on_failure: retried until it succeeds, nothing is dropped
        backoff=FAST,
        outputs=[KafkaTopic(out)],
    )(summing(calls, fail_finals=2))

    await run_worker(app, broker, lambda: len(calls.finals()) == 4, timeout=30)

    first = [i for i, c in enumerate(calls) if c.final and c.window == window(0)]
    assert len(first) == 3  # failed twice, then succeeded
    assert all(calls[i].state == fold({}, list(range(6))) for i in first)  # each attempt with the whole state
    next_window = [i for i, c in enumerate(calls) if c.window == window(1)]
    assert min(next_window) > max(first)  # no record of the next window was invoked before the final succeeded
    check_window_invocations(
        [c for i, c in enumerate(calls) if i not in first[:2]],
        [window(0), window(1)],
        [list(range(6)), list(range(6, 12))],
    )
    assert await read_all(broker, out, 2) == [
        {"window": window(0), "sum": 15, "count": 6},
        {"window": window(1), "sum": 51, "count": 6},
    ]
    assert await committed(broker, group, topic, 1) == {0: 12}


async def test_a_final_invocation_that_keeps_failing_is_retried_per_policy_then_the_window_is_dead_lettered(
    broker: str, name: Any
) -> None:
    topic, group, out, dlq = name("t"), name("g"), name("out"), name("dlq")
    await create_topic(broker, topic, 1)
    await produce(broker, topic, records(range(12)))
    calls = Calls()
    app = App("tumbling")
    app.function(
        source=source(topic, group),
        tumbling_window_in_seconds=60,
        window_idle_seconds=1,
        batch_size=4,
        maximum_retry_attempts=2,
        backoff=FAST,
        on_failure=KafkaTopic(dlq),
        outputs=[KafkaTopic(out)],
    )(summing(calls, fail_finals=3))  # window 0's final fails on every attempt; window 1's succeeds

    await run_worker(app, broker, lambda: len(calls.finals()) == 4, timeout=30)

    first = [c for c in calls if c.final and c.window == window(0)]
    assert len(first) == 3  # maximum_retry_attempts + 1
    assert all(c.state == fold({}, list(range(6))) for c in first)
    [letter] = await read_topic(broker, dlq, 2, timeout=1.0)
    headers = dict(letter.headers)
    assert letter.key is None
    assert (headers["streamfn.source.offset"], headers["streamfn.error.condition"]) == (b"5", b"RetryAttemptsExhausted")
    dead = orjson.loads(letter.value)
    assert dead["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert dead["requestContext"]["approximateInvokeCount"] == 3
    assert dead["responseContext"]["functionError"] == "Unhandled"
    assert (dead["errorType"], dead["errorMessage"]) == ("RuntimeError", "final invocation failure 3")
    assert dead["KafkaBatchInfo"]["recordInfo"] == {"offset": 5, "timestamp": BASE + MINUTE}
    assert dead["KafkaBatchInfo"]["windowInfo"] == {"firstOffset": 0, "lastOffset": 5}
    payload = dead["payload"]
    assert payload["records"] == {f"{topic}-0": []}
    assert (payload["window"], payload["state"]) == (window(0), fold({}, list(range(6))))
    assert (payload["isFinalInvokeForWindow"], payload["isWindowTerminatedEarly"]) == (True, False)
    # The partition moved on: window 1 ran and closed, and everything is committed.
    assert await read_all(broker, out, 1) == [{"window": window(1), "sum": 51, "count": 6}]
    assert await committed(broker, group, topic, 1) == {0: 12}


# --- 4. a state above 1 MB ends the window early -----------------------------------------------------------------


async def test_a_state_above_1_mb_ends_the_window_early_and_the_window_goes_on_fresh(broker: str, name: Any) -> None:
    topic, group, out = name("t"), name("g"), name("out")
    await create_topic(broker, topic, 1)
    await produce(broker, topic, records(range(6)))  # one window
    calls = Calls()
    pad = "x" * (1024 * 1024)
    app = App("tumbling")

    @app.function(
        source=source(topic, group),
        tumbling_window_in_seconds=60,
        window_idle_seconds=1,
        batch_size=1,
        outputs=[KafkaTopic(out)],
    )
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        call = calls.log(event)
        state = event["state"]
        if call.final:
            total = {"sum": state["sum"], "early": call.early, "padded": len(state.get("pad", ""))}
            return {"state": state, "outputs": [total]}
        folded = fold(state, call.ns)
        return {"state": folded | {"pad": pad} if call.ns == [2] else folded}

    await run_worker(app, broker, lambda: len(calls.finals()) == 2, timeout=30)

    assert all(c.window == window(0) for c in calls)
    shown = [(c.ns, c.state.get("sum"), c.final, c.early) for c in calls]
    assert shown == [
        ([0], None, False, False),
        ([1], 0, False, False),
        ([2], 1, False, False),
        ([], 3, True, True),  # ended early, with the big state
        ([3], None, False, False),  # the same window goes on with {}
        ([4], 3, False, False),
        ([5], 7, False, False),
        ([], 12, True, False),
    ]
    assert calls[3].state == fold({}, [0, 1, 2]) | {"pad": pad}
    assert calls[4].state == {}
    outputs = await read_topic(broker, out, 3, timeout=1.0)
    assert sorted(orjson.loads(r.value)["sum"] for r in outputs) == [3, 12]
    assert sorted((orjson.loads(r.value)["early"], orjson.loads(r.value)["padded"]) for r in outputs) == [
        (False, 0),
        (True, len(pad)),
    ]
    assert await committed(broker, group, topic, 1) == {0: 6}


# --- 5. the quiet period closes the last window ------------------------------------------------------------------


async def test_a_quiet_partition_closes_a_window_that_has_ended_but_not_one_still_open(broker: str, name: Any) -> None:
    topic, group, out = name("t"), name("g"), name("out")
    await create_topic(broker, topic, 2)
    future = (int(time.time() * 1000) // MINUTE + 60) * MINUTE  # an hour ahead: that window has not ended
    await produce(broker, topic, [*records(range(3)), *records(range(2), partition=1, ts=lambda n: future + n)])
    calls = Calls()
    app = App("tumbling")
    app.function(
        source=source(topic, group),
        tumbling_window_in_seconds=60,
        window_idle_seconds=1,
        maximum_batching_window_in_seconds=0,
        batch_size=1,
        outputs=[KafkaTopic(out)],
    )(summing(calls))

    await run_worker(app, broker, lambda: len(calls.finals()) == 1, timeout=30, settle=2.5)

    ended = [c for c in calls if c.window == window(0)]
    open_ = [c for c in calls if c.window != window(0)]
    check_window_invocations(ended, [window(0)], [[0, 1, 2]])
    quiet = ended[-1].when - ended[-2].when
    assert 0.8 < quiet < 3.5, quiet  # after window_idle_seconds without records (checked each second)
    # The other partition's window ends in an hour: quiet for 2.5 s more, it stays open.
    assert [(c.window, c.ns, c.state, c.final) for c in open_] == [
        (window(0, future), [0], {}, False),
        (window(0, future), [1], fold({}, [0]), False),
    ]
    assert await read_all(broker, out, 1) == [{"window": window(0), "sum": 3, "count": 3}]
    assert await committed(broker, group, topic, 2) == {0: 3, 1: 2}


# --- 6. durable state across a kill -9 (worker processes) --------------------------------------------------------

PIPELINE = f"""
import asyncio, base64, json, os, time
from streamfn import App
from streamfn.connectors.kafka import KafkaSource, KafkaTopic

app = App("durable")
LOG, WORKER = os.environ["LOG"], os.environ["WORKER"]

if os.environ.get("HOLD_COMMIT_AT"):  # test hook: the first commit reaching this offset never happens
    from streamfn.connectors.kafka.reader import KafkaReader

    hold, commit = int(os.environ["HOLD_COMMIT_AT"]), KafkaReader.commit

    async def held(self, offsets):
        if any(offset >= hold for offset in offsets.values()):
            open(os.environ["HELD"], "w").write(repr(offsets))  # the changelog write before it was acknowledged
            await asyncio.Event().wait()
        await commit(self, offsets)

    KafkaReader.commit = held


@app.function(
    source=KafkaSource(topics=[os.environ["TOPIC"]], consumer_group_id=os.environ["GROUP"],
                       session_timeout_ms={SESSION_MS}),
    tumbling_window_in_seconds=60,
    batch_size=1,
    maximum_batching_window_in_seconds=0,
    outputs=[KafkaTopic(os.environ["OUT"])],
)
def handler(event, context):
    state = event["state"]
    ns = [json.loads(base64.b64decode(r["value"]))["n"] for rs in event["records"].values() for r in rs]
    offsets = [r["offset"] for rs in event["records"].values() for r in rs]
    line = {{"worker": WORKER, "window": event["window"], "final": event["isFinalInvokeForWindow"],
             "offsets": offsets, "state": state}}
    time.sleep(float(os.environ.get("SLEEP", "0")))
    with open(LOG, "a") as log:  # one write per invocation: a kill -9 cannot leave half a line
        log.write(json.dumps(line) + "\\n")
    if event["isFinalInvokeForWindow"]:
        return {{"state": state, "outputs": [{{"window": event["window"], **state}}]}}
    return {{"state": {{"sum": state.get("sum", 0) + sum(ns), "count": state.get("count", 0) + len(ns),
                       "seen": state.get("seen", []) + ns}}}}
"""


def logged(path: Path, worker: str) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [line for line in map(json.loads, path.read_text().splitlines()) if line["worker"] == worker]


def invoked(path: Path, worker: str) -> list[int]:
    return [offset for line in logged(path, worker) for offset in line["offsets"]]


async def changelog_floor(servers: str, group: str, topic: str) -> int:
    """How far the state in the changelog reflects partition 0: the `applied` of its last metadata entry (the
    entry the engine writes last at each checkpoint), 0 if there is none. Read by an independent consumer."""
    consumer = AIOKafkaConsumer(bootstrap_servers=servers, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(changelog_topic(group, topic), 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        entries: list[Any] = []
        deadline = time.monotonic() + 10
        while True:  # to the high watermark of a fetch (Tansu's ListOffsets(latest) is wrong after batches)
            entries.extend((await consumer.getmany(tp, timeout_ms=200)).get(tp, []))
            end = consumer.highwater(tp)
            if end is not None and await consumer.position(tp) >= end:
                break
            assert time.monotonic() < deadline, "the changelog could not be read to its end"
    finally:
        await consumer.stop()
    metas = [dict(e.headers)[APPLIED_HEADER] for e in entries if e.key == META_KEY]
    return int(metas[-1]) if metas else 0


def half_step(n: int) -> int:
    """Records 5 s apart: n = 0..11 in window 0, 12 in window 1."""
    return BASE + n * 5_000


async def kill_9_and_restart(broker: str, name: Any, directory: Path, kill: str) -> tuple[int, int]:
    """Window 0's first 6 of 12 records (offsets 0-5) handled by a worker killed with -9 (`kill`: after its commit,
    between its changelog write and its commit, or at a random moment), then the other 6 and a record of window 1
    handled by a new worker. Returns (committed offset, changelog floor) at the kill."""
    topic, group, out, log = name("t"), name("g"), name("out"), directory / "invocations.jsonl"
    directory.mkdir()  # noqa: ASYNC240
    pipeline = write_file(directory, PIPELINE)
    env = {"TOPIC": topic, "GROUP": group, "OUT": str(out), "LOG": str(log)}

    def launch(worker: str, **extra: str) -> subprocess.Popen[str]:
        stderr = (directory / f"{worker}.log").open("w")
        return start_cli(
            "run", str(pipeline), servers=broker, extra_env=env | {"WORKER": worker, **extra}, stderr=stderr
        )

    await create_topic(broker, topic, 1)
    await produce(broker, topic, records(range(6), ts=half_step))
    hold = {"HOLD_COMMIT_AT": "3", "HELD": str(directory / "held")} if kill == "before-commit" else {}
    first = launch("first", SLEEP="0.05" if kill == "random" else "0", **hold)
    try:
        if kill == "random":  # anywhere while the 6 invocations (50 ms each) and their commits are under way
            await wait_for(lambda: bool(invoked(log, "first")), 30, f"{kill}: the first invocation")
            delay = random.uniform(0, 0.4)
            kill = f"random ({delay:.3f} s after the first invocation)"
            await asyncio.sleep(delay)
        else:
            await wait_for(lambda: invoked(log, "first") == list(range(6)), 30, f"{kill}: offsets 0-5 invoked")
        if kill == "after-commit":
            deadline = time.monotonic() + 10
            while await committed(broker, group, topic, 1) != {0: 6}:
                assert time.monotonic() < deadline, "the first worker did not commit offset 6"
        elif kill == "before-commit":
            # The hook holds the first commit reaching offset 3 forever, and Checkpoint.flush writes the changelog
            # (acknowledged, acks=all) before it calls commit: from the "held" file on, the changelog is ahead of
            # the committed offset, and the kill -9 lands exactly between the two.
            await wait_for((directory / "held").exists, 10, "the held commit")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    at_kill = (await committed(broker, group, topic, 1))[0] or 0, await changelog_floor(broker, group, topic)

    second = launch("second")
    try:
        await produce(broker, topic, records(range(6, 13), ts=half_step))  # the rest of window 0, one of window 1
        await wait_for(lambda: any(line["final"] for line in logged(log, "second")), 40, f"{kill}: the final")
        await wait_for(lambda: invoked(log, "second")[-1:] == [12], 10, f"{kill}: offset 12 invoked")
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0

    floor = at_kill[1]
    assert invoked(log, "first") == list(range(len(invoked(log, "first")))), kill
    assert at_kill[0] <= floor <= len(invoked(log, "first")), (kill, at_kill)
    # Every record counted exactly once: the state came back from the changelog, and the new worker invoked only
    # what it did not hold, even where that was before the committed offset's replay.
    assert invoked(log, "second") == list(range(floor, 13)), (kill, at_kill)
    [final] = [line for line in logged(log, "second") if line["final"]]
    whole = {"sum": sum(range(12)), "count": 12, "seen": list(range(12))}
    assert (final["window"], final["state"]) == (window(0), whole), (kill, at_kill)
    assert await read_all(broker, out, 1) == [{"window": window(0), **whole}]
    assert await committed(broker, group, topic, 1) == {0: 13}
    return at_kill


@pytest.mark.slow
async def test_window_state_survives_kill_9_and_each_record_counts_once(broker: str, name: Any, tmp_path: Path) -> None:
    """Three restarts in parallel (each pays the session timeout of the killed member)."""
    kills = ["after-commit", "before-commit", "random"]
    results = await asyncio.gather(*(kill_9_and_restart(broker, name, tmp_path / kill, kill) for kill in kills))
    cases = dict(zip(kills, results, strict=True))
    assert cases["after-commit"] == (6, 6)
    committed_at_kill, floor = cases["before-commit"]
    assert committed_at_kill < floor, cases  # the hard case was reached: state in the log past the commit
