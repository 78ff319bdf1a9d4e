"""KafkaConnection: how streamfn reaches a Kafka cluster (TLS, mutual TLS, SASL), declared once per cluster.

A pipeline declares one `KafkaConnection` and gives it to every Kafka part (`KafkaSource(connection=...)`,
`KafkaTopic(..., connection=...)`); a KafkaTopic on its function's source cluster takes the source's connection
without naming it, and parts that name none use `STREAMFN_KAFKA_*` environment variables (as `streamfn produce`
does). Every aiokafka client streamfn makes (consumers, producers, changelogs, status, redrive, produce) takes its
arguments from `client_options`, so a setting reaches all of them or none.

Secrets (SASL password, private key and its password) are `SecretValue`s: inline, or from an environment
variable, a file or AWS Secrets Manager (streamfn.secrets). They are resolved once per connection, when the first
client is made, and held as SecretStr until aiokafka gets them.
"""

from __future__ import annotations

import asyncio
import functools
import os
import ssl
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from aiokafka.abc import AbstractTokenProvider
from aiokafka.helpers import create_ssl_context
from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator

from streamfn.errors import ConfigError, StrictModel
from streamfn.secrets import Secret, SecretReader, SecretValue

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
Mechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "AWS_MSK_IAM"]

ENV_PREFIX = "STREAMFN_KAFKA_"
SERVERS_ENV = "STREAMFN_BOOTSTRAP_SERVERS"
"""The bootstrap servers of Kafka parts that name none (also what the command line's --bootstrap-servers reads)."""
PASSWORD_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class KafkaConnection(StrictModel):
    """Where a Kafka cluster is and how to authenticate to it. `security_protocol` defaults to SASL_SSL with a
    `sasl_mechanism`, SSL with TLS settings, else PLAINTEXT."""

    owner = "KafkaConnection"

    bootstrap_servers: str | list[str] | None = None
    """Else the part's own `bootstrap_servers`, the run's --bootstrap-servers or STREAMFN_BOOTSTRAP_SERVERS."""
    security_protocol: SecurityProtocol | None = None
    ssl_cafile: Path | None = None
    """PEM CA certificates that signed the brokers' certificates, when not publicly trusted (else the system's)."""
    ssl_ca_pem: SecretValue | None = None
    """The same as PEM text (Lambda's SERVER_ROOT_CA_CERTIFICATE secret)."""
    ssl_certfile: Path | None = None
    """PEM client certificate (mutual TLS), the chain after it; it may hold the private key too."""
    ssl_cert_pem: SecretValue | None = None
    ssl_keyfile: Path | None = None
    """PEM private key of the client certificate, when that file does not hold it."""
    ssl_key_pem: SecretValue | None = Field(None, repr=False)
    ssl_key_password: SecretValue | None = None
    """The password of an encrypted private key."""
    ssl_check_hostname: bool = True
    """Check the broker's certificate names the host connected to (turn off only for brokers known by IP)."""
    sasl_mechanism: Mechanism | None = None
    """AWS_MSK_IAM: OAUTHBEARER with tokens signed by AWS's aws-msk-iam-sasl-signer (`streamfn[msk]`)."""
    sasl_username: SecretValue | None = None
    sasl_password: SecretValue | None = None
    sasl_oauth_token_provider: Any = Field(None, repr=False)
    """OAUTHBEARER: an aiokafka AbstractTokenProvider, asked for a token at each connection (it refreshes)."""
    aws_region: str | None = None
    """AWS_MSK_IAM: the cluster's region; else the AWS configuration chain's (AWS_REGION, profile)."""
    _resolved: asyncio.Task[dict[str, Any]] | None = PrivateAttr(None)
    """The resolution under way or done, in the event loop that started it (a test may run several loops)."""
    _at: dict[str, KafkaConnection] = PrivateAttr(default_factory=dict)
    """Its copies naming other servers (`at`)."""

    @field_validator("ssl_cafile", "ssl_certfile", "ssl_keyfile")
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError("no such file")
        return value

    @field_validator("sasl_oauth_token_provider")
    @classmethod
    def _provider(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, AbstractTokenProvider):
            raise ValueError("must be an aiokafka.abc.AbstractTokenProvider (an async token() method)")
        return value

    @model_validator(mode="after")
    def _coherent(self) -> KafkaConnection:
        protocol = self.protocol
        for side in ("ca", "cert", "key"):
            if getattr(self, f"ssl_{side}file") is not None and getattr(self, f"ssl_{side}_pem") is not None:
                raise ValueError(f"give ssl_{side}file or ssl_{side}_pem, not both")
        tls = [name for name in _TLS_FIELDS if getattr(self, name) is not None]
        if tls and not protocol.endswith("SSL"):
            raise ValueError(f"{tls[0]} is a TLS setting: security_protocol must be SSL or SASL_SSL, not {protocol}")
        if (self.ssl_keyfile or self.ssl_key_pem) and not (self.ssl_certfile or self.ssl_cert_pem):
            raise ValueError("a private key needs its client certificate: set ssl_certfile (or ssl_cert_pem)")
        if self.ssl_key_password and not (self.ssl_certfile or self.ssl_cert_pem):
            raise ValueError("ssl_key_password is for the client certificate's key: set ssl_certfile too")
        mechanism = self.sasl_mechanism
        if protocol.startswith("SASL") != (mechanism is not None):
            raise ValueError(
                f"security_protocol {protocol} needs a sasl_mechanism"
                if mechanism is None
                else f"sasl_mechanism {mechanism} needs security_protocol SASL_SSL or SASL_PLAINTEXT, not {protocol}"
            )
        password = mechanism in PASSWORD_MECHANISMS
        if password and (self.sasl_username is None or self.sasl_password is None):
            raise ValueError(f"sasl_mechanism {mechanism} needs sasl_username and sasl_password")
        if not password and (self.sasl_username is not None or self.sasl_password is not None):
            raise ValueError(f"sasl_username and sasl_password are for PLAIN and SCRAM, not {mechanism}")
        if (mechanism == "OAUTHBEARER") != (self.sasl_oauth_token_provider is not None):
            raise ValueError("sasl_mechanism OAUTHBEARER needs sasl_oauth_token_provider, and only it takes one")
        if mechanism == "AWS_MSK_IAM" and protocol != "SASL_SSL":
            raise ValueError("sasl_mechanism AWS_MSK_IAM needs security_protocol SASL_SSL (MSK's IAM listener)")
        if self.aws_region is not None and mechanism != "AWS_MSK_IAM":
            raise ValueError("aws_region is for sasl_mechanism AWS_MSK_IAM")
        return self

    @property
    def protocol(self) -> SecurityProtocol:
        if self.security_protocol is not None:
            return self.security_protocol
        if self.sasl_mechanism is not None:
            return "SASL_SSL"
        return "SSL" if any(getattr(self, name) is not None for name in _TLS_FIELDS) else "PLAINTEXT"

    def at(self, servers: str) -> KafkaConnection:
        """This connection to the cluster at `servers`: itself if it names them, else a copy that does (the
        connection of a part that names only servers, or none). One copy per servers, so each resolves its secrets
        once."""
        if join_servers(self.bootstrap_servers) == servers:
            return self
        copy = self._at.get(servers)
        if copy is None:
            copy = self._at[servers] = self.model_copy(update={"bootstrap_servers": servers})
        return copy

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> KafkaConnection:
        """The connection `STREAMFN_KAFKA_<FIELD>` variables describe (SECURITY_PROTOCOL, SASL_MECHANISM,
        SASL_USERNAME, SASL_PASSWORD, SSL_CAFILE, ...); a secret's `<FIELD>_FILE` names a file holding it."""
        values: dict[str, Any] = {}
        for field in ENV_FIELDS:
            variable = f"{ENV_PREFIX}{field.upper()}"
            if variable in environ:
                values[field] = environ[variable]
            elif field in SECRET_FIELDS and f"{variable}_FILE" in environ:
                values[field] = Secret.from_file(environ[f"{variable}_FILE"])
        try:
            return cls(**values)
        except ConfigError as error:
            raise ConfigError(f"{ENV_PREFIX}* environment variables: {error}") from None

    async def security_options(self) -> dict[str, Any]:
        """aiokafka's security arguments, secrets resolved (once: later calls share the first's answer)."""
        resolved = self._resolved
        if (
            resolved is None
            or resolved.get_loop() is not asyncio.get_running_loop()
            or (resolved.done() and (resolved.cancelled() or resolved.exception() is not None))
        ):
            self._resolved = resolved = asyncio.ensure_future(self._options())
        return dict(await asyncio.shield(resolved))

    async def _options(self) -> dict[str, Any]:
        secrets = SecretReader()
        options: dict[str, Any] = {"security_protocol": self.protocol}
        if self.protocol.endswith("SSL"):
            options["ssl_context"] = await self._ssl_context(secrets)
        mechanism = self.sasl_mechanism
        if mechanism in PASSWORD_MECHANISMS:
            username = await secrets.read(self.sasl_username, "KafkaConnection.sasl_username")
            password = await secrets.read(self.sasl_password, "KafkaConnection.sasl_password")
            assert username is not None and password is not None, "checked at declaration"
            options |= {
                "sasl_mechanism": mechanism,
                "sasl_plain_username": username.get_secret_value(),
                "sasl_plain_password": password.get_secret_value(),
            }
        elif mechanism == "OAUTHBEARER":
            options |= {"sasl_mechanism": "OAUTHBEARER", "sasl_oauth_token_provider": self.sasl_oauth_token_provider}
        elif mechanism == "AWS_MSK_IAM":
            from streamfn.connectors.kafka.msk import MskIamTokenProvider

            provider = MskIamTokenProvider.for_region(self.aws_region)
            options |= {"sasl_mechanism": "OAUTHBEARER", "sasl_oauth_token_provider": provider}
        return options

    async def _ssl_context(self, secrets: SecretReader) -> ssl.SSLContext:
        ca = await secrets.read(self.ssl_ca_pem, "KafkaConnection.ssl_ca_pem")
        cert = await secrets.read(self.ssl_cert_pem, "KafkaConnection.ssl_cert_pem")
        key = await secrets.read(self.ssl_key_pem, "KafkaConnection.ssl_key_pem")
        password = await secrets.read(self.ssl_key_password, "KafkaConnection.ssl_key_password")
        try:
            with tempfile.TemporaryDirectory(prefix="streamfn-tls-") as directory:
                # ssl loads a certificate chain from files only: PEM text lives there (0600) while it loads.
                certfile = _private_file(directory, "cert.pem", cert) or self.ssl_certfile
                keyfile = _private_file(directory, "key.pem", key) or self.ssl_keyfile
                context: ssl.SSLContext = create_ssl_context(
                    cafile=self.ssl_cafile,
                    cadata=ca.get_secret_value() if ca is not None else None,
                    certfile=certfile,
                    keyfile=keyfile,
                    # Never None: OpenSSL would ask for the password of an encrypted key on the terminal.
                    password=password.get_secret_value() if password is not None else "",
                )
        except (ssl.SSLError, ValueError) as error:
            reason = ssl_reason(error)
            if "PEM lib" in reason:  # OpenSSL's only word for a key it cannot decrypt
                reason = "the private key cannot be read: ssl_key_password is wrong or missing, or it is no PEM key"
            raise ConfigError(f"{self.owner}: the TLS certificates or key are unusable: {reason}") from None
        context.check_hostname = self.ssl_check_hostname
        return context


_TLS_FIELDS = (
    "ssl_cafile",
    "ssl_ca_pem",
    "ssl_certfile",
    "ssl_cert_pem",
    "ssl_keyfile",
    "ssl_key_pem",
    "ssl_key_password",
)
SECRET_FIELDS = ("sasl_username", "sasl_password", "ssl_key_password", "ssl_ca_pem", "ssl_cert_pem", "ssl_key_pem")
ENV_FIELDS = (
    "security_protocol",
    "sasl_mechanism",
    "sasl_username",
    "sasl_password",
    "ssl_cafile",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_key_password",
    "ssl_check_hostname",
    "aws_region",
)


def _private_file(directory: str, name: str, content: SecretStr | None) -> str | None:
    if content is None:
        return None
    path = os.path.join(directory, name)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(content.get_secret_value())
    return path


def ssl_reason(error: Exception) -> str:
    """An ssl error's reason without the file and line of OpenSSL's source."""
    reason = getattr(error, "reason", None)
    return str(reason).replace("_", " ").lower() if reason else str(error)


def default_connection() -> KafkaConnection:
    """The connection for parts that name none: STREAMFN_KAFKA_* (plaintext without them); one object while the
    variables stay the same, so its secrets are resolved once."""
    return _from_environment(tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(ENV_PREFIX))))


@functools.lru_cache(maxsize=1)
def _from_environment(variables: tuple[tuple[str, str], ...]) -> KafkaConnection:
    return KafkaConnection.from_environment(dict(variables))


async def client_options(servers: str, connection: KafkaConnection | None = None) -> dict[str, Any]:
    """The arguments of every aiokafka client streamfn makes: where (`servers`) and how (`connection`, else
    `default_connection()`): security protocol, TLS context, SASL mechanism and credentials."""
    security = await (connection or default_connection()).security_options()
    return {"bootstrap_servers": servers, **security}


def with_connection_servers(values: Any) -> Any:
    """A part's fields with its connection's bootstrap servers as its own `bootstrap_servers` (where the run
    looks for them), refusing two different lists."""
    if not isinstance(values, dict):
        return values
    connection = values.get("connection")
    if isinstance(connection, dict):
        connection = KafkaConnection(**connection)
    if not isinstance(connection, KafkaConnection) or connection.bootstrap_servers is None:
        return values
    own = values.get("bootstrap_servers")
    if own is not None and join_servers(own) != join_servers(connection.bootstrap_servers):
        raise ValueError("bootstrap_servers differs from connection.bootstrap_servers: give the servers once")
    return {**values, "connection": connection, "bootstrap_servers": connection.bootstrap_servers}


def servers_of(connection: KafkaConnection) -> str:
    """The bootstrap servers a source's connection names (one a source gives the engine always does)."""
    servers = join_servers(connection.bootstrap_servers)
    assert servers is not None, "a source's connection names its cluster (KafkaSource.reached)"
    return servers


def join_servers(servers: str | list[str] | None) -> str | None:
    """Bootstrap servers as one comma-separated string, as Kafka clients and Lambda's events take them."""
    return ",".join(servers) if isinstance(servers, list) else servers
