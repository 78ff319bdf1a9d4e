"""Formats through the engine: typed values (`value_model`), key formats, Avro with files and a schema registry
(interoperating with confluent-kafka), Lambda's schema-registry event, and what fails to decode or validate."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import Out, committed, create_topic, produce, run_until_read, run_worker, source
from pydantic import BaseModel, Field
from registry_server import RegistryServer

from streamfn import App, Record
from streamfn.connectors.kafka import KafkaTopic
from streamfn.formats.codec import make_codec
from streamfn.formats.registry import SchemaRegistry


class Order(BaseModel):
    order_id: str
    quantity: int = Field(gt=0)


async def test_values_are_validated_into_the_model_and_invalid_ones_routed_with_the_message(
    broker: str, name: Any
) -> None:
    topic, group, dlq = name("t"), name("g"), name("dlq")
    await create_topic(broker, topic, 1)
    values = [
        b'{"order_id": "o1", "quantity": 2}',
        b'{"order_id": "o2"}',  # missing quantity
        b'{"order_id": "o3", "quantity": 0}',  # fails the model's constraint
        b"not json",
        b'{"order_id": "o5", "quantity": "7"}',  # coerced as pydantic does in lax mode
    ]
    await produce(broker, topic, [Out(v, key=b"c%d" % i, partition=0) for i, v in enumerate(values)])
    seen: list[Any] = []
    app = App("models")

    @app.function(source=source(topic, group, key_format="string"), value_model=Order, on_failure=KafkaTopic(dlq))
    def handler(records: list[Record]) -> None:
        seen.extend((r.key, r.value) for r in records)

    found = await run_until_read(app, broker, {dlq: 3})
    assert seen == [("c0", Order(order_id="o1", quantity=2)), ("c4", Order(order_id="o5", quantity=7))]
    letters = {int(dict(r.headers)["streamfn.source.offset"]): orjson.loads(r.value) for r in found[dlq]}
    assert sorted(letters) == [1, 2, 3]
    assert {letter["requestContext"]["condition"] for letter in letters.values()} == {"DeserializationError"}
    assert letters[1]["errorType"] == "ValidationError"
    assert "quantity\n  Field required" in letters[1]["errorMessage"]
    assert "Input should be greater than 0" in letters[2]["errorMessage"]
    assert letters[3]["errorType"] == "JSONDecodeError"
    assert await committed(broker, group, topic, 1) == {0: 5}


async def test_keys_in_json_are_decoded_and_an_undecodable_key_is_routed(broker: str, name: Any) -> None:
    topic, group, dlq = name("t"), name("g"), name("dlq")
    await create_topic(broker, topic, 1)
    await produce(
        broker,
        topic,
        [
            Out(b'{"n": 0}', key=b'{"tenant": "a", "id": 1}', partition=0),
            Out(b'{"n": 1}', key=b"{broken", partition=0),
            Out(b'{"n": 2}', key=None, partition=0),
        ],
    )
    seen: list[Any] = []
    app = App("keys")

    @app.function(source=source(topic, group, key_format="json"), on_failure=KafkaTopic(dlq))
    def handler(records: list[Record]) -> None:
        seen.extend((r.key, r.value) for r in records)

    found = await run_until_read(app, broker, {dlq: 1})
    assert seen == [({"tenant": "a", "id": 1}, {"n": 0}), (None, {"n": 2})]
    (letter,) = [orjson.loads(r.value) for r in found[dlq]]
    assert letter["requestContext"]["condition"] == "DeserializationError"
    assert letter["payload"]["records"][f"{topic}-0"][0]["offset"] == 1
    assert await committed(broker, group, topic, 1) == {0: 3}


# --- Avro through the broker -------------------------------------------------------------------------------------

ORDER_V1 = {
    "type": "record",
    "name": "Order",
    "namespace": "shop",
    "fields": [{"name": "order_id", "type": "string"}, {"name": "quantity", "type": "int"}],
}
ORDER_V2 = {**ORDER_V1, "fields": [*ORDER_V1["fields"], {"name": "channel", "type": "string", "default": "web"}]}


def confluent_serializer(url: str, schema: dict[str, Any]) -> Any:
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroSerializer

    return AvroSerializer(SchemaRegistryClient({"url": url}), json.dumps(schema))


def confluent_bytes(serializer: Any, topic: str, value: dict[str, Any]) -> bytes:
    from confluent_kafka.serialization import MessageField, SerializationContext

    data: bytes = serializer(value, SerializationContext(topic, MessageField.VALUE))
    return data


async def test_avro_from_confluent_producers_is_read_into_a_newer_schema_and_written_back_for_confluent_consumers(
    broker: str, name: Any, tmp_path: Path
) -> None:
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    topic, group, out, dlq = name("t"), name("g"), name("out"), name("dlq")
    await create_topic(broker, topic, 1)
    await create_topic(broker, out, 1)
    reader = tmp_path / "order-v2.avsc"
    reader.write_text(json.dumps(ORDER_V2))
    with RegistryServer() as registry:
        serializer = confluent_serializer(registry.url, ORDER_V1)
        values = [confluent_bytes(serializer, topic, {"order_id": f"o{i}", "quantity": i}) for i in range(6)]
        values[3] = b"\x00\x00\x00\x00\x63" + values[3][5:]  # schema id 99: unknown to the registry
        await produce(broker, topic, [Out(v, partition=0) for v in values])
        seen: list[dict[str, Any]] = []
        app = App("avro")
        schemas = SchemaRegistry(registry.url)

        @app.function(
            source=source(topic, group, value_format="avro", value_schema=str(reader), schema_registry=schemas),
            on_failure=KafkaTopic(dlq),
            outputs=[KafkaTopic(out, value_format="avro", value_schema=str(reader), schema_registry=schemas)],
        )
        def upgrade(records: list[Record]) -> list[dict[str, Any]]:
            seen.extend(r.value for r in records)
            return [{**r.value, "channel": "shop"} for r in records]

        found = await run_until_read(app, broker, {out: 5, dlq: 1})
        deserializer = AvroDeserializer(SchemaRegistryClient({"url": registry.url}))
        written = [deserializer(r.value, SerializationContext(out, MessageField.VALUE)) for r in found[out]]

    ids = [i for i in range(6) if i != 3]
    assert seen == [{"order_id": f"o{i}", "quantity": i, "channel": "web"} for i in ids]  # v2's default filled in
    assert written == [{"order_id": f"o{i}", "quantity": i, "channel": "shop"} for i in ids]
    (letter,) = [orjson.loads(r.value) for r in found[dlq]]
    assert letter["requestContext"]["condition"] == "DeserializationError"
    assert letter["errorType"] == "SchemaNotFound"
    assert await committed(broker, group, topic, 1) == {0: 6}


@pytest.mark.parametrize("record_format", ["JSON", "SOURCE"])
async def test_lambda_style_handlers_get_lambdas_schema_registry_event(
    broker: str, name: Any, record_format: str
) -> None:
    topic, group = name("t"), name("g")
    await create_topic(broker, topic, 1)
    with RegistryServer() as registry:
        serializer = confluent_serializer(registry.url, ORDER_V1)
        wire = confluent_bytes(serializer, topic, {"order_id": "o1", "quantity": 2})
        await produce(broker, topic, [Out(wire, key=b"c1", partition=0)])
        events: list[dict[str, Any]] = []
        app = App("avro-lambda")

        @app.function(
            source=source(  # Lambda's names, as in a CloudFormation event source mapping
                topic,
                group,
                SchemaRegistryConfig={
                    "SchemaRegistryURI": registry.url,
                    "EventRecordFormat": record_format,
                    "SchemaValidationConfigs": [{"Attribute": "VALUE"}],
                },
            )
        )
        def handler(event: dict[str, Any], context: Any) -> None:
            events.append(event)

        await run_worker(app, broker, lambda: bool(events))
    (record,) = events[0]["records"][f"{topic}-0"]
    assert record["valueSchemaMetadata"] == {"dataFormat": "AVRO", "schemaId": "1"}
    assert "keySchemaMetadata" not in record  # keys are plain bytes here
    assert base64.b64decode(record["key"]) == b"c1"
    value = base64.b64decode(record["value"])
    if record_format == "JSON":
        assert orjson.loads(value) == {"order_id": "o1", "quantity": 2}
    else:
        assert value == wire[5:]  # the Avro body without the registry's header


async def test_filters_match_decoded_avro_values(broker: str, name: Any, tmp_path: Path) -> None:
    topic, group = name("t"), name("g")
    await create_topic(broker, topic, 1)
    schema = tmp_path / "order.avsc"
    schema.write_text(json.dumps(ORDER_V1))
    codec = make_codec("avro", side="value", schema=str(schema))
    values = await codec.encode([{"order_id": f"o{i}", "quantity": i} for i in range(10)], topic)
    await produce(broker, topic, [Out(v, partition=0) for v in values])
    seen: list[str] = []
    app = App("avro-filters")

    @app.function(
        source=source(topic, group, value_format="avro", value_schema=str(schema)),
        filter_criteria={"Filters": [{"Pattern": '{"value": {"quantity": [{"numeric": [">=", 7]}]}}'}]},
    )
    def handler(records: list[Record]) -> None:
        seen.extend(r.value["order_id"] for r in records)

    await run_worker(app, broker, lambda: len(seen) >= 3, settle=0.5)
    assert seen == ["o7", "o8", "o9"]
    assert await committed(broker, group, topic, 1) == {0: 10}
