"""The `streamfn` command: run, validate, produce, redrive and status.

Every configuration problem ends the same way: one line on stderr naming the function, field, value and what is
allowed, and exit code 2, with no traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from streamfn.app import App
from streamfn.capabilities import LocalSystem, Produced, Producing, Redrivable
from streamfn.cli.health import DEFAULT_STUCK_AFTER_SECONDS
from streamfn.cli.live import show_progress
from streamfn.cli.loader import load_app
from streamfn.cli.operations import PROGRESS_INTERVAL_SECONDS, Operations, operations
from streamfn.cli.status import report as status_report
from streamfn.cli.status import status_table
from streamfn.cli.systems import SERVERS_ENV, default_source
from streamfn.cli.workers import supervise, worker_count, write_report
from streamfn.engine.poller import CONNECT_TIMEOUT_SECONDS
from streamfn.engine.supervision import ENGINE_FAILURE_EXIT, EngineFailure
from streamfn.engine.worker import FunctionSummary, Worker
from streamfn.errors import ConfigError, Unreachable
from streamfn.source import Source

cli = typer.Typer(add_completion=False, no_args_is_help=True, help="Stream functions over Kafka, the Lambda way.")
# Off a terminal (logs, pipes) rich would assume 80 columns and cut names short.
out = Console(width=None if sys.stdout.isatty() else 200)

CONFIG_ERROR_EXIT = 2
UNREACHABLE_EXIT = 1

Servers = Annotated[
    str | None,
    typer.Option("--bootstrap-servers", envvar=SERVERS_ENV, help="Kafka brokers for sources that name none."),
]


def _fail(error: ConfigError) -> NoReturn:
    print(f"error: {error}", file=sys.stderr)
    raise typer.Exit(CONFIG_ERROR_EXIT)


def _unreachable(error: Unreachable) -> NoReturn:
    print(f"error: {error}", file=sys.stderr)
    raise typer.Exit(UNREACHABLE_EXIT)


def _load(pipeline: Path) -> App:
    try:
        return load_app(pipeline)
    except ConfigError as error:
        _fail(error)


def _local_system(app: App, servers: str | None) -> LocalSystem | None:
    """The first source that has nowhere to connect to without a local system of its own (the run starts one and
    every source that names no servers uses it), or None when every source has servers."""
    for function in app.functions.values():
        source = function.source
        if isinstance(source, LocalSystem) and source.needs_local(servers):
            return source
    return None


def _asked_local(app: App, names: list[str]) -> list[LocalSystem]:
    """The local systems `run --local NAME` asks for, one per name: a source of the pipeline that can run locally
    under that name; else the one-line error naming what is allowed (exit code 2)."""
    offered: dict[str, LocalSystem] = {}
    for function in app.functions.values():
        if isinstance(function.source, LocalSystem):
            offered.setdefault(function.source.local_option, function.source)
    for name in names:
        if name not in offered:
            allowed = ", ".join(sorted(offered)) or "none: no source of this pipeline runs locally"
            _fail(ConfigError(f"--local {name!r} is not a local system of this pipeline's sources; allowed: {allowed}"))
    return [offered[name] for name in dict.fromkeys(names)]


def _producing(source: Source, what: str) -> Producing:
    """`source` as one that can produce records, or the one-line error that it cannot (exit code 2)."""
    if not isinstance(source, Producing):
        _fail(ConfigError(f"{what}: {type(source).__name__} cannot produce records"))
    return source


@cli.command()
def validate(pipeline: Path) -> None:
    """Check a pipeline file without running it."""
    app = _load(pipeline)
    for function in app.functions.values():
        fed = f"group {function.group_id}" if function.source is not None else "fed by Function(...) outputs"
        disabled = "" if function.config.enabled else ", Enabled=False: not run"
        out.print(f"function {function.name}: ok ({function.style.value} handler, {fed}{disabled})")


@cli.command()
def run(
    pipeline: Path,
    bootstrap_servers: Servers = None,
    seed: Annotated[
        list[str] | None,
        typer.Option(help="TOPIC=FILE: produce FILE's lines to TOPIC before the functions start (repeatable)."),
    ] = None,
    key_field: Annotated[str | None, typer.Option(help="With --seed: the JSON field that keys each record.")] = None,
    until_idle: Annotated[
        float | None,
        typer.Option(help="Stop once every record is handled and committed and nothing arrived for SECONDS."),
    ] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
    log_format: Annotated[
        str, typer.Option(envvar="STREAMFN_LOG_FORMAT", help="text, or json: one object per line with its fields.")
    ] = "text",
    metrics: Annotated[
        str,
        typer.Option(
            envvar="OTEL_METRICS_EXPORTER",
            help="Metrics exporters, comma-separated: none, console, otlp, prometheus.",
        ),
    ] = "none",
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve Prometheus metrics at http://HOST:PORT/metrics (implies prometheus).")
    ] = None,
    traces: Annotated[
        str, typer.Option(envvar="OTEL_TRACES_EXPORTER", help="Traces exporter: none, console or otlp.")
    ] = "none",
    health_port: Annotated[
        int | None, typer.Option(help="Serve /ready and /live at http://HOST:PORT for orchestrators.")
    ] = None,
    stuck_after: Annotated[
        float, typer.Option(min=1, help="/live fails when a partition's records wait this long (seconds).")
    ] = DEFAULT_STUCK_AFTER_SECONDS,
    progress_interval: Annotated[
        float, typer.Option(min=0.1, help="Off a terminal: a progress line per function every SECONDS.")
    ] = PROGRESS_INTERVAL_SECONDS,
    connect_timeout: Annotated[
        float,
        typer.Option(
            min=0,
            envvar="STREAMFN_CONNECT_TIMEOUT",
            help="At start, keep trying to reach each source's brokers for SECONDS, then fail (exit code 1).",
        ),
    ] = CONNECT_TIMEOUT_SECONDS,
    workers: Annotated[
        str, typer.Option(help="Run N worker processes sharing each function's group (auto: one per core).")
    ] = "1",
    local: Annotated[
        list[str] | None,
        typer.Option(
            help="Start this local system for the run, in memory (repeatable): aws (moto: Kinesis, DynamoDB and its "
            "Streams, SQS, with dummy credentials; only ever started when asked), kafka (also started when no brokers "
            "are given)."
        ),
    ] = None,
) -> None:
    """Run the functions of PIPELINE until SIGTERM/SIGINT (or --until-idle)."""
    try:
        reporting = operations(
            log_level, log_format, metrics, metrics_port, traces, health_port, stuck_after, progress_interval
        )
        processes = worker_count(workers)
    except ConfigError as error:
        _fail(error)
    app = _load(pipeline)
    seeds = [_seed(app, spec) for spec in seed or []]
    with ExitStack() as stack:
        for system in _asked_local(app, local or []):
            try:
                address = stack.enter_context(system.local())
            except ConfigError as error:
                _fail(error)
            out.print(f"streamfn: {system.local_name} at {address} (in memory, stops with this process)")
            if system.needs_local(bootstrap_servers):
                bootstrap_servers = address
        automatic = _local_system(app, bootstrap_servers)
        if automatic is not None:
            try:
                bootstrap_servers = stack.enter_context(automatic.local())
            except ConfigError as error:
                _fail(error)
            out.print(f"streamfn: {automatic.local_name} at {bootstrap_servers} (in memory, stops with this process)")
        if bootstrap_servers is not None:  # where sources that name no servers look for them (KafkaSource.servers)
            os.environ[SERVERS_ENV] = bootstrap_servers
        try:
            summaries = asyncio.run(
                _run(app, bootstrap_servers, seeds, key_field, until_idle, reporting, connect_timeout, processes)
            )
        except ConfigError as error:
            _fail(error)
        except Unreachable as error:
            _unreachable(error)
        except EngineFailure as failure:  # logged at CRITICAL with its traceback; what was done is committed
            _print_summary(failure.summary)
            print(f"error: {failure}: what was handled is committed; exiting {ENGINE_FAILURE_EXIT}", file=sys.stderr)
            raise typer.Exit(ENGINE_FAILURE_EXIT) from None
    _print_summary(summaries)


async def _run(
    app: App,
    servers: str | None,
    seeds: list[tuple[Producing, str, Path]],
    key_field: str | None,
    until_idle: float | None,
    reporting: Operations,
    connect_timeout: float,
    processes: int = 1,
) -> list[FunctionSummary]:
    for source, topic, file in seeds:
        with file.open("rb") as lines:
            produced = await source.produce_lines(topic, lines, key_field=key_field, default_servers=servers)
        out.print(
            f"streamfn: seeded {produced.count} records from {file} into {_into(topic, produced)}"
            f"{_unkeyed(produced, key_field)}"
        )
    if processes > 1:  # this process only supervises the worker processes (streamfn/cli/workers.py)
        return await supervise(processes, servers, reporting.metrics_port, reporting.health_port)
    worker = Worker(app, reporting.exporters.telemetry, connect_timeout=connect_timeout)
    endpoints = reporting.endpoints(worker)
    for endpoint in endpoints:
        try:
            endpoint.start()
        except OSError as error:
            raise ConfigError(f"port {endpoint.port} cannot be served: {error.strerror}") from None
    live = out.is_terminal
    progress = worker.supervisor.spawn(
        show_progress(worker, console=out, live=live, interval=1.0 if live else reporting.progress_interval),
        name="streamfn:progress",
    )
    try:
        return await worker.run(until_idle=until_idle)
    finally:
        progress.cancel()
        await asyncio.gather(progress, return_exceptions=True)
        for endpoint in endpoints:
            endpoint.stop()
        reporting.exporters.shutdown()


def _seed(app: App, spec: str) -> tuple[Producing, str, Path]:
    """What `--seed TOPIC=FILE` produces into: the source of a function that reads TOPIC, else the default one."""
    topic, _, file = spec.partition("=")
    if not topic or not file:
        _fail(ConfigError(f"--seed {spec!r} is invalid: expected TOPIC=FILE"))
    if not Path(file).is_file():
        _fail(ConfigError(f"--seed {spec!r}: file {file!r} does not exist"))
    return _producing(_stream_source(app, topic), f"--seed {spec!r}"), topic, Path(file)


def _stream_source(app: App | None, stream: str) -> Source:
    """The source of a function of `app` that reads `stream` (a Kinesis stream, a Kafka topic...), else the
    default one (a Kafka topic)."""
    functions = app.functions.values() if app is not None else ()
    readers = (f.source for f in functions if f.source is not None and stream in f.source.topics)
    return next(readers, None) or default_source(stream)


def _into(stream: str, produced: Produced) -> str:
    """Where records went, as the seed and produce lines say it: "topic orders", "stream clicks (created: ...)"."""
    return f"{produced.kind} {stream}" + (f" (created: {produced.created})" if produced.created else "")


SUMMARY_COLUMNS = (
    "function",
    "group",
    "polled",
    "filtered out",
    "invocations",
    "failed invocations",
    "handled",
    "outputs",
    "dead-lettered",
    "dropped",
    "committed",
)


WINDOW_COLUMNS = ("windows closed", "late")
"""Shown when a function keeps windows (aggregations, tumbling windows)."""


def _print_summary(summaries: list[FunctionSummary]) -> None:
    if write_report(summaries):  # a worker process of `--workers N`: its supervisor prints the combined summary
        return
    table = Table(title="streamfn run summary")
    windowed = any(s.stats.windows_closed or s.stats.late for s in summaries)
    columns = SUMMARY_COLUMNS[:-1] + (WINDOW_COLUMNS if windowed else ()) + SUMMARY_COLUMNS[-1:]
    for column in columns:
        table.add_column(column, justify="left" if column in ("function", "group") else "right", no_wrap=True)
    table.add_column("committed offsets", overflow="fold")
    for s in summaries:
        stats = s.stats
        windows = (stats.windows_closed, stats.late) if windowed else ()
        counts = (
            stats.polled,
            stats.filtered_out,
            stats.batches + stats.failed_invocations,
            stats.failed_invocations,
            stats.handled,
            stats.outputs,
            stats.dead_lettered,
            stats.dropped,
            *windows,
            s.committed_records,
        )
        offsets = ", ".join(f"{p}@{o}" for p, o in sorted(s.offsets.items())) or "-"
        table.add_row(s.name, s.group_id or "-", *map(str, counts), offsets)
    out.print(table)


@cli.command()
def redrive(
    pipeline: Path,
    function: Annotated[str, typer.Option("--function", help="The function whose dead letters to redrive.")],
    bootstrap_servers: Servers = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Redrive at most N records.")] = None,
    dry_run: Annotated[bool, typer.Option(help="List what would be redriven; produce and commit nothing.")] = False,
) -> None:
    """Produce a function's dead letters back to their source topics (once: progress is committed)."""
    app = _load(pipeline)
    target = app.functions.get(function)
    if target is None:
        _fail(
            ConfigError(f"--function {function!r} is not declared in {pipeline}; declared: {', '.join(app.functions)}")
        )
    if target.source is None:
        _fail(
            ConfigError(
                f"function {function!r} has no source to redrive into: its dead letters hold other functions' "
                "outputs; read them from its on_failure topic instead"
            )
        )
    destination = target.config.on_failure
    if not isinstance(destination, Redrivable):
        what = "no on_failure destination" if destination is None else f"on_failure={destination}, which cannot redrive"
        _fail(ConfigError(f"function {function!r} has {what}: redrive needs one that can (e.g. KafkaTopic(...))"))
    try:
        redriven = asyncio.run(
            destination.redrive(
                target.source,
                group=f"{target.group_id}-redrive",
                limit=limit,
                dry_run=dry_run,
                default_servers=bootstrap_servers,
            )
        )
    except ConfigError as error:
        _fail(error)
    except Unreachable as error:
        _unreachable(error)
    verb = "would redrive" if dry_run else "redrove"
    cannot = [item for item in redriven if item.origin in ("lost", "refused")]
    windows = [item for item in redriven if item.origin == "window"]
    for item in redriven:
        where = f"{item.topic}-{item.partition}@{item.offset} ({item.condition})"
        if item.origin == "lost":
            print(f"cannot redrive {where}: its letter has no payload and the source lost it", file=sys.stderr)
        elif item.origin == "refused":
            print(f"cannot redrive {where}: {item.reason}", file=sys.stderr)
        elif item.origin == "window":
            out.print(f"skipped {where}: a tumbling window's final invocation; its records were handled")
        else:
            out.print(f"{verb} {where}{' from the source topic (payload dropped)' if item.origin == 'source' else ''}")
    out.print(f"{verb} {len(redriven) - len(cannot) - len(windows)} records from {destination.letters}")
    if cannot:
        raise typer.Exit(1)


@cli.command()
def produce(
    topic: str,
    file: Annotated[Path | None, typer.Argument(help="JSON or text lines; standard input if omitted.")] = None,
    bootstrap_servers: Servers = None,
    key_field: Annotated[
        str | None,
        typer.Option(
            help="The JSON field that keys each record (Kinesis: its partition key; DynamoDB: the table's partition "
            "key, for a table the embedded server creates)."
        ),
    ] = None,
    pipeline: Annotated[
        Path | None,
        typer.Option(help="Produce where this pipeline's function reading TOPIC reads it (e.g. a Kinesis stream)."),
    ] = None,
) -> None:
    """Produce each line of FILE (or standard input) as one record to TOPIC (a Kafka topic, or a pipeline's stream)."""
    source = _producing(_stream_source(_load(pipeline) if pipeline else None, topic), f"produce {topic!r}")
    try:
        with ExitStack() as stack:
            lines = stack.enter_context(file.open("rb")) if file else sys.stdin.buffer
            produced = asyncio.run(
                source.produce_lines(topic, lines, key_field=key_field, default_servers=bootstrap_servers)
            )
    except FileNotFoundError:
        _fail(ConfigError(f"file {str(file)!r} does not exist"))
    except ConfigError as error:
        _fail(error)
    except Unreachable as error:
        _unreachable(error)
    where = topic if produced.kind == "topic" else _into(topic, produced)  # Kafka's line as it always was
    out.print(f"produced {produced.count} records to {where}{_unkeyed(produced, key_field)}")


STATUS_TIMEOUT_SECONDS = 15.0


@cli.command()
def status(
    pipeline: Path,
    bootstrap_servers: Servers = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON document (keys documented in the README).")
    ] = False,
    timeout: Annotated[
        float, typer.Option(min=0.1, help="Give up if the brokers have not answered everything within SECONDS.")
    ] = STATUS_TIMEOUT_SECONDS,
) -> None:
    """Show each function's consumer group: members, committed offset, end and lag per partition, dead letters."""
    app = _load(pipeline)
    if _local_system(app, bootstrap_servers) is not None:
        _fail(ConfigError(f"status needs --bootstrap-servers or {SERVERS_ENV} (the embedded broker keeps nothing)"))
    disabled = logging.root.manager.disable
    logging.disable(logging.CRITICAL)  # the Kafka client's own logs: failures end in one line below instead
    try:
        document = asyncio.run(asyncio.wait_for(status_report(app, bootstrap_servers), timeout))
    except ConfigError as error:
        _fail(error)
    except Unreachable as error:
        _unreachable(error)
    except TimeoutError:
        where = f"Kafka at {bootstrap_servers}" if bootstrap_servers else "the sources (Kafka brokers, AWS)"
        print(f"error: no answer from {where} within {timeout:g} s (--timeout)", file=sys.stderr)
        raise typer.Exit(UNREACHABLE_EXIT) from None
    finally:
        logging.disable(disabled)
    if as_json:
        print(json.dumps(document, indent=2))
    else:
        out.print(status_table(document))


def _unkeyed(produced: Produced, key_field: str | None) -> str:
    if not produced.unkeyed:
        return ""
    return f" ({produced.unkeyed} without a key: no {key_field!r} field)"


def main() -> None:
    cli()
