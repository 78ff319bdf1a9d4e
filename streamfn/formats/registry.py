"""A Confluent-compatible schema registry: where Avro schemas live by id, and how streamfn talks to one.

`SchemaRegistry` is the declared configuration (URL, basic auth, TLS files: what Lambda's SchemaRegistryConfig
holds as AccessConfigs BASIC_AUTH, SERVER_ROOT_CA_CERTIFICATE and CLIENT_CERTIFICATE_TLS_AUTH). `RegistryClient`
speaks the registry's REST API (the calls confluent-kafka's own client makes) over one httpx connection pool.

Schema ids are immutable, so a schema fetched once by id is cached for the life of the client; so is the id a
(subject, schema) registration returned. Errors say whether a retry can help: `RegistryUnavailable` (unreachable,
timeout, 5xx, 429) can; `SchemaNotFound` and `SchemaRejected` are the registry's answer about this schema and no
retry changes them; any other `RegistryError` (wrong credentials, a URL that is no registry) needs the
configuration fixed.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import fastavro
import httpx
import orjson
from pydantic import Field, field_validator, model_validator

from streamfn.config import http_url
from streamfn.errors import ConfigError, StrictModel

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
"""The registry's media type (Confluent's REST API), sent as Content-Type and Accept."""


class SchemaRegistry(StrictModel):
    """Where a Confluent-compatible schema registry is and how to authenticate to it."""

    owner = "SchemaRegistry"

    url: str
    basic_auth: tuple[str, str] | None = Field(None, repr=False)
    """(user, password): Confluent Cloud's API key and secret, or a self-managed registry's user."""
    ca_file: Path | None = None
    """PEM root CA that signed the registry's certificate, when it is not a publicly trusted one."""
    cert_file: Path | None = None
    """PEM client certificate (mutual TLS); it may hold the private key too."""
    key_file: Path | None = None
    """PEM private key of `cert_file`, when that file does not hold it."""
    timeout: float = Field(10.0, gt=0, le=300)
    """Seconds for each of connecting, sending, and waiting for the answer of one request."""

    def __init__(self, url: str | None = None, /, **values: Any) -> None:
        super().__init__(**({"url": url} if url is not None else {}), **values)

    def __str__(self) -> str:
        return f"SchemaRegistry({self.url!r})"

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return http_url(value).rstrip("/")

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError("no such file")
        return value

    @model_validator(mode="after")
    def _tls(self) -> SchemaRegistry:
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file is the key of a client certificate: set cert_file too")
        if (self.ca_file or self.cert_file) and not self.url.startswith("https://"):
            raise ValueError("ca_file and cert_file are TLS settings: the url must be https://")
        return self

    def ssl_context(self) -> ssl.SSLContext:
        """The system's trusted roots, or `ca_file` instead; the client certificate if there is one.

        A file that is no PEM certificate or key is a ConfigError here, when a client is made, not at the first
        request."""
        try:
            context = ssl.create_default_context(cafile=self.ca_file)
            if self.cert_file is not None:
                context.load_cert_chain(self.cert_file, self.key_file)
        except ssl.SSLError as error:
            raise ConfigError(f"{self.owner}: the TLS files of {self.url} cannot be used: {error}") from None
        return context


class RegistryError(Exception):
    """The registry refused a request, or answered something that is no registry's answer."""

    def __init__(self, message: str, *, status: int | None = None, code: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        """Confluent's `error_code` (40403: schema not found, 42201: invalid schema...), when the registry sent one."""


class RegistryUnavailable(RegistryError):
    """The registry cannot answer now (unreachable, timed out, 5xx, rate limited): a later retry may succeed."""


class SchemaNotFound(RegistryError):
    """No schema under this id, or this schema is not registered under the subject."""


class SchemaRejected(RegistryError):
    """The registry refuses to register this schema: invalid (422) or incompatible with the subject (409)."""


class RegistryClient:
    """Fetches schemas by id and registers (or looks up) schemas under subjects, caching both answers.

    One client may serve every codec of an app (their caches are then shared); its owner closes it.
    """

    def __init__(self, config: SchemaRegistry) -> None:
        self.config = config
        auth = httpx.BasicAuth(*config.basic_auth) if config.basic_auth else None
        self._http = httpx.AsyncClient(
            base_url=config.url,
            auth=auth,
            timeout=config.timeout,
            verify=config.ssl_context() if config.url.startswith("https://") else True,
            headers={"Accept": CONTENT_TYPE},
        )
        self._schemas: dict[int, Any] = {}
        self._ids: dict[tuple[str, str], int] = {}

    async def close(self) -> None:
        await self._http.aclose()

    async def schema(self, schema_id: int) -> Any:
        """The parsed (fastavro) Avro schema with this id; SchemaNotFound if the registry has none."""
        if schema_id not in self._schemas:
            answer = await self._request("GET", f"/schemas/ids/{schema_id}", what=f"schema id {schema_id}")
            schema_type = answer.get("schemaType", "AVRO")
            if schema_type != "AVRO":
                raise RegistryError(f"schema id {schema_id} is a {schema_type} schema, not Avro")
            self._schemas[schema_id] = fastavro.parse_schema(orjson.loads(answer["schema"]))
        return self._schemas[schema_id]

    async def register(self, subject: str, schema: str) -> int:
        """The id of `schema` (Avro schema JSON) under `subject`, registering it there if it is new.

        Registering a schema the subject already has returns its id without a new version, so this is idempotent.
        """
        return await self._id("/versions", subject, schema)

    async def lookup(self, subject: str, schema: str) -> int:
        """The id of `schema` under `subject`, which must already be registered there (SchemaNotFound otherwise):
        for registries where producers may not register schemas."""
        return await self._id("", subject, schema)

    async def _id(self, suffix: str, subject: str, schema: str) -> int:
        if (subject, schema) not in self._ids:
            answer = await self._request(
                "POST",
                f"/subjects/{quote(subject, safe='')}{suffix}",
                what=f"schema under subject {subject!r}",
                body={"schema": schema},
            )
            self._ids[subject, schema] = int(answer["id"])
        return self._ids[subject, schema]

    async def _request(self, method: str, path: str, *, what: str, body: Mapping[str, Any] | None = None) -> Any:
        """The JSON answer, or the RegistryError subclass that tells the caller whether to retry."""
        where = f"schema registry {self.config.url}"
        try:
            response = await self._http.request(
                method,
                path,
                content=None if body is None else orjson.dumps(body),
                headers=None if body is None else {"Content-Type": CONTENT_TYPE},
            )
        except (httpx.TransportError, ssl.SSLError) as error:  # httpx lets an SSLError after the handshake through
            tls = _tls_error(error)
            if isinstance(tls, ssl.SSLCertVerificationError):
                raise RegistryError(f"{where} has a certificate not trusted here (ca_file?): {tls}") from error
            if tls is not None:
                raise RegistryError(f"{where} refused the TLS connection: {tls}") from error
            reason = str(error) or "the connection was closed (by a TLS server that requires a client certificate?)"
            raise RegistryUnavailable(f"{where} is unreachable: {type(error).__name__}: {reason}") from error
        try:
            answer = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            answer = None
        if response.is_success and answer is not None:
            return answer
        status = response.status_code
        code = answer.get("error_code") if isinstance(answer, dict) else None
        message = answer.get("message") if isinstance(answer, dict) else None
        detail = f"{status} {message or response.reason_phrase}" + (f" (error code {code})" if code else "")
        if response.is_success:
            raise RegistryError(f"{where} answered {what} with something that is not JSON: is it a registry?")
        if status in (401, 403):
            raise RegistryError(f"{where} refused the credentials: {detail}", status=status, code=code)
        if status == 429 or status >= 500:
            raise RegistryUnavailable(f"{where} failed for {what}: {detail}", status=status, code=code)
        if status == 404 and code in (40401, 40403):
            raise SchemaNotFound(f"{where} has no {what}: {detail}", status=status, code=code)
        if status in (409, 422):
            raise SchemaRejected(f"{where} rejected {what}: {detail}", status=status, code=code)
        raise RegistryError(f"{where} refused the request for {what}: {detail}", status=status, code=code)


def _tls_error(error: BaseException) -> ssl.SSLError | None:
    """The TLS failure behind `error`, if any (httpx wraps httpcore's error, which wraps ssl's)."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            return cause
        cause = cause.__cause__ or cause.__context__
    return None
