"""Avro values and keys with fastavro: from a schema file, or in a schema registry's wire format.

Without a registry, a payload is plain Avro binary (no header, no schema inside) written with the configured
schema. With a registry, it is Confluent's wire format: magic byte 0, the writer schema's id as 4 bytes big-endian,
then the Avro binary. Schemas are parsed once (fastavro keeps them compiled); each record is then one
`schemaless_reader` or `schemaless_writer` call, the cheapest way fastavro has to read or write one record.

A reader `schema` with a registry gives Avro schema evolution: every record is read with the schema it was
written with (its id) and resolved into the reader schema, so fields added with defaults appear and dropped fields
disappear, whatever version each producer used.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Mapping, Sequence
from io import BytesIO
from pathlib import Path
from typing import Any, Literal

import fastavro
import orjson

from streamfn.errors import ConfigError
from streamfn.formats.registry import RegistryClient, RegistryError, SchemaNotFound, SchemaRejected
from streamfn.outputs.sink import RejectedOutput, plain

MAGIC_BYTE = 0
HEADER = struct.Struct(">BI")
"""Confluent's wire format header: the magic byte, then the schema id (unsigned 32 bits, big-endian)."""
FASTAVRO_KEYS = ("__fastavro_parsed", "__named_schemas")
"""What `fastavro.parse_schema` adds to a schema; no registry or other reader must see them."""
WRITE_ERRORS = (ValueError, TypeError, AttributeError, KeyError, OverflowError, struct.error)
"""What fastavro raises for a value that does not fit the schema (a missing field, a wrong type, a bad enum...)."""

SchemaSource = str | Path | Mapping[str, Any] | Sequence[Any]
"""An .avsc file's path, or the schema itself as Python values (a record dict, a union list)."""


def load_schema(source: SchemaSource) -> Any:
    """The parsed fastavro schema of an .avsc file or of a schema given as a dict or list.

    A ConfigError names the file and what is wrong with it: parsed at configuration time, a broken schema stops the
    app before it reads any record, rather than failing every one.
    """
    if isinstance(source, str | Path):
        where = f"Avro schema file {str(source)!r}"
        try:
            raw = orjson.loads(Path(source).read_bytes())
        except FileNotFoundError:
            raise ConfigError(f"{where} does not exist") from None
        except OSError as error:
            raise ConfigError(f"{where} cannot be read: {error.strerror}") from None
        except orjson.JSONDecodeError as error:
            raise ConfigError(f"{where} is not JSON: {error}") from None
    else:
        where, raw = "Avro schema", source
    try:
        return fastavro.parse_schema(raw)
    except Exception as error:  # fastavro's parse errors share no base class (SchemaParseException, UnknownType...)
        raise ConfigError(f"{where} is not a valid Avro schema: {type(error).__name__}: {error}") from None


def schema_json(schema: Any) -> str:
    """The schema as JSON for a registry, without fastavro's private keys (an equivalent, fully-qualified schema)."""

    def public(node: Any) -> Any:
        if isinstance(node, dict):
            return {key: public(value) for key, value in node.items() if key not in FASTAVRO_KEYS}
        if isinstance(node, list):
            return [public(item) for item in node]
        return node

    return orjson.dumps(public(schema)).decode()


def schema_name(schema: Any) -> str:
    """How messages name a schema: a named type's full name, or the schema itself for the others."""
    return str(schema["name"]) if isinstance(schema, dict) and "name" in schema else schema_json(schema)


class AvroCodec:
    """One side (`value` or `key`) of a topic in Avro: plain binary with `schema`, or through a schema `registry`.

    With a registry, `schema` is the reader schema (optional for reading: records are then read as written) and the
    writer schema of outputs, registered under Confluent's TopicNameStrategy subject `<topic>-value`/`<topic>-key`
    (or only looked up there with `auto_register=False`, for registries where producers may not register).
    The registry client may be shared (its creator closes it) or owned (`owns_registry`: closed with the codec).
    """

    name = "avro"

    def __init__(
        self,
        schema: SchemaSource | None = None,
        *,
        registry: RegistryClient | None = None,
        side: Literal["value", "key"] = "value",
        auto_register: bool = True,
        owns_registry: bool = False,
    ) -> None:
        if schema is None and registry is None:
            raise ConfigError(f"avro {side}s need a schema (an .avsc file) or a schema registry to read them with")
        self.schema = None if schema is None else load_schema(schema)
        self._json = None if self.schema is None else schema_json(self.schema)
        self._registry = registry
        self._side = side
        self._auto_register = auto_register
        self._owns_registry = owns_registry
        self._readers: dict[int, tuple[Any, Any]] = {}
        """Per schema id: its writer schema, and the reader schema to resolve into (None when the same)."""
        self._failures: dict[int, RegistryError] = {}
        """Why the ids of the last `resolve` that could not be fetched were not; they are tried again next batch."""

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        if self._owns_registry and self._registry is not None:
            await self._registry.close()

    async def resolve(self, data: Sequence[bytes | None]) -> None:
        """Fetch the writer schemas of every schema id in `data` not seen yet, concurrently; never raises."""
        if self._registry is None:
            return
        registry = self._registry
        unknown = {
            schema_id
            for payload in data
            if (schema_id := self._schema_id(payload)) is not None and schema_id not in self._readers
        }
        ids = list(unknown)
        answers = await asyncio.gather(*(registry.schema(schema_id) for schema_id in ids), return_exceptions=True)
        for schema_id, answer in zip(ids, answers, strict=True):
            if isinstance(answer, RegistryError):
                self._failures[schema_id] = answer
            elif isinstance(answer, BaseException):
                self._failures[schema_id] = RegistryError(f"schema id {schema_id}: {type(answer).__name__}: {answer}")
            else:
                self._failures.pop(schema_id, None)
                self._readers[schema_id] = (answer, None if answer == self.schema else self.schema)

    def decode(self, data: bytes | None) -> Any:
        if data is None:
            return None
        if self._registry is None:
            return self._read(data, 0, self.schema, None)
        schema_id = self._schema_id(data)
        if schema_id is None:
            first = f"starts with byte {data[0]}" if data else "is empty"
            raise ValueError(
                f"not in the schema registry wire format: {len(data)} bytes, {first} (expected magic byte 0 and a "
                "4-byte schema id)"
            )
        if schema_id not in self._readers:
            failure = self._failures.get(schema_id)
            if failure is None:
                raise RuntimeError(f"schema id {schema_id} was not resolved: call resolve() with the batch first")
            raise failure.with_traceback(None)
        writer, reader = self._readers[schema_id]
        return self._read(data, HEADER.size, writer, reader)

    def schema_metadata(self, data: bytes | None) -> dict[str, str] | None:
        schema_id = self._schema_id(data)
        return None if schema_id is None else {"dataFormat": "AVRO", "schemaId": str(schema_id)}

    def payload(self, data: bytes | None) -> bytes | None:
        return data[HEADER.size :] if data is not None and self._schema_id(data) is not None else data

    async def encode(self, values: Sequence[Any], topic: str) -> list[bytes | None]:
        schema = self.schema
        if schema is None or self._json is None:
            raise ConfigError(f"avro {self._side}s of outputs need a schema to be written with (an .avsc file)")
        header = b""
        if self._registry is not None:
            subject = f"{topic}-{self._side}"
            find = self._registry.register if self._auto_register else self._registry.lookup
            try:
                schema_id = await find(subject, self._json)
            except (SchemaNotFound, SchemaRejected) as error:
                raise RejectedOutput(str(error)) from error
            header = HEADER.pack(MAGIC_BYTE, schema_id)
        return [None if value is None else header + _write(schema, value, index) for index, value in enumerate(values)]

    def _schema_id(self, data: bytes | None) -> int | None:
        """The schema id of a payload in the registry's wire format; None without a registry or for other bytes."""
        if self._registry is None or data is None or len(data) < HEADER.size or data[0] != MAGIC_BYTE:
            return None
        return int.from_bytes(data[1 : HEADER.size], "big")

    @staticmethod
    def _read(data: bytes, start: int, writer: Any, reader: Any) -> Any:
        """One record from `start`; too few or too many bytes mean it was not written with this schema at all."""
        stream = BytesIO(data)
        stream.seek(start)
        try:
            value = fastavro.schemaless_reader(stream, writer, reader)
        except EOFError:  # fastavro's message is often empty or names a BytesIO object
            raise ValueError(
                f"not a record of Avro schema {schema_name(writer)}: its {len(data) - start} bytes end before the "
                "record does"
            ) from None
        if stream.tell() != len(data):
            raise ValueError(
                f"not a record of Avro schema {schema_name(writer)}: {len(data) - stream.tell()} bytes left after "
                "the record"
            )
        return value


def _write(schema: Any, value: Any, index: int) -> bytes:
    """One output in Avro binary (a pydantic model as its dict); a RejectedOutput when it does not fit `schema`."""
    stream = BytesIO()
    try:
        fastavro.schemaless_writer(stream, schema, plain(value))
    except WRITE_ERRORS as error:
        raise RejectedOutput(
            f"output {index} does not fit Avro schema {schema_name(schema)}: {type(error).__name__}: {error}"
        ) from None
    return stream.getvalue()
