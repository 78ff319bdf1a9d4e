"""Secrets in configuration: given inline, or read from an environment variable, a file or AWS Secrets Manager.

A pipeline file names where a secret is (`Secret.from_env("KAFKA_PASSWORD")`), never needs the value itself, and
the value is read once, when the first client needs it, and held as a pydantic `SecretStr`, whose repr and str
are `'**********'`: no log line, error message, status document or dead letter can carry it by accident.
Secrets Manager is read through the AWS configuration chain (credentials, region, `AWS_ENDPOINT_URL*`) with
aiobotocore (`pip install 'streamfn[secrets]'`); a secret's JSON keys are Lambda's (`username`/`password`,
`certificate`/`privateKey`/`privateKeyPassword`).
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import orjson
from pydantic import SecretStr, model_validator

from streamfn.errors import ConfigError, StrictModel


class Secret(StrictModel):
    """Where a secret's value is: exactly one of `env`, `file` or `aws_secret` (with `key`, a JSON key in it)."""

    owner = "Secret"

    env: str | None = None
    """The name of an environment variable holding the value."""
    file: Path | None = None
    """A file holding the value (a trailing newline is dropped): a Kubernetes or Docker secret, say."""
    aws_secret: str | None = None
    """The ARN (or name) of an AWS Secrets Manager secret."""
    key: str | None = None
    """With `aws_secret`: the key of the value in the secret's JSON (Lambda's layout); without, the whole string."""
    required: bool = True
    """With `key`: False reads a secret without that key as no value (Lambda's optional privateKeyPassword)."""

    @classmethod
    def from_env(cls, name: str) -> Secret:
        return cls(env=name)

    @classmethod
    def from_file(cls, path: str | Path) -> Secret:
        return cls(file=Path(path))

    @classmethod
    def from_aws(cls, secret_id: str, key: str | None = None, *, required: bool = True) -> Secret:
        return cls(aws_secret=secret_id, key=key, required=required)

    @model_validator(mode="after")
    def _one_place(self) -> Secret:
        if sum(place is not None for place in (self.env, self.file, self.aws_secret)) != 1:
            raise ValueError("give exactly one of env, file or aws_secret")
        if self.key is not None and self.aws_secret is None:
            raise ValueError("key names a JSON key of an aws_secret")
        return self

    def __str__(self) -> str:
        if self.env is not None:
            return f"environment variable {self.env}"
        if self.file is not None:
            return f"file {str(self.file)!r}"
        return f"Secrets Manager secret {self.aws_secret!r}" + (f" key {self.key!r}" if self.key else "")


SecretValue = SecretStr | Secret
"""A secret as configured: the value itself (held as SecretStr) or where to read it."""


class SecretReader:
    """Reads configured secrets, each Secrets Manager secret once however many values come from it."""

    def __init__(self) -> None:
        self._fetched: dict[str, asyncio.Task[str]] = {}

    async def read(self, secret: SecretValue | None, field: str) -> SecretStr | None:
        """The value of `secret` (configured as `field`), or None where none is configured (or optional)."""
        if secret is None or isinstance(secret, SecretStr):
            return secret
        if secret.env is not None:
            value = os.environ.get(secret.env)
            if value is None:
                raise ConfigError(f"{field}: environment variable {secret.env} is not set")
            return SecretStr(value)
        if secret.file is not None:
            try:
                return SecretStr(secret.file.read_text().removesuffix("\n"))
            except OSError as error:
                raise ConfigError(f"{field}: cannot read {secret}: {error.strerror}") from None
        assert secret.aws_secret is not None
        if secret.aws_secret not in self._fetched:
            self._fetched[secret.aws_secret] = asyncio.ensure_future(_secrets_manager(secret.aws_secret, field))
        text = await self._fetched[secret.aws_secret]
        if secret.key is None:
            return SecretStr(text)
        try:
            document = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise ConfigError(f"{field}: {secret} is not a JSON object (expected Lambda's layout)") from None
        value = document.get(secret.key) if isinstance(document, dict) else None
        if value is None and not secret.required:
            return None
        if not isinstance(value, str):
            raise ConfigError(f"{field}: {secret}: the secret has no string {secret.key!r}")
        return SecretStr(value)


async def _secrets_manager(secret_id: str, field: str) -> str:
    """The SecretString of a Secrets Manager secret, in the region its ARN names (else the configured one)."""
    try:
        from aiobotocore.session import get_session
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        raise ConfigError(
            f"{field}: reading AWS Secrets Manager needs aiobotocore: pip install 'streamfn[secrets]'"
        ) from None
    for name in ("botocore", "aiobotocore"):  # at DEBUG they log response bodies: the secret itself
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.INFO:
            logger.setLevel(logging.INFO)
    parts = secret_id.split(":")
    region: dict[str, Any] = {"region_name": parts[3]} if secret_id.startswith("arn:") and len(parts) > 3 else {}
    try:
        async with get_session().create_client("secretsmanager", **region) as client:
            answer = await client.get_secret_value(SecretId=secret_id)
    except (BotoCoreError, ClientError) as error:
        raise ConfigError(f"{field}: cannot read Secrets Manager secret {secret_id!r}: {error}") from None
    text = answer.get("SecretString")
    if not isinstance(text, str):
        raise ConfigError(f"{field}: Secrets Manager secret {secret_id!r} has no SecretString (binary secret)")
    return text
