"""Formats: codecs between bytes and handler values, Avro, and the schema registry client."""
