"""Avro with schema files and a Confluent-compatible schema registry, against a real local registry (no Kafka needed).

The registry is tests/registry_server.py over real HTTP(S); confluent-kafka's own AvroSerializer and
AvroDeserializer, with its own SchemaRegistryClient on the same registry, check that the bytes are Confluent's.
"""

from __future__ import annotations

import ssl
import struct
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import fastavro
import orjson
import pytest
from pydantic import BaseModel
from registry_server import Certificates, RegistryServer, make_certificates

from streamfn.errors import ConfigError
from streamfn.formats.avro import AvroCodec, load_schema
from streamfn.formats.registry import (
    RegistryClient,
    RegistryError,
    RegistryUnavailable,
    SchemaNotFound,
    SchemaRegistry,
    SchemaRejected,
)
from streamfn.outputs.sink import RejectedOutput

ORDER_V1: dict[str, Any] = {
    "type": "record",
    "name": "Order",
    "namespace": "shop",
    "fields": [{"name": "id", "type": "string"}, {"name": "amount", "type": "double"}],
}
ORDER_V2: dict[str, Any] = {
    **ORDER_V1,
    "fields": [*ORDER_V1["fields"], {"name": "currency", "type": "string", "default": "EUR"}],
}
ORDER = {"id": "o-1", "amount": 12.5}
ORDER_BODY = b"\x06o-1" + struct.pack("<d", 12.5)
"""ORDER in Avro binary: the string as zigzag length 3 (0x06) and its bytes, the double little-endian."""


class Order(BaseModel):
    id: str
    amount: float


@pytest.fixture
def registry() -> Iterator[RegistryServer]:
    with RegistryServer() as server:
        yield server


@pytest.fixture
async def client(registry: RegistryServer) -> AsyncIterator[RegistryClient]:
    client = RegistryClient(SchemaRegistry(registry.url, timeout=2))
    yield client
    await client.close()


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


def write_avsc(directory: Path, schema: Any) -> Path:
    path = directory / "order.avsc"
    path.write_bytes(orjson.dumps(schema))
    return path


def wire(schema_id: int, body: bytes) -> bytes:
    return b"\x00" + schema_id.to_bytes(4, "big") + body


async def decoded(codec: AvroCodec, payloads: Sequence[bytes | None]) -> list[Any]:
    await codec.resolve(payloads)
    return [codec.decode(payload) for payload in payloads]


# --- schema files ---------------------------------------------------------------------------------------------------


def test_load_schema_from_file_equals_the_dict(tmp_path: Path) -> None:
    assert load_schema(write_avsc(tmp_path, ORDER_V1)) == fastavro.parse_schema(ORDER_V1)
    assert load_schema(str(write_avsc(tmp_path, ORDER_V1)))["name"] == "shop.Order"


SCHEMA_ERRORS: dict[str, tuple[bytes | None, str]] = {
    "missing file": (None, "does not exist"),
    "not JSON": (
        b"{type: record",
        "is not JSON: unexpected character, expected a string key: line 1 column 2 (char 1)",
    ),
    "unknown type": (
        orjson.dumps({**ORDER_V1, "fields": [{"name": "id", "type": "strng"}]}),
        "is not a valid Avro schema: UnknownType: shop.strng",
    ),
    "bad default": (
        orjson.dumps({**ORDER_V1, "fields": [{"name": "n", "type": "int", "default": "x"}]}),
        "is not a valid Avro schema: SchemaParseException: Default value <x> must match schema type: int",
    ),
}


@pytest.mark.parametrize("case", SCHEMA_ERRORS)
def test_a_broken_schema_file_is_a_config_error_naming_it(tmp_path: Path, case: str) -> None:
    content, problem = SCHEMA_ERRORS[case]
    path = tmp_path / "order.avsc"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as raised:
        load_schema(path)
    assert str(raised.value) == f"Avro schema file {str(path)!r} {problem}"


def test_an_inline_schema_error_and_a_codec_without_schema_or_registry() -> None:
    with pytest.raises(ConfigError) as raised:
        load_schema({"type": "record", "fields": []})
    assert str(raised.value).startswith(
        'Avro schema is not a valid Avro schema: SchemaParseException: "name" is a required field'
    )
    with pytest.raises(ConfigError) as raised:
        AvroCodec(side="key")
    assert str(raised.value) == "avro keys need a schema (an .avsc file) or a schema registry to read them with"


# --- plain Avro binary with a schema file ---------------------------------------------------------------------------


async def test_plain_avro_round_trip_with_a_schema_file(tmp_path: Path) -> None:
    codec = AvroCodec(write_avsc(tmp_path, ORDER_V1))
    encoded = await codec.encode([ORDER, None, Order(id="o-2", amount=1.0)], "orders")
    assert encoded == [ORDER_BODY, None, b"\x06o-2" + struct.pack("<d", 1.0)]
    assert await decoded(codec, encoded) == [ORDER, None, {"id": "o-2", "amount": 1.0}]
    assert codec.schema_metadata(ORDER_BODY) is None
    assert codec.payload(ORDER_BODY) == ORDER_BODY


NOT_THIS_SCHEMA: dict[str, tuple[bytes, str]] = {
    "truncated": (ORDER_BODY[:-2], "its 10 bytes end before the record does"),
    "empty": (b"", "its 0 bytes end before the record does"),
    "bytes left over": (ORDER_BODY + b"\x00\x01", "2 bytes left after the record"),
    "JSON": (orjson.dumps(ORDER), "its 26 bytes end before the record does"),
}


@pytest.mark.parametrize("case", NOT_THIS_SCHEMA)
async def test_bytes_not_written_with_the_schema_fail_to_decode(case: str) -> None:
    data, problem = NOT_THIS_SCHEMA[case]
    codec = AvroCodec(ORDER_V1)
    await codec.resolve([data])
    with pytest.raises(ValueError) as raised:
        codec.decode(data)
    assert str(raised.value) == f"not a record of Avro schema shop.Order: {problem}"


VALUES_THAT_DO_NOT_FIT: dict[str, tuple[Any, str]] = {
    "missing field": ({"id": "o-1"}, "ValueError: no value and no default for amount"),
    "wrong type": ({"id": 7, "amount": 1.0}, "TypeError: must be string on field id"),
    "not a number": ({"id": "o-1", "amount": "x"}, "ValueError: could not convert string to float: 'x'"),
}


@pytest.mark.parametrize("case", VALUES_THAT_DO_NOT_FIT)
async def test_a_value_that_does_not_fit_the_schema_is_a_rejected_output(case: str) -> None:
    value, problem = VALUES_THAT_DO_NOT_FIT[case]
    codec = AvroCodec(ORDER_V1)
    with pytest.raises(RejectedOutput) as raised:
        await codec.encode([ORDER, value], "orders")
    assert str(raised.value) == f"output 1 does not fit Avro schema shop.Order: {problem}"


# --- the registry's wire format -------------------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["value", "key"])
async def test_registry_round_trip_in_the_wire_format(
    registry: RegistryServer, client: RegistryClient, side: Literal["value", "key"]
) -> None:
    codec = AvroCodec(ORDER_V1, registry=client, side=side)
    first = await codec.encode([ORDER, None], "orders")
    second = await codec.encode([Order(id="o-1", amount=12.5)], "orders")
    assert first == [b"\x00\x00\x00\x00\x01" + ORDER_BODY, None]
    assert second == [first[0]]
    assert registry.requests == [("POST", f"/subjects/orders-{side}/versions")]  # registered once, then cached
    assert registry.state.subjects[f"orders-{side}"].versions == [1]

    reader = AvroCodec(registry=client, side=side)  # no reader schema: read as written
    assert await decoded(reader, first) == [ORDER, None]
    assert reader.schema_metadata(first[0]) == {"dataFormat": "AVRO", "schemaId": "1"}
    assert reader.payload(first[0]) == ORDER_BODY
    assert reader.schema_metadata(None) is None
    assert reader.payload(None) is None


async def test_schemas_are_fetched_once_per_id_all_ids_of_a_batch_together(
    registry: RegistryServer, client: RegistryClient
) -> None:
    v1 = await client.register("orders-value", orjson.dumps(ORDER_V1).decode())
    v2 = await client.register("orders-value", orjson.dumps(ORDER_V2).decode())
    other = await client.register("other-value", orjson.dumps(ORDER_V1).decode())
    assert (v1, v2, other) == (1, 2, 1)  # one id per schema, across subjects
    registry.requests.clear()
    codec = AvroCodec(registry=client)
    batch = [wire(v1, ORDER_BODY), wire(v2, ORDER_BODY + b"\x06USD"), wire(v1, ORDER_BODY)]
    assert await decoded(codec, batch) == [ORDER, {**ORDER, "currency": "USD"}, ORDER]
    assert sorted(registry.requests) == [("GET", "/schemas/ids/1"), ("GET", "/schemas/ids/2")]
    assert await decoded(codec, batch) == [ORDER, {**ORDER, "currency": "USD"}, ORDER]
    assert len(registry.requests) == 2  # nothing fetched again: ids are immutable


EVOLUTION: dict[str, tuple[dict[str, Any], bytes, dict[str, Any], dict[str, Any]]] = {
    "v2 reader adds a field with its default": (ORDER_V1, ORDER_BODY, ORDER_V2, {**ORDER, "currency": "EUR"}),
    "v1 reader drops the new field": (ORDER_V2, ORDER_BODY + b"\x06USD", ORDER_V1, ORDER),
    "same schema": (ORDER_V2, ORDER_BODY + b"\x06USD", ORDER_V2, {**ORDER, "currency": "USD"}),
}


@pytest.mark.parametrize("case", EVOLUTION)
async def test_schema_evolution_reads_into_the_reader_schema(client: RegistryClient, case: str) -> None:
    writer, body, reader, expected = EVOLUTION[case]
    schema_id = await client.register("orders-value", orjson.dumps(writer).decode())
    assert await decoded(AvroCodec(reader, registry=client), [wire(schema_id, body)]) == [expected]


async def test_a_writer_schema_the_reader_cannot_resolve_fails_that_record(client: RegistryClient) -> None:
    required = {**ORDER_V1, "fields": [*ORDER_V1["fields"], {"name": "customer", "type": "string"}]}
    schema_id = await client.register("orders-value", orjson.dumps(ORDER_V1).decode())
    codec = AvroCodec(required, registry=client)
    await codec.resolve([wire(schema_id, ORDER_BODY)])
    with pytest.raises(fastavro.read.SchemaResolutionError, match="No default value for field customer"):
        codec.decode(wire(schema_id, ORDER_BODY))


async def test_unknown_schema_id_fails_decode_not_resolve(registry: RegistryServer, client: RegistryClient) -> None:
    codec = AvroCodec(ORDER_V1, registry=client)
    batch = [wire(7, ORDER_BODY), b"\x01\x00\x00\x00\x07", b"\x00\x00"]
    await codec.resolve(batch)  # does not raise
    with pytest.raises(SchemaNotFound) as raised:
        codec.decode(batch[0])
    assert str(raised.value) == (
        f"schema registry {registry.url} has no schema id 7: 404 Schema 7 not found (error code 40403)"
    )
    assert codec.schema_metadata(batch[0]) == {"dataFormat": "AVRO", "schemaId": "7"}
    for data, first in ((batch[1], "starts with byte 1"), (batch[2], "starts with byte 0")):
        with pytest.raises(ValueError) as not_wire:
            codec.decode(data)
        assert str(not_wire.value) == (
            f"not in the schema registry wire format: {len(data)} bytes, {first} (expected magic byte 0 and a "
            "4-byte schema id)"
        )
        assert codec.schema_metadata(data) is None
        assert codec.payload(data) == data


OUTAGES: dict[str, tuple[str, str]] = {
    "stopped": (
        "is unreachable: ConnectError: All connection attempts failed",
        "is unreachable: ConnectError: All connection attempts failed",
    ),
    "503": (
        "failed for schema id 1: 503 Schema Registry is unavailable (error code 503)",
        "failed for schema under subject 'other-topic-value': 503 Schema Registry is unavailable (error code 503)",
    ),
}


@pytest.mark.parametrize("outage", OUTAGES)
async def test_a_registry_that_is_down_fails_records_and_outputs_retryably(
    registry: RegistryServer, client: RegistryClient, outage: str
) -> None:
    on_decode, on_encode = OUTAGES[outage]
    schema_id = await client.register("orders-value", orjson.dumps(ORDER_V1).decode())
    if outage == "stopped":
        registry.stop()
    else:
        registry.outage = 503
    codec = AvroCodec(ORDER_V1, registry=client)
    await codec.resolve([wire(schema_id, ORDER_BODY)])  # does not raise
    with pytest.raises(RegistryUnavailable) as decoding:
        codec.decode(wire(schema_id, ORDER_BODY))
    assert str(decoding.value) == f"schema registry {registry.url} {on_decode}"
    with pytest.raises(RegistryUnavailable) as encoding:  # not a RejectedOutput: the engine retries the write
        await codec.encode([ORDER], "other-topic")
    assert str(encoding.value) == f"schema registry {registry.url} {on_encode}"

    if outage == "stopped":
        registry.start()
    else:
        registry.outage = None
    await codec.resolve([wire(schema_id, ORDER_BODY)])  # tried again: the registry is back
    assert codec.decode(wire(schema_id, ORDER_BODY)) == ORDER
    assert await codec.encode([ORDER], "other-topic") == [wire(schema_id, ORDER_BODY)]


async def test_outputs_may_only_look_up_a_schema_registered_elsewhere(
    registry: RegistryServer, client: RegistryClient
) -> None:
    codec = AvroCodec(ORDER_V1, registry=client, auto_register=False)
    with pytest.raises(RejectedOutput) as raised:
        await codec.encode([ORDER], "orders")
    assert str(raised.value) == (
        f"schema registry {registry.url} has no schema under subject 'orders-value': 404 Subject 'orders-value' "
        "not found. (error code 40401)"
    )
    # registered by someone else, in another spelling of the same schema (full name, no namespace)
    same = {key: value for key, value in ORDER_V1.items() if key != "namespace"} | {"name": "shop.Order"}
    registry.state.register("orders-value", {"schema": orjson.dumps(same).decode()})
    assert await codec.encode([ORDER], "orders") == [wire(1, ORDER_BODY)]
    assert ("POST", "/subjects/orders-value/versions") not in registry.requests


async def test_an_invalid_schema_is_rejected_by_the_registry(registry: RegistryServer, client: RegistryClient) -> None:
    with pytest.raises(SchemaRejected) as raised:
        await client.register("orders-value", '{"type": "recrd"}')
    assert raised.value.status == 422
    assert raised.value.code == 42201
    assert str(raised.value).startswith(f"schema registry {registry.url} rejected schema under subject")


# --- authentication and TLS -----------------------------------------------------------------------------------------


AUTH: dict[str, tuple[tuple[str, str] | None, str | None]] = {
    "right password": (("svc", "s3cret"), None),
    "wrong password": (("svc", "guess"), "refused the credentials: 401 Unauthorized (error code 401)"),
    "no credentials": (None, "refused the credentials: 401 Unauthorized (error code 401)"),
}


@pytest.mark.parametrize("case", AUTH)
async def test_basic_auth(case: str) -> None:
    credentials, problem = AUTH[case]
    with RegistryServer(basic_auth=("svc", "s3cret")) as server:
        client = RegistryClient(SchemaRegistry(server.url, basic_auth=credentials))
        try:
            if problem is None:
                assert await client.register("orders-value", orjson.dumps(ORDER_V1).decode()) == 1
            else:
                with pytest.raises(RegistryError) as raised:
                    await client.register("orders-value", orjson.dumps(ORDER_V1).decode())
                assert str(raised.value) == f"schema registry {server.url} {problem}"
                assert not isinstance(raised.value, RegistryUnavailable)
        finally:
            await client.close()
    assert "s3cret" not in repr(SchemaRegistry(server.url, basic_auth=("svc", "s3cret")))


TLS: dict[str, tuple[bool, bool, ssl.TLSVersion, str | None]] = {
    "mutual TLS": (True, True, ssl.TLSVersion.MAXIMUM_SUPPORTED, None),
    "server CA unknown": (
        False,
        True,
        ssl.TLSVersion.MAXIMUM_SUPPORTED,
        "has a certificate not trusted here (ca_file?): [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: "
        "self-signed certificate in certificate chain",
    ),
    # TLS 1.2: the server refuses a client without certificate during the handshake. Under TLS 1.3 it does so after
    # the client sent its request, which the client sees as that alert or as a reset connection, depending on timing.
    "no client certificate": (
        True,
        False,
        ssl.TLSVersion.TLSv1_2,
        "refused the TLS connection: [SSL: SSLV3_ALERT_HANDSHAKE_FAILURE] sslv3 alert handshake failure",
    ),
}


@pytest.mark.parametrize("case", TLS)
async def test_tls_with_a_private_ca_and_a_client_certificate(certificates: Certificates, case: str) -> None:
    trust_ca, present_cert, tls_version, problem = TLS[case]
    server_tls = certificates.server_context(require_client_cert=True, tls_version=tls_version)
    with RegistryServer(tls=server_tls) as server:
        config = SchemaRegistry(
            server.url,
            ca_file=certificates.ca if trust_ca else None,
            cert_file=certificates.client_cert if present_cert else None,
            key_file=certificates.client_key if present_cert else None,
        )
        client = RegistryClient(config)
        try:
            if problem is None:
                assert await client.register("orders-value", orjson.dumps(ORDER_V1).decode()) == 1
                assert await client.schema(1) == fastavro.parse_schema(ORDER_V1)
            else:
                with pytest.raises(RegistryError) as raised:
                    await client.register("orders-value", orjson.dumps(ORDER_V1).decode())
                assert str(raised.value).startswith(f"schema registry {server.url} {problem} (_ssl.c:")
                assert not isinstance(raised.value, RegistryUnavailable)  # configuration: no retry fixes it
        finally:
            await client.close()


EXISTING_FILE = Path(__file__)
"""Any file will do: certificate files are only checked to exist when configured, and read when used."""
CONFIG_ERRORS: dict[str, tuple[dict[str, Any], str]] = {
    "not http": ({"url": "ftp://registry"}, "url='ftp://registry' is invalid: must be an http:// or https:// URL"),
    "missing CA file": (
        {"url": "https://registry", "ca_file": "/nonexistent/ca.pem"},
        "ca_file='/nonexistent/ca.pem' is invalid: no such file",
    ),
    "key without certificate": (
        {"url": "https://registry", "key_file": EXISTING_FILE},
        "key_file is the key of a client certificate: set cert_file too",
    ),
    "TLS over http": (
        {"url": "http://registry", "ca_file": EXISTING_FILE},
        "ca_file and cert_file are TLS settings: the url must be https://",
    ),
    "typo": ({"url": "http://registry", "timout": 3}, "unknown parameter 'timout' (did you mean 'timeout'?)"),
}


@pytest.mark.parametrize("case", CONFIG_ERRORS)
def test_registry_config_errors(case: str) -> None:
    values, problem = CONFIG_ERRORS[case]
    with pytest.raises(ConfigError) as raised:
        SchemaRegistry(**values)
    assert str(raised.value).startswith(f"SchemaRegistry: {problem}")


@pytest.mark.parametrize("field", ["ca_file", "cert_file"])
def test_tls_files_that_are_not_pem_are_a_config_error(field: str) -> None:
    with pytest.raises(ConfigError) as raised:
        RegistryClient(SchemaRegistry("https://registry", **{field: EXISTING_FILE}))
    assert str(raised.value).startswith("SchemaRegistry: the TLS files of https://registry cannot be used: [")


# --- interoperability with confluent-kafka's serializers ------------------------------------------------------------


def confluent() -> Any:
    """confluent-kafka's schema registry module, or a skip when it is not installed."""
    return pytest.importorskip("confluent_kafka.schema_registry")


async def test_confluent_avro_serializer_output_decodes_in_streamfn(
    registry: RegistryServer, client: RegistryClient
) -> None:
    schema_registry = confluent()
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    serializer = AvroSerializer(
        schema_registry.SchemaRegistryClient({"url": registry.url}), orjson.dumps(ORDER_V1).decode()
    )
    values = [ORDER, {"id": "o-2", "amount": -3.25}]
    data = [serializer(value, SerializationContext("orders", MessageField.VALUE)) for value in values]
    assert data[0] == wire(1, ORDER_BODY)
    assert await decoded(AvroCodec(registry=client), data) == values
    assert await decoded(AvroCodec(ORDER_V2, registry=client), data) == [{**v, "currency": "EUR"} for v in values]
    # the same schema, registered by streamfn for outputs to the same topic, has confluent-kafka's id
    assert await AvroCodec(ORDER_V1, registry=client).encode([values[1]], "orders") == [data[1]]


async def test_streamfn_outputs_decode_with_confluent_avro_deserializer(
    registry: RegistryServer, client: RegistryClient
) -> None:
    schema_registry = confluent()
    from confluent_kafka.schema_registry.avro import AvroDeserializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    values = [{**ORDER, "currency": "USD"}, Order(id="o-2", amount=2.0), None]
    key_codec = AvroCodec(["null", "string"], registry=client, side="key")
    encoded = await AvroCodec(ORDER_V2, registry=client).encode(values, "orders")
    keys = await key_codec.encode(["k-1"], "orders")
    deserializer = AvroDeserializer(schema_registry.SchemaRegistryClient({"url": registry.url}))
    value_context = SerializationContext("orders", MessageField.VALUE)
    assert [deserializer(data, value_context) for data in encoded] == [
        {**ORDER, "currency": "USD"},
        {"id": "o-2", "amount": 2.0, "currency": "EUR"},
        None,
    ]
    assert deserializer(keys[0], SerializationContext("orders", MessageField.KEY)) == "k-1"
    assert sorted(registry.state.subjects) == ["orders-key", "orders-value"]
