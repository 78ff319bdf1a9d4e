"""streamfn: AWS Lambda's event source mapping for any Kafka, as a Python framework."""

from streamfn.app import App
from streamfn.config import Backoff
from streamfn.engine.chain import Function
from streamfn.errors import ConfigError
from streamfn.failures.model import BatchItemFailures
from streamfn.outputs.sink import Delete, Output, SinkRetry
from streamfn.record import Partition, Record
from streamfn.secrets import Secret
from streamfn.state.windows import Hopping, Tumbling

__all__ = [
    "App",
    "Backoff",
    "BatchItemFailures",
    "ConfigError",
    "Delete",
    "Function",
    "Hopping",
    "Output",
    "Partition",
    "Record",
    "Secret",
    "SinkRetry",
    "Tumbling",
]
__version__ = "0.1.0"
