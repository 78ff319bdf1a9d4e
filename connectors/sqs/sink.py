"""SqsQueue as a user declares it: which queue, how to reach it, validated into one-line ConfigErrors.

The declared object is configuration only (one may serve several functions); `open()` gives each function its own
writer with its own aiobotocore client.

Region and endpoint, when not given: the region is the one in an AWS queue URL (`sqs.<region>.amazonaws.com`),
because a queue lives in exactly one region, else the AWS configuration chain's (AWS_REGION, ~/.aws/config...);
the endpoint is the queue URL's own host when that is not AWS (moto, LocalStack, ElasticMQ), else AWS's. Without
credentials given, the AWS chain finds them (environment, profile, instance role...).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from contextlib import AsyncExitStack
from typing import Any
from urllib.parse import urlsplit

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import Field, SecretStr, field_validator, model_validator

from streamfn.config import http_url
from streamfn.connectors.sqs.failures import FailureQueueWriter
from streamfn.connectors.sqs.message import GROUP_ID
from streamfn.connectors.sqs.writer import SqsWriter
from streamfn.errors import ConfigError, StrictModel, Unreachable
from streamfn.outputs.sink import SinkContext, SinkRetry

CONNECT_TIMEOUT_SECONDS = 5.0
READ_TIMEOUT_SECONDS = 20.0
_AWS_HOST = re.compile(r"(^|\.)amazonaws\.com(\.cn)?$")
QUEUE_ARN = re.compile(
    r"arn:(?P<partition>aws[a-z-]*):sqs:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):(?P<name>[a-zA-Z0-9_-]{1,75}(\.fifo)?)"
)
"""An SQS queue's ARN, as Lambda's DestinationConfig names a queue."""
_REGION_IN_HOST = re.compile(r"^(?:sqs(?:-fips)?\.)?(?P<region>[a-z]{2}(?:-[a-z]+)+-\d+)\.(?:queue\.)?amazonaws\.com")


class SqsQueue(StrictModel):
    """An Amazon SQS queue (standard or FIFO, by its URL's `.fifo`): as an output, each output becomes one message;
    as on_failure, each failed record becomes Lambda's failure record (metadata only)."""

    owner = "SqsQueue"

    queue_url: str
    region_name: str | None = Field(None, min_length=1)
    endpoint_url: str | None = None
    """For SQS-compatible servers (moto, LocalStack); by default the queue URL's host when it is not AWS."""
    aws_access_key_id: str | None = Field(None, min_length=1)
    aws_secret_access_key: SecretStr | None = None
    aws_session_token: SecretStr | None = None
    """With temporary credentials (an assumed role) given explicitly."""
    message_group_id: str | None = None
    """FIFO: the group of every message (one ordered stream); by default each output's key, else the function."""
    retry: SinkRetry = Field(default_factory=SinkRetry)

    def __init__(self, queue_url: str | None = None, /, **values: Any) -> None:
        super().__init__(**({"queue_url": queue_url} if queue_url is not None else {}), **values)

    def __str__(self) -> str:
        return f"SqsQueue({self.queue_name!r})"

    @property
    def queue_name(self) -> str:
        return urlsplit(self.queue_url).path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def fifo(self) -> bool:
        return self.queue_name.endswith(".fifo")

    @field_validator("queue_url", "endpoint_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return None if value is None else http_url(value)

    @field_validator("queue_url")
    @classmethod
    def _has_queue(cls, value: str) -> str:
        if not urlsplit(value).path.strip("/"):
            raise ValueError("must name the queue, as https://sqs.<region>.amazonaws.com/<account>/<queue>")
        return value

    @field_validator("message_group_id")
    @classmethod
    def _group(cls, value: str | None) -> str | None:
        if value is not None and not GROUP_ID.match(value):
            raise ValueError("must be 1 to 128 letters, digits and punctuation (SQS's MessageGroupId)")
        return value

    @model_validator(mode="after")
    def _key_pair(self) -> SqsQueue:
        if (self.aws_access_key_id is None) != (self.aws_secret_access_key is None):
            raise ValueError("aws_access_key_id and aws_secret_access_key go together: give both or neither")
        if self.aws_session_token is not None and self.aws_access_key_id is None:
            raise ValueError("aws_session_token needs aws_access_key_id and aws_secret_access_key")
        return self

    def check(self, source_topics: Sequence[str]) -> None:
        """Nothing to refuse: an SQS queue cannot feed a Kafka source back."""

    def region(self) -> str | None:
        """The region to sign requests for: given, else the queue URL's, else None (the AWS chain decides)."""
        if self.region_name:
            return self.region_name
        found = _REGION_IN_HOST.match(urlsplit(self.queue_url).hostname or "")
        return found.group("region") if found else None

    def endpoint(self) -> str | None:
        """Where requests go: given, else the queue URL's host when it is not AWS, else None (AWS's endpoint)."""
        if self.endpoint_url:
            return self.endpoint_url
        parts = urlsplit(self.queue_url)
        return None if _AWS_HOST.search(parts.hostname or "") else f"{parts.scheme}://{parts.netloc}"

    @classmethod
    def from_arn(cls, arn: str, **access: Any) -> SqsQueue:
        """The queue an ARN names (`arn:aws:sqs:<region>:<account>:<name>`, as Lambda's DestinationConfig does), at
        its AWS URL; `access`: region_name, endpoint_url and credentials (a source's, for an emulator's endpoint)."""
        found = QUEUE_ARN.fullmatch(arn)
        if found is None:
            raise ConfigError(f"{arn!r} is not an SQS queue ARN: arn:aws:sqs:<region>:<account>:<queue>")
        suffix = ".cn" if found.group("partition") == "aws-cn" else ""
        url = (
            f"https://sqs.{found.group('region')}.amazonaws.com{suffix}/{found.group('account')}/{found.group('name')}"
        )
        given = {name: value for name, value in access.items() if value is not None}
        return cls(url, **({"region_name": found.group("region")} | given))

    async def _client(self, stack: AsyncExitStack) -> Any:
        config = AioConfig(
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
            read_timeout=READ_TIMEOUT_SECONDS,
            retries={"mode": "standard", "total_max_attempts": 1},  # the engine retries, with its backoff
        )
        return await stack.enter_async_context(
            get_session().create_client(
                "sqs",
                region_name=self.region(),
                endpoint_url=self.endpoint(),
                aws_access_key_id=self.aws_access_key_id,
                aws_secret_access_key=_secret(self.aws_secret_access_key),
                aws_session_token=_secret(self.aws_session_token),
                config=config,
            )
        )

    async def open_destination(self, source_connection: Any = None) -> FailureQueueWriter:
        """As on_failure: Lambda's failure record of each failed record, metadata only (connectors/sqs/failures.py)."""
        stack = AsyncExitStack()
        client = await self._client(stack)
        return FailureQueueWriter(client, stack, queue_url=self.queue_url, name=self.queue_name, fifo=self.fifo)

    async def depth(self, source_connection: Any = None) -> int:
        """Messages in the queue now, as SQS approximates them (visible and in flight), for `streamfn status`'s
        dead letters (streamfn.failures.model.Countable); Unreachable if SQS does not answer."""
        async with AsyncExitStack() as stack:
            client = await self._client(stack)
            try:
                found = await client.get_queue_attributes(
                    QueueUrl=self.queue_url,
                    AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
                )
            except (ClientError, BotoCoreError, OSError, TimeoutError) as error:
                raise Unreachable(f"{self}: {error}") from None
        attributes = found.get("Attributes", {})
        return sum(
            int(attributes.get(n, 0)) for n in ("ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible")
        )

    async def open(self, context: SinkContext) -> SqsWriter:
        stack = AsyncExitStack()
        client = await self._client(stack)
        return SqsWriter(
            client,
            stack,
            queue_url=self.queue_url,
            name=self.queue_name,
            fifo=self.fifo,
            group=self.message_group_id,
            function=context.function,
        )


def _secret(value: SecretStr | None) -> str | None:
    return None if value is None else value.get_secret_value()
