"""HTTP side of the daemon: ``/metrics`` (Prometheus), ``/healthz`` (live), ``/readyz``.

The client side (polling ``/readyz``) is ``streamtrk.client.wait_ready``."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST

from streamtrk.service.telemetry import Metrics


class Readiness:
    """Ready once the model is loaded and warmed up; not ready while loading or draining."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = "loading"

    def set(self, state: str) -> None:
        """``loading``, ``ready`` or ``draining``."""
        with self._lock:
            self._state = state

    @property
    def state(self) -> str:
        with self._lock:
            return self._state

    @property
    def ready(self) -> bool:
        return self.state == "ready"


class HealthServer:
    """A small threading HTTP server on ``(host, port)``, serving in a daemon thread."""

    def __init__(self, address: tuple[str, int], metrics: Metrics, readiness: Readiness) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, metrics.render(), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._send(200, b"ok\n")
                elif path == "/readyz":
                    state = readiness.state
                    self._send(200 if state == "ready" else 503, f"{state}\n".encode())
                else:
                    self._send(404, b"not found: try /metrics, /healthz or /readyz\n")

            def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8"):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # no per-request log lines

        self.server = ThreadingHTTPServer(address, Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="http", kwargs={"poll_interval": 0.2}
        )

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        if self._thread.is_alive():
            self.server.shutdown()
            self._thread.join()
        self.server.server_close()
