"""A Kafka client's first connection, failing as one Unreachable that names the servers and why.

aiokafka logs each bootstrap server it cannot reach as an ERROR line and then raises a KafkaConnectionError that
says only "Unable to bootstrap". While `connect` is starting a client, its lines are kept instead of logged and the
last one becomes the reason in the Unreachable: the caller (the poller, retrying within --connect-timeout) logs
one line per attempt, and the command ends with one line, not a traceback and a client's error lines per attempt.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Protocol

from aiokafka.errors import KafkaConnectionError

from streamfn.errors import Unreachable

CLIENT_LOGGER = "aiokafka"
"""aiokafka's client logs its bootstrap failures under this name (not a module's)."""


class Startable(Protocol):
    async def start(self) -> None: ...


@dataclass
class _Attempt:
    lines: list[str] = field(default_factory=list)
    active: bool = True
    """Tasks the client starts copy the context: once the attempt is over, their lines are logged as usual."""


_ATTEMPT: ContextVar[_Attempt | None] = ContextVar("streamfn_kafka_connect_attempt", default=None)


class _KeepAttemptLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        attempt = _ATTEMPT.get()
        if attempt is None or not attempt.active:
            return True
        attempt.lines.append(record.getMessage())
        return False


_FILTER = _KeepAttemptLines()


async def connect(client: Startable, servers: str) -> None:
    """`client.start()`; if no broker of `servers` answers, Unreachable naming them and aiokafka's reason."""
    logging.getLogger(CLIENT_LOGGER).addFilter(_FILTER)  # once: the same filter is not added twice
    attempt = _Attempt()
    token = _ATTEMPT.set(attempt)
    try:
        await client.start()
    except KafkaConnectionError as error:
        reason = "; ".join(dict.fromkeys(attempt.lines)) or str(error)
        raise Unreachable(f"cannot connect to Kafka at {servers} ({reason})") from None
    finally:
        attempt.active = False
        _ATTEMPT.reset(token)
