"""Windowed aggregations (`@app.aggregate`) and exactly-once Table results, against the real broker and SQLite.

Records carry explicit timestamps (or event times in their values), so every window's exact count is known from
what was produced; results are read back from the table with sqlite3 and dead letters from the topic. The process
tests kill -9 workers at arbitrary moments and move partitions between workers mid-window: the final rows must be
exactly the counts computed from the input (no record counted twice, none lost, no window row missing).
"""

from __future__ import annotations

import asyncio
import collections
import random
import signal
import sqlite3
import subprocess
import time
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import (
    SESSION_MS,
    Out,
    committed,
    create_topic,
    launch_pipeline,
    produce,
    read_topic,
    run_worker,
    source,
    wait_for,
)

from streamfn import App, Record
from streamfn.connectors.kafka import KafkaSource, KafkaTopic
from streamfn.connectors.table import Table
from streamfn.errors import ConfigError
from streamfn.state.windows import Hopping, Tumbling

MINUTE = 60_000
BASE = 1_700_000_040_000 - 1_700_000_040_000 % MINUTE
"""A minute boundary, so window starts are BASE + k minutes."""


def minute(k: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime((BASE + k * MINUTE) / 1000))


def rows(db: Path, sql: str = "SELECT user, window_start, count FROM per_minute ORDER BY 2, 1") -> list[Any]:
    if not db.exists():
        return []
    with closing(sqlite3.connect(db)) as connection:
        try:
            return connection.execute(sql).fetchall()
        except sqlite3.OperationalError:  # not created yet
            return []


def click(user: str, ts: int, partition: int, **fields: Any) -> Out:
    return Out(orjson.dumps({"user": user, **fields}), key=user.encode(), partition=partition, timestamp_ms=ts)


def count(accumulator: dict[str, int] | None, record: Record) -> dict[str, int]:
    return {"count": (accumulator or {}).get("count", 0) + 1}


async def test_tumbling_windows_boundaries_and_late_records_to_on_failure(
    broker: str, name: Any, tmp_path: Path
) -> None:
    topic, group, dlq, db = name("clicks"), name("g"), name("dlq"), tmp_path / "w.db"
    await create_topic(broker, topic, 1)
    stamps = [0, 1, MINUTE - 1, MINUTE, MINUTE + 5, 2 * MINUTE - 1, 2 * MINUTE, 3 * MINUTE + 10_000]
    clicks = [click("ann", BASE + ts, 0) for ts in stamps]
    clicks.insert(5, click("ann", BASE + MINUTE - 5000, 0))  # 5 s late, after 1m0.005s: within the lateness
    clicks.append(click("ann", BASE + MINUTE + 1, 0, note="late"))  # after 3m10s: window 1 closed at 2m + 10 s
    clicks.append(click("bob", BASE + 3 * MINUTE + 5000, 0))
    await produce(broker, topic, clicks)
    app = App("agg")

    @app.aggregate(
        source=source(topic, group, value_format="json"),
        key="user",
        window=Tumbling(60),
        allowed_lateness=10,
        outputs=[Table(f"sqlite:///{db}", "per_minute", key=("user", "window_start"))],
        on_failure=KafkaTopic(dlq),
        window_idle_seconds=1,
    )
    def per_minute(accumulator: dict[str, int] | None, record: Record) -> dict[str, int]:
        return count(accumulator, record)

    [summary] = await run_worker(app, broker, lambda: len(rows(db)) == 5, timeout=60)
    assert rows(db) == [
        ("ann", minute(0), 4),  # 0, 1, 59.999 s and the one 5 s late
        ("ann", minute(1), 3),  # 60, 60.005 and 119.999 s
        ("ann", minute(2), 1),
        ("ann", minute(3), 1),  # window 3 is closed by the idle check: nothing came after it
        ("bob", minute(3), 1),
    ]
    assert rows(db, "SELECT window_end FROM per_minute WHERE user = 'bob'") == [(minute(4),)]
    [dead] = await read_topic(broker, dlq, 1)
    letter = orjson.loads(dead.value)
    assert letter["requestContext"]["condition"] == "LateRecord"
    assert letter["errorType"] == "LateRecord"
    assert dict(dead.headers)["streamfn.source.offset"] == b"9"
    assert summary.stats.late == 1 and summary.stats.dead_lettered == 1 and summary.stats.windows_closed == 5
    assert await committed(broker, group, topic, 1) == {0: 11}


async def test_hopping_windows_key_function_event_time_field_and_counted_late_records(
    broker: str, name: Any, tmp_path: Path
) -> None:
    topic, group, dlq, db = name("clicks"), name("g"), name("dlq"), tmp_path / "h.db"
    await create_topic(broker, topic, 1)
    # Event time in the value (ISO 8601), record timestamps all equal: the field decides the windows.
    times = [10, 40, 70, 100, 130, 400]  # seconds after BASE
    events = [Out(orjson.dumps({"u": "x", "at": _iso(BASE + s * 1000)}), b"x", 0) for s in times]
    events.append(Out(orjson.dumps({"u": "x", "at": _iso(BASE + 15_000)}), b"x", 0))  # late: counted only
    events.append(Out(b"not json", b"x", 0))  # a poison record: dead-lettered, no window changes
    await produce(broker, topic, events)
    app = App("agg")

    @app.aggregate(
        source=source(topic, group, value_format="json"),
        key=lambda record: record.value["u"].upper(),
        window=Hopping(120, 60),
        timestamp="at",
        late_records="count",
        outputs=[Table(f"sqlite:///{db}", "hops", key=("key", "window_start"))],
        on_failure=KafkaTopic(dlq),  # without one, the poison record would hold the partition
        window_idle_seconds=1,
    )
    def hops(accumulator: int | None, record: Record) -> int:
        return (accumulator or 0) + 1

    sql = "SELECT key, window_start, window_end, value FROM hops ORDER BY 2"
    [summary] = await run_worker(app, broker, lambda: len(rows(db, sql)) == 6, timeout=60)
    # A 120 s window every 60 s: each event is in two windows.
    expected = collections.Counter(start for s in times for start in (s // 60 - 1, s // 60))
    assert rows(db, sql) == [("X", minute(k), minute(k + 2), n) for k, n in sorted(expected.items())]
    assert summary.stats.late == 1 and summary.stats.dead_lettered == 1 and summary.stats.dropped == 0


async def test_a_fold_that_raises_sends_its_record_to_on_failure_and_the_others_still_count(
    broker: str, name: Any, tmp_path: Path
) -> None:
    topic, group, dlq, db = name("clicks"), name("g"), name("dlq"), tmp_path / "f.db"
    await create_topic(broker, topic, 1)
    await produce(broker, topic, [click("ann", BASE + i * 1000, 0, n=i) for i in range(10)])
    app = App("agg")

    @app.aggregate(
        source=source(topic, group, value_format="json"),
        key="user",
        window=Tumbling(60),
        outputs=[Table(f"sqlite:///{db}", "per_minute", key=("user", "window_start"))],
        on_failure=KafkaTopic(dlq),
        window_idle_seconds=1,
    )
    def picky(accumulator: dict[str, int] | None, record: Record) -> dict[str, int]:
        if record.value["n"] == 7:
            raise ValueError("seven is not counted")
        return count(accumulator, record)

    found = await asyncio.gather(
        run_worker(app, broker, lambda: len(rows(db)) == 1, timeout=60), read_topic(broker, dlq, 1, timeout=30)
    )
    assert rows(db) == [("ann", minute(0), 9)]
    [dead] = found[1]
    letter = orjson.loads(dead.value)
    assert letter["requestContext"]["condition"] == "AggregationError"
    assert letter["errorMessage"] == "ValueError: seven is not counted"
    assert dict(dead.headers)["streamfn.source.offset"] == b"7"


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def never_committing(kafka: KafkaSource) -> KafkaSource:
    """`kafka` whose readers' commits all fail: a worker that dies right after its sinks and changelog wrote."""
    reader = kafka.reader

    def make(**kw: Any) -> Any:
        made = reader(**kw)

        async def crashed(offsets: Any) -> None:
            raise RuntimeError("the worker died before committing")

        made.commit = crashed  # type: ignore[method-assign]
        return made

    object.__setattr__(kafka, "reader", make)
    return kafka


async def test_records_replayed_after_the_state_was_written_but_not_committed_count_once(
    broker: str, name: Any, tmp_path: Path
) -> None:
    """The narrow moment a kill -9 rarely hits: the changelog holds the state, the offsets were not committed.

    The first worker's commits all fail, as if it died right after each changelog write; the second worker starts
    from the group's committed offset (the beginning) and must not fold again what the state already holds."""
    topic, group, db = name("clicks"), name("g"), tmp_path / "r.db"
    await create_topic(broker, topic, 1)
    clicks = [click(("ann", "bob")[i % 2], BASE + i * 1500, 0) for i in range(120)]  # 3 minutes
    await produce(broker, topic, clicks)

    def declare(src: Any, idle: float) -> App:
        app = App("agg")
        app.aggregate(
            source=src,
            key="user",
            window=Tumbling(60),
            outputs=[Table(f"sqlite:///{db}", "per_minute", key=("user", "window_start"))],
            window_idle_seconds=idle,
            batch_size=7,
        )(count)
        return app

    crashing = never_committing(source(topic, group, value_format="json"))
    await run_worker(declare(crashing, 120), broker, lambda: len(rows(db)) == 4, settle=1.5)
    assert rows(db) == expected(clicks)[:4]  # windows 0 and 1 closed; window 2 open, in the changelog only
    assert await committed(broker, group, topic, 1) == {0: 0}

    await run_worker(declare(source(topic, group, value_format="json"), 1), broker, lambda: len(rows(db)) == 6)
    assert rows(db) == expected(clicks)  # window 2: 40 clicks, each once
    assert await committed(broker, group, topic, 1) == {0: 120}


# --- processes: kill -9 and rebalances mid-window ------------------------------------------------------------------

PIPELINE = f"""
import os, time
from streamfn import App
from streamfn.connectors.kafka import KafkaSource
from streamfn.connectors.table import Table
from streamfn.state.windows import Tumbling

app = App("clicks")
SLEEP = float(os.environ.get("SLEEP", "0"))

@app.aggregate(
    source=KafkaSource(topics=[os.environ["TOPIC"]], consumer_group_id=os.environ["GROUP"], value_format="json",
                       session_timeout_ms={SESSION_MS}),
    key="user",
    window=Tumbling(60),
    outputs=[Table("sqlite:///" + os.environ["DB"], "per_minute", key=("user", "window_start"))],
    batch_size=20,
    window_idle_seconds=float(os.environ.get("IDLE", "120")),
)
def per_minute(accumulator, record):
    if os.environ.get("STARTED"):
        open(os.environ["STARTED"], "a").write("started\\n")
    time.sleep(SLEEP)  # slow enough to be killed mid-stream
    return {{"count": (accumulator or {{}}).get("count", 0) + 1}}
"""

USERS = [f"u{i}" for i in range(8)]


def clickstream(count: int, minutes: int, start: int = 0) -> list[Out]:
    """`count` clicks spread over `minutes` of event time in order, users keyed to a partition each (4)."""
    step = minutes * MINUTE // count
    return [click(USERS[i % 8], BASE + i * step, i % 8 % 4) for i in range(start, start + count)]


def expected(clicks: list[Out]) -> list[tuple[str, str, int]]:
    counted = collections.Counter(
        (orjson.loads(c.value or b"")["user"], minute(((c.timestamp_ms or 0) - BASE) // MINUTE)) for c in clicks
    )
    return sorted(((user, start, n) for (user, start), n in counted.items()), key=lambda r: (r[1], r[0]))


def launch(tmp_path: Path, broker: str, topic: str, group: str, db: Path, **env: str) -> subprocess.Popen[str]:
    return launch_pipeline(tmp_path, PIPELINE, broker, TOPIC=topic, GROUP=group, DB=str(db), **env)


def worker_logs(directory: Path) -> set[Path]:
    """The logs of the `streamfn run` workers launched into `directory` (one each: launch_pipeline)."""
    return set(directory.glob("worker-*.log"))


@pytest.mark.slow
async def test_kill_9_at_random_moments_mid_window_keeps_every_count_exact(
    broker: str, name: Any, tmp_path: Path
) -> None:
    topic, group, db = name("clicks"), name("g"), tmp_path / "clicks.db"
    await create_topic(broker, topic, 4)
    clicks = clickstream(2400, 6)  # 6 windows of 8 users; the last one closes when the worker is idle
    await produce(broker, topic, clicks)
    rng = random.Random(6)
    for _ in range(2):
        worker = launch(tmp_path, broker, topic, group, db, SLEEP="0.004")
        await asyncio.sleep(SESSION_MS / 1000 + rng.uniform(1.5, 5))  # joined, then somewhere mid-stream
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    assert rows(db) != expected(clicks)  # the kills came before the end
    last = launch(tmp_path, broker, topic, group, db, IDLE="1")
    await wait_for(lambda: len(rows(db)) == 48, 120, "every window's row")
    await asyncio.sleep(1)  # a double count would rewrite a row by now
    last.send_signal(signal.SIGTERM)
    assert last.wait(30) == 0
    assert rows(db) == expected(clicks)
    assert await committed(broker, group, topic) == {p: 600 for p in range(4)}


@pytest.mark.slow
async def test_a_rebalance_mid_window_between_two_workers_keeps_every_count_exact(
    broker: str, name: Any, tmp_path: Path
) -> None:
    topic, group, db = name("clicks"), name("g"), tmp_path / "clicks.db"
    await create_topic(broker, topic, 4)
    first, second = clickstream(800, 4), clickstream(800, 4, start=800)  # the second goes on where the first ends
    await produce(broker, topic, first)
    a = launch(tmp_path, broker, topic, group, db, STARTED=str(tmp_path / "a"))
    await wait_for(lambda: (tmp_path / "a").exists(), 30, "the first worker to fold records")
    await wait_for(lambda: len(rows(db)) >= 8, 30, "the first windows to close")
    logs = worker_logs(tmp_path)
    b = launch(tmp_path, broker, topic, group, db, STARTED=str(tmp_path / "b"))
    (b_log,) = worker_logs(tmp_path) - logs
    # Only once b holds partitions: else a may fold every record before b has joined (a busy machine starts b slowly)
    await wait_for(lambda: "partitions assigned" in b_log.read_text(), 40, "the second worker to join")
    await produce(broker, topic, second)  # the open windows go on in whichever worker owns them now
    await wait_for(lambda: (tmp_path / "b").exists(), 40, "the second worker to take partitions over")
    a.send_signal(signal.SIGTERM)  # and back: b restores a's partitions from the changelog
    assert a.wait(40) == 0
    await wait_for(lambda: sum(r[2] for r in rows(db)) >= 1400, 60, "all closed windows")
    b.send_signal(signal.SIGTERM)
    assert b.wait(40) == 0
    everything = expected(first + second)
    last_window = max(r[1] for r in everything)
    assert rows(db) == [r for r in everything if r[1] != last_window]  # the last is open: no idle check here


# --- exactly-once Table results of a plain function ----------------------------------------------------------------


async def wait_for_commits(broker: str, group: str, topic: str, wanted: dict[int, int]) -> None:
    while await committed(broker, group, topic, len(wanted)) != wanted:
        await asyncio.sleep(0.2)


@pytest.mark.parametrize(("guarantee", "copies"), [("exactly_once", 1), ("at_least_once", 2)])
async def test_exactly_once_resumes_from_the_offsets_stored_with_the_rows_when_the_commit_was_lost(
    broker: str, name: Any, tmp_path: Path, guarantee: str, copies: int
) -> None:
    topic, group, db = name("t"), name("g"), tmp_path / "events.db"
    await create_topic(broker, topic, 2)
    await produce(broker, topic, [Out(b'{"n": %d}' % i, partition=i % 2) for i in range(100)])
    sql = "SELECT partition, offset FROM events"

    def declare(src: KafkaSource) -> App:
        app = App("eo")

        @app.function(
            source=src,
            outputs=[Table(f"sqlite:///{db}", "events", key="id")],
            processing_guarantee=guarantee,
            batch_size=10,
        )
        def stamp(records: list[Record]) -> list[dict[str, Any]]:
            # Not idempotent: a replayed batch adds rows with new ids.
            return [{"id": str(uuid.uuid4()), "partition": r.partition, "offset": r.offset} for r in records]

        return app

    await run_worker(declare(never_committing(source(topic, group))), broker, lambda: len(rows(db, sql)) == 100)
    assert await committed(broker, group, topic, 2) == {0: 0, 1: 0}
    watching = asyncio.create_task(wait_for_commits(broker, group, topic, {0: 50, 1: 50}))
    await run_worker(
        declare(source(topic, group)), broker, lambda: watching.done() and len(rows(db, sql)) >= 100 * copies, settle=1
    )
    assert sorted(rows(db, sql)) == sorted((i % 2, i // 2) for i in range(100) for _ in range(copies))


EXACTLY_ONCE = f"""
import os, time, uuid
from streamfn import App
from streamfn.connectors.kafka import KafkaSource
from streamfn.connectors.table import Table

app = App("eo")

@app.function(
    source=KafkaSource(topics=[os.environ["TOPIC"]], consumer_group_id=os.environ["GROUP"], value_format="json",
                       session_timeout_ms={SESSION_MS}),
    outputs=[Table("sqlite:///" + os.environ["DB"], "events", key="id")],
    processing_guarantee=os.environ["GUARANTEE"],
    batch_size=10,
)
def stamp(records):
    time.sleep(0.3)
    # Not idempotent: a replayed batch would add new rows with new ids.
    return [{{"id": str(uuid.uuid4()), "partition": r.partition, "offset": r.offset}} for r in records]
"""


@pytest.mark.slow
@pytest.mark.parametrize("guarantee", ["exactly_once"])
async def test_exactly_once_table_rows_under_kill_9_at_random_moments(
    broker: str, name: Any, tmp_path: Path, guarantee: str
) -> None:
    topic, group, db = name("t"), name("g"), tmp_path / "events.db"
    await create_topic(broker, topic, 4)
    await produce(broker, topic, [Out(b'{"n": %d}' % i, partition=i % 4) for i in range(1200)])
    env = {"TOPIC": topic, "GROUP": group, "DB": str(db), "GUARANTEE": guarantee}
    sql = "SELECT partition, offset FROM events"
    rng = random.Random(7)

    def start() -> subprocess.Popen[str]:
        return launch_pipeline(tmp_path, EXACTLY_ONCE, broker, **env)

    for _ in range(2):
        worker = start()
        await asyncio.sleep(SESSION_MS / 1000 + rng.uniform(1, 3))
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    assert len(rows(db, sql)) < 1200
    worker = start()
    await wait_for(lambda: len(rows(db, sql)) >= 1200, 90, "a row per record")
    await asyncio.sleep(1)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    stored = rows(db, sql)
    assert sorted(stored) == sorted((i % 4, i // 4) for i in range(1200))  # each record once: no replayed batch
    assert rows(db, "SELECT topic, partition, next_offset FROM streamfn_offsets ORDER BY 2") == [
        (topic, p, 300) for p in range(4)
    ]


# --- configuration ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("declare", "message"),
    [
        (
            lambda app, src: app.aggregate(source=src, key="u", window=Tumbling(60), maximum_retry_attempts=2),
            "function 'f': parameter 'maximum_retry_attempts' does not apply to an aggregation; allowed: batch_size,",
        ),
        (
            lambda app, src: app.aggregate(source=src, key="u", window=60),
            "function 'f': window=60 is invalid: allowed: Tumbling(seconds) or Hopping(size, step)",
        ),
        (
            lambda app, src: app.aggregate(source=src, key="u", window=Tumbling(60), late_records="drop"),
            "function 'f': late_records='drop' is invalid: allowed: 'on_failure' or 'count'",
        ),
        (
            lambda app, src: app.aggregate(source=src, key="u", window=Tumbling(60), late_records="on_failure"),
            "function 'f': late_records='on_failure' needs an on_failure destination (a late record is late again "
            "every round: without one it would hold its partition for ever); allowed: on_failure=... or "
            "late_records='count'",
        ),
        (
            lambda app, src: app.aggregate(source=src, key="u", window=Hopping(60, 45)),
            "Hopping: size=60 must be a whole number of steps (step=45)",
        ),
        (
            lambda app, src: app.function(source=src, tumbling_window_in_seconds=901),
            "function 'f': tumbling_window_in_seconds=901 is invalid: allowed: >= 0 and <= 900",
        ),
        (
            lambda app, src: app.function(source=src, tumbling_window_in_seconds=60, parallelization_factor=2),
            "function 'f': parallelization_factor=2 is invalid with tumbling_window_in_seconds: allowed: 1",
        ),
        (
            lambda app, src: app.function(source=src, processing_guarantee="exactly_once", outputs=[KafkaTopic("out")]),
            "function 'f': processing_guarantee='exactly_once' is invalid with output KafkaTopic",
        ),
    ],
)
def test_configuration_errors_name_the_function_the_field_and_what_is_allowed(declare: Any, message: str) -> None:
    app = App("bad")
    with pytest.raises(ConfigError) as raised:

        @declare(app, source("t", "g"))
        def f(event: Any, context: Any) -> Any:
            return event

    assert str(raised.value).startswith(message), str(raised.value)
