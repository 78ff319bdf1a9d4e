"""A Kafka client's first connection, failing as one Unreachable that names the servers and why.

aiokafka logs each bootstrap server it cannot reach as an ERROR line and then raises a KafkaConnectionError that
says only "Unable to bootstrap". While `connect` is starting a client, its lines are kept instead of logged and the
last one becomes the reason in the Unreachable: the caller (the poller, retrying within --connect-timeout) logs
one line per attempt, and the command ends with one line, not a traceback and a client's error lines per attempt.
Over TLS the cause the user must fix (an unknown CA, a missing or expired client certificate) is not in those lines:
handshake.py finds it, and it is raised as Refused, which is not retried (waiting will not fix a certificate).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError

from streamfn.connectors.kafka.handshake import tls_failure
from streamfn.errors import Refused, Unreachable

CLIENT_LOGGER = "aiokafka"
"""aiokafka's client logs its bootstrap failures under this name (not a module's)."""


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


async def connect(client: Any, servers: str, options: Mapping[str, Any]) -> None:
    """`client.start()` of an aiokafka client made with `options`. If no broker of `servers` answers, the client is
    closed (nothing warns of it later) and Unreachable names the servers and why: the TLS handshake's failure as
    Refused if that is the cause, else aiokafka's reason."""
    logging.getLogger(CLIENT_LOGGER).addFilter(_FILTER)  # once: the same filter is not added twice
    attempt = _Attempt()
    token = _ATTEMPT.set(attempt)
    try:
        await client.start()
        return
    except KafkaConnectionError as error:
        reason = "; ".join(dict.fromkeys(attempt.lines)) or str(error)
    finally:
        attempt.active = False
        _ATTEMPT.reset(token)
    await (client.close() if isinstance(client, AIOKafkaAdminClient) else client.stop())
    context = options.get("ssl_context")
    tls = await tls_failure(servers, context) if isinstance(context, ssl.SSLContext) else None
    if tls is not None:
        raise Refused(f"cannot connect to Kafka at {servers}: TLS handshake failed: {tls}")
    raise Unreachable(f"cannot connect to Kafka at {servers} ({reason})")
