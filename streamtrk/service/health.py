"""HTTP side of the daemon: ``/metrics`` (Prometheus), ``/healthz`` (live: 503 naming the
threads that died or stalled), ``/readyz`` (ready for events) and ``/status`` (JSON: what
is served and how). GET and HEAD.

The client side (polling ``/readyz``) is ``streamtrk.client.wait_ready``."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

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

    def __init__(
        self,
        address: tuple[str, int],
        metrics: Metrics,
        readiness: Readiness,
        status: Callable[[], dict[str, Any]],
        problems: Callable[[], list[str]],
    ) -> None:
        text = "text/plain; charset=utf-8"

        def answer(path: str) -> tuple[int, bytes, str]:
            if path == "/metrics":
                return 200, metrics.render(), CONTENT_TYPE_LATEST
            if path == "/healthz":
                found = problems()
                body = "".join(f"{p}\n" for p in found) or "ok\n"
                return (503 if found else 200), body.encode(), text
            if path == "/readyz":
                state = readiness.state
                return (200 if state == "ready" else 503), f"{state}\n".encode(), text
            if path == "/status":
                body = json.dumps(status(), indent=2, sort_keys=True, default=str) + "\n"
                return 200, body.encode(), "application/json"
            return 404, b"not found: try /metrics, /healthz, /readyz or /status\n", text

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._send(*answer(self.path.split("?", 1)[0]))

            def do_HEAD(self) -> None:
                self._send(*answer(self.path.split("?", 1)[0]), head=True)

            def _send(self, code: int, body: bytes, ctype: str, head: bool = False) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
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
