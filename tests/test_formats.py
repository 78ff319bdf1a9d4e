"""Formats through the engine: typed values (`value_model`), key formats, and what fails to decode or validate."""

from __future__ import annotations

from typing import Any

import orjson
from conftest import Out, committed, create_topic, produce, run_until_read, source
from pydantic import BaseModel, Field

from streamfn import App, Record
from streamfn.connectors.kafka import KafkaTopic


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
