"""DynamoDB Streams shards shared by `streamfn run` processes: two workers on a four-shard stream (the shard-rolling
double; the table and the lease table on moto) share it, a kill -9 of one moves its shards to the other within the
lease duration plus a few take periods, the shards then roll over, and nothing is lost; no shard is ever handled
by two processes at the same time.

The handler appends one line per handled record (tests/shard_workers.py); the assertions compare that file and the
lease table (owners, checkpoints), read with boto3, with the changes put.
"""

from __future__ import annotations

import collections
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import start_cli, wait_for, write_pipeline
from ddb_streams_double import StreamsDouble
from shard_workers import HANDLER, fair, handled, overlaps, owner_pid, stop_gracefully
from test_dynamodb_source import REGION, RollingTable, Table

pytestmark = pytest.mark.slow  # starts streamfn processes

LEASE_DURATION = 2.0
TAKE_PERIOD = LEASE_DURATION / 2  # the coordinator's default
SHARDS = 4

PIPELINE = (
    f"""
import os, time
from streamfn import App
from streamfn.connectors.dynamodb import DynamoDBStreamSource

app = App("dynamodb-workers")

@app.function(
    source=DynamoDBStreamSource(table=os.environ["TABLE"], lease_table=os.environ["LEASES"], region_name="{REGION}",
                                lease_duration_seconds={LEASE_DURATION}),
    batch_size=10,
)
"""
    + HANDLER
)


class Changer:
    """Changes items (20 every 0.1 s, over 40 items) on the double from a thread until stopped."""

    def __init__(self, rolling: RollingTable) -> None:
        self.rolling = rolling
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._next = 0

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.rolling.change(f"item-{(self._next + i) % 40}" for i in range(20))
            self._next += 20

    def __enter__(self) -> Changer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def rolling(aws: str, ddb_streams: StreamsDouble) -> Iterator[RollingTable]:
    made = RollingTable(Table(aws), ddb_streams, SHARDS)
    yield made
    made.table.dynamodb.delete_table(TableName=made.table.name)


def put_records(rolling: RollingTable) -> set[tuple[str, int]]:
    """Every (shard, sequence number) the double holds for the stream."""
    shards = rolling.double.answer("DescribeStream", {"StreamArn": rolling.table.arn})["StreamDescription"]["Shards"]
    records = set()
    for shard in shards:
        iterator = rolling.double.answer(
            "GetShardIterator",
            {"StreamArn": rolling.table.arn, "ShardId": shard["ShardId"], "ShardIteratorType": "TRIM_HORIZON"},
        )["ShardIterator"]
        while iterator is not None:
            page = rolling.double.answer("GetRecords", {"ShardIterator": iterator})
            records |= {(shard["ShardId"], int(r["dynamodb"]["SequenceNumber"])) for r in page["Records"]}
            iterator = page.get("NextShardIterator") if page["Records"] else None
    return records


def open_owners(rolling: RollingTable) -> Callable[[], dict[str, str | None]]:
    """The owners of the open shards' leases (the ended ones are done)."""
    return lambda: {s: o for s, o in rolling.table.owners().items() if rolling.ends.get(s) != "SHARD_END"}


async def test_two_workers_share_the_shards_a_kill_9_moves_its_shards_and_the_rolled_shards_lose_nothing(
    rolling: RollingTable, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    out = tmp_path / "handled.txt"
    env = {"TABLE": rolling.table.name, "LEASES": rolling.table.leases, "OUT": str(out), "SLEEP": "0.05"}
    pipeline = write_pipeline(tmp_path, PIPELINE)
    logs = [(tmp_path / f"worker-{i}.log").open("w") for i in range(2)]
    workers = [start_cli("run", str(pipeline), extra_env=env, stdout=logs[i], stderr=logs[i]) for i in range(2)]
    try:
        with Changer(rolling):
            await wait_for(fair(open_owners(rolling), SHARDS, 2), 40, "two workers holding two shards each")
            shared = rolling.table.owners()
            pids = {p.pid for p in workers}
            await wait_for(lambda: {r.pid for r in handled(out)} == pids, 20, "changes handled by both workers")
            victim, survivor = workers
            victims = {s for s, o in shared.items() if owner_pid(o) == victim.pid}
            victim.send_signal(signal.SIGKILL)
            killed, killed_at = time.monotonic(), time.time()
            victim.wait(10)
            await wait_for(fair(open_owners(rolling), SHARDS, 1), 20, "the survivor holding the four shards")
            takeover = time.monotonic() - killed
        rolling.roll()
        rolling.change(f"item-{i}" for i in range(40))
        await wait_for(lambda: rolling.table.checkpoints() == rolling.ends, 30, "every shard checkpointed at its end")
        await stop_gracefully([survivor])
    finally:
        for process in workers:
            process.kill()
    records = handled(out)
    put = put_records(rolling)
    assert sorted(collections.Counter(shared.values()).values()) == [2, 2]
    assert {(r.shard, r.sequence) for r in records} == put  # at least once: nothing lost
    assert takeover <= LEASE_DURATION + 5 * TAKE_PERIOD, takeover
    after = [r for r in records if r.shard in victims and r.start > killed_at]
    assert after and {r.pid for r in after} == {survivor.pid}
    children = set(rolling.ends) - set(shared)
    assert {r.pid for r in records if r.shard in children} == {survivor.pid}
    assert overlaps(records) == []
    assert set(rolling.table.owners().values()) == {None}  # the survivor released its leases on SIGTERM
    duplicates = len(records) - len(put)
    record_property(
        "fault_figures",
        f"DynamoDB Streams, 2 workers, {SHARDS} shards rolled once, lease duration {LEASE_DURATION:g} s: shards "
        f"taken over {takeover:.2f} s after kill -9; {duplicates} duplicates of {len(records)} records handled",
    )
