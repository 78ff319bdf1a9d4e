"""HTTP: a webhook sink (Http) that POSTs a function's outputs as JSON arrays, with httpx."""

from streamfn.connectors.http.sink import Http
from streamfn.connectors.http.writer import HttpDeliveryError

__all__ = ["Http", "HttpDeliveryError"]
