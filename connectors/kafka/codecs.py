"""The formats of a topic's values and keys, as a KafkaSource reads them and a KafkaTopic output writes them."""

from __future__ import annotations

from typing import Any

from pydantic import model_validator

from streamfn.errors import StrictModel
from streamfn.formats.codec import Codec, Format, make_codec


class TopicFormat(StrictModel):
    """The formats of a topic's values and keys: the parameters KafkaSource and KafkaTopic share."""

    value_format: Format = "json"
    """json (as an output, str and bytes values go as they are), string, bytes, or avro (with `value_schema` and/or
    `schema_registry`)."""
    key_format: Format = "bytes"
    """bytes (the default) leaves keys as they are."""
    value_schema: str | dict[str, Any] | None = None
    """Avro: an .avsc file (or the parsed schema): the writer schema of plain Avro values and of outputs, or the
    reader schema values are resolved into when they carry a registry's schema id (schema evolution)."""
    key_schema: str | dict[str, Any] | None = None
    schema_registry: Any = None
    """A SchemaRegistry(url, ...): Avro values (and keys) are in Confluent's wire format (magic byte, schema id);
    outputs register their schema under `<topic>-value` / `<topic>-key`."""

    @model_validator(mode="after")
    def _avro_has_a_schema(self) -> Any:
        """Avro sides have a schema or a registry, schema files load (a ConfigError naming the file), and a
        registry is a SchemaRegistry: at declaration, not when the worker starts."""
        if self.schema_registry is not None:
            from streamfn.formats.registry import SchemaRegistry

            if not isinstance(self.schema_registry, SchemaRegistry):
                raise ValueError("schema_registry must be a SchemaRegistry(url, ...)")
        for side in ("value", "key"):
            schema = getattr(self, f"{side}_schema")
            if getattr(self, f"{side}_format") != "avro":
                if schema is not None:
                    raise ValueError(f"{side}_schema is for {side}_format='avro'")
                continue
            if schema is None and self.schema_registry is None:
                raise ValueError(f"{side}_format='avro' needs {side}_schema (an .avsc file) or schema_registry")
            if schema is not None:
                from streamfn.formats.avro import load_schema

                load_schema(schema)
        return self

    def codecs(self) -> tuple[Codec, Codec | None]:
        """The value codec and the key codec (None when keys stay bytes)."""
        registry = self.schema_registry
        value = make_codec(self.value_format, side="value", schema=self.value_schema, registry=registry)
        if self.key_format == "bytes":
            return value, None
        return value, make_codec(self.key_format, side="key", schema=self.key_schema, registry=registry)
