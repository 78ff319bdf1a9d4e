"""Amazon SQS: a sink (SqsQueue) that sends each output of a function as one message, with aiobotocore."""

from streamfn.connectors.sqs.sink import SqsQueue
from streamfn.connectors.sqs.writer import SqsDeliveryError

__all__ = ["SqsDeliveryError", "SqsQueue"]
