"""The open Http sink of one function: chunking, JSON bodies, request headers, and what a response means.

Why these choices:
- Values are JSON as `encode_json` makes them; a bytes value is sent as a JSON string of its UTF-8 text, and one
  that is not UTF-8 is a RejectedOutput (base64 would silently change what the receiver sees). Every chunk is
  encoded before the first request, so a value of the wrong shape rejects the write without a partial delivery.
- `Idempotency-Key` is a hash of the chunk's output ids, which stay the same when a batch is replayed (engine
  retry, crash, rebalance): a receiver that remembers keys drops replayed chunks. The writer also remembers the
  keys it delivered recently and skips those chunks when the engine retries a write that failed half way, so a
  receiver without deduplication sees duplicates only after a restart or rebalance.
- 2xx is delivered. 408, 425, 429, 5xx, connection errors and timeouts are transient: HttpDeliveryError, which
  the engine retries per the sink's `retry`. Any other status (3xx, since redirects are not followed, and other
  4xx) means the receiver refuses this data or the URL is wrong, which no retry fixes: RejectedOutput, so the
  input records go to `on_failure` at once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from streamfn.observability.tracing import TRACE_HEADERS
from streamfn.outputs.sink import Delivered, Emitted, RejectedOutput, encode_json
from streamfn.record import Position

RETRYABLE_STATUSES = frozenset({408, 425, 429})
REMEMBERED_CHUNKS = 4096
"""Delivered chunks whose keys a writer remembers, to skip them when a failed write is retried."""
EXCERPT_CHARS = 200
RESERVED_HEADERS = frozenset(
    {"content-type", "content-length", "idempotency-key", "x-streamfn-function", "x-streamfn-source", *TRACE_HEADERS}
)


class HttpDeliveryError(Exception):
    """A request that may succeed if sent again (receiver busy or down, network trouble): the engine retries."""


@dataclass(frozen=True, slots=True)
class Chunk:
    """One request's worth of outputs: the JSON array body and the headers that describe it."""

    body: bytes
    headers: dict[str, str]

    @property
    def key(self) -> str:
        return self.headers["Idempotency-Key"]


class HttpWriter:
    """Sends one function's outputs; one httpx client (connection pool) per writer."""

    def __init__(self, client: httpx.AsyncClient, *, method: str, url: str, name: str, function: str, chunk: int):
        self._client = client
        self._method = method
        self._url = url
        self._name = name
        self._function = function
        self._chunk = chunk
        self._delivered = Delivered(REMEMBERED_CHUNKS)

    def __repr__(self) -> str:
        return f"<HttpWriter {self._name} of function {self._function!r}>"

    async def write(self, outputs: Sequence[Emitted]) -> None:
        chunks = [
            chunk_of(outputs[start : start + self._chunk], self._function)
            for start in range(0, len(outputs), self._chunk)
        ]
        for chunk in chunks:
            if chunk.key not in self._delivered:
                await self._send(chunk)
                self._delivered.add(chunk.key)

    async def close(self) -> None:
        await self._client.aclose()

    async def _send(self, chunk: Chunk) -> None:
        try:
            response = await self._client.request(self._method, self._url, content=chunk.body, headers=chunk.headers)
        except httpx.HTTPError as error:  # connection refused or reset, timeouts, protocol errors
            raise HttpDeliveryError(f"{self._name}: {describe(error)}") from error
        status = response.status_code
        if 200 <= status < 300:
            return
        message = f"{self._name} answered {status} {response.reason_phrase}: {excerpt(response)}"
        if status in RETRYABLE_STATUSES or status >= 500 or status < 200:
            raise HttpDeliveryError(message)
        raise RejectedOutput(message)


def chunk_of(outputs: Sequence[Emitted], function: str) -> Chunk:
    body = b"[" + b",".join(json_value(output) for output in outputs) + b"]"
    headers = {
        "Content-Type": "application/json",
        "Idempotency-Key": idempotency_key(outputs),
        "X-Streamfn-Function": function,
        "X-Streamfn-Source": source_ranges(outputs),
    }
    first = dict(outputs[0].headers)
    for name in TRACE_HEADERS:
        if name in first:
            headers[name] = first[name].decode("latin-1")
    return Chunk(body, headers)


def json_value(output: Emitted) -> bytes:
    """The output's value as JSON; a value no JSON can carry is a RejectedOutput naming the output."""
    value = output.value
    if isinstance(value, bytes):
        try:
            value = value.decode()
        except UnicodeDecodeError:
            raise RejectedOutput(
                f"output {output.id} is bytes that are not UTF-8 text; a JSON webhook cannot carry them "
                "(return a str, e.g. base64, or a dict)"
            ) from None
    try:
        return encode_json(value)
    except TypeError as error:  # orjson.JSONEncodeError included
        raise RejectedOutput(f"output {output.id} cannot be sent as JSON: {error}") from None


def idempotency_key(outputs: Sequence[Emitted]) -> str:
    """The same for the same outputs whenever their batch is replayed, different for any other chunk."""
    digest = hashlib.sha256()
    for output in outputs:
        digest.update(output.id.encode())
        digest.update(b"\n")
    return digest.hexdigest()


def source_ranges(outputs: Sequence[Emitted]) -> str:
    """The source records behind a chunk as "topic-partition/first-last", comma-separated if several partitions."""
    ranges: dict[tuple[str, int | str], tuple[Position, Position]] = {}
    for output in outputs:
        source = output.source
        where = (source.topic, source.partition)
        first, last = ranges.get(where, (source.first_offset, source.last_offset))
        ranges[where] = (min(first, source.first_offset), max(last, source.last_offset))
    return ",".join(f"{topic}-{partition}/{first}-{last}" for (topic, partition), (first, last) in ranges.items())


def describe(error: BaseException) -> str:
    """httpx's error with the operating system's reason under it ("All connection attempts failed" alone does not
    say whether the port was closed or the host unreachable)."""
    text = f"{type(error).__name__}: {error or 'no detail'}"
    cause: BaseException | None = error
    reason: OSError | None = None
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno is not None:
            reason = cause
        cause = cause.__cause__ or cause.__context__
    return f"{text} ({type(reason).__name__}: {reason})" if reason is not None else text


def excerpt(response: httpx.Response) -> str:
    """The start of a response body on one line, enough to say why a receiver refused a request."""
    text = " ".join(response.text.split())
    if not text:
        return "(empty body)"
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "..."
