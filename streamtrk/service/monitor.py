"""Connection events of the daemon's sockets (ZeroMQ socket monitors), as metrics and logs.

Per socket (``input``, ``output``): ``streamtrk_connections`` counts the connections whose
handshake succeeded and that are still up; every disconnection is counted by cause in
``streamtrk_disconnects_total`` and logged: ``auth`` (the CURVE key is not allowed),
``handshake`` (the handshake failed: a peer without CURVE against a CURVE socket, or a
protocol mismatch) or ``closed`` (an established connection ended: the peer went away, or
libzmq dropped it, for instance for a frame over ``ZMQ_MAXMSGSIZE``; what the peer had
queued on that connection is lost with it). Refused handshakes also count in
``streamtrk_auth_failures_total``.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from streamtrk.service.telemetry import Metrics

log = logging.getLogger(__name__)
POLL_MS = 100
EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_DISCONNECTED
)


class SocketMonitor(threading.Thread):
    """Reads the monitor sockets of ``sockets`` (name -> socket) until :meth:`stop`."""

    def __init__(self, sockets: dict[str, zmq.Socket[Any]], metrics: Metrics) -> None:
        super().__init__(name="monitor", daemon=True)
        self.metrics = metrics
        self.monitors = {name: sock.get_monitor_socket(EVENTS) for name, sock in sockets.items()}
        self._stopping = threading.Event()
        # Causes of refused handshakes whose disconnection is still to come, oldest first.
        # (Handshake events carry no descriptor to pair them with; each refusal is followed
        # by exactly one disconnection, so the counts by cause come out right.)
        self._refused: dict[str, deque[str]] = {name: deque() for name in sockets}
        for name in sockets:
            metrics.connections.labels(name).set(0)

    def stop(self) -> None:
        self._stopping.set()
        self.join(5)

    @property
    def died(self) -> bool:
        """Whether the thread ended without being stopped (the connection metrics froze)."""
        return self.ident is not None and not self.is_alive() and not self._stopping.is_set()

    def run(self) -> None:
        poller = zmq.Poller()
        for mon in self.monitors.values():
            poller.register(mon, zmq.POLLIN)
        by_socket = {mon: name for name, mon in self.monitors.items()}
        try:
            while not self._stopping.is_set():
                for mon, _ in poller.poll(POLL_MS):
                    self.handle(by_socket[mon], recv_monitor_message(mon))
        finally:
            for mon in self.monitors.values():
                mon.close(linger=0)

    def handle(self, socket: str, message: dict[str, Any]) -> None:
        m, event = self.metrics, message["event"]
        endpoint = message["endpoint"].decode(errors="replace")
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            m.connections.labels(socket).inc()
        elif event in (
            zmq.EVENT_HANDSHAKE_FAILED_AUTH,
            zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
            zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
        ):
            cause = "auth" if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH else "handshake"
            m.auth_failures.labels(socket, cause).inc()
            self._refused[socket].append(cause)
        elif event == zmq.EVENT_DISCONNECTED:
            refused = self._refused[socket]
            cause = refused.popleft() if refused else "closed"
            if cause == "closed":
                m.connections.labels(socket).dec()
            m.disconnects.labels(socket, cause).inc()
            level = logging.INFO if cause == "closed" else logging.WARNING
            log.log(
                level,
                "connection on %s ended (%s)",
                socket,
                cause,
                extra={"fields": {"socket": socket, "endpoint": endpoint, "cause": cause}},
            )
