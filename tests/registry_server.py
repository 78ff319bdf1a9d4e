"""A small in-memory Confluent-compatible schema registry for tests, and TLS certificates for it.

It serves the part of Confluent's Schema Registry REST API that streamfn's RegistryClient and confluent-kafka's
SchemaRegistryClient (AvroSerializer / AvroDeserializer) use, with Confluent's answers and error codes:

    GET  /schemas/ids/{id}                  {"schema": ...}                 40403 unknown id
    POST /subjects/{subject}/versions       {"id": ...}                     42201 invalid schema
    POST /subjects/{subject}                {"subject", "id", "version", "schema"}   40401 / 40403
    GET  /subjects/{subject}/versions       [1, 2, ...]                     40401
    GET  /subjects/{subject}/versions/{v}   {"subject", "id", "version", "schema"}   40401 / 40402 ("latest" too)
    GET  /subjects                          ["orders-value", ...]
    GET  /config                            {"compatibilityLevel": "BACKWARD"}

Like Confluent's, an id identifies a schema across subjects: registering an equivalent schema (same Avro schema once
parsed, whatever its whitespace or namespace spelling) under any subject returns the same id, and registering it
again under the same subject adds no version. Compatibility is not checked. Optional HTTP basic auth (401 otherwise)
and TLS (with client certificates required when a client CA is given). It runs in a thread, so synchronous clients
(confluent-kafka's) and the test's event loop can both use it; `requests` records what was asked, for assertions
about caching.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import ipaddress
import socket
import ssl
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

import fastavro
import orjson
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from streamfn.connectors.kafka.embedded import free_port
from streamfn.formats.avro import schema_json

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


@dataclass
class Subject:
    versions: list[int] = field(default_factory=list)
    """The schema id of each version (version n is versions[n - 1])."""


@dataclass
class Answer:
    status: int
    body: Any


def error(status: int, code: int, message: str) -> Answer:
    return Answer(status, {"error_code": code, "message": message})


@dataclass
class RegistryState:
    """The registry's data and its REST semantics, independent of HTTP."""

    schemas: list[str] = field(default_factory=list)
    """Schema texts as first registered; id n is schemas[n - 1]."""
    ids: dict[str, int] = field(default_factory=dict)
    """Equivalent-schema key -> id."""
    subjects: dict[str, Subject] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, method: str, path: str, body: Any) -> Answer:
        parts = [unquote(part) for part in path.strip("/").split("/")]
        with self.lock:
            match method, parts:
                case "GET", ["schemas", "ids", schema_id] if schema_id.isdigit():
                    return self.by_id(int(schema_id))
                case "POST", ["subjects", subject, "versions"]:
                    return self.register(subject, body)
                case "POST", ["subjects", subject]:
                    return self.lookup(subject, body)
                case "GET", ["subjects", subject, "versions"]:
                    return self.versions(subject)
                case "GET", ["subjects", subject, "versions", version]:
                    return self.version(subject, version)
                case "GET", ["subjects"]:
                    return Answer(200, sorted(self.subjects))
                case "GET", ["config"]:
                    return Answer(200, {"compatibilityLevel": "BACKWARD"})
        return error(404, 404, "HTTP 404 Not Found")

    def by_id(self, schema_id: int) -> Answer:
        if not 1 <= schema_id <= len(self.schemas):
            return error(404, 40403, f"Schema {schema_id} not found")
        return Answer(200, {"schema": self.schemas[schema_id - 1]})

    def key(self, body: Any) -> str | Answer:
        """The key under which equivalent schemas meet, or the 422 for an invalid one."""
        if not isinstance(body, dict) or not isinstance(body.get("schema"), str):
            return error(422, 42201, "Invalid schema: the body has no schema string")
        if body.get("schemaType", "AVRO") != "AVRO":
            return error(422, 42201, f"Invalid schema: this registry serves AVRO only, not {body['schemaType']}")
        try:
            return schema_json(fastavro.parse_schema(orjson.loads(body["schema"])))
        except Exception as problem:
            return error(422, 42201, f"Invalid schema {body['schema']}: {problem}")

    def register(self, subject: str, body: Any) -> Answer:
        key = self.key(body)
        if isinstance(key, Answer):
            return key
        if key not in self.ids:
            self.schemas.append(body["schema"])
            self.ids[key] = len(self.schemas)
        schema_id = self.ids[key]
        versions = self.subjects.setdefault(subject, Subject()).versions
        if schema_id not in versions:
            versions.append(schema_id)
        return Answer(200, {"id": schema_id})

    def lookup(self, subject: str, body: Any) -> Answer:
        key = self.key(body)
        if isinstance(key, Answer):
            return key
        if subject not in self.subjects:
            return error(404, 40401, f"Subject '{subject}' not found.")
        schema_id = self.ids.get(key)
        versions = self.subjects[subject].versions
        if schema_id not in versions:
            return error(404, 40403, "Schema not found")
        return Answer(200, self.described(subject, versions.index(schema_id) + 1))

    def versions(self, subject: str) -> Answer:
        if subject not in self.subjects:
            return error(404, 40401, f"Subject '{subject}' not found.")
        return Answer(200, list(range(1, len(self.subjects[subject].versions) + 1)))

    def version(self, subject: str, version: str) -> Answer:
        if subject not in self.subjects:
            return error(404, 40401, f"Subject '{subject}' not found.")
        count = len(self.subjects[subject].versions)
        number = count if version in ("latest", "-1") else int(version) if version.isdigit() else 0
        if not 1 <= number <= count:
            return error(404, 40402, f"Version {version} not found.")
        return Answer(200, self.described(subject, number))

    def described(self, subject: str, version: int) -> dict[str, Any]:
        schema_id = self.subjects[subject].versions[version - 1]
        return {"subject": subject, "id": schema_id, "version": version, "schema": self.schemas[schema_id - 1]}


class RegistryServer:
    """The registry on 127.0.0.1 in a thread: `with RegistryServer() as registry: ... registry.url ...`.

    `outage` makes it answer every request with that status (a 503, say) until set back to None; `stop()` closes the
    port (connections refused).
    """

    def __init__(
        self,
        *,
        basic_auth: tuple[str, str] | None = None,
        tls: ssl.SSLContext | None = None,
        state: RegistryState | None = None,
    ) -> None:
        self.state = state or RegistryState()
        self.requests: list[tuple[str, str]] = []
        """(method, path without query) of each request, authorized or not."""
        self.outage: int | None = None
        self.port = free_port()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self._authorization = (
            "Basic " + base64.b64encode(":".join(basic_auth).encode()).decode() if basic_auth else None
        )
        self._tls = tls
        self._server: ThreadingHTTPServer | None = None
        self._connections: set[socket.socket] = set()
        """Open keep-alive connections: `stop()` closes them too, or clients would still reach a stopped server."""

    def __enter__(self) -> RegistryServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> RegistryServer:
        server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        if self._tls is not None:
            server.socket = self._tls.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for connection in list(self._connections):
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        registry = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                registry._connections.add(self.connection)

            def finish(self) -> None:
                registry._connections.discard(self.connection)
                super().finish()

            def do_GET(self) -> None:
                self.serve()

            def do_POST(self) -> None:
                self.serve()

            def serve(self) -> None:
                path = urlsplit(self.path).path
                registry.requests.append((self.command, path))
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if registry.outage is not None:
                    answer = error(registry.outage, registry.outage, "Schema Registry is unavailable")
                elif registry._authorization and self.headers.get("Authorization") != registry._authorization:
                    answer = error(401, 401, "Unauthorized")
                else:
                    try:
                        body = orjson.loads(raw) if raw else None
                    except orjson.JSONDecodeError:
                        body = None
                    answer = registry.state.answer(self.command, path, body)
                content = orjson.dumps(answer.body)
                self.send_response(answer.status)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(content)))
                if answer.status == HTTPStatus.UNAUTHORIZED:
                    self.send_header("WWW-Authenticate", 'Basic realm="SchemaRegistry"')
                self.end_headers()
                self.wfile.write(content)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the tests' output stays readable; `requests` keeps what matters

        return Handler


# --- TLS: a throw-away CA, a server certificate for 127.0.0.1 and a client certificate ------------------------------


@dataclass(frozen=True)
class Certificates:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def server_context(
        self, *, require_client_cert: bool, tls_version: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED
    ) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.maximum_version = tls_version
        context.load_cert_chain(self.server_cert, self.server_key)
        if require_client_cert:
            context.load_verify_locations(self.ca)
            context.verify_mode = ssl.CERT_REQUIRED
        return context


def make_certificates(directory: Path) -> Certificates:
    """A CA and two certificates it signs (EC P-256, valid one day), written as PEM files in `directory`."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "streamfn test CA")])
    ca = _certificate(ca_name, ca_key, ca_name, ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    server = _certificate(server_name, server_key, ca_name, ca_key, ca=False)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "streamfn client")])
    client = _certificate(client_name, client_key, ca_name, ca_key, ca=False)
    files = {
        "ca.pem": ca.public_bytes(serialization.Encoding.PEM),
        "server.pem": server.public_bytes(serialization.Encoding.PEM),
        "server.key": _pem(server_key),
        "client.pem": client.public_bytes(serialization.Encoding.PEM),
        "client.key": _pem(client_key),
    }
    for name, content in files.items():
        (directory / name).write_bytes(content)
    return Certificates(*(directory / name for name in files))


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _certificate(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())
