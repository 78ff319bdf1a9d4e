"""Operating Kinesis functions from the command line, against moto in server mode: `streamfn status` per shard
(lease owner, checkpoint, milliseconds behind, lineage, dead letters), `streamfn produce` and `run --seed`
(PutRecords), `run --local aws` (the embedded server, only when asked) and the example pipeline's one command.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import re
import signal
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import orjson
import pytest
from conftest import launch_pipeline, read_topic, run_cli, run_worker, wait_for, write_pipeline
from rich.console import Console

from streamfn.cli.loader import load_app
from streamfn.cli.status import report, status_table

pytestmark = pytest.mark.slow  # every test here starts streamfn processes

REGION = "us-east-1"
ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples/kinesis"
_names = itertools.count()

PIPELINE = """
import os
from streamfn import App
from streamfn.connectors.kafka import KafkaTopic
from streamfn.connectors.kinesis import KinesisSource

app = App("ops")

@app.function(
    source=KinesisSource(stream=os.environ["STREAM"], lease_table=os.environ["TABLE"], value_format="json"),
    batch_size=10,
    bisect_batch_on_function_error=True,
    maximum_retry_attempts=0,
    on_failure=KafkaTopic(
        os.environ["DLQ"], bootstrap_servers=os.environ["BROKER"], max_message_bytes=int(os.environ["DLQ_MAX"])
    ),
)
async def handle(records):
    if any(r.value.get("bad") for r in records):
        raise ValueError("bad record")
"""


class Stream:
    def __init__(self, endpoint: str, shards: int) -> None:
        self.name = f"ops-{next(_names)}-{id(self):x}"
        self.table = f"leases-{self.name}"
        self.kinesis = boto3.client("kinesis", endpoint_url=endpoint, region_name=REGION)
        self.kinesis.create_stream(StreamName=self.name, ShardCount=shards)
        self.shards = sorted(s["ShardId"] for s in self.kinesis.list_shards(StreamName=self.name)["Shards"])
        self.dynamodb = boto3.client("dynamodb", endpoint_url=endpoint, region_name=REGION)

    def checkpoints(self) -> dict[str, str]:
        """The lease table's checkpoint per shard ({} before the table exists)."""
        try:
            items = self.dynamodb.scan(TableName=self.table, ConsistentRead=True)["Items"]
        except self.dynamodb.exceptions.ResourceNotFoundException:
            return {}
        return {item["leaseKey"]["S"]: item["checkpoint"]["S"] for item in items}

    def put(self, values: list[Any], shard: int) -> list[int]:
        """Put each value (JSON) on shard number `shard` (by explicit hash key); their sequence numbers."""
        ranges = self.kinesis.list_shards(StreamName=self.name)["Shards"][shard]["HashKeyRange"]
        return [
            int(
                self.kinesis.put_record(
                    StreamName=self.name,
                    Data=orjson.dumps(value),
                    PartitionKey="k",
                    ExplicitHashKey=ranges["StartingHashKey"],
                )["SequenceNumber"]
            )
            for value in values
        ]

    def owners(self) -> dict[str, str | None]:
        items = self.dynamodb.scan(TableName=self.table, ConsistentRead=True)["Items"]
        return {item["leaseKey"]["S"]: item.get("leaseOwner", {}).get("S") for item in items}

    def items(self) -> dict[str, list[dict[str, Any]]]:
        """Every record per shard, in order, as GetRecords returns them."""
        found = {}
        for shard in self.shards:
            iterator = self.kinesis.get_shard_iterator(
                StreamName=self.name, ShardId=shard, ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"]
            found[shard] = self.kinesis.get_records(ShardIterator=iterator, Limit=10_000)["Records"]
        return found

    def records(self) -> dict[str, list[tuple[str, bytes]]]:
        """Every record per shard, (partition key, data), in order."""
        return {shard: [(r["PartitionKey"], bytes(r["Data"])) for r in items] for shard, items in self.items().items()}

    def last_sequences(self) -> dict[str, int | None]:
        return {shard: int(items[-1]["SequenceNumber"]) if items else None for shard, items in self.items().items()}


@pytest.fixture
def stream(aws: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Stream]]:
    """A stream of its own per call, with AWS_ENDPOINT_URL pointing at moto for the commands run meanwhile."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws)
    monkeypatch.setenv("DLQ_MAX", str(1024 * 1024))
    made: list[Stream] = []

    def make(shards: int = 2) -> Stream:
        made.append(Stream(aws, shards))
        return made[-1]

    yield make
    for s in made:
        s.kinesis.delete_stream(StreamName=s.name)


def status(pipeline: Path) -> dict[str, Any]:
    result = run_cli("status", str(pipeline), "--json", timeout=30)
    assert result.returncode == 0, result.stderr
    [function] = json.loads(result.stdout)["functions"]
    return dict(function)


async def status_here(pipeline: Path) -> dict[str, Any]:
    """`status --json`'s document for the pipeline's one function, computed in this process (no interpreter to
    start: the command itself is run by the first test)."""
    [function] = (await report(load_app(pipeline), None))["functions"]
    return dict(function)


async def table_here(pipeline: Path) -> str:
    """The status table as `streamfn status` prints it off a terminal."""
    console = Console(width=200, file=io.StringIO())
    console.print(status_table(await report(load_app(pipeline), None)))
    return console.file.getvalue()  # type: ignore[attr-defined]


def by_shard(function: dict[str, Any], key: str) -> dict[str, Any]:
    return {p["partition"]: p[key] for p in function["partitions"]}


async def test_status_shows_each_shards_lease_checkpoint_lag_and_the_dead_letters(
    stream: Callable[..., Stream], broker: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = stream(shards=3)
    dlq = f"dlq-{s.name}"
    for key, value in {"STREAM": s.name, "TABLE": s.table, "DLQ": dlq, "BROKER": broker}.items():
        monkeypatch.setenv(key, value)
    pipeline = write_pipeline(tmp_path, PIPELINE)
    first, second, third = s.shards
    # shard 1: 6 records (the 2nd and 5th bad); shard 2: 4 records (the 3rd bad); shard 3: none
    one = s.put([{"bad": i in (1, 4)} for i in range(6)], 0)
    two = s.put([{"bad": i == 2} for i in range(4)], 1)

    # 1. before any worker: no lease table (status creates none), nothing checkpointed, every record is lag
    before = status(pipeline)
    assert (before["group_id"], before["state"], before["members"]) == (s.table, "ACTIVE", [])
    assert by_shard(before, "committed") == {first: None, second: None, third: None}
    assert by_shard(before, "owner") == {first: None, second: None, third: None}
    assert by_shard(before, "parents") == by_shard(before, "children") == {first: [], second: [], third: []}
    lags = by_shard(before, "lag")
    assert lags[first] >= 1 and lags[second] >= 1 and lags[third] == 0
    assert by_shard(before, "end") == {first: None, second: None, third: None}  # open shards
    assert before["dead_letters"] == 0 and before["on_failure"] == f"KafkaTopic({dlq!r})"
    assert s.table not in s.dynamodb.list_tables()["TableNames"]  # status read only: it did not create the lease table

    # 2. a worker handles everything (the 3 bad records to the dead-letter topic) and stops gracefully
    expected = {first: str(one[-1]), second: str(two[-1]), third: "TRIM_HORIZON"}
    await run_worker(load_app(pipeline), None, lambda: s.checkpoints() == expected, timeout=40)
    assert len(await read_topic(broker, dlq, 3)) == 3

    after = status(pipeline)
    assert by_shard(after, "committed") == {first: one[-1], second: two[-1], third: "TRIM_HORIZON"}
    assert by_shard(after, "owner") == {first: None, second: None, third: None}  # released at the graceful stop
    assert after["members"] == [] and by_shard(after, "lag") == {first: 0, second: 0, third: 0}
    assert after["dead_letters"] == 3

    # 3. two more records on the second shard: it is behind again, by their age (milliseconds, at least 1)
    s.put([{"bad": False}] * 2, 1)
    behind = status(pipeline)
    assert by_shard(behind, "committed")[second] == two[-1] and by_shard(behind, "lag")[second] >= 1
    assert behind["total_lag"] == by_shard(behind, "lag")[second] == behind["max_lag"]

    # the table: shard rows with their owner column ("-": nobody holds the lease)
    table_text = run_cli("status", str(pipeline), timeout=30).stdout
    assert re.search(rf"{first}\s+│\s+{one[-1]}\s+│\s+-\s+│\s+0\s+│\s+-", table_text), table_text


async def test_status_names_the_worker_holding_each_lease_while_it_runs_and_the_lineage_after_a_split(
    stream: Callable[..., Stream], broker: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = stream(shards=1)
    for key, value in {"STREAM": s.name, "TABLE": s.table, "DLQ": f"dlq-{s.name}", "BROKER": broker}.items():
        monkeypatch.setenv(key, value)
    [parent] = s.shards
    placed = s.put([{"bad": False}] * 3, 0)
    worker = launch_pipeline(tmp_path, PIPELINE, broker, **os.environ)
    try:
        await wait_for(lambda: s.checkpoints() == {parent: str(placed[-1])}, 30, "the records checkpointed")
        [owner] = s.owners().values()
        running = await status_here(tmp_path / "pipeline.py")
        assert owner is not None and running["members"] == [owner]
        assert by_shard(running, "owner") == {parent: owner} and by_shard(running, "committed") == {parent: placed[-1]}

        hash_range = s.kinesis.list_shards(StreamName=s.name)["Shards"][0]["HashKeyRange"]
        middle = (int(hash_range["StartingHashKey"]) + int(hash_range["EndingHashKey"])) // 2
        s.kinesis.split_shard(StreamName=s.name, ShardToSplit=parent, NewStartingHashKey=str(middle))
        listed = s.kinesis.list_shards(StreamName=s.name)["Shards"]
        children = sorted(shard["ShardId"] for shard in listed if shard["ShardId"] != parent)
        split = await status_here(tmp_path / "pipeline.py")
        assert by_shard(split, "children") == {parent: children, children[0]: [], children[1]: []}
        assert by_shard(split, "parents") == {parent: [], children[0]: [parent], children[1]: [parent]}
        [ending] = [
            int(shard["SequenceNumberRange"]["EndingSequenceNumber"]) for shard in listed if shard["ShardId"] == parent
        ]
        assert by_shard(split, "end") == {parent: ending, children[0]: None, children[1]: None}
        table_text = await table_here(tmp_path / "pipeline.py")
        rows = [line for line in table_text.splitlines() if "shardId-" in line]
        assert f"│ {owner[:8]}" in rows[0] and "│ - -> shardId-" in rows[0], table_text  # lineage folded, not cut
        assert all(f"│ {parent} -> -" in row for row in rows[-2:]), table_text
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    stopped = await status_here(tmp_path / "pipeline.py")
    assert stopped["members"] == [] and by_shard(stopped, "owner")[parent] is None


async def test_produce_puts_each_line_keyed_by_its_field_then_a_run_handles_them(
    stream: Callable[..., Stream], broker: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = stream(shards=2)
    for key, value in {"STREAM": s.name, "TABLE": s.table, "DLQ": f"dlq-{s.name}", "BROKER": broker}.items():
        monkeypatch.setenv(key, value)
    pipeline = write_pipeline(tmp_path, PIPELINE)
    lines = [orjson.dumps({"user": f"u{i % 7}", "n": i}) for i in range(1201)] + [b"not json"]
    data = tmp_path / "lines.jsonl"
    data.write_bytes(b"\n".join(lines) + b"\n\n")

    result = run_cli("produce", s.name, str(data), "--pipeline", str(pipeline), "--key-field", "user", timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"produced 1202 records to stream {s.name} (1 without a key: no 'user' field)"
    found = s.records()
    put = [item for records in found.values() for item in records]
    assert sorted(data for _, data in put) == sorted(lines)  # each line once, byte for byte (3 PutRecords calls)
    for records in found.values():
        for key, data in records:
            if data != b"not json":
                assert key == orjson.loads(data)["user"]  # the partition key is the field
        ns = [orjson.loads(data)["n"] for _, data in records if data != b"not json"]
        assert ns == sorted(ns)  # in file order within each shard

    # `run --seed` puts a file the same way, then the function handles it: every shard checkpointed at its end
    seed = tmp_path / "seed.jsonl"
    seed.write_bytes(b"".join(orjson.dumps({"user": "u", "n": i}) + b"\n" for i in range(5)))
    run = run_cli("run", str(pipeline), "--seed", f"{s.name}={seed}", "--key-field", "user", "--until-idle", "2")
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"seeded 5 records from {seed} into stream {s.name}\n" in run.stdout
    after = await status_here(pipeline)
    assert by_shard(after, "committed") == s.last_sequences()
    assert after["dead_letters"] == 1  # the line that is not JSON


async def test_redrive_puts_a_kinesis_functions_dead_letters_back_on_the_stream_byte_for_byte_once(
    stream: Callable[..., Stream], broker: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = stream(shards=2)
    dlq = f"dlq-{s.name}"
    for key, value in {"STREAM": s.name, "TABLE": s.table, "DLQ": dlq, "BROKER": broker}.items():
        monkeypatch.setenv(key, value)
    pipeline = write_pipeline(tmp_path, PIPELINE)
    one = s.put([{"bad": i in (1, 3)} for i in range(5)], 0)
    two = s.put([{"bad": True, "n": 7}], 1)
    first, second = s.shards
    expected = {first: str(one[-1]), second: str(two[-1])}
    await run_worker(load_app(pipeline), None, lambda: s.checkpoints() == expected, timeout=40)
    assert len(await read_topic(broker, dlq, 3)) == 3

    before = s.records()
    dry = run_cli("redrive", str(pipeline), "--function", "handle", "--dry-run", timeout=60)
    assert dry.returncode == 0, dry.stderr
    *each, total = dry.stdout.splitlines()
    assert sorted(each) == [
        f"would redrive {s.name}-{first}@{one[1]} (RetryAttemptsExhausted)",
        f"would redrive {s.name}-{first}@{one[3]} (RetryAttemptsExhausted)",
        f"would redrive {s.name}-{second}@{two[0]} (RetryAttemptsExhausted)",
    ]
    assert total == f"would redrive 3 records from {dlq}"
    assert s.records() == before  # a dry run puts nothing back

    done = run_cli("redrive", str(pipeline), "--function", "handle", timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == f"redrove 3 records from {dlq}"
    after = s.records()
    added = sorted(item for shard in s.shards for item in after[shard][len(before[shard]) :])
    assert added == sorted([("k", b'{"bad":true}'), ("k", b'{"bad":true}'), ("k", b'{"bad":true,"n":7}')])

    again = run_cli("redrive", str(pipeline), "--function", "handle", timeout=60)
    assert (again.returncode, again.stdout.splitlines()[-1]) == (0, f"redrove 0 records from {dlq}")
    assert s.records() == after  # progress was kept: nothing put twice


async def test_redrive_reads_a_record_whose_letter_dropped_its_payload_back_from_the_stream(
    stream: Callable[..., Stream], broker: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = stream(shards=1)
    dlq = f"dlq-{s.name}"
    for key, value in {"STREAM": s.name, "TABLE": s.table, "DLQ": dlq, "BROKER": broker, "DLQ_MAX": "16384"}.items():
        monkeypatch.setenv(key, value)
    pipeline = write_pipeline(tmp_path, PIPELINE)
    big = {"bad": True, "padding": "x" * 20_000}  # its letter would pass the topic's 16 KiB: the payload is left out
    [shard] = s.shards
    placed = s.put([{"bad": False}, big], 0)
    await run_worker(load_app(pipeline), None, lambda: s.checkpoints() == {shard: str(placed[-1])}, timeout=40)
    [letter] = await read_topic(broker, dlq, 1)
    assert "payload" not in orjson.loads(letter.value)

    done = run_cli("redrive", str(pipeline), "--function", "handle", timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"redrove {s.name}-{shard}@{placed[1]} (RetryAttemptsExhausted) from the source topic (payload dropped)",
        f"redrove 1 records from {dlq}",
    ]
    assert s.records()[shard][2:] == [("k", orjson.dumps(big))]


def _summary(stdout: str) -> dict[str, dict[str, str]]:
    """The run summary's rows by function, each by column name (from the header row)."""
    lines = stdout.splitlines()
    header = [c.strip() for c in next(line for line in lines if line.startswith("┃")).split("┃")[1:-1]]
    rows = ([c.strip() for c in line.split("│")[1:-1]] for line in lines if line.startswith("│"))
    return {cells[0]: dict(zip(header, cells, strict=True)) for cells in rows if cells[0]}


def test_the_kinesis_example_runs_with_one_command_on_the_embedded_server(aws: str, tmp_path: Path) -> None:
    """The README's command, exactly; AWS variables that would point elsewhere are set aside by `--local aws`."""
    clicks = [line for line in (EXAMPLE / "clicks.jsonl").read_text().splitlines() if line]
    good = [c for c in (_click(line) for line in clicks) if c is not None]
    assert (len(clicks), len(good)) == (243, 240)
    result = run_cli(
        "run",
        "examples/kinesis/pipeline.py",
        "--local",
        "aws",
        "--seed",
        "clicks=examples/kinesis/clicks.jsonl",
        "--key-field",
        "user",
        "--until-idle",
        "2",
        cwd=ROOT,
        timeout=55,
        extra_env={"AWS_ENDPOINT_URL_KINESIS": "http://127.0.0.1:9", "AWS_PROFILE": "nowhere"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(
        r"^streamfn: embedded AWS-compatible server \(moto: Kinesis, DynamoDB and its Streams, SQS\) "
        r"at http://127\.0\.0\.1:\d+ ",
        result.stdout,
        re.M,
    )
    assert (
        "streamfn: seeded 243 records from examples/kinesis/clicks.jsonl into stream clicks (created: stream clicks "
        "with 4 shards) (1 without a key: no 'user' field)"
    ) in result.stdout
    summary = _summary(result.stdout)
    for function in ("clicks_per_user", "pages"):
        row = summary[function]
        counts = {c: row[c] for c in ("polled", "handled", "dead-lettered", "dropped", "committed")}
        assert counts == {"polled": "243", "handled": "240", "dead-lettered": "0", "dropped": "3", "committed": "243"}
    # `pages` prints each batch it handled once: the pages of the 240 good clicks, counted per page
    printed: Counter[str] = Counter()
    for listing in re.findall(r"^\[pages\] shardId-\d+ \d+ clicks: (.*)$", result.stdout, re.M):
        for page, n in re.findall(r"(\S+) (\d+)", listing):
            printed[page] += int(n)
    assert printed == Counter(c["page"] for c in good)


def _click(line: str) -> dict[str, Any] | None:
    try:
        click = json.loads(line)
    except ValueError:
        return None
    return click if {"user", "page"} <= click.keys() else None


def test_local_systems_are_started_only_when_asked_and_only_those_a_pipeline_has(aws: str, tmp_path: Path) -> None:
    nope = run_cli("run", "examples/kinesis/pipeline.py", "--local", "gcp", cwd=ROOT, timeout=30)
    assert (nope.returncode, nope.stderr) == (
        2,
        "error: --local 'gcp' is not a local system of this pipeline's sources; allowed: aws\n",
    )
    # Without --local aws, the pipeline goes where the AWS configuration says: here moto, which has no such stream.
    unasked = run_cli(
        "run",
        "examples/kinesis/pipeline.py",
        "--connect-timeout",
        "3",
        cwd=ROOT,
        timeout=30,
        extra_env={"AWS_ENDPOINT_URL": aws},
    )
    assert unasked.returncode == 1 and "embedded" not in unasked.stdout
    assert "Kinesis stream clicks" in unasked.stderr.splitlines()[-1]  # no such stream (or no answer, under load)
