"""Kafka: the source of stream functions (KafkaSource) and a destination for what fails (KafkaTopic)."""

from streamfn.connectors.kafka.connection import KafkaConnection
from streamfn.connectors.kafka.destination import KafkaTopic
from streamfn.connectors.kafka.source import KafkaSource

__all__ = ["KafkaConnection", "KafkaSource", "KafkaTopic"]
