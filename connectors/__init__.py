"""Connectors to external systems, one package per system: streamfn.connectors.<system>."""
