"""HTTP side of the daemon: ``/metrics`` (Prometheus), ``/healthz`` (live: 503 naming the
threads that died or stalled), ``/readyz`` (ready for events) and ``/status`` (JSON: what
is served and how). GET and HEAD.

A stuck, idle or trickling client does not hold a thread for ever, nor a flood of
connections start a thread each: a connection whose request is not complete
``request_timeout_s`` after it was accepted is closed (however the bytes come: a read's
timeout is what is left of that), and at most ``max_connections`` are served at once; one
past that is closed at once, unanswered. Both are counted in
``streamtrk_http_connections_dropped_total`` (``cause``: ``timeout``, ``busy``). Sending the
answer has ``request_timeout_s`` of its own (one past it is closed and counted ``timeout``
too). (Clients that keep reconnecting can still take
every place: serve HTTP on a trusted network, as the default 127.0.0.1 does.) An endpoint
that fails (its callback raises) answers 500 with the error, logged with its traceback at
most once an ``ANSWER_LOG_S``; a peer that resets its connection is gone, nothing more.

The client side (polling ``/readyz``) is ``streamtrk.client.wait_ready``."""

from __future__ import annotations

import io
import json
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from streamtrk.service.logs import Throttle
from streamtrk.service.telemetry import SocketMetrics

log = logging.getLogger(__name__)

#: Connections served at once: Prometheus and the probes need a few.
MAX_CONNECTIONS = 32
#: Seconds from a connection's accept to its complete request (and again to send the answer).
REQUEST_TIMEOUT_S = 10.0
#: Seconds :meth:`HealthServer.close` waits for the answers in progress to finish (a
#: scrape cut at exit fails; a silent peer is not waited for past this).
CLOSE_WAIT_S = 2.0
HANDLER_THREAD = "http connection"  # each connection's thread
#: An endpoint that fails is logged, with its traceback, at most this often.
ANSWER_LOG_S = 60.0


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
    """A small threading HTTP server on ``(host, port)``, serving in a thread of its own (not
    a daemon thread: :meth:`close` ends it), each connection in a daemon thread that
    :meth:`close` waits for up to ``CLOSE_WAIT_S``."""

    def __init__(
        self,
        address: tuple[str, int],
        metrics: SocketMetrics,
        readiness: Readiness,
        status: Callable[[], dict[str, Any]],
        problems: Callable[[], list[str]],
        *,
        max_connections: int = MAX_CONNECTIONS,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
    ) -> None:
        if max_connections <= 0 or request_timeout_s <= 0:
            raise ValueError("max_connections and request_timeout_s must be positive")
        text = "text/plain; charset=utf-8"
        dropped = metrics.http_dropped
        failing, failing_lock = Throttle(ANSWER_LOG_S), threading.Lock()

        def answer(path: str) -> tuple[int, bytes, str]:
            try:
                return endpoint(path)
            except Exception as e:
                with failing_lock:
                    since = failing.count()
                if since:
                    more = f" ({since} failures since the last line)" if since > 1 else ""
                    log.error("the HTTP endpoint %s failed%s", path, more, exc_info=True)
                return 500, f"internal error: {type(e).__name__}: {e}\n".encode(), text

        def endpoint(path: str) -> tuple[int, bytes, str]:
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
            timeout = request_timeout_s

            def setup(self) -> None:
                super().setup()
                self.rfile.close()  # reads go through the request's deadline instead
                reader = _DeadlineReader(self.connection, request_timeout_s)
                self.rfile = io.BufferedReader(reader)

            def do_GET(self) -> None:
                self._send(*answer(self.path.split("?", 1)[0]))

            def do_HEAD(self) -> None:
                self._send(*answer(self.path.split("?", 1)[0]), head=True)

            def send_response(self, code: int, message: str | None = None) -> None:
                self.connection.settimeout(request_timeout_s)  # the answer's own time
                super().send_response(code, message)

            def _send(self, code: int, body: bytes, ctype: str, head: bool = False) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # no per-request log lines

            def log_error(self, format: str, *args: object) -> None:
                if any(isinstance(a, TimeoutError) for a in args):  # past the deadline
                    dropped.labels("timeout").inc()

        self.server = _Bounded(address, Handler, max_connections, dropped.labels("busy").inc)
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="http", kwargs={"poll_interval": 0.2}
        )

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    @property
    def host_port(self) -> str:
        """``HOST:PORT`` served (the port chosen for 0; an IPv6 host in brackets)."""
        host, port = self.address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop taking connections, then let the answers in progress finish (up to
        ``CLOSE_WAIT_S``: a scrape in progress at exit was cut short)."""
        if self._thread.is_alive():
            self.server.shutdown()
            self._thread.join()
        self.server.server_close()
        self.server.join_handlers(CLOSE_WAIT_S)


class _DeadlineReader(io.RawIOBase):
    """A socket's reads, all done within ``seconds`` of this reader's creation: each read
    waits at most what is left, and none starts after it (``TimeoutError``)."""

    def __init__(self, sock: socket.socket, seconds: float) -> None:
        self._sock = sock
        self._end = time.monotonic() + seconds

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self._end - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request was not complete in time")
        self._sock.settimeout(left)
        return self._sock.recv_into(buffer)


# socketserver's request, as its methods take it: a TCP server's is the connection's socket.
_Request = socket.socket | tuple[bytes, socket.socket]


class _Bounded(ThreadingHTTPServer):
    """A thread per connection, at most ``most`` at once; one past that is closed at once
    and ``refused()`` called."""

    request_queue_size = 128  # the listen backlog (socketserver's 5 makes a burst retry SYNs)

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        most: int,
        refused: Callable[[], None],
    ) -> None:
        # An IPv6 host ("::", "::1"): an IPv6 socket ("::" takes IPv4 too, as Linux has it).
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, handler)
        self._places = threading.BoundedSemaphore(most)
        self._refused = refused
        self._handlers: set[threading.Thread] = set()  # the connections' threads alive
        self._handlers_lock = threading.Lock()

    def process_request(self, request: _Request, client_address: Any) -> None:
        if not self._places.acquire(blocking=False):
            self._refused()
            self.shutdown_request(request)
            return
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name=HANDLER_THREAD,
            daemon=True,
        )
        with self._handlers_lock:
            self._handlers.add(thread)
        try:
            thread.start()
        except BaseException:
            with self._handlers_lock:
                self._handlers.discard(thread)
            self._places.release()
            raise

    def process_request_thread(self, request: _Request, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._handlers_lock:
                self._handlers.discard(threading.current_thread())
            self._places.release()

    def join_handlers(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds in all for the connections' threads to end."""
        end = time.monotonic() + timeout
        with self._handlers_lock:
            handlers = list(self._handlers)
        for thread in handlers:
            thread.join(max(0.0, end - time.monotonic()))

    def handle_error(self, request: _Request, client_address: Any) -> None:
        """socketserver prints a traceback to stderr, past the log's format: a peer that
        went away (a reset, as a load balancer's TCP check closes) is nothing to say, else
        the error is logged."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        log.error("HTTP connection from %s failed", client_address[0], exc_info=True)
