"""The commands as the README shows them: the main job on the embedded broker, produce, the compose file."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import committed, create_topic, produce_values, read_topic, run_cli, write_pipeline

from streamfn.connectors.kafka.source import SERVERS_ENV

ROOT = Path(__file__).resolve().parent.parent
ORDERS = ROOT / "examples/orders/orders.jsonl"


def _parse(line: str) -> dict[str, Any] | None:
    try:
        order = json.loads(line)
    except json.JSONDecodeError:
        return None
    return order if "unit_price" in order else None


@pytest.mark.slow
def test_main_job_runs_on_the_embedded_broker_and_reports_what_it_did() -> None:
    result = run_cli(
        "run",
        str(ROOT / "examples/orders/pipeline.py"),
        "--seed",
        f"orders={ORDERS}",
        "--key-field",
        "customer",
        "--until-idle",
        "1",
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "embedded Kafka broker at 127.0.0.1:" in result.stdout
    assert "seeded 1003 records" in result.stdout
    audited = [
        int(m) for m in re.findall(r"^\[audit \w+\] orders-\d offsets \d+-\d+: (\d+) orders", result.stdout, re.M)
    ]
    assert sum(audited) == 1000  # every order audited exactly once
    large = re.findall(r"^\[large_orders\] orders-\d@\d+ order (o\d+)", result.stdout, re.M)
    valid = [o for o in map(_parse, ORDERS.read_text().splitlines()) if o and isinstance(o.get("quantity"), int)]
    assert len(valid) == 1000
    assert sorted(large) == sorted(o["order_id"] for o in valid if o["quantity"] * o["unit_price"] >= 500)
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if line.startswith("│")}
    for function in ("audit", "large_orders"):
        cells = [c.strip() for c in rows[function].split("│")[1:-1]]
        # polled and committed 1003; handled 1000; the 3 malformed orders dead-lettered
        assert (cells[2], cells[6], cells[8], cells[9], cells[10]) == ("1003", "1000", "3", "0", "1003"), cells


@pytest.mark.slow
def test_chained_example_enriches_through_a_topic_into_a_table_per_customer(tmp_path: Path) -> None:
    result = run_cli(
        "run",
        str(ROOT / "examples/chain/pipeline.py"),
        "--seed",
        f"orders={ORDERS}",
        "--key-field",
        "customer",
        "--until-idle",
        "1",
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    valid = [o for o in map(_parse, ORDERS.read_text().splitlines()) if o and isinstance(o.get("quantity"), int)]
    expected: dict[str, tuple[int, int, float]] = {}
    for o in valid:
        orders, quantity, amount = expected.get(o["customer"], (0, 0, 0.0))
        expected[o["customer"]] = (
            orders + 1,
            quantity + o["quantity"],
            amount + round(o["quantity"] * o["unit_price"], 2),
        )
    with sqlite3.connect(tmp_path / "customer_totals.db") as db:
        rows = db.execute("SELECT customer, orders, quantity, amount FROM customer_totals").fetchall()
    assert {c: (n, q) for c, n, q, _ in rows} == {c: (n, q) for c, (n, q, _) in expected.items()}
    assert all(abs(amount - expected[c][2]) < 0.01 for c, _, _, amount in rows)
    summary = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if line.startswith("│")}
    enrich = [c.strip() for c in summary["enrich"].split("│")[1:-1]]
    totals = [c.strip() for c in summary["totals"].split("│")[1:-1]]
    # enrich: 1003 polled, 1000 priced and emitted, the 3 malformed orders dead-lettered, all committed
    assert (enrich[2], enrich[6], enrich[7], enrich[8], enrich[10]) == ("1003", "1000", "1000", "3", "1003"), enrich
    # totals: the 1000 priced orders read from the topic enrich wrote, all committed
    assert (totals[2], totals[6], totals[10]) == ("1000", "1000", "1000"), totals


@pytest.mark.slow
async def test_produce_puts_each_line_on_the_topic_keyed_by_a_field(broker: str, name: Any, tmp_path: Path) -> None:
    topic = name("t")
    await create_topic(broker, topic, 1)
    lines = tmp_path / "in.jsonl"
    lines.write_text('{"user": "a", "n": 1}\n\n{"user": "b", "n": 2}\n')
    result = run_cli("produce", topic, str(lines), "--key-field", "user", servers=broker)
    assert result.returncode == 0 and "produced 2 records" in result.stdout, result.stderr
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=broker, auto_offset_reset="earliest")
    await consumer.start()
    try:
        got = await consumer.getmany(timeout_ms=5000)
    finally:
        await consumer.stop()
    records = [r for rs in got.values() for r in rs]
    assert [(r.key, r.value) for r in records] == [(b"a", b'{"user": "a", "n": 1}'), (b"b", b'{"user": "b", "n": 2}')]
    assert await committed(broker, "nobody", topic, 1) == {0: None}


@pytest.mark.slow
async def test_produce_sends_lines_without_the_key_field_unkeyed_and_says_so(
    broker: str, name: Any, tmp_path: Path
) -> None:
    topic = name("t")
    await create_topic(broker, topic, 1)
    lines = tmp_path / "in.jsonl"
    lines.write_text('{"user": "a"}\n{"n": 1}\nnot json\n')
    result = run_cli("produce", topic, str(lines), "--key-field", "user", servers=broker)
    assert result.returncode == 0, result.stderr
    assert "produced 3 records to" in result.stdout and "(2 without a key: no 'user' field)" in result.stdout
    assert [r.key for r in await read_topic(broker, topic, 3)] == [b"a", None, None]


def test_compose_stack_runs_an_example_against_its_kafka() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert services["kafka"]["image"].startswith("apache/kafka:")
    worker = services["worker"]
    assert worker["command"][0] == "run" and (ROOT / worker["command"][1]).is_file()
    assert worker["environment"][SERVERS_ENV] == "kafka:29092"
    assert "INTERNAL://kafka:29092" in services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    seed = services["seed"]["command"]
    assert seed[0] == "produce" and (ROOT / seed[2]).is_file()


def _option(command: list[str], name: str) -> str:
    """The value after `name` in a compose command list (`--metrics-port 9464`) or joined to it (`--config=x`)."""
    for i, arg in enumerate(command):
        if arg == name:
            return command[i + 1]
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{name} missing from {command}")


def _mounted(service: dict[str, Any], target: str) -> dict[str, Any]:
    """The repository file a service mounts at `target` (short syntax `./deploy/x.yml:/target:ro`), parsed."""
    for volume in service.get("volumes", []):
        source, mounted, *_ = volume.split(":")
        if mounted == target:
            loaded: dict[str, Any] = yaml.safe_load((ROOT / source).read_text())
            return loaded
    raise AssertionError(f"nothing mounted at {target}: {service.get('volumes')}")


def _host_port(endpoint: str) -> tuple[str, int]:
    """("otel-collector", 4318) from http://otel-collector:4318, otel-collector:4318 or 0.0.0.0:4318."""
    host, port = endpoint.split("://")[-1].rstrip("/").rsplit(":", 1)
    return host, int(port)


def test_compose_observability_stack_is_wired_together() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    services = yaml.safe_load(text)["services"]
    assert {"kafka", "seed", "worker", "otel-collector", "jaeger", "prometheus"} <= services.keys()
    for name, service in services.items():
        if "image" in service:
            image = service["image"]
            assert ":" in image and not image.endswith(":latest"), f"{name}: pin a version, not {image}"

    # The worker serves metrics and health on the ports its command names, and its healthcheck asks /ready there.
    worker = services["worker"]
    metrics_port = int(_option(worker["command"], "--metrics-port"))
    health_port = int(_option(worker["command"], "--health-port"))
    assert _option(worker["command"], "--log-format") == "json"
    assert f"http://localhost:{health_port}/ready" in " ".join(worker["healthcheck"]["test"])

    # The collector reads deploy/otel-collector.yaml; every component a pipeline names is declared.
    collector = services["otel-collector"]
    otelcol = _mounted(collector, _option(collector["command"], "--config"))
    pipelines = otelcol["service"]["pipelines"]
    for pipeline in pipelines.values():
        for kind in ("receivers", "processors", "exporters"):
            for name in pipeline.get(kind, []):
                declared = {**otelcol.get(kind, {}), **({} if kind == "processors" else otelcol.get("connectors", {}))}
                assert name in declared, f"pipeline uses {kind[:-1]} {name!r}, not declared"

    # Workers send OTLP/HTTP to the collector service, on the port its http receiver listens on (all interfaces).
    env = worker["environment"]
    assert env["OTEL_TRACES_EXPORTER"] == "otlp" and env["OTEL_SERVICE_NAME"] == "streamfn-orders"
    protocols = otelcol["receivers"]["otlp"]["protocols"]
    assert "otlp" in pipelines["traces"]["receivers"] and {"grpc", "http"} <= protocols.keys()
    http_host, http_port = _host_port(protocols["http"]["endpoint"])
    assert http_host == "0.0.0.0" and _host_port(protocols["grpc"]["endpoint"])[0] == "0.0.0.0"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"].startswith("http://")
    assert _host_port(env["OTEL_EXPORTER_OTLP_ENDPOINT"]) == ("otel-collector", http_port)
    assert worker["depends_on"]["otel-collector"]

    # Traces go on to the jaeger service's OTLP receiver (gRPC 4317 for `otlp`, HTTP 4318 for `otlphttp`).
    to_jaeger = [
        (name.split("/")[0], _host_port(otelcol["exporters"][name]["endpoint"]))
        for name in pipelines["traces"]["exporters"]
        if name.split("/")[0] in ("otlp", "otlphttp")
    ]
    assert any(host == "jaeger" and port == {"otlp": 4317, "otlphttp": 4318}[kind] for kind, (host, port) in to_jaeger)
    jaeger = services["jaeger"]
    assert str(jaeger["environment"]["COLLECTOR_OTLP_ENABLED"]).lower() == "true"

    # Prometheus reads deploy/prometheus.yml: every worker replica (DNS A records of the service) on --metrics-port,
    # and the collector's prometheus exporter on the port that exporter listens on.
    exporters = [name for name in pipelines["metrics"]["exporters"] if name.split("/")[0] == "prometheus"]
    assert exporters, "the collector's metrics pipeline exports to no prometheus exporter"
    collector_metrics = _host_port(otelcol["exporters"][exporters[0]]["endpoint"])
    assert collector_metrics[0] == "0.0.0.0"
    prometheus = services["prometheus"]
    scrape = _mounted(prometheus, "/etc/prometheus/prometheus.yml")["scrape_configs"]
    worker_sd = [sd for job in scrape for sd in job.get("dns_sd_configs", []) if "worker" in sd["names"]]
    assert [(sd.get("type"), sd["port"]) for sd in worker_sd] == [("A", metrics_port)]
    targets = {target for job in scrape for static in job.get("static_configs", []) for target in static["targets"]}
    assert f"otel-collector:{collector_metrics[1]}" in targets

    # The UIs the header comment sends people to are published on those host ports.
    for service, port in ((jaeger, 16686), (prometheus, 9090)):
        assert f"{port}:{port}" in service["ports"] and f"http://localhost:{port}" in text


async def test_run_bootstrap_servers_reach_the_sources_that_name_none(broker: str, name: Any, tmp_path: Path) -> None:
    """`--bootstrap-servers` (no STREAMFN_BOOTSTRAP_SERVERS in the environment) is where a KafkaSource naming no
    servers reads, and where its dead letters go: the run sets it for them; the engine carries no servers."""
    topic, group, dlq = name("t"), name("g"), name("dlq")
    await create_topic(broker, topic, 2)
    await produce_values(broker, topic, 10, partitions=2)
    pipeline = write_pipeline(
        tmp_path,
        "from streamfn import App\n"
        "from streamfn.connectors.kafka import KafkaSource, KafkaTopic\n"
        "app = App('flag')\n"
        f"@app.function(source=KafkaSource(topics=[{topic!r}], consumer_group_id={group!r}, session_timeout_ms=6000),\n"
        f"    batch_size=1, maximum_retry_attempts=0, on_failure=KafkaTopic({dlq!r}))\n"
        "def handle(records):\n"
        "    if any(r.value['n'] == 3 for r in records):\n"
        "        raise ValueError('three')\n",
    )
    result = run_cli("run", str(pipeline), "--bootstrap-servers", broker, "--until-idle", "1", timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "embedded" not in result.stdout
    assert await committed(broker, group, topic, 2) == {0: 5, 1: 5}
    (letter,) = await read_topic(broker, dlq, 1, timeout=5)  # {"n": 3}: partition 1, offset 1
    info = json.loads(letter.value)["KafkaBatchInfo"]
    assert (info["bootstrapServers"], info["recordInfo"]["offset"], letter.headers[-4]) == (
        broker,
        1,
        ("streamfn.source.partition", b"1"),
    )
