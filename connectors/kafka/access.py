"""Lambda's SourceAccessConfigurations as a KafkaConnection: which secrets (Secrets Manager ARNs, in Lambda's JSON
layout) hold the SASL credentials, the client certificate and the root CA."""

from __future__ import annotations

import logging
from typing import Any

from streamfn.connectors.kafka.connection import KafkaConnection
from streamfn.secrets import Secret

log = logging.getLogger("streamfn.kafka")

LAMBDA_SASL = {"BASIC_AUTH": "PLAIN", "SASL_SCRAM_256_AUTH": "SCRAM-SHA-256", "SASL_SCRAM_512_AUTH": "SCRAM-SHA-512"}
LAMBDA_IGNORED = ("VPC_SUBNET", "VPC_SECURITY_GROUP")
LAMBDA_TYPES = (*LAMBDA_SASL, "CLIENT_CERTIFICATE_TLS_AUTH", "SERVER_ROOT_CA_CERTIFICATE", *LAMBDA_IGNORED)


def from_source_access_configurations(entries: Any) -> KafkaConnection:
    """Lambda's `SourceAccessConfigurations` ([{"Type", "URI"}], as the API and CloudFormation spell them) as a
    connection whose secrets are read from the Secrets Manager ARNs in Lambda's layout: SASL entries mean SASL_SSL
    (Lambda supports no SASL without TLS), a client certificate or root CA alone means SSL. VPC entries say where
    Lambda's pollers run: streamfn runs where it is started, so they are accepted and ignored (logged)."""
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and set(e) == {"Type", "URI"} and all(isinstance(v, str) for v in e.values())
        for e in entries
    ):
        raise ValueError('SourceAccessConfigurations must be a list of {"Type": ..., "URI": ...}')
    values: dict[str, Any] = {}
    authentication: list[str] = []
    for entry in entries:
        kind, uri = entry["Type"], entry["URI"]
        if kind in LAMBDA_SASL:
            authentication.append(kind)
            values |= {
                "sasl_mechanism": LAMBDA_SASL[kind],
                "sasl_username": Secret.from_aws(uri, "username"),
                "sasl_password": Secret.from_aws(uri, "password"),
            }
        elif kind == "CLIENT_CERTIFICATE_TLS_AUTH":
            authentication.append(kind)
            values |= {
                "ssl_cert_pem": Secret.from_aws(uri, "certificate"),
                "ssl_key_pem": Secret.from_aws(uri, "privateKey"),
                "ssl_key_password": Secret.from_aws(uri, "privateKeyPassword", required=False),
            }
        elif kind == "SERVER_ROOT_CA_CERTIFICATE":
            values["ssl_ca_pem"] = Secret.from_aws(uri, "certificate")
        elif kind in LAMBDA_IGNORED:
            log.info("SourceAccessConfigurations %s %s ignored: streamfn connects from where it runs", kind, uri)
        else:
            raise ValueError(f"SourceAccessConfigurations Type {kind!r} is invalid: allowed: {', '.join(LAMBDA_TYPES)}")
    if len(authentication) > 1:
        raise ValueError(f"SourceAccessConfigurations has {' and '.join(authentication)}: give one authentication")
    return KafkaConnection(**values)
