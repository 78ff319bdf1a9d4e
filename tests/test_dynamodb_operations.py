"""Operating DynamoDB Streams functions from the command line, against moto in server mode: `streamfn produce` and
`run --seed` (each line an item, BatchWriteItem; so the table's stream holds one change per line), `run --local aws`
(the embedded server, which creates the seeded table and the sink's declared table) and the example pipeline's one
command.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import orjson
import pytest
from conftest import run_cli, write_pipeline

from streamfn.connectors.dynamodb import DynamoDBStreamSource
from streamfn.connectors.shards.local import LOCAL_ENV
from streamfn.errors import ConfigError

pytestmark = pytest.mark.slow  # most tests here start streamfn processes

REGION = "us-east-1"
ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples/dynamodb"
_names = itertools.count()

PIPELINE = """
import os
from streamfn import App
from streamfn.connectors.dynamodb import DynamoDBStreamSource

app = App("ops")

@app.function(source=DynamoDBStreamSource(table=os.environ["TABLE"]))
async def handle(records):
    pass
"""


class Tables:
    """Sync clients on moto, and the tables a test made (deleted after it)."""

    def __init__(self, endpoint: str) -> None:
        self.dynamodb = boto3.client("dynamodb", endpoint_url=endpoint, region_name=REGION)
        self.streams = boto3.client("dynamodbstreams", endpoint_url=endpoint, region_name=REGION)
        self.made: list[str] = []

    def name(self) -> str:
        self.made.append(f"orders-{next(_names)}")
        return self.made[-1]

    def create(self, key: str = "order_id", kind: str = "S") -> str:
        name = self.name()
        self.dynamodb.create_table(
            TableName=name,
            KeySchema=[{"AttributeName": key, "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": key, "AttributeType": kind}],
            BillingMode="PAY_PER_REQUEST",
            StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
        )
        return name

    def items(self, name: str, key: str = "order_id") -> list[dict[str, Any]]:
        """Every item, plain values (numbers as Decimal), in key order."""
        table = boto3.resource("dynamodb", endpoint_url=self.dynamodb.meta.endpoint_url, region_name=REGION)
        return sorted(table.Table(name).scan(ConsistentRead=True)["Items"], key=lambda item: item[key])

    def changes(self, name: str) -> list[tuple[str, dict[str, Any], dict[str, Any] | None, dict[str, Any] | None]]:
        """The stream's records in order: (eventName, Keys, OldImage, NewImage) in DynamoDB's JSON."""
        arn = self.dynamodb.describe_table(TableName=name)["Table"]["LatestStreamArn"]
        [shard] = self.streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]  # moto: one shard
        iterator = self.streams.get_shard_iterator(
            StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        records = self.streams.get_records(ShardIterator=iterator)["Records"]
        return [
            (r["eventName"], r["dynamodb"]["Keys"], r["dynamodb"].get("OldImage"), r["dynamodb"].get("NewImage"))
            for r in records
        ]


@pytest.fixture
def tables(aws: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Tables]:
    """Tables of one test, with AWS_ENDPOINT_URL pointing at moto for the commands run meanwhile."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws)
    made = Tables(aws)
    yield made
    existing = set(made.dynamodb.list_tables()["TableNames"])
    for name in made.made:
        if name in existing:
            made.dynamodb.delete_table(TableName=name)


def produce(table: str, lines: list[bytes], key_field: str | None = None) -> Any:
    """DynamoDBStreamSource.produce_lines in this process (what `produce` and `--seed` call)."""
    source = DynamoDBStreamSource(table=table)
    return asyncio.run(source.produce_lines(table, lines, key_field=key_field, default_servers=None))


def test_produce_puts_each_line_as_an_item_and_a_key_written_again_is_a_modify_in_the_stream(
    tables: Tables, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """60 lines (3 BatchWriteItem requests of at most 25), empty lines skipped, floats stored as the Decimal of their
    text; an order id written again in the same request window is its own write: INSERT, then MODIFY with the old
    image, in file order."""
    name = tables.create()
    monkeypatch.setenv("TABLE", name)
    pipeline = write_pipeline(tmp_path, PIPELINE)
    orders = [{"order_id": f"o-{i:02d}", "customer": f"c{i % 3}", "amount": i + 0.1} for i in range(57)]
    again = [{"order_id": "o-03", "customer": "c0", "amount": 99.5}, {"order_id": "o-03", "amount": 1}]
    again.append({"order_id": "o-56", "customer": "c2", "amount": 0.3})
    lines = [orjson.dumps(o) for o in orders[:5] + again[:2] + orders[5:] + again[2:]]
    data = tmp_path / "orders.jsonl"
    data.write_bytes(b"\n".join(lines[:30]) + b"\n\n" + b"\n".join(lines[30:]) + b"\n")

    result = run_cli("produce", name, str(data), "--pipeline", str(pipeline), timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"produced 60 records to table {name}"
    last = {o["order_id"]: o for o in orders} | {"o-03": again[1], "o-56": again[2]}
    assert tables.items(name) == [
        {k: Decimal(repr(v)) if isinstance(v, float) else v for k, v in o.items()}
        for o in sorted(last.values(), key=lambda o: o["order_id"])
    ]
    changes = tables.changes(name)
    assert [(event, keys["order_id"]["S"]) for event, keys, _, _ in changes] == [
        ("INSERT", f"o-{i:02d}") for i in range(5)
    ] + [("MODIFY", "o-03"), ("MODIFY", "o-03")] + [("INSERT", f"o-{i:02d}") for i in range(5, 57)] + [
        ("MODIFY", "o-56")
    ]
    assert changes[5][2:] == (
        {"order_id": {"S": "o-03"}, "customer": {"S": "c0"}, "amount": {"N": "3.1"}},
        {"order_id": {"S": "o-03"}, "customer": {"S": "c0"}, "amount": {"N": "99.5"}},
    )
    assert changes[6][2:] == (changes[5][3], {"order_id": {"S": "o-03"}, "amount": {"N": "1"}})


def test_lines_that_cannot_be_items_are_one_line_errors_naming_the_line(tables: Tables, tmp_path: Path) -> None:
    name = tables.create()
    cases = [
        ([b'{"order_id": "a"}', b"", b"[1, 2]"], "line 3 is not a JSON object: each line is one item of the table"),
        ([b"not json"], "line 1 is not a JSON object: each line is one item of the table"),
        (
            [b'{"order_id": "a"}', b'{"id": "b"}'],
            "line 2 has no key attribute 'order_id' (the table's key: order_id (S))",
        ),
        (
            [b'{"order_id": 7}'],
            "line 1 has key attribute 'order_id' that is not a string (the table's key: order_id (S))",
        ),
    ]
    for lines, message in cases:
        with pytest.raises(ConfigError) as raised:
            produce(name, lines)
        assert str(raised.value) == message
    with pytest.raises(ConfigError) as raised:
        produce(name, [b'{"order_id": "a"}'], key_field="customer")
    assert str(raised.value) == f"--key-field 'customer' is not in the key of DynamoDB table {name!r} (order_id (S))"
    # through the command: exit code 2, the one line
    data = tmp_path / "bad.jsonl"
    data.write_bytes(b'{"order_id": "x"}\n"text"\n')
    pipeline = write_pipeline(tmp_path, PIPELINE)
    result = run_cli("produce", name, str(data), "--pipeline", str(pipeline), timeout=60, extra_env={"TABLE": name})
    assert (result.returncode, result.stderr) == (
        2,
        "error: line 2 is not a JSON object: each line is one item of the table\n",
    )


def test_a_missing_table_is_created_by_the_seed_on_the_embedded_server_only(
    tables: Tables, aws: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the embedded server (LOCAL_ENV) a missing table is created with --key-field as partition key, typed by the
    first line (S or N), PAY_PER_REQUEST, with a NEW_AND_OLD_IMAGES stream; without --key-field the error says what
    it is for; elsewhere (AWS) a missing table is an error and nothing is created."""
    name = tables.name()
    with pytest.raises(ConfigError) as raised:
        produce(name, [b'{"n": 1}'], key_field="n")
    assert str(raised.value) == f"DynamoDB table {name!r} does not exist"
    assert name not in tables.dynamodb.list_tables()["TableNames"]

    monkeypatch.setenv(LOCAL_ENV, aws)
    with pytest.raises(ConfigError) as raised:
        produce(name, [b'{"n": 1}'])
    assert str(raised.value) == (
        f"DynamoDB table {name!r} does not exist on the embedded server: give --key-field, which names the partition "
        "key to create it with"
    )
    with pytest.raises(ConfigError) as raised:
        produce(name, [b'{"m": 1}'], key_field="n")
    assert str(raised.value) == "line 1 has no 'n' field: --key-field names the table's partition key"
    assert name not in tables.dynamodb.list_tables()["TableNames"]

    produced = produce(name, [b'{"n": 1, "v": "a"}', b'{"n": 2.5}', b'{"n": 1, "v": "b"}'], key_field="n")
    assert (produced.count, produced.unkeyed, produced.kind) == (3, 0, "table")
    assert produced.created == f"table {name} with a NEW_AND_OLD_IMAGES stream"
    described = tables.dynamodb.describe_table(TableName=name)["Table"]
    assert described["KeySchema"] == [{"AttributeName": "n", "KeyType": "HASH"}]
    assert described["AttributeDefinitions"] == [{"AttributeName": "n", "AttributeType": "N"}]
    assert described["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert described["StreamSpecification"] == {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"}
    assert tables.items(name, key="n") == [{"n": 1, "v": "b"}, {"n": Decimal("2.5")}]
    assert [event for event, *_ in tables.changes(name)] == ["INSERT", "INSERT", "MODIFY"]

    again = produce(name, [b'{"n": 3}'], key_field="n")  # exists now: written, nothing created
    assert (again.count, again.created) == (1, None)

    text = tables.name()
    assert produce(text, [b'{"id": "x"}'], key_field="id").created == f"table {text} with a NEW_AND_OLD_IMAGES stream"
    assert tables.dynamodb.describe_table(TableName=text)["Table"]["AttributeDefinitions"] == [
        {"AttributeName": "id", "AttributeType": "S"}
    ]


def _summary(stdout: str) -> dict[str, dict[str, str]]:
    """The run summary's rows by function, each by column name (from the header row; folded cells skipped)."""
    lines = stdout.splitlines()
    header = [c.strip() for c in next(line for line in lines if line.startswith("┃")).split("┃")[1:-1]]
    rows = ([c.strip() for c in line.split("│")[1:-1]] for line in lines if line.startswith("│"))
    return {cells[0]: dict(zip(header, cells, strict=True)) for cells in rows if cells[0]}


README_COMMAND = (
    "streamfn run examples/dynamodb/pipeline.py --local aws --seed orders=examples/dynamodb/orders.jsonl "
    "--key-field order_id --until-idle 2"
)


def test_the_dynamodb_example_runs_with_one_command_on_the_embedded_server(aws: str) -> None:
    """The README's command, exactly: the seed creates the table with its stream, the sink creates customer_totals,
    and the totals printed last for each customer are the sample's (the last line of each order id, malformed
    orders left out); AWS variables that would point elsewhere are set aside by `--local aws`."""
    readme = (ROOT / "README.md").read_text()
    assert f'pip install -e ".[embedded-aws,dynamodb]" && {README_COMMAND}' in readme
    lines = [json.loads(line) for line in (EXAMPLE / "orders.jsonl").read_text().splitlines() if line]
    malformed = [o for o in lines if not isinstance(o["amount"], int | float)]
    ids = Counter(o["order_id"] for o in lines)
    assert (len(lines), len(malformed), sum(n - 1 for n in ids.values())) == (40, 2, 3)
    assert all(ids[o["order_id"]] == 1 for o in malformed)  # so the last line of each id is what the totals count
    expected: dict[str, tuple[int, Decimal]] = defaultdict(lambda: (0, Decimal(0)))
    for order in {o["order_id"]: o for o in lines if o not in malformed}.values():
        count, amount = expected[order["customer"]]
        expected[order["customer"]] = (count + 1, amount + Decimal(repr(order["amount"])))

    _, *args = README_COMMAND.split()  # "streamfn": run_cli runs python -m streamfn
    result = run_cli(
        *args,
        cwd=ROOT,
        timeout=55,
        extra_env={"AWS_ENDPOINT_URL_DYNAMODB": "http://127.0.0.1:9", "AWS_PROFILE": "nowhere"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(
        r"^streamfn: embedded AWS-compatible server \(moto: Kinesis, DynamoDB and its Streams, SQS\) "
        r"at http://127\.0\.0\.1:\d+ \(in memory, stops with this process\)$",
        result.stdout,
        re.M,
    )
    assert (
        "streamfn: seeded 40 records from examples/dynamodb/orders.jsonl into table orders (created: table orders "
        "with a NEW_AND_OLD_IMAGES stream)\n"
    ) in result.stdout
    printed: dict[str, tuple[int, Decimal]] = {}
    for totals in re.findall(r"^\[totals\] shardId-\S+ sequence \d+-\d+: \d+ changes; (.*)$", result.stdout, re.M):
        for customer, count, amount in re.findall(r"(\w+) (-?\d+) orders (-?[\d.]+)", totals):
            printed[customer] = (int(count), Decimal(amount))
    assert printed == dict(expected)
    assert printed == {
        "ana": (6, Decimal("369.80")),
        "ben": (8, Decimal("542.09")),
        "chloe": (11, Decimal("837.28")),
        "dev": (2, Decimal("69.40")),
        "eli": (8, Decimal("1474.69")),
    }
    audited: Counter[str] = Counter()
    for listing in re.findall(r"^\[audit\] sequence \d+-\d+: (.*)$", result.stdout, re.M):
        for count, name in re.findall(r"(\d+) (\w+)", listing):
            audited[name] += int(count)
    assert audited == {"INSERT": 37, "MODIFY": 3}
    summary = _summary(result.stdout)
    columns = ("polled", "handled", "dead-lettered", "dropped", "committed")
    assert {c: summary["totals"][c] for c in columns} == dict(zip(columns, ["40", "38", "0", "2", "40"], strict=True))
    assert {c: summary["audit"][c] for c in columns} == dict(zip(columns, ["40", "40", "0", "0", "40"], strict=True))
    assert result.stderr.count("dropped (DeserializationError after 0 invocations): 1 validation error for Order") == 2


def test_a_sink_table_without_a_declared_key_is_not_created_on_the_embedded_server(tmp_path: Path) -> None:
    """The sink creates only a table whose key it declares: without `key=` the run stops at once, one line, exit 2."""
    pipeline = (
        (EXAMPLE / "pipeline.py")
        .read_text()
        .replace('DynamoDBTable("customer_totals", key="customer")', 'DynamoDBTable("customer_totals")')
    )
    path = write_pipeline(tmp_path, pipeline)
    result = run_cli(
        "run",
        str(path),
        "--local",
        "aws",
        "--seed",
        f"orders={EXAMPLE / 'orders.jsonl'}",
        "--key-field",
        "order_id",
        "--until-idle",
        "2",
        timeout=55,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.splitlines()[-1]
    assert re.fullmatch(
        r"error: function 'totals': DynamoDBTable\('customer_totals'\): there is no table 'customer_totals' on the "
        r"embedded server \(in region us-east-1\): declare its key, key='attr' or key=\('hash', 'range'\), for the "
        r"sink to create it there",
        last,
    ), last
