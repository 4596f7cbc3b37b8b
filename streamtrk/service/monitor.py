"""Connection events of the daemon's sockets (ZeroMQ socket monitors), as metrics and logs.

Per socket (``input``, ``output``): ``streamtrk_connections`` counts the connections open
now, from their accept (or connect) to their disconnection, by descriptor: a peer being
refused counts for the milliseconds of its handshake, and no disconnection can take the
count below the connections there are. Every disconnection is counted by cause in
``streamtrk_disconnects_total`` and logged: ``auth`` (the CURVE key is not allowed),
``handshake`` (the handshake was refused: a peer without CURVE against a CURVE socket, or
another mechanism; on a CURVE socket also a peer that hung up during its handshake, as a
client without CURVE may when it sees the mismatch first, and as a CURVE server does to a
client that has another server key than its own; connecting, on any socket a connection
that ended before its handshake succeeded: a peer of an incompatible socket type, a proxy
with nothing behind it) or ``closed`` (any other end: the peer went away, on a plain
socket also during its handshake, as a TCP port probe does; or libzmq dropped the
connection, for a frame over ``ZMQ_MAXMSGSIZE`` or, accepted, a peer of an incompatible
socket type; what the peer had queued on it is lost with it). Refused
handshakes also count in ``streamtrk_auth_failures_total``.
The log has at most one line a ``DISCONNECT_LOG_S`` per socket and cause (a peer can open
and drop connections at will, a port scanner thousands): it says how many ended since the
line before, and those of a burst that stopped are said once their line is due (and
the period passed without one), or when the monitor stops.

libzmq sends these events from its I/O thread, and waits there once a monitor is a few
thousand behind (the sockets' traffic waits with it): the thread reads on past an event it fails to
handle (logged, at most once a ``DISCONNECT_LOG_S``), and should it die all the same, its
``on_failure`` is told (the daemon then drains and exits 1, for a restart).

libzmq 4.3 gives up for good a connection it made whose handshake failed for its protocol
(a peer without CURVE against a CURVE socket, or the reverse), where it retries any other
failure: in connect mode the monitor asks the socket's own thread (:class:`Reconnects`) to
connect again, ``RECONNECT_AFTER_S`` later, so that a distributor or collector that came up
once without CURVE does not cut the daemon off until its restart.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Mapping
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from streamtrk.service import faults
from streamtrk.service.logs import Throttle
from streamtrk.service.telemetry import SocketMetrics
from streamtrk.wire.curve import REFUSALS

log = logging.getLogger(__name__)
POLL_MS = 100
DISCONNECT_LOG_S = 60.0  # at most one line this often per socket and cause
RECONNECT_AFTER_S = 1.0  # a connection libzmq gave up is made again this much later
READ_MAX = 1000  # events read off one monitor in a row (then the other's turn, a stop)
# libzmq 4.3 reports a peer that leaves during its handshake as HANDSHAKE_FAILED_NO_DETAIL
# (a TCP port probe; against a CURVE socket also a client without CURVE that saw the
# mismatch first), and a peer of an incompatible socket type with no handshake event at
# all (and, connecting, never connects again): the open connections are counted from the
# events that carry a descriptor, and a connecting socket's connection that ends before its
# handshake succeeded is made again, unless libzmq says it makes it again (CONNECT_RETRIED).
EVENTS = (
    zmq.EVENT_ACCEPTED
    | zmq.EVENT_CONNECTED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_DISCONNECTED
)


def events_of(curve: bool) -> int:
    """The events monitored on a socket: HANDSHAKE_FAILED_NO_DETAIL only with CURVE (a
    refusal there; on a plain socket a port probe's, a third of a probe flood's events,
    which :meth:`SocketMonitor.handle` leaves)."""
    return EVENTS if curve else EVENTS & ~zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL


class Reconnects:
    """Connecting sockets whose connection libzmq gave up: the monitor thread asks
    (:meth:`request`), the socket's own thread (a ZeroMQ socket is used by one thread) calls
    :meth:`apply` as it polls, which connects again once ``RECONNECT_AFTER_S`` has passed
    (at most once a ``RECONNECT_AFTER_S``, however fast a peer refuses), logged at most once
    a ``DISCONNECT_LOG_S`` per socket."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._at: dict[str, float] = {}  # socket name -> when to connect again
        self._lines: defaultdict[str, Throttle] = defaultdict(
            lambda: Throttle(DISCONNECT_LOG_S)
        )  # socket name -> its log lines (a peer refusing for hours: one a minute)

    def request(self, name: str) -> None:
        with self._lock:
            self._at.setdefault(name, time.monotonic() + RECONNECT_AFTER_S)

    def cancel(self, name: str) -> None:
        with self._lock:
            self._at.pop(name, None)

    def apply(self, name: str, socket: zmq.Socket[Any], endpoint: str) -> None:
        """Connect ``socket`` (``name``) to ``endpoint`` again if it was asked and is due."""
        if name not in self._at:  # the common case, on every poll: no lock taken
            return
        with self._lock:
            if self._at.get(name, math.inf) > time.monotonic():
                return
            del self._at[name]
        with contextlib.suppress(zmq.ZMQError):  # libzmq may have forgotten the endpoint
            socket.disconnect(endpoint)
        socket.connect(endpoint)
        if since := self._lines[name].count():
            log.info(
                "connecting the %s to %s again (its handshake was refused)%s",
                name,
                endpoint,
                f"; {since} times since the last line" if since > 1 else "",
                extra={"fields": {"socket": name, "endpoint": endpoint, "since": since}},
            )


class SocketMonitor(threading.Thread):
    """Reads the monitor sockets of ``sockets`` (name -> socket) until :meth:`stop`; with
    ``reconnects`` (connect mode), asks there for a connection libzmq gave up; tells
    ``on_failure`` if it dies (its ``error`` then set)."""

    def __init__(
        self,
        sockets: dict[str, zmq.Socket[Any]],
        metrics: SocketMetrics,
        reconnects: Reconnects | None = None,
        on_failure: Callable[[SocketMonitor], None] = lambda monitor: None,
    ) -> None:
        super().__init__(name="monitor", daemon=True)
        self.metrics = metrics
        self.reconnects = reconnects
        self.on_failure = on_failure
        self.error: BaseException | None = None
        self._unhandled = Throttle(DISCONNECT_LOG_S)  # events handle() failed on
        self._curve = {  # CURVE servers and clients (a forwarder's socket facing daemons)
            name: sock.getsockopt(zmq.MECHANISM) == zmq.CURVE for name, sock in sockets.items()
        }
        # Connecting: whether a connection's handshake succeeded, and whether libzmq
        # connects again by itself.
        connecting = 0
        if reconnects is not None:
            connecting = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_CONNECT_RETRIED
        self.monitors = {  # (the one a socket was made with, where it was: pyzmq keeps it)
            name: sock.get_monitor_socket(events_of(self._curve[name]) | connecting)
            for name, sock in sockets.items()
        }
        # Per connecting socket, whether its connection's handshake succeeded (the event
        # carries no descriptor; a connecting socket has one connection at a time).
        self._shook: dict[str, bool] = dict.fromkeys(sockets, True)
        self._stopping = threading.Event()
        self._open: dict[str, set[int]] = {name: set() for name in sockets}  # descriptors
        # Causes of refused handshakes whose disconnection is still to come, oldest first.
        # (Handshake events carry no descriptor to pair them with; libzmq reports each
        # refusal's disconnection right after it, so the counts by cause come out right.)
        self._refused: dict[str, deque[str]] = {name: deque() for name in sockets}
        self._lines: defaultdict[tuple[str, str], Throttle] = defaultdict(
            lambda: Throttle(DISCONNECT_LOG_S)
        )  # (socket, cause) -> its log lines
        for name in sockets:  # at 0: rate() and increase() see the first one
            metrics.connections.labels(name).set(0)
            for cause in REFUSALS.values():
                metrics.auth_failures.labels(name, cause)
                metrics.disconnects.labels(name, cause)
            metrics.disconnects.labels(name, "closed")

    def connected(self, socket: str) -> bool:
        """Whether ``socket`` has a connection open now."""
        return bool(self._open[socket])

    def stop(self) -> None:
        self._stopping.set()
        self.join(5)

    @property
    def died(self) -> bool:
        """Whether the thread ended without being stopped (its sockets' traffic may wait
        for it)."""
        return self.ident is not None and not self.is_alive() and not self._stopping.is_set()

    def run(self) -> None:
        poller = zmq.Poller()
        for mon in self.monitors.values():
            poller.register(mon, zmq.POLLIN)
        by_socket = {mon: name for name, mon in self.monitors.items()}
        try:
            while not self._stopping.is_set():
                for mon, _ in poller.poll(POLL_MS):
                    self._read(by_socket[mon], mon)
                self._say_pending()
        except BaseException as e:  # logged here, in the log's format (not on bare stderr)
            log.exception("the socket monitor died: %s", e)
            self.error = e
            self.on_failure(self)
        finally:
            for mon in self.monitors.values():
                mon.close(linger=0)
            self._say_pending(final=True)

    def _read(self, socket: str, mon: zmq.Socket[Any]) -> None:
        """Handle the events waiting on ``socket``'s monitor ``mon``, up to ``READ_MAX`` (a
        poll per event cost a probe flood a fifth more of the thread's time)."""
        for _ in range(READ_MAX):
            try:
                message = recv_monitor_message(mon, zmq.NOBLOCK)
            except zmq.Again:
                return
            faults.fail("monitor")  # tests: the thread dies
            self._handle_or_say(socket, message)

    def _handle_or_say(self, socket: str, message: Mapping[str, Any]) -> None:
        """:meth:`handle` ``message``; an event it fails on is logged (with its traceback,
        at most once a ``DISCONNECT_LOG_S``) and left, and the next read: a monitor that
        stopped reading would stop its sockets' traffic."""
        try:
            self.handle(socket, message)
        except Exception as e:
            if since := self._unhandled.count():
                log.error(
                    "the socket monitor could not handle a connection event (%d since the "
                    "last line): %s",
                    since,
                    e,
                    exc_info=e,
                    extra={"fields": {"socket": socket, "since": since}},
                )

    def _say_pending(self, final: bool = False) -> None:
        """The ended connections and the events not handled, not logged yet, once their
        line is due, or all of them when the thread stops (``final``)."""
        if since := self._unhandled.pending(final):
            log.error(
                "the socket monitor could not handle %d more events since the last line",
                since,
                extra={"fields": {"since": since}},
            )
        for (socket, cause), lines in self._lines.items():
            if since := lines.pending(final):
                self._say(
                    socket,
                    cause,
                    since,
                    "%d more connections on %s ended (%s) since the last line",
                    since,
                    socket,
                    cause,
                )

    @staticmethod
    def _say(
        socket: str, cause: str, since: int, message: str, *args: object, **fields: str
    ) -> None:
        """A line about the connections on ``socket`` that ended for ``cause``, ``since`` of
        them since the line before: a warning for refusals."""
        log.log(
            logging.INFO if cause == "closed" else logging.WARNING,
            message,
            *args,
            extra={"fields": {"socket": socket, "cause": cause, "since": since, **fields}},
        )

    def handle(self, socket: str, message: Mapping[str, Any]) -> None:
        faults.delay("monitor")  # a monitor behind its sockets, as under load
        m, event = self.metrics, message["event"]
        endpoint = message["endpoint"].decode(errors="replace")
        open_now = self._open[socket]
        if event in (zmq.EVENT_ACCEPTED, zmq.EVENT_CONNECTED):
            open_now.add(message["value"])
            m.connections.labels(socket).set(len(open_now))
            self._shook[socket] = event == zmq.EVENT_ACCEPTED
        elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self._shook[socket] = True
        elif event == zmq.EVENT_CONNECT_RETRIED and self.reconnects is not None:
            # libzmq connects again by itself (a peer that hung up before its handshake: a
            # proxy with nothing behind it): connecting again too would drop the connection
            # it makes, and what is queued on it.
            self.reconnects.cancel(socket)
        elif event in REFUSALS or (
            event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL and self._curve[socket]
        ):
            cause = REFUSALS.get(event, "handshake")  # NO_DETAIL: a mechanism mismatch
            m.auth_failures.labels(socket, cause).inc()
            self._refused[socket].append(cause)
            if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and self.reconnects is not None:
                self.reconnects.request(socket)
        elif event == zmq.EVENT_DISCONNECTED:
            open_now.discard(message["value"])
            m.connections.labels(socket).set(len(open_now))
            refused = self._refused[socket]
            if not refused and not self._shook[socket] and self.reconnects is not None:
                # A peer of another socket type (a distributor with --from and --to
                # swapped): libzmq says nothing of it and never connects again (unless it
                # says it does, CONNECT_RETRIED, next).
                m.auth_failures.labels(socket, "handshake").inc()
                refused.append("handshake")
                self.reconnects.request(socket)
            self._shook[socket] = True
            cause = refused.popleft() if refused else "closed"
            m.disconnects.labels(socket, cause).inc()
            if since := self._lines[socket, cause].count():
                self._say(
                    socket,
                    cause,
                    since,
                    "connection on %s ended (%s)%s",
                    socket,
                    cause,
                    f"; {since} such since the last line" if since > 1 else "",
                    endpoint=endpoint,
                )
