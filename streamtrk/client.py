"""Client API: :class:`Producer` sends events to the daemon, :class:`Consumer` receives,
:func:`wait_ready` waits for a daemon to answer ``/readyz``, :func:`terminate` stops one.

Both wrap one ZeroMQ socket with explicit high-water marks and linger, and are context
managers. Each has a context of its own unless given one (``context``: a CURVE server's
must be the one its ZAP authenticator runs on): :meth:`~_Endpoint.close` then waits up to
``linger_ms`` for the messages still queued to leave, so a producer that sends and exits
does not lose them on the way out. What has not left by then is dropped: only a reply
tells that an event arrived.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Mapping, Sequence
from http.client import HTTPException
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypedDict

import zmq
from zmq.utils.monitor import recv_monitor_message

from streamtrk.event import Event
from streamtrk.wire import DEFAULT_LIMITS, Limits, Message, decode, encode_hits
from streamtrk.wire.curve import (
    CURVE_FRAME_OVERHEAD,
    REFUSALS,
    ipv6_literal,
    make_client,
    make_server,
    names_another_host,
)
from streamtrk.wire.sockets import SEND_ONLY_OPTIONS

# A connecting socket's handshake refused by its peer: libzmq gives that connection up and
# does not try it again. Handshakes hung up on are tried again without end (a CURVE server
# does that to a client that has another server key than its own, but so does a daemon
# still starting behind a proxy): counted (:attr:`_Endpoint.hung_up`), not a refusal.
REFUSAL_EVENTS = (  # monitor_events for :meth:`_Endpoint.refusal`
    sum(REFUSALS) | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_SUCCEEDED
)
REFUSAL_HINTS = {  # what each cause tells the user of a command
    "auth": "the daemon's (or forwarder's) CURVE authenticator does not allow this "
    "client's key (is the public half of --curve-key among its allowed keys?)",
    "handshake": "CURVE on one side only (does the daemon or forwarder want --curve-key "
    "and --curve-server-key, or not?)",
}
HUNG_UP_HINT = (  # what CURVE handshakes hung up on, none succeeding, may mean
    "a CURVE server hangs up so on a client that has another server key than its own (is "
    "--curve-server-key its current public key?); so do a proxy or tunnel that cannot "
    "reach it, and a daemon whose authenticator died"
)


class SocketSettings(TypedDict, total=False):
    """Keyword settings :class:`Producer` and :class:`Consumer` share: one dict for a pair
    of sockets set up alike (mypy checks them as the keywords they stand for)."""

    bind: bool
    linger_ms: int
    curve_key: str | Path | None
    curve_server_key: str | Path | None
    monitor_events: int


def _deadline(timeout_ms: int | None) -> float | None:
    """The monotonic time ``timeout_ms`` from now; None for None or a negative one (as long
    as it takes, as for pyzmq's poll)."""
    return None if timeout_ms is None or timeout_ms < 0 else time.monotonic() + timeout_ms / 1000


def _lock_wait(deadline: float | None) -> float:
    """``Lock.acquire``'s timeout for ``deadline``: -1 (no limit) for None."""
    return -1 if deadline is None else max(0.0, deadline - time.monotonic())


def _left_ms(deadline: float) -> int:
    return max(0, round((deadline - time.monotonic()) * 1000))


class _Endpoint:
    """One socket with ``options`` set, bound or connected to ``endpoint``, closed with LINGER
    ``linger_ms`` (of ``context``, else of a context of its own, ended on close); a
    CURVE client when given its own secret certificate (``curve_key``) and the daemon's
    public one (``curve_server_key``), or a CURVE server when given its own secret
    certificate as ``curve_secret_key`` (its clients admitted by a ZAP authenticator on the
    context), see ``streamtrk.wire.curve``. With ``monitor_events``, the socket is monitored
    for those events from before it binds or connects (``socket.get_monitor_socket()`` then
    returns that monitor), so that no connection is missed. Sending, receiving or asking its
    ``endpoint`` after :meth:`close` raises ValueError. Threads may share one: a message is
    sent or received whole under a lock (a ZeroMQ socket is not thread-safe; two threads
    sending through one interleaved their messages' frames, events lost or refused), a
    timeout counting the wait for another thread's turn too; close it once they are done
    with it."""

    def __init__(
        self,
        kind: int,
        endpoint: str,
        *,
        bind: bool,
        options: Mapping[int, int],
        linger_ms: int,
        curve_key: str | Path | None = None,
        curve_server_key: str | Path | None = None,
        curve_secret_key: str | Path | None = None,
        context: zmq.Context[Any] | None = None,
        monitor_events: int = 0,
    ) -> None:
        if (curve_key is None) != (curve_server_key is None):
            raise ValueError(
                "CURVE needs both curve_key (own secret certificate, --curve-key) and "
                "curve_server_key (the server's public one, --curve-server-key)"
            )
        if curve_key is not None and curve_secret_key is not None:
            raise ValueError("a socket is a CURVE client or a CURVE server, not both")
        if curve_secret_key is not None and context is None:  # no client, or a close hung
            raise ValueError(
                "a CURVE server admits its clients through a ZAP authenticator on its "
                "context: give context= (start_authenticator's; stop it before the "
                "context's term())"
            )
        self.linger_ms = linger_ms
        self.address = endpoint
        self.monitor: zmq.Socket[Any] | None = None
        self._curve_client = curve_key is not None
        self.hung_up = 0  # CURVE handshakes hung up on since the last that succeeded
        self.shook = False  # a handshake succeeded (as far as refusal() has read)
        self._lock = threading.Lock()  # one message at a time through the socket
        ctx = zmq.Context() if context is None else context
        self._own_context = ctx if context is None else None
        self.socket: zmq.Socket[Any] = ctx.socket(kind)
        try:
            self.socket.setsockopt(zmq.IPV6, ipv6_literal(endpoint))
            for option, value in options.items():
                self.socket.setsockopt(option, value)
            self.socket.setsockopt(zmq.LINGER, linger_ms)
            if curve_key is not None and curve_server_key is not None:
                make_client(self.socket, curve_key, curve_server_key)
            if curve_secret_key is not None:
                make_server(self.socket, curve_secret_key)
            if monitor_events:
                self.monitor = self.socket.get_monitor_socket(monitor_events)
            self._attach(endpoint, bind)
        except BaseException:
            self._close(0)
            raise

    def _attach(self, endpoint: str, bind: bool) -> None:
        if not bind:
            self.socket.connect(endpoint)
            return
        try:
            self.socket.bind(endpoint)
        except zmq.ZMQError as e:
            if not names_another_host(e):
                raise
            raise OSError(
                f"cannot bind {endpoint}: {e.strerror} (a bound address is this host's, or *; "
                "another host's is one to connect to)"
            ) from None

    @property
    def endpoint(self) -> str:
        """The last bound or connected endpoint (with the real port after binding ``:*``)."""
        return self._open().getsockopt_string(zmq.LAST_ENDPOINT)

    def _open(self) -> zmq.Socket[Any]:
        """The socket; ValueError once closed (pyzmq's own error says "Operation not
        supported")."""
        if self.socket.closed:
            raise ValueError(f"{type(self).__name__} ({self.address}) is closed")
        return self.socket

    def refusal(self) -> str | None:
        """Why the peer refused this socket's handshake (``auth``, ``handshake``; see
        ``REFUSALS``) since the last call, or None: read off the monitor without waiting,
        for a socket made with ``monitor_events=REFUSAL_EVENTS`` (a monitor read elsewhere
        would lose events to it). Counts on the way the CURVE handshakes hung up on since
        the last that succeeded (``hung_up``; ``shook``: one did)."""
        self._open()  # ValueError once closed, as sending and receiving
        cause = None
        while self.monitor is not None and self.monitor.poll(0):
            event = recv_monitor_message(self.monitor)["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.hung_up, self.shook = 0, True
            elif event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL and self._curve_client:
                self.hung_up += 1
            cause = cause or REFUSALS.get(event)
        return cause

    def close(self) -> None:
        """Close the socket; with a context of its own, wait until the messages queued on it
        have left or ``linger_ms`` has passed (-1: until they have left). Stop any thread
        reading the monitor first."""
        self._close(self.linger_ms)

    def _close(self, linger_ms: int) -> None:
        if self.monitor is not None:
            self.monitor.close(linger=0)
        self.socket.close(linger=linger_ms)
        if self._own_context is not None:
            self._own_context.term()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class Producer(_Endpoint):
    """PUSH socket sending ``hits`` messages (connects to the daemon unless ``bind``)."""

    def __init__(
        self,
        endpoint: str,
        *,
        bind: bool = False,
        sndhwm: int = 1000,
        linger_ms: int = 1000,
        curve_key: str | Path | None = None,
        curve_server_key: str | Path | None = None,
        curve_secret_key: str | Path | None = None,
        context: zmq.Context[Any] | None = None,
        monitor_events: int = 0,
    ) -> None:
        super().__init__(
            zmq.PUSH,
            endpoint,
            bind=bind,
            options={zmq.SNDHWM: sndhwm, **SEND_ONLY_OPTIONS},
            linger_ms=linger_ms,
            curve_key=curve_key,
            curve_server_key=curve_server_key,
            curve_secret_key=curve_secret_key,
            context=context,
            monitor_events=monitor_events,
        )

    def send_event(
        self,
        event: Event,
        deadline_ms: float | None = None,
        *,
        timeout_ms: int | None = None,
        compact: bool = False,
        msg_id: int | None = None,
    ) -> bool:
        """Send ``event``'s hits (``compact``, ``msg_id``: see
        :func:`~streamtrk.wire.encode_hits`; the reply echoes ``msg_id``, telling a late
        reply from a resend's); see :meth:`send_frames`. Do not modify the hit arrays until
        the message has left (the frames are sent without copying)."""
        frames = encode_hits(event, deadline_ms=deadline_ms, msg_id=msg_id, compact=compact)
        return self.send_frames(frames, timeout_ms=timeout_ms)

    def send_frames(self, frames: Sequence[Any], *, timeout_ms: int | None = None) -> bool:
        """Send one multipart message zero-copy; block while the high-water mark is reached,
        at most ``timeout_ms`` (then return False) or forever if None. A frame that is not
        a contiguous buffer raises before any frame is sent (a message sent in part would
        take the next message into it)."""
        if not frames:
            raise ValueError("a message has at least one frame")
        for i, frame in enumerate(frames):
            if not isinstance(frame, zmq.Frame) and not memoryview(frame).contiguous:
                raise ValueError(f"frame {i} is not a contiguous buffer")
        deadline = _deadline(timeout_ms)
        if not self._lock.acquire(timeout=_lock_wait(deadline)):  # another thread's turn
            return False
        try:
            socket = self._open()
            if deadline is not None and not socket.poll(_left_ms(deadline), zmq.POLLOUT):
                return False
            flags = 0 if deadline is None else zmq.NOBLOCK
            try:
                socket.send_multipart(frames, flags=flags, copy=False)
            except zmq.Again:
                return False
            return True
        finally:
            self._lock.release()


class Consumer(_Endpoint):
    """PULL socket receiving and decoding messages (connects unless ``bind``). A frame
    larger than any message within ``limits`` can have (``Limits.max_frame_bytes``) makes
    libzmq drop the sender's connection before the frame is held in memory."""

    def __init__(
        self,
        endpoint: str,
        *,
        bind: bool = False,
        rcvhwm: int = 1000,
        linger_ms: int = 1000,
        limits: Limits = DEFAULT_LIMITS,
        curve_key: str | Path | None = None,
        curve_server_key: str | Path | None = None,
        curve_secret_key: str | Path | None = None,
        context: zmq.Context[Any] | None = None,
        monitor_events: int = 0,
    ) -> None:
        curve = curve_key is not None or curve_secret_key is not None
        frame_limit = limits.max_frame_bytes + (CURVE_FRAME_OVERHEAD if curve else 0)
        super().__init__(
            zmq.PULL,
            endpoint,
            bind=bind,
            options={zmq.RCVHWM: rcvhwm, zmq.MAXMSGSIZE: frame_limit},
            linger_ms=linger_ms,
            curve_key=curve_key,
            curve_server_key=curve_server_key,
            curve_secret_key=curve_secret_key,
            context=context,
            monitor_events=monitor_events,
        )
        self.limits = limits

    def recv_frames(self, timeout_ms: int | None = None) -> list[zmq.Frame] | None:
        """The next message's frames (zero-copy), or None after ``timeout_ms`` (None or
        negative: waits as long as it takes). Within a timeout the message is taken without
        blocking once polled: a CURVE server's poll can report one that a peer's dropped
        connection took back (cut by the peer's end, or over ``ZMQ_MAXMSGSIZE``: libzmq
        leaves its ZAP credential behind), and a blocking receive would then wait for the
        next message, past the timeout."""
        deadline = _deadline(timeout_ms)
        if not self._lock.acquire(timeout=_lock_wait(deadline)):  # another thread's turn
            return None
        try:
            socket = self._open()
            if deadline is None:  # as long as it takes
                return socket.recv_multipart(copy=False)
            while True:
                left_ms = _left_ms(deadline)
                if not socket.poll(left_ms, zmq.POLLIN):
                    return None
                try:
                    return socket.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:  # nothing behind that POLLIN
                    if left_ms == 0:
                        return None
        finally:
            self._lock.release()

    def recv(self, timeout_ms: int | None = None) -> Message | None:
        """The next decoded message, or None after ``timeout_ms``; raises WireError if it is
        malformed."""
        frames = self.recv_frames(timeout_ms)
        return None if frames is None else decode(frames, limits=self.limits)


#: Opens the daemons' and forwarders' own HTTP endpoints directly, whatever proxy the
#: environment names (``http_proxy`` would take even a loopback probe to the proxy).
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def wait_ready(http: str, timeout_s: float, process: subprocess.Popen[Any] | None = None) -> bool:
    """Poll ``http://HOST:PORT/readyz`` until it answers 200 (True), ``timeout_s`` passes or
    ``process`` exits (False). What is not an HTTP answer (nothing listening yet, something
    else on the port) is polled past like a 503."""
    t_end = time.monotonic() + timeout_s
    while (left := t_end - time.monotonic()) > 0:
        if process is not None and process.poll() is not None:
            return False
        try:
            with DIRECT.open(f"http://{http}/readyz", timeout=min(2, left)) as r:
                if r.status == 200:
                    return True
        except (OSError, HTTPException):
            pass
        time.sleep(0.2)
    return False


def wait_listening(
    log_path: Path, timeout_s: float, process: subprocess.Popen[Any] | None = None
) -> dict[str, str] | None:
    """The addresses a daemon (or a farm forwarder) listens on, read from its JSON log in
    ``log_path``: the fields of its ``listening`` record (a daemon's ``input``, ``output``,
    ``http``), with the ports it was given as ``*`` or 0 resolved; None when ``timeout_s``
    passes or ``process`` exits first."""
    t_end = time.monotonic() + timeout_s
    while time.monotonic() < t_end:
        if log_path.exists():
            for line in log_path.read_text(errors="replace").splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and record.get("message") == "listening":
                    skip = ("time", "level", "logger", "message")
                    return {k: str(v) for k, v in record.items() if k not in skip}
        if process is not None and process.poll() is not None:
            return None
        time.sleep(0.05)
    return None


def terminate(process: subprocess.Popen[Any], timeout_s: float, sig: int = signal.SIGTERM) -> int:
    """Send ``process`` ``sig`` (SIGTERM: a daemon drains and exits; none once it has
    exited), kill it if it has not exited ``timeout_s`` later; its exit code."""
    process.send_signal(sig)
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()
