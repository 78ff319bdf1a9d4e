"""Formats: how a topic's bytes become the values handlers receive, and how outputs become bytes again.

A `Codec` serves one side (value or key) of one source or output. Decoding stays synchronous, so the per-record
hot path never awaits; formats that need I/O (Avro through a schema registry: unknown schema ids) do it in
`resolve`, once per batch, before any record of it is decoded, and in `encode`, once per batch of outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import orjson
from pydantic import BaseModel

from streamfn.outputs.sink import encode as encode_any

PlainFormat = Literal["json", "string", "bytes"]
Format = Literal["json", "string", "bytes", "avro"]


class Codec(Protocol):
    """The bytes of one side (value or key) of a topic, decoded and encoded."""

    name: str
    """The format's name, as configured ("json", "avro", ...)."""

    async def open(self) -> None:
        """Before the first batch: compile schemas, connect to a registry."""

    async def close(self) -> None: ...

    async def resolve(self, data: Sequence[bytes | None]) -> None:
        """Make whatever these payloads refer to known (a registry's schema ids), so `decode` needs no I/O.

        Must not raise for a payload that cannot be resolved: `decode` raises for it, and that record alone fails
        with a DeserializationError."""

    def decode(self, data: bytes | None) -> Any:
        """The value; raises for bytes that are not in this format (the record then fails, never the batch)."""

    def schema_metadata(self, data: bytes | None) -> dict[str, str] | None:
        """Lambda's `{"dataFormat", "schemaId"}` of a payload in a registry's wire format, else None."""

    def payload(self, data: bytes | None) -> bytes | None:
        """The bytes without a registry's wire header (Lambda's EventRecordFormat SOURCE); the bytes otherwise."""

    async def encode(self, values: Sequence[Any], topic: str) -> list[bytes | None]:
        """Bytes for outputs written to `topic` (a registry subject derives from it); None stays None."""


@runtime_checkable
class Validating(Protocol):
    """A codec whose values a function's `value_model` validates in part (DynamoDB Streams' changes: their new
    image), not whole."""

    def validator(self, model: type[BaseModel]) -> Callable[[Any], Any]:
        """Validates one decoded value into `model`: the value with the validated part; raises if it fails."""


def value_validator(codec: Codec, model: type[BaseModel]) -> Callable[[Any], Any]:
    """How a function's `value_model` validates the values `codec` decodes: whole, unless the codec says otherwise."""
    return codec.validator(model) if isinstance(codec, Validating) else model.model_validate


class PlainCodec:
    """A format that needs no schema: json, string, bytes."""

    def __init__(self, name: str, decode: Callable[[bytes | None], Any]) -> None:
        self.name = name
        self.decode = decode

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def resolve(self, data: Sequence[bytes | None]) -> None:
        pass

    def schema_metadata(self, data: bytes | None) -> dict[str, str] | None:
        return None

    def payload(self, data: bytes | None) -> bytes | None:
        return data

    async def encode(self, values: Sequence[Any], topic: str) -> list[bytes | None]:
        return [None if value is None else encode_any(value) for value in values]


def _bytes(data: bytes | None) -> Any:
    return data


def _string(data: bytes | None) -> Any:
    return None if data is None else data.decode("utf-8")


def _json(data: bytes | None) -> Any:
    return None if data is None else orjson.loads(data)


DECODERS: dict[str, Callable[[bytes | None], Any]] = {"json": _json, "string": _string, "bytes": _bytes}
"""The formats that need no schema, by name."""


def make_codec(name: str, *, side: Literal["value", "key"], schema: Any = None, registry: Any = None) -> Codec:
    """The codec of one side of a topic: `schema` an Avro schema (.avsc path or dict), `registry` a
    SchemaRegistry (streamfn.formats.registry) whose wire format the values are in."""
    if name != "avro":
        return plain_codec(name)
    from streamfn.formats.avro import AvroCodec  # fastavro (and httpx, for a registry) only when Avro is used
    from streamfn.formats.registry import RegistryClient

    client = None if registry is None else RegistryClient(registry)
    return AvroCodec(schema, registry=client, side=side, owns_registry=True)


async def open_codecs(*codecs: Codec | None) -> None:
    for codec in codecs:
        if codec is not None:
            await codec.open()


async def close_codecs(*codecs: Codec | None) -> None:
    for codec in codecs:
        if codec is not None:
            await codec.close()


def plain_codec(name: str) -> PlainCodec:
    return PlainCodec(name, DECODERS[name])


def is_plain(codec: Codec | None) -> bool:
    """Nothing to resolve or validate beyond decoding (no schema, no registry)."""
    return codec is None or isinstance(codec, PlainCodec)
