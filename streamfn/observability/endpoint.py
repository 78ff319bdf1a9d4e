"""A tiny HTTP server for a worker's operational routes: health probes, Prometheus' /metrics.

Built on the standard library's `ThreadingHTTPServer`, on a daemon thread: it needs no new dependency and keeps
answering while the event loop is busy (or blocked, which is exactly when a liveness probe must get an answer).
Because routes run on the server's threads, never on the event loop, a route must only read the worker's state
(copying containers before iterating) and must not await anything.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger("streamfn.endpoint")

Route = Callable[[], tuple[int, str, bytes]]
"""A GET route: returns (status code, content type, body)."""

POLL_INTERVAL_SECONDS = 0.1
"""How often the server loop checks for `stop()`: stopping takes at most this long."""


class Endpoint:
    """Serves `routes` (path -> Route) by GET on `host`:`port` (0: any free port, see `.port`); 404 otherwise."""

    def __init__(self, port: int, routes: Mapping[str, Route], host: str = "0.0.0.0") -> None:
        self.host = host
        self._requested_port = port
        self.routes = dict(routes)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port once started (so port 0 works), else the requested one."""
        return self._server.server_address[1] if self._server is not None else self._requested_port

    def start(self) -> None:
        """Bind (a port in use raises OSError here, at start-up) and serve on a daemon thread."""
        if self._server is not None:
            return
        server = ThreadingHTTPServer((self.host, self._requested_port), _handler(self.routes))
        server.daemon_threads = True  # a probe in progress never holds the process at exit
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": POLL_INTERVAL_SECONDS},
            name=f"streamfn-endpoint:{self.port}",
            daemon=True,
        )
        self._thread.start()
        log.info("serving %s on http://%s:%d", ", ".join(sorted(self.routes)), self.host, self.port)

    def stop(self) -> None:
        """Stop serving and release the port (requests under way finish on their own daemon threads)."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join()

    def __enter__(self) -> Endpoint:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


def _handler(routes: Mapping[str, Route]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            route = routes.get(urlsplit(self.path).path)
            if route is None:
                self._send(404, "text/plain; charset=utf-8", b"not found\n")
                return
            try:
                status, content_type, body = route()
            except Exception:  # a broken route answers 500; the server goes on
                log.exception("GET %s failed", self.path)
                self._send(500, "text/plain; charset=utf-8", b"internal error\n")
                return
            self._send(status, content_type, body)

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Probes arrive every few seconds: one stderr line each would drown the worker's log."""
            log.debug("%s %s", self.address_string(), format % args)

    return Handler
