"""Why a client could not connect over TLS, in one line: aiokafka reports every failed bootstrap alike.

aiokafka logs the cause of a failed bootstrap and raises "Unable to bootstrap from ..."; over TLS the cause (a
broker certificate no configured CA signed, a missing or expired client certificate) is what the user must fix, so
one handshake with the first bootstrap server finds it and the client's start fails with it as an Unreachable.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError

from streamfn.connectors.kafka.connection import ssl_reason
from streamfn.errors import Unreachable

UNKNOWN_ISSUER = frozenset({2, 18, 19, 20})
"""OpenSSL's verify codes for a chain no trusted CA signed (unable to get issuer, self-signed, self-signed in the
chain, unable to get local issuer): the CA setting is what to check."""
TLS_PROBE_SECONDS = 2.0
"""How long the diagnosis waits for the handshake's verdict (the server's alert on the client certificate)."""


async def started(client: Any, servers: str, options: dict[str, Any]) -> None:
    """`client.start()` of an aiokafka client made with `options`; a TLS failure becomes one Unreachable line
    saying why (and the client is closed, so nothing warns of it later).

    aiokafka reports any failed bootstrap as "Unable to bootstrap"; over TLS the reason (an unknown CA, a missing or
    expired client certificate) is found by one handshake with the first bootstrap server."""
    try:
        await client.start()
    except KafkaConnectionError:
        context = options.get("ssl_context")
        reason = await _tls_failure(servers, context) if isinstance(context, ssl.SSLContext) else None
        if reason is None:
            raise
        await (client.close() if isinstance(client, AIOKafkaAdminClient) else client.stop())
        raise Unreachable(f"cannot connect to Kafka at {servers}: TLS handshake failed: {reason}") from None


async def _tls_failure(servers: str, context: ssl.SSLContext) -> str | None:
    """Why a TLS connection to the first of `servers` fails, or None if it does not (the server's verdict on the
    client certificate comes as an alert after the handshake: a short read waits for it)."""
    host, _, port = servers.split(",")[0].strip().rpartition(":")
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host.strip("[]"), int(port), ssl=context), TLS_PROBE_SECONDS
        )
    except ssl.SSLError as error:
        return _verify_message(error)
    except (OSError, TimeoutError, ValueError):
        return None
    try:
        await asyncio.wait_for(reader.read(1), TLS_PROBE_SECONDS)
    except ssl.SSLError as error:
        return _verify_message(error)
    except (OSError, TimeoutError):
        return None
    finally:
        writer.close()
    return None


def _verify_message(error: ssl.SSLError) -> str:
    if isinstance(error, ssl.SSLCertVerificationError):
        unknown_issuer = error.verify_code in UNKNOWN_ISSUER
        return f"the broker's certificate was refused: {error.verify_message}" + (
            " (check ssl_cafile / ssl_ca_pem)" if unknown_issuer else ""
        )
    reason = ssl_reason(error)
    if "certificate required" in reason:
        return f"the broker requires a client certificate ({reason}): set ssl_certfile and ssl_keyfile"
    return f"the broker refused the connection: {reason}"
