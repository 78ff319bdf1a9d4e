"""Observability: counters, metrics, tracing, structured logs, health probes and the live progress view."""
