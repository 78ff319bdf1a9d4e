"""Observability: counters, metrics, tracing and structured logs (what `streamfn run` serves from them, health
probes and the live progress view, reads the running worker and sits in streamfn.cli)."""
