"""Outputs: sinks, how outputs are delivered to them, and what an invocation emits."""
