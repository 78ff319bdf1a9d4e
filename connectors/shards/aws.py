"""How a shard source reaches AWS (or moto, LocalStack): region, endpoint and credentials, one aiobotocore client
per service.

Whatever is not given comes from the standard AWS configuration chain: the region from AWS_REGION or the profile,
credentials from the environment, profile or instance role, and the endpoint from `AWS_ENDPOINT_URL_<SERVICE>`
(AWS_ENDPOINT_URL_DYNAMODB, AWS_ENDPOINT_URL_KINESIS...) or `AWS_ENDPOINT_URL`, so one pipeline runs against AWS
or an emulator without a code change. An `endpoint_url` given here applies to every service the source uses
(an emulator serves them all on one port).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import ClientError
from pydantic import Field, SecretStr, field_validator, model_validator

from streamfn.config import http_url
from streamfn.errors import StrictModel

CONNECT_TIMEOUT_SECONDS = 2.0
READ_TIMEOUT_SECONDS = 5.0
"""Short: a lease write that hangs longer than a renew period is worth abandoning and trying again."""
ATTEMPTS = 3
"""botocore's own retries (throttling, 5xx); a retried conditional write is told apart by the lease table."""


def check_credentials(key_id: str | None, secret: SecretStr | None, token: SecretStr | None) -> None:
    """Explicit credentials come whole or not at all (ValueError, for a model validator)."""
    if (key_id is None) != (secret is None):
        raise ValueError("aws_access_key_id and aws_secret_access_key go together: give both or neither")
    if token is not None and key_id is None:
        raise ValueError("aws_session_token needs aws_access_key_id and aws_secret_access_key")


class AwsAddress(StrictModel):
    """Where AWS is and who calls it: region, endpoint and explicit credentials, every field optional (the AWS chain
    fills the rest). The parameters of every declaration that reaches AWS (shard sources, KinesisStream,
    DynamoDBTable) and of the clients' access."""

    region_name: str | None = Field(None, min_length=1)
    endpoint_url: str | None = None
    """For AWS-compatible servers (moto, LocalStack): every service the declaration uses is reached there."""
    aws_access_key_id: str | None = Field(None, min_length=1)
    aws_secret_access_key: SecretStr | None = None
    aws_session_token: SecretStr | None = None
    """With temporary credentials (an assumed role) given explicitly."""

    @field_validator("endpoint_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return None if value is None else http_url(value)

    @model_validator(mode="after")
    def _key_pair(self) -> Any:
        check_credentials(self.aws_access_key_id, self.aws_secret_access_key, self.aws_session_token)
        return self

    def aws_access(self, default_region: str | None = None) -> AwsAccess:
        """The clients' access: this address, the region given here else `default_region` (an ARN's)."""
        return AwsAccess(
            region_name=self.region_name or default_region,
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.aws_access_key_id,
            aws_secret_access_key=self.aws_secret_access_key,
            aws_session_token=self.aws_session_token,
        )


class AwsAccess(AwsAddress):
    """An address (AwsAddress) that opens clients."""

    owner = "AwsAccess"

    def described(self, what: str) -> str:
        """`what` with the region and endpoint given, for messages: "Kinesis stream orders (us-east-1)"."""
        where = ", ".join(filter(None, [self.region_name, self.endpoint_url]))
        return what + (f" ({where})" if where else "")

    def client(self, service: str) -> AbstractAsyncContextManager[Any]:
        """An aiobotocore client for `service` ("dynamodb", "kinesis", "dynamodbstreams"), as a context manager."""
        config = AioConfig(
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
            read_timeout=READ_TIMEOUT_SECONDS,
            retries={"mode": "standard", "total_max_attempts": ATTEMPTS},
        )
        return get_session().create_client(  # type: ignore[no-any-return]
            service,
            region_name=self.region_name,
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.aws_access_key_id,
            aws_secret_access_key=_secret(self.aws_secret_access_key),
            aws_session_token=_secret(self.aws_session_token),
            config=config,
        )


def _secret(value: SecretStr | None) -> str | None:
    return None if value is None else value.get_secret_value()


ACTIVE_TIMEOUT_SECONDS = 120.0
"""How long a table just created may take to become ACTIVE (moto: at once; AWS: seconds)."""


def error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


async def ensure_table(
    client: Any, name: str, keys: Sequence[tuple[str, str, str]], *, stream_view_type: str | None = None
) -> None:
    """Create the DynamoDB table `name` (PAY_PER_REQUEST; `keys`: (attribute, HASH or RANGE, S, N or B); with a
    stream of `stream_view_type` if given) unless it exists, then wait until it is ACTIVE. Another worker creating
    it at the same time is fine. Raises TimeoutError past ACTIVE_TIMEOUT_SECONDS, ClientError as the service
    answers."""
    if await _status(client, name) is None:
        stream = {"StreamEnabled": True, "StreamViewType": stream_view_type} if stream_view_type else None
        try:
            await client.create_table(
                TableName=name,
                KeySchema=[{"AttributeName": attribute, "KeyType": kind} for attribute, kind, _ in keys],
                AttributeDefinitions=[
                    {"AttributeName": attribute, "AttributeType": type_} for attribute, _, type_ in keys
                ],
                BillingMode="PAY_PER_REQUEST",
                **({"StreamSpecification": stream} if stream else {}),
            )
        except ClientError as error:
            if error_code(error) != "ResourceInUseException":  # another worker created it first
                raise
    deadline = time.monotonic() + ACTIVE_TIMEOUT_SECONDS
    while (status := await _status(client, name)) != "ACTIVE":
        if time.monotonic() > deadline:
            raise TimeoutError(f"table {name!r} is still {status} after {ACTIVE_TIMEOUT_SECONDS:.0f} s")
        await asyncio.sleep(0.5)


async def _status(client: Any, name: str) -> str | None:
    try:
        described = await client.describe_table(TableName=name)
    except ClientError as error:
        if error_code(error) == "ResourceNotFoundException":
            return None
        raise
    return str(described["Table"]["TableStatus"])
