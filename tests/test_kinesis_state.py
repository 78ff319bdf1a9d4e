"""State on Kinesis (moto): the DynamoDB changelog (connectors/shards/changelog.py) on its own, then tumbling windows
and aggregations kept in it across a graceful stop and a kill -9.

Windows are 900 s (Lambda's largest) by arrival time, so a test's records share one window unless the test runs
across a quarter-hour boundary: assertions count every record once over all windows (finished ones and the open
one), which holds either way.
"""

from __future__ import annotations

import base64
import json
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import orjson
import pytest
from conftest import launch_pipeline, run_worker, wait_for
from test_kinesis import REGION, GetRecords, Stream, intercept_get_records, iterator_shard, last_sequences

from streamfn import App, Record
from streamfn.connectors.shards import AwsAccess
from streamfn.connectors.shards.changelog import DynamoChangelog, StateTooLarge, state_table_name
from streamfn.record import Partition
from streamfn.state.changelog import ChangelogEntry
from streamfn.state.store import META_KEY
from streamfn.state.windows import Tumbling

SEQUENCE = 49_590_338_271_490_256_608_559_692_538_361_571_095_921_575_989_136_588_898  # 56 digits, as AWS's


@pytest.fixture
def stream(aws: str) -> Iterator[Callable[..., Stream]]:
    made: list[Stream] = []

    def make(shards: int = 1) -> Stream:
        made.append(Stream(aws, shards))
        return made[-1]

    yield make
    for s in made:
        s.kinesis.delete_stream(StreamName=s.name)


def items(endpoint: str, table: str) -> dict[str, dict[bytes, dict[str, Any]]]:
    """The state table's items: per partition id, per state key, the value (JSON) and `applied`."""
    client = boto3.client("dynamodb", endpoint_url=endpoint, region_name=REGION)
    found: dict[str, dict[bytes, dict[str, Any]]] = {}
    for page in client.get_paginator("scan").paginate(TableName=table, ConsistentRead=True):
        for item in page["Items"]:
            value = item.get("stateValue")
            found.setdefault(item["partitionId"]["S"], {})[item["stateKey"]["B"]] = {
                "value": None if value is None else orjson.loads(value["B"]),
                "applied": item["applied"]["S"],
            }
    return found


async def started(endpoint: str, table: str) -> DynamoChangelog:
    changelog = DynamoChangelog(table, AwsAccess(endpoint_url=endpoint, region_name=REGION))
    await changelog.start()
    return changelog


# --- the changelog itself ----------------------------------------------------------------------------------------


async def test_entries_restore_per_partition_with_56_digit_applied_values_and_the_metadata_written_last(
    aws: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = f"state-{id(monkeypatch):x}"
    changelog = await started(aws, table)
    shard = Partition("clicks", "shardId-000000000001")
    other = Partition("clicks", "shardId-000000000002")
    entries = [ChangelogEntry(b"key-%03d" % n, b'{"n": %d}' % n, SEQUENCE + n) for n in range(60)]
    entries.append(ChangelogEntry(META_KEY, b'{"window": 1}', SEQUENCE + 60))
    calls: list[list[bytes]] = []
    real = changelog._client.batch_write_item  # the requests as DynamoDB gets them

    async def recording(**arguments: Any) -> Any:
        calls.append([r["PutRequest"]["Item"]["stateKey"]["B"] for r in arguments["RequestItems"][table]])
        return await real(**arguments)

    monkeypatch.setattr(changelog._client, "batch_write_item", recording)
    try:
        await changelog.write(shard, entries)
        await changelog.write(other, [ChangelogEntry(META_KEY, b"{}", 7)])
        restored = await changelog.restore(shard)
        assert sorted(restored) == sorted(entries)  # every entry, applied beyond DynamoDB's 38-digit numbers intact
        assert await changelog.restore(other) == [ChangelogEntry(META_KEY, b"{}", 7)]
        assert await changelog.restore(Partition("clicks", "shardId-000000000003")) == []
        assert [len(c) for c in calls] == [25, 25, 10, 1, 1]  # batches of 25, then the metadata entry alone
        assert calls[3] == [META_KEY]
        assert items(aws, table)["clicks/shardId-000000000001"][META_KEY]["applied"] == str(SEQUENCE + 60)
    finally:
        await changelog.stop()


async def test_a_tombstone_keeps_its_applied_until_the_metadata_covers_it(
    aws: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deleting a key (a closed window) leaves an item without a value until the metadata entry written after it
    covers it: a write cut short before its metadata entry still tells a replay that the deletion reflects those
    records (the replay rule of streamfn.state.store); a complete write deletes the item."""
    table = f"state-tomb-{id(aws):x}"
    changelog = await started(aws, table)
    shard = Partition("s", "shardId-000000000000")
    owner = "s/shardId-000000000000"
    try:
        await changelog.write(shard, [ChangelogEntry(b"w", b"1", 5), ChangelogEntry(META_KEY, b"{}", 5)])
        real = changelog._batch

        async def cut_before_metadata(requests: list[dict[str, Any]]) -> None:
            if any(r.get("PutRequest", {}).get("Item", {}).get("stateKey", {}).get("B") == META_KEY for r in requests):
                raise ConnectionError("killed before the metadata entry")
            await real(requests)

        monkeypatch.setattr(changelog, "_batch", cut_before_metadata)
        with pytest.raises(ConnectionError):
            await changelog.write(shard, [ChangelogEntry(b"w", None, 9), ChangelogEntry(META_KEY, b"{}", 9)])
        assert items(aws, table)[owner][b"w"] == {"value": None, "applied": "9"}
        assert sorted(await changelog.restore(shard)) == [
            ChangelogEntry(META_KEY, b"{}", 5),
            ChangelogEntry(b"w", None, 9),
        ]
        monkeypatch.undo()
        await changelog.write(shard, [ChangelogEntry(b"w", None, 9), ChangelogEntry(META_KEY, b"{}", 9)])
        assert set(items(aws, table)[owner]) == {META_KEY}
    finally:
        await changelog.stop()


async def test_an_item_over_400_kb_fails_the_write_before_anything_is_written(aws: str) -> None:
    table = f"state-big-{id(aws):x}"
    changelog = await started(aws, table)
    shard = Partition("s", "shardId-000000000000")
    try:
        big = ChangelogEntry(META_KEY, b"x" * (400 * 1024), 3)
        with pytest.raises(StateTooLarge, match=r"over DynamoDB's 409600-byte limit; the state is not written"):
            await changelog.write(shard, [ChangelogEntry(b"small", b"1", 3), big])
        with pytest.raises(StateTooLarge, match=r"a state key of 1025 bytes"):
            await changelog.write(shard, [ChangelogEntry(b"k" * 1025, b"1", 3), ChangelogEntry(META_KEY, b"{}", 3)])
        assert await changelog.restore(shard) == []
    finally:
        await changelog.stop()


def test_the_state_table_is_named_after_the_lease_table() -> None:
    assert state_table_name("streamfn-app-fn") == "streamfn-app-fn-state"
    assert len(state_table_name("x" * 255)) == 255


# --- tumbling windows and aggregations on Kinesis ----------------------------------------------------------------


def seen_once(states: list[dict[str, Any]]) -> list[int]:
    """The numbers the windows' states hold, all windows together."""
    return sorted(n for state in states for n in state.get("seen", []))


async def test_a_tumbling_window_goes_on_from_the_dynamodb_state_after_a_graceful_stop(
    stream: Callable[..., Stream], aws: str
) -> None:
    s = stream()
    first = s.put([{"n": n} for n in range(5)])
    finals: list[dict[str, Any]] = []
    got: list[dict[str, Any]] = []
    app = App("kin")

    @app.function(source=s.source(), tumbling_window_in_seconds=900, window_idle_seconds=3600, batch_size=2)
    def windowed(event: dict[str, Any], context: Any) -> dict[str, Any]:
        got.append(event["state"])
        if event["isFinalInvokeForWindow"]:
            finals.append(event["state"])
            return {"state": {}}
        ns = [orjson.loads(base64.b64decode(r["kinesis"]["data"]))["n"] for r in event["Records"]]
        return {"state": {"seen": [*event["state"].get("seen", []), *ns]}}

    await run_worker(app, None, lambda: s.checkpoints() == last_sequences(first), timeout=30)
    [shard] = s.shards
    owner = f"{s.name}/{shard}"
    state = items(aws, state_table_name(s.table))
    assert list(state) == [owner] and list(state[owner]) == [META_KEY]  # a Lambda window's state: the metadata item
    assert state[owner][META_KEY]["applied"] == last_sequences(first)[shard]
    open_state = state[owner][META_KEY]["value"].get("state", {})
    assert seen_once([*finals, open_state]) == list(range(5))

    second = s.put([{"n": n} for n in range(5, 9)])
    calls_before = len(got)
    await run_worker(app, None, lambda: s.checkpoints() == last_sequences(second), timeout=30)
    if not finals:  # one window all along: the restarted worker got the state the first one left
        assert got[calls_before] == open_state
    open_state = items(aws, state_table_name(s.table))[owner][META_KEY]["value"].get("state", {})
    assert seen_once([*finals, open_state]) == list(range(9))


async def test_a_tumbling_window_survives_kill_9_and_counts_every_record_once(
    stream: Callable[..., Stream], aws: str, tmp_path: Path
) -> None:
    s = stream()
    placed = s.put([{"n": n} for n in range(30)])
    log = tmp_path / "calls.jsonl"
    body = f"""
import base64, json, time
from streamfn import App
from streamfn.connectors.kinesis import KinesisSource

app = App("kin")

@app.function(
    source=KinesisSource(stream={s.name!r}, endpoint_url={aws!r}, region_name={REGION!r}, lease_table={s.table!r},
                         lease_duration_seconds=2),
    tumbling_window_in_seconds=900, window_idle_seconds=3600, batch_size=2,
)
def windowed(event, context):
    ns = [json.loads(base64.b64decode(r["kinesis"]["data"]))["n"] for r in event["Records"]]
    with open({str(log)!r}, "a") as f:
        f.write(json.dumps({{"final": event["isFinalInvokeForWindow"], "state": event["state"], "ns": ns}}) + "\\n")
    time.sleep(0.1)
    if event["isFinalInvokeForWindow"]:
        return {{"state": {{}}}}
    return {{"state": {{"seen": [*event["state"].get("seen", []), *ns]}}}}
"""
    worker = launch_pipeline(tmp_path, body, "")
    try:
        await wait_for(lambda: log.exists() and len(log.read_text().splitlines()) >= 4, 30, "four invocations")
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    finally:
        if worker.poll() is None:
            worker.kill()
    killed = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(killed) < 16  # killed mid-window, records left
    [shard] = s.shards
    owner = f"{s.name}/{shard}"

    finals: list[dict[str, Any]] = [c["state"] for c in killed if c["final"]]
    left = items(aws, state_table_name(s.table)).get(owner, {}).get(META_KEY)  # what the killed worker committed
    first_states: list[dict[str, Any]] = []
    app = App("kin")

    @app.function(
        source=s.source(lease_duration_seconds=2),
        tumbling_window_in_seconds=900,
        window_idle_seconds=3600,
        batch_size=2,
    )
    def windowed(event: dict[str, Any], context: Any) -> dict[str, Any]:
        first_states.append(event["state"])
        if event["isFinalInvokeForWindow"]:
            finals.append(event["state"])
            return {"state": {}}
        ns = [orjson.loads(base64.b64decode(r["kinesis"]["data"]))["n"] for r in event["Records"]]
        return {"state": {"seen": [*event["state"].get("seen", []), *ns]}}

    await run_worker(app, None, lambda: s.checkpoints() == last_sequences(placed), timeout=40)
    if left is not None and not finals:  # one window all along: the restart went on from the committed state
        assert left["value"]["state"]["seen"] and first_states[0] == left["value"]["state"]
    open_state = items(aws, state_table_name(s.table))[owner][META_KEY]["value"].get("state", {})
    assert seen_once([*finals, open_state]) == list(range(30))  # every record once, whatever the kill cut


async def test_an_aggregation_on_kinesis_keeps_its_windows_per_shard_in_the_state_table(
    stream: Callable[..., Stream], aws: str
) -> None:
    s = stream(shards=2)
    placed = s.put([{"n": n, "user": f"u{n % 4}"} for n in range(24)], key=lambda v: v["user"])
    app = App("kin")

    @app.aggregate(source=s.source(), window=Tumbling(900), key="user", window_idle_seconds=3600)
    def count(accumulator: dict[str, int] | None, record: Record) -> dict[str, int]:
        return {"count": (accumulator or {}).get("count", 0) + 1}

    await run_worker(app, None, lambda: s.checkpoints() == last_sequences(placed), timeout=30)
    state = items(aws, state_table_name(s.table))
    assert set(state) == {f"{s.name}/{shard}" for shard in placed}
    for shard, records in placed.items():
        shard_items = state[f"{s.name}/{shard}"]
        assert shard_items[META_KEY]["applied"] == str(records[-1][0])  # the shard's own checkpoint
        counts: dict[str, int] = {}
        for key, item in shard_items.items():
            if key != META_KEY:
                user = orjson.loads(key)[0]
                counts[user] = counts.get(user, 0) + item["value"]["count"]
        expected: dict[str, int] = {}
        for _, value in records:
            expected[value["user"]] = expected.get(value["user"], 0) + 1
        assert counts == expected  # each shard counts its own users' records, once


async def test_a_window_state_dynamodb_cannot_hold_ends_the_window_early_instead_of_stalling_the_shard(
    stream: Callable[..., Stream], aws: str
) -> None:
    """AWS ends a window early past 1 MB of state; DynamoDB holds 400 KB in an item, so on Kinesis a window ends
    early past the changelog's limit (about 398 KB), and the shard goes on being committed."""
    s = stream()
    placed = s.put([{"n": n} for n in range(4)])
    calls: list[tuple[bool, bool, int, list[int]]] = []
    app = App("kin")

    @app.function(source=s.source(), tumbling_window_in_seconds=900, window_idle_seconds=3600, batch_size=1)
    def windowed(event: dict[str, Any], context: Any) -> dict[str, Any]:
        ns = [orjson.loads(base64.b64decode(r["kinesis"]["data"]))["n"] for r in event["Records"]]
        state = event["state"]
        calls.append((event["isFinalInvokeForWindow"], event["isWindowTerminatedEarly"], len(state.get("pad", "")), ns))
        if event["isFinalInvokeForWindow"]:
            return {"state": {}}
        return {"state": {"pad": state.get("pad", "") + "x" * 150_000}}  # 150 KB more per record

    await run_worker(app, None, lambda: s.checkpoints() == last_sequences(placed), timeout=30)
    if not any(final and not early for final, early, _, _ in calls):  # one window all along (see the module)
        assert calls == [
            (False, False, 0, [0]),
            (False, False, 150_000, [1]),
            (False, False, 300_000, [2]),  # returns 450 KB: past what one item holds
            (True, True, 450_000, []),  # the window ends early with that state
            (False, False, 0, [3]),  # and goes on with a fresh one
        ]
    [shard] = s.shards
    meta = items(aws, state_table_name(s.table))[f"{s.name}/{shard}"][META_KEY]
    assert meta["applied"] == last_sequences(placed)[shard]


async def test_a_split_on_kinesis_runs_the_parents_final_invocation_before_its_end_is_recorded(
    stream: Callable[..., Stream], aws: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parent is read to its end (the null NextShardIterator AWS sends, injected: moto never sends it): its
    window's final invocation runs, with the parent's records, before SHARD_END is recorded, and the parent's state
    is closed in the state table. (moto keeps routing a split parent's keys to the parent, so the children have no
    records here; the memory source's tests show the children's fresh windows.)"""
    s = stream()
    placed = s.put([{"n": n} for n in range(5)])
    [parent] = s.shards
    s.kinesis.split_shard(StreamName=s.name, ShardToSplit=parent, NewStartingHashKey=str(2**127))
    children = sorted({sh["ShardId"] for sh in s.kinesis.list_shards(StreamName=s.name)["Shards"]} - {parent})
    last = placed[parent][-1][0]

    async def end_parent_after_its_last_record(real: GetRecords, arguments: dict[str, Any]) -> Any:
        shard, after = iterator_shard(arguments)
        if shard == parent and after >= last:
            return {"Records": [], "MillisBehindLatest": 0}  # no NextShardIterator: the end
        return await real(**arguments)

    intercept_get_records(monkeypatch, end_parent_after_its_last_record)
    calls: list[tuple[bool, dict[str, Any], list[int], str | None]] = []
    sources: list[tuple[str, str]] = []
    app = App("kin")

    @app.function(source=s.source(), tumbling_window_in_seconds=900, window_idle_seconds=3600, batch_size=2)
    def windowed(event: dict[str, Any], context: Any) -> dict[str, Any]:
        ns = [orjson.loads(base64.b64decode(r["kinesis"]["data"]))["n"] for r in event["Records"]]
        final = event["isFinalInvokeForWindow"]
        calls.append((final, event["state"], ns, s.checkpoints().get(parent) if final else None))
        sources.append((event["shardId"], event["eventSourceARN"]))
        return {"state": {} if final else {"seen": [*event["state"].get("seen", []), *ns]}}

    def ended() -> bool:
        return s.checkpoints().get(parent) == "SHARD_END" and set(children) <= set(s.checkpoints())

    await run_worker(app, None, ended, timeout=30)
    *invocations, (final, state, ns, checkpoint_then) = calls
    assert final and ns == [] and checkpoint_then != "SHARD_END"  # the end is recorded after the final invocation
    assert [n for _, _, batch, _ in invocations for n in batch] == list(range(5))
    assert seen_once([*(c[1] for c in invocations if c[0]), state]) == list(range(5))  # every record once
    assert items(aws, state_table_name(s.table))[f"{s.name}/{parent}"][META_KEY]["value"] == {}  # closed
    assert set(sources) == {(parent, f"arn:aws:kinesis:{REGION}:123456789012:stream/{s.name}")}  # Lambda's fields
