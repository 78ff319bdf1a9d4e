"""The engine: pollers, partition workers, lanes, batches, invocations, checkpoints, and what keeps them running.

It drives sources, sinks and destinations through their interfaces (streamfn.source, streamfn.outputs.sink,
streamfn.failures.model) and never imports a connector or a client library (enforced: pyproject.toml,
[tool.importlinter])."""
