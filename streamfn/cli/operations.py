"""How `streamfn run` reports: logging, telemetry exporters, its HTTP endpoints (metrics, health) and progress.

The command's options are checked and turned into one `Operations` here, so the command itself only wires them
around the worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast, get_args

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from streamfn.cli.health import Health
from streamfn.engine.worker import Worker
from streamfn.errors import ConfigError
from streamfn.observability.endpoint import Endpoint, Route
from streamfn.observability.logs import LogFormat
from streamfn.observability.logs import configure as configure_logging
from streamfn.observability.telemetry import PROMETHEUS_PORT, Exporters, MetricsExporter, TracesExporter, exporters

PROGRESS_INTERVAL_SECONDS = 10.0
"""Off a terminal: how often `run` logs a progress line per function."""


@dataclass
class Operations:
    """How `run` reports: its telemetry exporters, HTTP endpoints and progress lines."""

    exporters: Exporters
    metrics_port: int | None
    health_port: int | None
    stuck_after: float
    progress_interval: float

    def endpoints(self, worker: Worker) -> list[Endpoint]:
        """The HTTP endpoints asked for (one server when both use the same port)."""
        by_port: dict[int, dict[str, Route]] = {}
        if self.metrics_port is not None:
            by_port.setdefault(self.metrics_port, {})["/metrics"] = prometheus_metrics
        if self.health_port is not None:
            by_port.setdefault(self.health_port, {}).update(Health(worker, self.stuck_after).routes())
        return [Endpoint(port, routes) for port, routes in by_port.items()]


def operations(
    log_level: str,
    log_format: str,
    metrics: str,
    metrics_port: int | None,
    traces: str,
    health_port: int | None,
    stuck_after: float,
    progress_interval: float,
) -> Operations:
    """Check the reporting options (a ConfigError names the option and what is allowed), then set up logging and
    the exporters."""
    if log_format not in get_args(LogFormat):
        raise ConfigError(f"--log-format {log_format!r} is not allowed; allowed: text, json")
    if log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"--log-level {log_level!r} is not allowed; allowed: DEBUG, INFO, WARNING, ERROR")
    chosen = [name.strip() for name in metrics.split(",") if name.strip()]
    allowed_metrics = get_args(MetricsExporter)
    if wrong := [name for name in chosen if name not in allowed_metrics]:
        raise ConfigError(f"--metrics {wrong[0]!r} is not an exporter; allowed: {', '.join(allowed_metrics)}")
    if traces not in get_args(TracesExporter):
        raise ConfigError(f"--traces {traces!r} is not an exporter; allowed: {', '.join(get_args(TracesExporter))}")
    if metrics_port is not None and "prometheus" not in chosen:
        chosen.append("prometheus")
    elif metrics_port is None and "prometheus" in chosen:
        metrics_port = PROMETHEUS_PORT
    configure_logging(log_level, cast(LogFormat, log_format))
    built = exporters(cast(list[MetricsExporter], chosen), cast(TracesExporter, traces))
    return Operations(built, metrics_port, health_port, stuck_after, progress_interval)


def prometheus_metrics() -> tuple[int, str, bytes]:
    return 200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY)
