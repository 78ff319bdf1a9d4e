"""Where a DynamoDB stream is, as Lambda's events and failure records name it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class TableStreamLocation:
    """The region and ARN of a table's stream, as Lambda's events (`awsRegion`, `eventSourceARN`) and failure
    records (`DDBStreamBatchInfo.streamArn`) name them. It is the DynamoDB Streams reader's `connection`, which the
    engine takes before the reader connects: the reader fills it in once DescribeStream has answered (the events
    read it when built)."""

    region: str
    arn: str = ""
    """arn:aws:dynamodb:<region>:<account>:table/<table>/stream/<label>"""

    def stream_arn(self, table: str) -> str:
        """The stream's ARN (the same for every shard of the table's stream; `table` is the partition's topic)."""
        return self.arn
