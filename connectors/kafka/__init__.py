"""Kafka: the source of stream functions (KafkaSource)."""

from streamfn.connectors.kafka.source import KafkaSource

__all__ = ["KafkaSource"]
