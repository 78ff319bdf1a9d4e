"""What the shard sources' declarations share (KinesisSource, DynamoDBStreamSource): where AWS is (region,
endpoint, explicit credentials), the function's lease and state tables, Lambda's usual destination for a
stream (an SQS queue ARN) resolved with the source's endpoint and credentials, and the embedded AWS-compatible
server that `streamfn run --local aws` starts for them (one for the run: connectors/shards/local.py).

Region, endpoint and credentials: what is given here, else the AWS configuration chain (AWS_REGION, the
AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_<SERVICE> variables, the profile, the instance role), so one pipeline runs
against AWS, LocalStack or moto unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

from pydantic import Field

from streamfn.connectors.shards.aws import AwsAccess, AwsAddress
from streamfn.connectors.shards.changelog import DynamoChangelog, state_table_name
from streamfn.connectors.shards.reader import ShardApi, ShardReader
from streamfn.connectors.shards.table import TABLE_NAME, default_table_name
from streamfn.errors import ConfigError
from streamfn.failures.model import Destination
from streamfn.formats.codec import Codec
from streamfn.source import GroupStatus
from streamfn.state.changelog import Changelog


class ShardSourceOptions(AwsAddress):
    """The parameters every shard source has besides what it reads: AWS's address and the function's tables."""

    kind: ClassVar[str] = "a shard"
    """How destination errors name the source: "a Kinesis", "a DynamoDB Streams"."""

    lease_table: str | None = Field(None, pattern=TABLE_NAME.pattern)
    """The DynamoDB table of the function's shard leases and checkpoints; by default "streamfn-<app>-<function>"."""
    lease_duration_seconds: float = Field(10.0, ge=1, le=3600)
    """How long a lease lives without renewal: a killed worker's shards move to others after about this long."""
    state_table: str | None = Field(None, pattern=TABLE_NAME.pattern)
    """The DynamoDB table of a stateful function's state (tumbling windows, aggregations); by default the lease
    table's name + "-state"."""

    starting_position: str = "TRIM_HORIZON"
    """Where a shard without a checkpoint starts (each source says which positions it takes)."""

    def access(self) -> AwsAccess:
        """The source's clients' access (each source knows where its ARN names a region)."""
        raise NotImplementedError

    def shard_api(self) -> ShardApi:
        """The service's API for the reader and `status` (each source has its own)."""
        raise NotImplementedError

    def codecs(self) -> tuple[Codec, Codec | None]:
        """The value codec and the key codec of the source's records."""
        raise NotImplementedError

    @property
    def located(self) -> str:
        """What `status` says it read: "Kinesis stream clicks"."""
        raise NotImplementedError

    def reader(self, *, group_id: str) -> ShardReader:
        value, key = self.codecs()
        api = self.shard_api()
        return ShardReader(
            api,
            lease_table=group_id,
            value_codec=value,
            key_codec=key,
            starting_position=self.starting_position,
            lease_duration=self.lease_duration_seconds,
        )

    async def status(self, *, group_id: str, default_servers: str | None) -> GroupStatus:
        """Per shard: the lease's owner and checkpoint, lineage, milliseconds behind (connectors/shards/status.py)."""
        from streamfn.connectors.shards.status import shard_status  # only the command line asks

        api = self.shard_api()
        endpoint = api.access.endpoint_url
        return await shard_status(api, group_id, self.located + (f" at {endpoint}" if endpoint else ""))

    def group_id(self, app_name: str, function_name: str) -> str:
        """The lease table's name: configured, else "streamfn-<app>-<function>" (connectors/shards)."""
        return self.lease_table or default_table_name(app_name, function_name)

    def changelog(self, *, group_id: str) -> Changelog:
        """The state of tumbling windows and aggregations: a DynamoDB table, `state_table`, by default next to the
        lease table (`group_id`), "<lease table>-state"."""
        return DynamoChangelog(self.state_table or state_table_name(group_id), self.access())

    def destination(self, uri: str) -> Destination:
        """`arn:aws:sqs:<region>:<account>:<queue>`, Lambda's usual destination for a stream: an SqsQueue reached
        with the source's endpoint and credentials (its region: the ARN's), which gets Lambda's failure record."""
        from streamfn.connectors.sqs.sink import QUEUE_ARN, SqsQueue  # only a function that names one loads it

        if not QUEUE_ARN.fullmatch(uri):
            raise ConfigError(
                f"allowed for {self.kind} source: arn:aws:sqs:<region>:<account>:<queue> (an SQS queue, as Lambda's "
                "DestinationConfig names one) or a destination object such as SqsQueue(url) or KafkaTopic('name')"
            )
        access = self.access()
        return SqsQueue.from_arn(
            uri,
            endpoint_url=access.endpoint_url,
            aws_access_key_id=access.aws_access_key_id,
            aws_secret_access_key=access.aws_secret_access_key,
            aws_session_token=access.aws_session_token,
        )

    # The command line's LocalSystem capability (streamfn.capabilities), the same for every shard source: the
    # command line starts one server for `--local aws` whichever sources ask for it.

    local_name: ClassVar[str] = "embedded AWS-compatible server (moto: Kinesis, DynamoDB and its Streams, SQS)"
    local_option: ClassVar[str] = "aws"

    def needs_local(self, default_servers: str | None) -> bool:
        """Never unasked: AWS is always somewhere to connect to (`run --local aws` starts the local server)."""
        return False

    @contextmanager
    def local(self) -> Iterator[str]:
        from streamfn.connectors.shards.local import embedded_aws  # only `run --local aws` starts it

        with embedded_aws() as endpoint:
            yield endpoint
