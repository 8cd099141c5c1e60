"""The worker's HTTP port: /metrics, /healthz and /readyz, served from a thread of its own.

Not on the event loop: a loop blocked by a handler is exactly what /healthz must report, and it can only
answer if it does not need that loop. prometheus-client's own start_http_server serves /metrics alone, so this
is the standard library's ThreadingHTTPServer with three routes. Between requests, the server's thread
samples the lease keeper's counters (LeaseWatch), so that failing renewals are seen even between probes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog

from ._worker.observing import Health
from .errors import ConfigurationError

log = structlog.get_logger("streamq.metrics")

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], exposition: Callable[[], bytes], health: Health) -> None:
        super().__init__(address, _Handler)
        self.exposition = exposition
        self.health = health

    def service_actions(self) -> None:
        self.health.lease_watch.sample()


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # the name http.server calls
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            try:
                self._reply(200, self.server.exposition(), METRICS_CONTENT_TYPE)
            except Exception as exc:  # a scrape must not take the server down: answer 500 and log it
                log.error("serving /metrics failed", error=str(exc), exc_info=exc)
                self._reply(500, b"metrics failed\n")
        elif path == "/healthz":
            self._status(*self.server.health.live())
        elif path == "/readyz":
            self._status(*self.server.health.ready())
        else:
            self._reply(404, b"not found: /metrics, /healthz, /readyz\n")

    def _status(self, ok: bool, reason: str) -> None:
        self._reply(200 if ok else 503, (reason + "\n").encode())

    def _reply(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a probe every few seconds is not worth a line


class MetricsServer:
    """Listens on (host, port) from start() to stop(); `port` is the one bound (port 0: any free one)."""

    def __init__(self, host: str, port: int, exposition: Callable[[], bytes], health: Health) -> None:
        try:
            self._server = _Server((host, port), exposition, health)
        except OSError as exc:
            raise ConfigurationError(f"cannot serve metrics on {host}:{port}: {exc}") from exc
        self.host = host
        self.port: int = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        # The poll interval bounds how long stop() waits for the thread (run() returns that much later).
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="streamq-metrics",
            daemon=True,
        )
        self._thread.start()
        log.info("serving metrics", host=self.host, port=self.port, paths="/metrics /healthz /readyz")

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()
