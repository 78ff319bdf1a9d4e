"""Http as a user declares it: where to send outputs and how, validated into one-line ConfigErrors.

The declared object is configuration only (one may serve several functions); `open()` gives each function its own
writer with its own connection pool.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

import httpx
from pydantic import Field, field_validator, model_validator

from streamfn.config import http_url
from streamfn.connectors.http.writer import RESERVED_HEADERS, HttpWriter
from streamfn.errors import StrictModel
from streamfn.outputs.sink import SinkContext, SinkRetry

TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
FIELD_VALUE = re.compile(r"[\t\x20-\x7e]*")


class Http(StrictModel):
    """A webhook: each write sends the outputs as JSON arrays of at most `max_batch` values, one request at a time."""

    owner = "Http"

    url: str
    method: Literal["POST", "PUT", "PATCH"] = "POST"
    headers: dict[str, str] = Field(default_factory=dict)
    """Sent with every request (an API key, say); the sink's own headers cannot be overridden."""
    auth: tuple[str, str] | None = Field(None, repr=False)
    """(user, password) for HTTP basic authentication."""
    bearer_token: str | None = Field(None, min_length=1, repr=False)
    """Sent as `Authorization: Bearer <token>`."""
    max_batch: int = Field(100, ge=1, le=10_000)
    """Outputs per request; a write of more is sent as several requests, in order."""
    timeout: float = Field(10.0, gt=0, le=300)
    """Seconds for each of connecting, sending, and waiting for the response of one request."""
    retry: SinkRetry = Field(default_factory=SinkRetry)

    def __init__(self, url: str | None = None, /, **values: Any) -> None:
        super().__init__(**({"url": url} if url is not None else {}), **values)

    def __str__(self) -> str:
        return f"Http({display_url(self.url)!r})"

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return http_url(value)

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _usable_headers(self) -> Http:
        """Checked here rather than per field so an error names header names only, never a value (a secret)."""
        for name, value in self.headers.items():
            if not TOKEN.fullmatch(name):
                raise ValueError(f"headers: {name!r} is not a valid HTTP header name")
            if not FIELD_VALUE.fullmatch(value):
                raise ValueError(f"headers: the value of {name!r} must be printable ASCII on one line")
            if name.lower() in RESERVED_HEADERS:
                raise ValueError(f"headers: {name!r} is set by the sink for each request")
        authorizations = [
            name
            for name, present in (
                ("auth", self.auth is not None),
                ("bearer_token", self.bearer_token is not None),
                ("headers['Authorization']", any(n.lower() == "authorization" for n in self.headers)),
            )
            if present
        ]
        if len(authorizations) > 1:
            raise ValueError(f"{' and '.join(authorizations)} both set the Authorization header; use only one")
        return self

    def check(self, source_topics: Sequence[str]) -> None:
        """Nothing to check: an HTTP endpoint cannot feed the function's own source."""

    async def open(self, context: SinkContext) -> HttpWriter:
        headers = dict(self.headers)
        if self.bearer_token is not None:
            headers["Authorization"] = f"Bearer {self.bearer_token}"
        client = httpx.AsyncClient(
            headers=headers,
            auth=httpx.BasicAuth(*self.auth) if self.auth else None,
            timeout=httpx.Timeout(self.timeout),
            follow_redirects=False,
        )
        return HttpWriter(
            client, method=self.method, url=self.url, name=str(self), function=context.function, chunk=self.max_batch
        )


def display_url(url: str) -> str:
    """The URL without credentials or query (either may hold a secret), for logs and error messages."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return "<invalid url>"
    host = f"[{parsed.host}]" if ":" in parsed.host else parsed.host
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.scheme}://{host}{port}{parsed.path}"
