"""`Function(handler)` as an output: chaining to another function of the same app without a topic.

The outputs of a batch become the other function's batch, run right away inside the calling lane by that
function's own runner: its retries, bisection, partial responses, outputs and `on_failure` all apply. The calling
batch is committed only once the chained batch has run to the end, so a crash replays both (at-least-once, as
through a topic).

Chained records look like records read from a topic: each output is encoded as a KafkaTopic output would encode it
and decoded with the sink's `value_format`, so a function behaves the same whether it is fed through a topic or
directly. They keep the calling batch's topic and partition (a Lambda-style handler gets the same event shape);
their offsets are their positions in the chained batch, and the real origin travels in `streamfn.source.*` headers.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from pydantic import Field

from streamfn.app import App, StreamFunction
from streamfn.dialect import Dialect
from streamfn.engine.runner import FunctionRunner
from streamfn.errors import ConfigError, StrictModel
from streamfn.formats.codec import PlainFormat, plain_codec
from streamfn.observability.stats import FunctionStats
from streamfn.observability.telemetry import Telemetry
from streamfn.outputs.sink import Emitted, SinkContext, SinkRetry, encode
from streamfn.record import Partition, RawRecord, SourceRecord

RunChained = Callable[[Sequence[SourceRecord]], Awaitable[None]]


class Function(StrictModel):
    """Another function of the same app, invoked directly with the outputs as its batch."""

    owner = "Function"

    handler: Callable[..., Any]
    value_format: PlainFormat = "json"
    """How the chained function's native handler receives each output (as from a topic of that format)."""
    retry: SinkRetry = Field(default_factory=SinkRetry)

    def __init__(self, handler: Callable[..., Any] | None = None, /, **values: Any) -> None:
        super().__init__(**({"handler": handler} if handler is not None else {}), **values)

    def __str__(self) -> str:
        return f"Function({getattr(self.handler, '__name__', self.handler)!r})"

    def check(self, source_topics: Sequence[str]) -> None:
        """Nothing to check until the whole app is declared: see check_chains."""

    async def open(self, context: SinkContext) -> ChainWriter:
        return ChainWriter(await context.chain(self.handler, self.value_format))


class ChainWriter:
    def __init__(self, run: RunChained) -> None:
        self._run = run

    async def write(self, outputs: Sequence[Emitted]) -> None:
        now = int(time.time() * 1000)
        records = [
            RawRecord(o.source.topic, o.source.partition, i, now, o.key, _value(o.value), o.headers)
            for i, o in enumerate(outputs)
        ]
        await self._run(records)

    async def close(self) -> None:
        """The chained function's runner is closed by the worker (Chains.close)."""


def _value(value: Any) -> bytes | None:
    return None if value is None else encode(value)


def check_chains(app: App) -> None:
    """Every `Function(...)` output names a function of `app`, and no chain leads back to where it began."""
    for function in app.functions.values():
        _check_targets(app, function, (function.name,))


def _check_targets(app: App, function: StreamFunction, path: tuple[str, ...]) -> None:
    for sink in function.outputs:
        if not isinstance(sink, Function):
            continue
        target = app.by_handler(sink.handler)
        if target is None:
            raise ConfigError(
                f"outputs item {sink} is not a function of app {app.name!r}: declare its handler with "
                "@app.function(...) (a source is optional)",
                function=path[0],
            )
        if target.stateful:
            raise ConfigError(
                f"outputs item {sink} names function {target.name!r}, which keeps windows per source partition: "
                "feed it through a KafkaTopic instead",
                function=path[0],
            )
        if target.name in path:
            raise ConfigError(f"outputs form a cycle: {' -> '.join((*path, target.name))}", function=path[0])
        _check_targets(app, target, (*path, target.name))


class _Detached:
    """A chained batch runs inside the calling lane's write: that lane is the one stopped, by cancellation."""

    busy = 0
    stopping = False


class Chains:
    """Opens, for each calling function, the runners of the functions its `Function(...)` outputs invoke."""

    def __init__(self, app: App, stats: dict[str, FunctionStats], telemetry: Telemetry) -> None:
        check_chains(app)
        self._app = app
        self._stats = stats
        self._telemetry = telemetry
        self._runners: list[FunctionRunner] = []

    def context(self, function: str, dialect: Dialect, connection: Any) -> SinkContext:
        """The sink context of `function`, whose source (or whose caller's) speaks `dialect` and is reached through
        `connection`: its chained functions share them (the Lambda event shape, where dead letters say they came
        from, the sinks' defaults)."""

        async def chain(handler: Callable[..., Any], value_format: str) -> RunChained:
            target = self._app.by_handler(handler)
            assert target is not None, "checked by Chains.check"
            runner = FunctionRunner(
                target,
                stats=self._stats[target.name],
                dialect=dialect,
                connection=connection,
                value_codec=plain_codec(value_format),
                key_codec=None,
                telemetry=self._telemetry.function(target.name),
            )
            self._runners.append(runner)
            await runner.open(self.context(target.name, dialect, connection))

            async def run(records: Sequence[SourceRecord]) -> None:
                if records:
                    await runner.run(Partition(records[0].topic, records[0].partition), records, _Detached())

            return run

        declared = self._app.functions[function]
        exactly_once = declared.config.processing_guarantee == "exactly_once"
        return SinkContext(function, chain, group=declared.group_id, exactly_once=exactly_once, connection=connection)

    async def close(self) -> None:
        for runner in self._runners:
            await runner.close()
        self._runners.clear()
