"""The embedded AWS-compatible server of the shard sources: moto in server mode (Kinesis; DynamoDB, its Streams and
the lease tables; SQS for on_failure; STS), in memory, for as long as `streamfn run --local aws` runs. One server
for the run, whichever shard sources ask for it (KinesisSource, DynamoDBStreamSource: ShardSourceOptions).

Only ever started when asked for with `--local aws`: a user with AWS credentials in the environment must never
find a pipeline running against an emulator, nor against AWS, without having chosen it. Meanwhile every AWS client
of the run (and of its worker processes) goes to it: AWS_ENDPOINT_URL points at it (service-specific
AWS_ENDPOINT_URL_* and AWS_PROFILE are set aside), with dummy credentials and, unless one is set, the region
us-east-1; everything is restored when it stops. LOCAL_ENV tells the run's connectors they are on it, so that
what a seed or a sink names is created there when missing: a Kinesis stream (connectors/kinesis/produce.py), a
DynamoDB table with its stream (connectors/dynamodb/produce.py), a DynamoDBTable sink's table declared with its
`key=` (connectors/dynamodb/sink.py); never on AWS.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from streamfn.connectors.kafka.embedded import free_port
from streamfn.errors import ConfigError

LOCAL_ENV = "STREAMFN_LOCAL_AWS"
"""Set by `streamfn run --local aws` to the embedded server's endpoint (and inherited by the run's worker
processes): what is missing there may be created."""

DUMMY_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "streamfn-local", "AWS_SECRET_ACCESS_KEY": "streamfn-local"}
SET_ASIDE = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
START_TIMEOUT_SECONDS = 30.0


@contextmanager
def embedded_aws() -> Iterator[str]:
    """moto's server on a free port; yields its endpoint URL, with the environment pointing at it."""
    try:
        import moto.server  # noqa: F401  (started as a process below; imported to say what is missing)
    except ImportError:
        raise ConfigError(
            "--local aws runs an embedded AWS-compatible server (moto), which is not installed: "
            "pip install 'streamfn[embedded-aws]'"
        ) from None
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    saved = dict(os.environ)
    for name in [n for n in os.environ if n.startswith("AWS_ENDPOINT_URL_")] + list(SET_ASIDE):
        os.environ.pop(name, None)
    os.environ.update(DUMMY_CREDENTIALS, AWS_ENDPOINT_URL=endpoint, **{LOCAL_ENV: endpoint})
    os.environ.setdefault("AWS_DEFAULT_REGION", os.environ.get("AWS_REGION", "us-east-1"))
    process = subprocess.Popen(  # in that environment too: moto reads AWS variables (a profile, endpoints)
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C meant for streamfn must not stop it before the final checkpoints
    )
    try:
        _wait_listening(process, port)
        yield endpoint
    finally:
        os.environ.clear()
        os.environ.update(saved)
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_listening(process: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ConfigError(f"the embedded AWS server (moto) exited with code {process.returncode} at its start")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise ConfigError(
        f"the embedded AWS server (moto) did not listen on port {port} within {START_TIMEOUT_SECONDS:g} s"
    )
