"""Windows at a reshard, on the in-memory source: when a shard ends (split, merge), what its state holds open closes
before its end is committed, and the children start their own windows from nothing, as Lambda documents for
tumbling windows ("When a shard ends, Lambda considers the current window to be closed, and any child shards will
start their own window in a fresh state").

Records carry timestamps in one minute long past (2023), so every record of the test is in the same 60 s window:
what separates the parent's window from the children's is the reshard alone.
"""

from __future__ import annotations

import base64
import json
import threading
from typing import Any

from conftest import wait_for
from test_memory_source import GROUP, Running

from streamfn import App, Function, Record
from streamfn.connectors.memory import MemorySource, MemoryStream
from streamfn.record import Partition
from streamfn.state.windows import Tumbling

MINUTE = 60_000
BASE = 1_700_000_000_000 - 1_700_000_000_000 % MINUTE  # 2023-11-14T22:13:00Z
WINDOW = {"start": "2023-11-14T22:13:00Z", "end": "2023-11-14T22:14:00Z"}


def put(stream: MemoryStream, shard: int, numbers: list[int]) -> int:
    """{"n": i} for each number, i seconds into the minute; the last position."""
    return [stream.put(shard, b'{"n": %d}' % n, key=b"k", timestamp=BASE + n * 1000) for n in numbers][-1]


def numbers(event: dict[str, Any]) -> list[int]:
    return [json.loads(base64.b64decode(r["kinesis"]["data"]))["n"] for r in event["Records"]]


async def test_a_split_runs_the_parents_final_invocation_before_any_child_record_and_children_start_fresh() -> None:
    stream = MemoryStream("s")
    ends = {Partition("s", 0): put(stream, 0, [0, 1, 2, 3, 4])}
    left, right = stream.split(0)
    ends |= {left: put(stream, 1, [10, 11]), right: put(stream, 2, [20, 21, 22])}
    calls: list[tuple[str, bool, dict[str, Any], list[int]]] = []
    lock = threading.Lock()
    app = App("mem")

    @app.function(
        source=MemorySource(stream, group_id=GROUP),
        tumbling_window_in_seconds=60,
        window_idle_seconds=1,  # the children's windows close once they are quiet
        batch_size=2,
    )
    def windowed(event: dict[str, Any], context: Any) -> dict[str, Any]:
        assert event["window"] == WINDOW
        assert event["eventSourceARN"] == "arn:aws:kinesis:us-east-1:000000000000:stream/s"  # as Lambda's window event
        with lock:
            calls.append((event["shardId"], event["isFinalInvokeForWindow"], event["state"], numbers(event)))
        return {"state": {"seen": [*event["state"].get("seen", []), *numbers(event)]}}

    running = Running(app)
    await wait_for(lambda: sum(final for _, final, _, _ in calls) == 3, 20, "three final invocations")
    await wait_for(lambda: stream.committed(GROUP) == ends, 10, "every shard committed to its end")
    await running.stop()
    parent, children = calls[:4], calls[4:]
    assert parent == [
        ("shardId-000000000000", False, {}, [0, 1]),
        ("shardId-000000000000", False, {"seen": [0, 1]}, [2, 3]),
        ("shardId-000000000000", False, {"seen": [0, 1, 2, 3]}, [4]),
        ("shardId-000000000000", True, {"seen": [0, 1, 2, 3, 4]}, []),  # the shard's end closed it: final first
    ]
    by_child = [[c[1:] for c in children if c[0] == f"shardId-00000000000{shard}"] for shard in (1, 2)]
    assert len(children) == sum(map(len, by_child))
    assert by_child == [
        [(False, {}, [10, 11]), (True, {"seen": [10, 11]}, [])],
        [(False, {}, [20, 21]), (False, {"seen": [20, 21]}, [22]), (True, {"seen": [20, 21, 22]}, [])],
    ]
    assert stream.finished(GROUP) == {Partition("s", 0)}
    parent_state = {entry.key: entry for entry in stream.group(GROUP).changelog[Partition("s", 0)]}
    assert parent_state[b"\x00meta"].value == b"{}"  # the parent's window is closed in its durable state too


async def test_a_merge_writes_each_parents_window_results_before_the_child_folds_a_record() -> None:
    stream = MemoryStream("s", shards=2)
    ends = {Partition("s", 0): put(stream, 0, [0, 1, 2]), Partition("s", 1): put(stream, 1, [10, 11])}
    child = stream.merge(0, 1)
    ends[child] = put(stream, 2, [20, 21, 22, 23])
    happened: list[Any] = []
    app = App("mem")

    @app.function()
    def results(records: list[Record]) -> None:
        happened.extend(("result", r.value["count"]) for r in records)

    def count(accumulator: dict[str, int] | None, record: Record) -> dict[str, int]:
        happened.append(("fold", record.value["n"]))
        return {"count": (accumulator or {}).get("count", 0) + 1}

    app.aggregate(
        source=MemorySource(stream, group_id=GROUP),
        window=Tumbling(60),
        key=lambda record: "all",
        window_idle_seconds=3600,  # only the reshard closes the parents' windows: the clock never does here
        outputs=[Function(results)],
    )(count)

    running = Running(app)
    await wait_for(lambda: stream.committed(GROUP) == ends, 20, "every shard committed to its end")
    await running.stop()
    first_child_fold = happened.index(("fold", 20))
    parents, after = happened[:first_child_fold], happened[first_child_fold:]
    assert sorted(parents, key=str) == sorted(
        [("fold", 0), ("fold", 1), ("fold", 2), ("result", 3), ("fold", 10), ("fold", 11), ("result", 2)], key=str
    )
    for shard_numbers, total in (([0, 1, 2], 3), ([10, 11], 2)):  # each parent's result after its own records
        assert max(parents.index(("fold", n)) for n in shard_numbers) < parents.index(("result", total))
    assert after == [("fold", 20), ("fold", 21), ("fold", 22), ("fold", 23)]  # the child's window: still open
    child_state = {entry.key: entry.value for entry in stream.group(GROUP).changelog[child]}
    assert child_state[b'["all",%d]' % BASE] == b'{"count":4}'  # counted from nothing: 4, not 9
