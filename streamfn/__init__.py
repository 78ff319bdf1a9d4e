"""streamfn: AWS Lambda's event source mapping for any Kafka, as a Python framework."""

from streamfn.app import App, Function
from streamfn.config import Backoff
from streamfn.errors import ConfigError
from streamfn.record import Partition, Record

__all__ = ["App", "Backoff", "ConfigError", "Function", "Partition", "Record"]
__version__ = "0.1.0"
