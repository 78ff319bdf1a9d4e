"""Amazon SQS: SqsQueue, a sink that sends each output of a function as one message, and an on_failure destination
that receives Lambda's failure record of each failed record (metadata only), with aiobotocore."""

from streamfn.connectors.sqs.sink import SqsQueue
from streamfn.connectors.sqs.writer import SqsDeliveryError

__all__ = ["SqsDeliveryError", "SqsQueue"]
