"""Filter criteria through the engine: what reaches the handler, what is committed and counted, batches that fill
with matching records, and invalid patterns refused at start-up. (The pattern language itself: test_filters.py.)"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import Out, committed, create_topic, produce, run_cli, run_worker, source, wait_for

from streamfn import App, Record
from streamfn.engine.worker import Worker

KINDS = ("click", "view", "view", "purchase")


def events(count: int) -> list[Out]:
    """Record i is a KINDS[i % 4] of amount i, on partition i % 2."""
    return [
        Out(json.dumps({"kind": KINDS[i % 4], "amount": i}).encode(), key=b"u%d" % (i % 7), partition=i % 2)
        for i in range(count)
    ]


async def test_only_matching_records_are_invoked_and_the_rest_committed_and_counted(broker: str, name: Any) -> None:
    topic, group = name("t"), name("g")
    await create_topic(broker, topic, 2)
    await produce(broker, topic, events(400))
    seen: list[tuple[str, int]] = []
    app = App("filtered")
    criteria = {
        "Filters": [
            {"Pattern": json.dumps({"value": {"kind": ["purchase"]}})},
            {"Pattern": json.dumps({"value": {"kind": ["click"], "amount": [{"numeric": [">=", 200]}]}})},
        ]
    }

    @app.function(source=source(topic, group), FilterCriteria=criteria, batch_size=10)
    def handler(records: list[Record]) -> None:
        seen.extend((r.value["kind"], r.value["amount"]) for r in records)

    expected = [(KINDS[i % 4], i) for i in range(400) if i % 4 == 3 or (i % 4 == 0 and i >= 200)]
    summaries = await run_worker(app, broker, lambda: len(seen) >= len(expected), settle=1.0)
    assert sorted(seen, key=lambda s: s[1]) == expected  # each matching record once, nothing else
    stats = summaries[0].stats
    assert stats.filtered_out == 400 - len(expected)
    assert stats.invoked == len(expected)
    # the last records of each partition are filtered out, and still committed
    assert await committed(broker, group, topic, 2) == {0: 200, 1: 200}


async def test_batches_fill_with_matching_records_while_the_window_is_open(broker: str, name: Any) -> None:
    topic, group = name("t"), name("g")
    await create_topic(broker, topic, 1)
    await produce(broker, topic, [Out(json.dumps({"kind": KINDS[i % 4]}).encode(), partition=0) for i in range(200)])
    batches: list[list[str]] = []
    app = App("filtered-window")

    @app.function(
        source=source(topic, group),
        filter_criteria={"Filters": [{"Pattern": '{"value": {"kind": ["purchase"]}}'}]},
        batch_size=10,
        maximum_batching_window_in_seconds=5,
    )
    def handler(records: list[Record]) -> None:
        batches.append([r.value["kind"] for r in records])

    await run_worker(app, broker, lambda: sum(map(len, batches)) >= 50)
    # 200 records, 50 purchases: five full batches of 10 purchases each, not twenty batches of 2 or 3
    assert [len(b) for b in batches] == [10] * 5
    assert {kind for b in batches for kind in b} == {"purchase"}


async def test_lambda_style_handlers_get_an_event_of_matching_records_only(broker: str, name: Any) -> None:
    topic, group = name("t"), name("g")
    await create_topic(broker, topic, 1)
    await produce(
        broker, topic, [Out(b"error: disk full", partition=0), Out(b"ok", partition=0), Out(b"x", partition=0)]
    )
    offsets: list[int] = []
    app = App("filtered-lambda")

    @app.function(
        source=source(topic, group),
        FilterCriteria={"Filters": [{"Pattern": '{"value": [{"anything-but": {"prefix": "error"}}]}'}]},
    )
    def handler(event: dict[str, Any], context: Any) -> None:
        offsets.extend(r["offset"] for records in event["records"].values() for r in records)

    await run_worker(app, broker, lambda: len(offsets) >= 2, settle=0.5)
    assert offsets == [1, 2]
    assert await committed(broker, group, topic, 1) == {0: 3}


@pytest.mark.slow
def test_an_invalid_pattern_stops_start_up_with_lambdas_message(tmp_path: Path) -> None:
    pipeline = tmp_path / "pipeline.py"
    pattern = json.dumps({"value": {"amount": [{"numeric": [">", 5, "<", 1]}]}})
    pipeline.write_text(
        "from streamfn import App\nfrom streamfn.connectors.kafka import KafkaSource\napp = App('bad')\n"
        f"@app.function(source=KafkaSource(topics=['t']),\n"
        f"    filter_criteria={{'Filters': [{{'Pattern': {pattern!r}}}]}})\n"
        "def f(records): ...\n"
    )
    result = run_cli("validate", str(pipeline))
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: function 'f': Invalid filter pattern definition.")
    assert "value.amount" in line


async def test_the_commit_never_passes_a_matching_record_still_waiting(broker: str, name: Any) -> None:
    """Records filtered out are committed, but only up to the first matching record not handled yet: the
    matching records of the same fetch must be buffered before the filtered-out ones count as done."""
    topic, group = name("t"), name("g")
    await create_topic(broker, topic, 1)
    await produce(broker, topic, [Out(json.dumps({"kind": kind}).encode(), partition=0) for kind in KINDS])
    release = asyncio.Event()
    app = App("filtered-slow")

    @app.function(
        source=source(topic, group),
        FilterCriteria={"Filters": [{"Pattern": json.dumps({"value": {"kind": ["view"]}})}]},
        batch_size=1,
    )
    async def handler(records: list[Record]) -> None:
        invoked.append(records[0].offset)
        await release.wait()

    invoked: list[int] = []
    worker = Worker(app)
    task = asyncio.create_task(worker.run(handle_signals=False))
    await wait_for(lambda: invoked == [1], 30, "the first matching record invoked")
    await asyncio.sleep(1.5)  # time enough for a commit to happen, if one would
    assert await committed(broker, group, topic, 1) == {0: 1}  # offset 0 filtered out, 1 in flight
    release.set()
    await wait_for(lambda: worker.pollers[0].checkpoint.offsets() == {(topic, 0): 4}, 30, "everything committed")
    worker.stop()
    await task
    assert invoked == [1, 2]
