"""The `context` object of a Lambda-style handler: the attributes and methods Lambda's Python runtime offers."""

from __future__ import annotations

import logging
import random
import time

LOCAL_ACCOUNT = "000000000000"
LOCAL_REGION = "local"


def function_arn(function_name: str) -> str:
    """The ARN streamfn reports for a function: Lambda's layout, with a local region and account."""
    return f"arn:aws:lambda:{LOCAL_REGION}:{LOCAL_ACCOUNT}:function:{function_name}"


_VERSION_4 = (0x4 << 76) | (0x2 << 62)
_VERSION_BITS = (0xF << 76) | (0x3 << 62)


def new_request_id() -> str:
    """A version 4 UUID, as Lambda's request ids, made for every invocation (logs carry it), so made cheaply: from
    `random` rather than uuid4()'s os.urandom (a system call; no cryptographic strength is needed here), with the
    version and variant bits set and formatted by hand (0.8 us, against 1.8 through uuid.UUID)."""
    h = f"{(random.getrandbits(128) & ~_VERSION_BITS) | _VERSION_4:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class LambdaContext:
    """One per invocation, like Lambda's: its request id and a deadline from the function's timeout.

    `logger` writes through the worker's log handlers, which add the invocation's function, partition, offsets and
    request id to each line (streamfn/observability/logs.py)."""

    function_version = "$LATEST"
    memory_limit_in_mb = 128

    def __init__(self, function_name: str, timeout: float, logger: logging.Logger, request_id: str) -> None:
        self.function_name = function_name
        self.invoked_function_arn = function_arn(function_name)
        self.aws_request_id = request_id
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = f"streamfn/{function_name}"
        self.logger = logger
        self._deadline = time.monotonic() + timeout

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))
