"""Connecting to secured clusters: mutual TLS end to end through a TLS terminator, TLS failures as one line, and
what each SASL mechanism hands the Kafka client (the test broker has no SASL to verify it against)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import AbstractTokenProvider
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from conftest import run_cli, start_cli, write_pipeline
from pydantic import SecretStr
from tls import KEY_PASSWORD, TlsCluster, tls_cluster

from streamfn.connectors.kafka import KafkaSource
from streamfn.connectors.kafka.changelog import KafkaChangelog
from streamfn.connectors.kafka.connection import KafkaConnection, client_options
from streamfn.connectors.kafka.msk import MskIamTokenProvider
from streamfn.errors import ConfigError
from streamfn.record import Partition
from streamfn.secrets import Secret
from streamfn.state.changelog import ChangelogEntry


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsCluster]:
    with tls_cluster(tmp_path_factory.mktemp("tls")) as cluster:
        yield cluster


def mutual(cluster: TlsCluster) -> KafkaConnection:
    return KafkaConnection(
        ssl_cafile=cluster.ca,
        ssl_certfile=cluster.client_cert,
        ssl_keyfile=cluster.client_key,
        ssl_key_password=SecretStr(KEY_PASSWORD),
    )


async def tls_read(cluster: TlsCluster, topic: str, count: int) -> list[Any]:
    """The first `count` records of `topic`, read over mutual TLS by an independent consumer."""
    options = await client_options(cluster.servers, mutual(cluster))
    consumer = AIOKafkaConsumer(topic, **options, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    found: list[Any] = []
    try:
        while len(found) < count:
            batches = await consumer.getmany(timeout_ms=200)
            found.extend(r for records in batches.values() for r in records)
    finally:
        await consumer.stop()
    return sorted(found, key=lambda r: (r.partition, r.offset))


PIPELINE = """
import os
from streamfn import App
from streamfn.connectors.kafka import KafkaSource, KafkaTopic
from streamfn.connectors.kafka.connection import KafkaConnection
from streamfn.secrets import Secret

cluster = KafkaConnection(
    ssl_cafile=os.environ["CA"],
    ssl_certfile=os.environ["CERT"],
    ssl_keyfile=os.environ["KEY"],
    ssl_key_password=Secret.from_file(os.environ["KEY_PASSWORD_FILE"]),
)
app = App("tls")

@app.function(
    source=KafkaSource(topics=[os.environ["TOPIC"]], consumer_group_id=os.environ["GROUP"], connection=cluster,
                       session_timeout_ms=6000),
    outputs=[KafkaTopic(os.environ["OUT"])],
    on_failure=KafkaTopic(os.environ["DLQ"]),
    batch_size=1,
    maximum_retry_attempts=0,
)
def handle(records):
    if any(r.value["n"] % 4 == 3 for r in records):
        raise ValueError("n % 4 == 3")
    return [{"doubled": r.value["n"] * 2} for r in records]
"""


def tls_env(cluster: TlsCluster, tmp_path: Path, **names: str) -> dict[str, str]:
    password = tmp_path / "key-password"
    password.write_text(KEY_PASSWORD + "\n")
    return {
        "CA": str(cluster.ca),
        "CERT": str(cluster.client_cert),
        "KEY": str(cluster.client_key),
        "KEY_PASSWORD_FILE": str(password),
        **{name.upper(): value for name, value in names.items()},
    }


def seed_env(cluster: TlsCluster, password_file: str) -> dict[str, str]:
    """`streamfn run --seed` and `produce` name no connection: the STREAMFN_KAFKA_* variables give it."""
    return {
        "STREAMFN_KAFKA_SSL_CAFILE": str(cluster.ca),
        "STREAMFN_KAFKA_SSL_CERTFILE": str(cluster.client_cert),
        "STREAMFN_KAFKA_SSL_KEYFILE": str(cluster.client_key),
        "STREAMFN_KAFKA_SSL_KEY_PASSWORD_FILE": password_file,
    }


def run_over_tls(
    pipeline: Path, cluster: TlsCluster, env: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    process = start_cli("run", str(pipeline), *args, servers=cluster.servers, extra_env=env)
    stdout, stderr = process.communicate(timeout=90)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def run_on_terminal(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`command` with a terminal as its stdout and stderr (script(1)); what it wrote comes back as stdout."""
    script = ["script", "-qec", shlex.join(command), "/dev/null"]
    return subprocess.run(script, env=env, capture_output=True, text=True, timeout=90, check=False)


@pytest.mark.slow
async def test_pipeline_runs_end_to_end_over_mutual_tls(tls: TlsCluster, name: Any, tmp_path: Path) -> None:
    """Seeded, read, handled, written to an output and dead-lettered, all through the TLS terminator with a client
    certificate whose key has a password read from a file; the group's commit and both topics read back over TLS."""
    topic, group, out, dlq = name("t"), name("g"), name("out"), name("dlq")
    env = tls_env(tls, tmp_path, topic=topic, group=group, out=out, dlq=dlq)
    lines = tmp_path / "in.jsonl"
    lines.write_text("".join(f'{{"n": {n}}}\n' for n in range(8)))
    pipeline = write_pipeline(tmp_path, PIPELINE)
    env |= seed_env(tls, env["KEY_PASSWORD_FILE"])
    result = run_over_tls(pipeline, tls, env, "--seed", f"{topic}={lines}", "--until-idle", "1")
    assert result.returncode == 0, result.stderr[-3000:]

    outputs = await tls_read(tls, out, 6)
    assert sorted(json.loads(r.value)["doubled"] for r in outputs) == [0, 2, 4, 8, 10, 12]
    letters = await tls_read(tls, dlq, 2)
    failed = sorted(int(dict(r.headers)["streamfn.source.offset"]) for r in letters)
    assert [json.loads(r.value)["errorMessage"] for r in letters] == ["n % 4 == 3"] * 2
    assert len(failed) == 2
    options = await client_options(tls.servers, mutual(tls))
    consumer = AIOKafkaConsumer(**options, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        committed = [await consumer.committed(TopicPartition(topic, p)) or 0 for p in partitions]
    finally:
        await consumer.stop()
    assert sum(committed) == 8  # every seeded record, over every partition

    status = run_cli("status", str(pipeline), "--json", servers=tls.servers, extra_env=env)
    assert status.returncode == 0, status.stderr
    (function,) = json.loads(status.stdout)["functions"]
    assert (function["total_lag"], function["dead_letters"]) == (0, 2)
    more = run_cli("produce", topic, str(lines), servers=tls.servers, extra_env=env)  # STREAMFN_KAFKA_* again
    assert (more.returncode, more.stdout.strip()) == (0, f"produced 8 records to {topic}"), more.stderr
    redrive = run_cli("redrive", str(pipeline), "--function", "handle", "--dry-run", servers=tls.servers, extra_env=env)
    assert redrive.returncode == 0, redrive.stderr
    assert redrive.stdout.splitlines()[-1] == f"would redrive 2 records from {dlq}"


async def test_state_changelog_over_mutual_tls(tls: TlsCluster, name: Any) -> None:
    """A stateful function's changelog (producer, admin, restoring consumer) on the source's connection."""
    topic, group = name("t"), name("g")
    options = await client_options(tls.servers, mutual(tls))
    admin = AIOKafkaAdminClient(**options)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 2, 1)])
    finally:
        await admin.close()
    changelog = KafkaChangelog(tls.servers, group, [topic], mutual(tls))
    await changelog.start()
    try:
        await changelog.write(Partition(topic, 1), [ChangelogEntry(b"k", b"v", 7)])
        assert await changelog.restore(Partition(topic, 1)) == [ChangelogEntry(b"k", b"v", 7)]
    finally:
        await changelog.stop()


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (
            "wrong CA",
            "the broker's certificate was refused: self-signed certificate in certificate chain "
            "(check ssl_cafile / ssl_ca_pem)",
        ),
        (
            "no client certificate",
            "the broker requires a client certificate (tlsv13 alert certificate required): set ssl_certfile and "
            "ssl_keyfile",
        ),
        ("expired client certificate", "the broker refused the connection: sslv3 alert certificate expired"),
    ],
)
@pytest.mark.slow
def test_tls_failures_end_in_one_line(tls: TlsCluster, name: Any, tmp_path: Path, case: str, expected: str) -> None:
    settings = {
        "wrong CA": f"ssl_cafile={str(tls.other_ca)!r}, ssl_certfile={str(tls.client_cert)!r}, "
        f"ssl_keyfile={str(tls.client_key)!r}, ssl_key_password={KEY_PASSWORD!r}",
        "no client certificate": f"ssl_cafile={str(tls.ca)!r}",
        "expired client certificate": f"ssl_cafile={str(tls.ca)!r}, ssl_certfile={str(tls.expired_cert)!r}, "
        f"ssl_keyfile={str(tls.expired_key)!r}",
    }[case]
    pipeline = write_pipeline(
        tmp_path,
        "from streamfn import App\n"
        "from streamfn.connectors.kafka import KafkaSource\n"
        "from streamfn.connectors.kafka.connection import KafkaConnection\n"
        "app = App('tls')\n"
        f"@app.function(source=KafkaSource(topics=['{name('t')}'], connection=KafkaConnection({settings})))\n"
        "def handle(records): ...\n",
    )
    result = run_over_tls(pipeline, tls, {})
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"error: cannot connect to Kafka at {tls.servers}: TLS handshake failed: {expected}"


@pytest.mark.parametrize("password", ["wrong", None])
async def test_an_unreadable_private_key_is_a_config_error(tls: TlsCluster, password: str | None) -> None:
    """Never OpenSSL's interactive password prompt (a worker would hang): one line naming what to fix."""
    connection = KafkaConnection(
        ssl_cafile=tls.ca, ssl_certfile=tls.client_cert, ssl_keyfile=tls.client_key, ssl_key_password=password
    )
    with pytest.raises(ConfigError) as raised:
        await client_options(tls.servers, connection)
    assert str(raised.value) == (
        "KafkaConnection: the TLS certificates or key are unusable: the private key cannot be read: "
        "ssl_key_password is wrong or missing, or it is no PEM key"
    )


# --- SASL: what reaches the client ------------------------------------------------------------------------------


class CountingProvider(AbstractTokenProvider):  # type: ignore[misc]
    def __init__(self) -> None:
        self.calls = 0

    async def token(self) -> str:
        self.calls += 1
        return f"token-{self.calls}"


def client_settings(options: dict[str, Any]) -> dict[str, Any]:
    """What an aiokafka client made with `options` will authenticate with (its client's settings)."""
    client = AIOKafkaProducer(**options).client
    return {
        "protocol": client._security_protocol,
        "mechanism": client._sasl_mechanism,
        "username": client._sasl_plain_username,
        "password": client._sasl_plain_password,
        "provider": client._sasl_oauth_token_provider,
        "tls": client._ssl_context is not None,
    }


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
async def test_password_mechanisms_reach_the_client(
    mechanism: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "password").write_text("from-a-file\n")
    monkeypatch.setenv("KAFKA_USER", "alice")
    connection = KafkaConnection(
        sasl_mechanism=mechanism,
        sasl_username=Secret.from_env("KAFKA_USER"),
        sasl_password=Secret.from_file(tmp_path / "password"),
    )
    settings = client_settings(await client_options("b1:9096", connection))
    assert settings == {
        "protocol": "SASL_SSL",  # inferred: SASL without TLS must be asked for
        "mechanism": mechanism,
        "username": "alice",
        "password": "from-a-file",
        "provider": None,
        "tls": True,
    }


async def test_oauthbearer_passes_the_users_token_provider() -> None:
    provider = CountingProvider()
    connection = KafkaConnection(
        security_protocol="SASL_PLAINTEXT", sasl_mechanism="OAUTHBEARER", sasl_oauth_token_provider=provider
    )
    settings = client_settings(await client_options("b1:9092", connection))
    assert settings["provider"] is provider
    assert (settings["protocol"], settings["mechanism"], settings["tls"]) == ("SASL_PLAINTEXT", "OAUTHBEARER", False)


async def test_msk_iam_signs_tokens_and_refreshes_them_before_they_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    signed: list[str] = []
    clock = [1_000_000.0]

    def sign(region: str) -> tuple[str, int]:
        signed.append(region)
        return f"token-{len(signed)}", int(clock[0] * 1000) + 15 * 60 * 1000

    from aws_msk_iam_sasl_signer import MSKAuthTokenProvider

    monkeypatch.setattr(MSKAuthTokenProvider, "generate_auth_token", sign)
    monkeypatch.setattr("streamfn.connectors.kafka.msk.time.time", lambda: clock[0])
    connection = KafkaConnection(sasl_mechanism="AWS_MSK_IAM", aws_region="eu-west-1")
    settings = client_settings(await client_options("b-1.msk:9098", connection))
    provider = settings["provider"]
    assert isinstance(provider, MskIamTokenProvider)
    assert (settings["protocol"], settings["mechanism"], settings["tls"]) == ("SASL_SSL", "OAUTHBEARER", True)
    assert [await provider.token(), await provider.token()] == ["token-1", "token-1"]  # reused while valid
    clock[0] += 14 * 60 + 1  # within a minute of expiring
    assert await provider.token() == "token-2"
    assert signed == ["eu-west-1", "eu-west-1"]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"sasl_mechanism": "PLAIN", "sasl_username": "u"},
            "sasl_mechanism PLAIN needs sasl_username and sasl_password",
        ),
        ({"security_protocol": "SASL_SSL"}, "security_protocol SASL_SSL needs a sasl_mechanism"),
        (
            {"security_protocol": "PLAINTEXT", "ssl_key_password": "k"},
            "ssl_key_password is a TLS setting: security_protocol must be SSL or SASL_SSL, not PLAINTEXT",
        ),
        ({"sasl_mechanism": "OAUTHBEARER"}, "sasl_mechanism OAUTHBEARER needs sasl_oauth_token_provider"),
        (
            {"sasl_mechanism": "AWS_MSK_IAM", "security_protocol": "SASL_PLAINTEXT"},
            "sasl_mechanism AWS_MSK_IAM needs security_protocol SASL_SSL",
        ),
        (
            {"sasl_mechanism": "SCRAM-SHA-512", "security_protocol": "SSL"},
            "sasl_mechanism SCRAM-SHA-512 needs security_protocol SASL_SSL or SASL_PLAINTEXT, not SSL",
        ),
        ({"ssl_keyfile": __file__}, "a private key needs its client certificate"),
        ({"ssl_cafile": "/nonexistent/ca.pem"}, "ssl_cafile='/nonexistent/ca.pem' is invalid: no such file"),
    ],
)
def test_impossible_combinations_are_one_line_config_errors(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        KafkaConnection(**settings)
    assert str(raised.value).startswith(f"KafkaConnection: {message}"), str(raised.value)
    assert "\n" not in str(raised.value)


# --- Lambda's SourceAccessConfigurations: secrets from Secrets Manager (moto) ---------------------------------------

REGION = "us-east-1"


@pytest.fixture
def aws(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The AWS configuration chain pointed at moto (what a subprocess needs too)."""
    env = {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    return env


def create_secret(secret_name: str, value: dict[str, str]) -> str:
    """A Secrets Manager secret (moto) in Lambda's JSON layout: its ARN."""
    import boto3

    client = boto3.client("secretsmanager", region_name=REGION)
    return str(client.create_secret(Name=secret_name, SecretString=json.dumps(value))["ARN"])


async def test_scram_credentials_and_root_ca_come_from_secrets_manager(
    aws: dict[str, str], tls: TlsCluster, name: Any, caplog: pytest.LogCaptureFixture
) -> None:
    scram = create_secret(name("scram"), {"username": "svc-orders", "password": "scram-pass-1c9e"})
    root = create_secret(name("ca"), {"certificate": tls.ca.read_text()})
    source = KafkaSource(
        Topics=["orders"],
        SelfManagedEventSource={"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": ["b-1.example:9096", "b-2.example:9096"]}},
        SourceAccessConfigurations=[
            {"Type": "SASL_SCRAM_512_AUTH", "URI": scram},
            {"Type": "SERVER_ROOT_CA_CERTIFICATE", "URI": root},
            {"Type": "VPC_SUBNET", "URI": "subnet:subnet-0123"},
            {"Type": "VPC_SECURITY_GROUP", "URI": "security_group:sg-0123"},
        ],
    )
    assert [r.getMessage() for r in caplog.records if r.name == "streamfn.kafka"] == [
        "SourceAccessConfigurations VPC_SUBNET subnet:subnet-0123 ignored: streamfn connects from where it runs",
        "SourceAccessConfigurations VPC_SECURITY_GROUP security_group:sg-0123 ignored: streamfn connects from where it "
        "runs",
    ]
    assert source.servers(None) == "b-1.example:9096,b-2.example:9096"
    assert source.connection is not None
    options = await client_options("b-1.example:9096", source.connection)
    settings = client_settings(options)
    assert settings == {
        "protocol": "SASL_SSL",
        "mechanism": "SCRAM-SHA-512",
        "username": "svc-orders",
        "password": "scram-pass-1c9e",
        "provider": None,
        "tls": True,
    }
    assert options["ssl_context"].get_ca_certs()[0]["subject"] == ((("commonName", "streamfn test CA"),),)


async def test_a_client_certificate_from_secrets_manager_connects_over_mutual_tls(
    aws: dict[str, str], tls: TlsCluster, name: Any
) -> None:
    """Lambda's CLIENT_CERTIFICATE_TLS_AUTH secret (certificate, encrypted privateKey, privateKeyPassword) and
    SERVER_ROOT_CA_CERTIFICATE, against the TLS terminator: the client bootstraps and reads metadata."""
    client = create_secret(
        name("client"),
        {
            "certificate": tls.client_cert.read_text(),
            "privateKey": tls.client_key.read_text(),
            "privateKeyPassword": KEY_PASSWORD,
        },
    )
    root = create_secret(name("ca"), {"certificate": tls.ca.read_text()})
    source = KafkaSource(
        topics=["orders"],
        SourceAccessConfigurations=[
            {"Type": "CLIENT_CERTIFICATE_TLS_AUTH", "URI": client},
            {"Type": "SERVER_ROOT_CA_CERTIFICATE", "URI": root},
        ],
    )
    options = await client_options(tls.servers, source.connection)
    assert options["security_protocol"] == "SSL"
    consumer = AIOKafkaConsumer(**options, group_id=None)
    await consumer.start()
    try:
        assert isinstance(await consumer.topics(), set)
    finally:
        await consumer.stop()


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([{"Type": "VIRTUAL_HOST", "URI": "/"}], "SourceAccessConfigurations Type 'VIRTUAL_HOST' is invalid"),
        (
            [{"Type": "BASIC_AUTH", "URI": "arn:a"}, {"Type": "CLIENT_CERTIFICATE_TLS_AUTH", "URI": "arn:b"}],
            "SourceAccessConfigurations has BASIC_AUTH and CLIENT_CERTIFICATE_TLS_AUTH: give one authentication",
        ),
        ([{"Type": "BASIC_AUTH"}], 'SourceAccessConfigurations must be a list of {"Type": ..., "URI": ...}'),
    ],
)
def test_source_access_configurations_errors_are_one_line(entries: list[dict[str, str]], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        KafkaSource(topics=["orders"], SourceAccessConfigurations=entries)
    assert str(raised.value).startswith(f"KafkaSource: {message}"), str(raised.value)


# --- secrets never shown ------------------------------------------------------------------------------------------

LEAKY = """
import os
from streamfn import App
from streamfn.connectors.kafka import KafkaSource, KafkaTopic
from streamfn.connectors.kafka.connection import KafkaConnection
from streamfn.secrets import Secret
from streamfn.outputs.sink import SinkRetry

cluster = KafkaConnection(
    ssl_cafile=os.environ["CA"],
    ssl_certfile=os.environ["CERT"],
    ssl_keyfile=os.environ["KEY"],
    ssl_key_password=Secret.from_file(os.environ["KEY_PASSWORD_FILE"]),
)
# SASL over the broker's own listener: the broker has no SASL, so every write there fails (after authenticating
# with the real credentials, read from Secrets Manager and the environment) and its inputs are dead-lettered.
scram = KafkaConnection(
    bootstrap_servers=os.environ["PLAINTEXT"],
    security_protocol="SASL_PLAINTEXT",
    sasl_mechanism="SCRAM-SHA-512",
    sasl_username=Secret.from_aws(os.environ["SCRAM_ARN"], "username"),
    sasl_password=Secret.from_aws(os.environ["SCRAM_ARN"], "password"),
)
plain = KafkaConnection(
    bootstrap_servers=os.environ["PLAINTEXT"],
    security_protocol="SASL_PLAINTEXT",
    sasl_mechanism="PLAIN",
    sasl_username="bob",
    sasl_password=Secret.from_env("PLAIN_PASSWORD"),
)
app = App("leaks")

@app.function(
    source=KafkaSource(topics=[os.environ["TOPIC"]], consumer_group_id=os.environ["GROUP"], connection=cluster,
                       session_timeout_ms=6000),
    outputs=[
        KafkaTopic(os.environ["OUT"] + "-scram", connection=scram, retry=SinkRetry(max_attempts=1)),
        KafkaTopic(os.environ["OUT"] + "-plain", connection=plain, retry=SinkRetry(max_attempts=1)),
    ],
    on_failure=KafkaTopic(os.environ["DLQ"]),
    maximum_retry_attempts=0,
)
def handle(records):
    if any(r.value["n"] == 0 for r in records):
        raise ValueError("record 0 fails")
    return [r.value for r in records]
"""


@pytest.mark.slow
async def test_no_secret_is_ever_shown(aws: dict[str, str], tls: TlsCluster, name: Any, tmp_path: Path) -> None:
    """A run that fails and dead-letters with a private-key password, a SCRAM secret and a PLAIN password
    configured, then status, validate and config errors: none of their outputs holds any of the three."""
    scram_password, plain_password = "scram-7c1d0e55", "plain-93b2aa10"
    topic, group, out, dlq = name("t"), name("g"), name("out"), name("dlq")
    arn = create_secret(name("scram"), {"username": "svc", "password": scram_password})
    env = tls_env(tls, tmp_path, topic=topic, group=group, out=out, dlq=dlq, plaintext=tls.plaintext, scram_arn=arn)
    env |= aws | seed_env(tls, env["KEY_PASSWORD_FILE"]) | {"PLAIN_PASSWORD": plain_password}
    lines = tmp_path / "in.jsonl"
    lines.write_text("".join(f'{{"n": {n}}}\n' for n in range(4)))
    pipeline = write_pipeline(tmp_path, LEAKY)
    shown: list[str] = []

    # On a terminal (script(1) gives it one), so the live view is drawn; logs, metrics and spans go there too.
    command = [sys.executable, "-m", "streamfn", "run", str(pipeline), "--seed", f"{topic}={lines}", "--until-idle"]
    command += ["1", "--log-format", "json", "--log-level", "DEBUG", "--metrics", "console", "--traces", "console"]
    terminal_env = dict(os.environ, **env, STREAMFN_BOOTSTRAP_SERVERS=tls.servers, COLUMNS="200")
    run = run_on_terminal(command, terminal_env)
    assert run.returncode == 0, run.stdout[-3000:]
    shown += [run.stdout, run.stderr]
    assert "streamfn run" in run.stdout  # the live view's title
    assert '"level":"DEBUG"' in run.stdout  # the JSON logs
    assert "streamfn.sink.write.errors" in run.stdout  # the metrics
    assert '"trace_id"' in run.stdout  # the spans
    letters = await tls_read(tls, dlq, 4)  # record 0 failed; 1-3 could not be written to the SASL outputs
    conditions = sorted(json.loads(r.value)["requestContext"]["condition"] for r in letters)
    assert len(letters) == 4, conditions
    shown += [repr((r.key, r.value, r.headers)) for r in letters]
    for command in (("status", str(pipeline)), ("status", str(pipeline), "--json"), ("validate", str(pipeline))):
        result = run_cli(*command, servers=tls.servers, extra_env=env)
        assert result.returncode == 0, result.stderr
        shown += [result.stdout, result.stderr]
    for wrong in (
        f"KafkaConnection(security_protocol='PLAINTEXT', ssl_key_password={KEY_PASSWORD!r})",
        f"KafkaConnection(sasl_mechanism='PLAIN', sasl_username='u', sasl_password={[plain_password]!r})",
        f"KafkaConnection(sasl_mechanism='SCRAM-SHA-512', sasl_username={scram_password!r})",
    ):
        broken = write_pipeline(tmp_path, LEAKY.replace("app = App", f"broken = {wrong}\napp = App"))
        result = run_cli("validate", str(broken), servers=tls.servers, extra_env=env)
        assert result.returncode == 2 and result.stderr.startswith("error: "), result.stderr
        shown += [result.stdout, result.stderr]
    everything = "\n".join(shown)
    for secret in (KEY_PASSWORD, scram_password, plain_password):
        assert secret not in everything
