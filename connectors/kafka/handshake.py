"""Why a client could not connect over TLS, in one line: aiokafka reports every failed bootstrap alike.

aiokafka logs the cause of a failed bootstrap and raises "Unable to bootstrap from ..."; over TLS the cause (a
broker certificate no configured CA signed, a missing or expired client certificate) is what the user must fix, so
one handshake with the first bootstrap server finds it (connect.py raises it as the client's start failure).
"""

from __future__ import annotations

import asyncio
import ssl

from streamfn.connectors.kafka.connection import ssl_reason

UNKNOWN_ISSUER = frozenset({2, 18, 19, 20})
"""OpenSSL's verify codes for a chain no trusted CA signed (unable to get issuer, self-signed, self-signed in the
chain, unable to get local issuer): the CA setting is what to check."""
TLS_PROBE_SECONDS = 2.0
"""How long the diagnosis waits for the handshake's verdict (the server's alert on the client certificate)."""


async def tls_failure(servers: str, context: ssl.SSLContext) -> str | None:
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
