"""Farm plumbing: the distributor and the collector of docs/farm-topology.md.

Each is a ZeroMQ forwarder from a bound PULL socket to a bound PUSH socket (``zmq.proxy``'s
job, in a loop that also sees a stop when no peer is left), no protocol of its own. The
**distributor** takes events from producers and hands each to one connected daemon:
daemons in connect mode join it only once their model is ready and leave it first when
they stop, and a daemon whose receive queue is full (``overload = "block"``) is skipped by
PUSH's round-robin, so events go to ready daemons with room. Keep its high-water mark
small, so few events wait at any one daemon. The **collector** takes every daemon's
replies and hands them to consumers. With CURVE, the socket facing the daemons is a CURVE
client of theirs (``curve_key``, ``curve_server_key``), and the socket facing producers
(distributor) or consumers (collector) a CURVE server (``server_key``) admitting the
clients whose public keys are in ``allowed_keys``. As the daemon does, a forwarder refuses
to bind that socket beyond this host without CURVE unless ``allow_insecure``: anyone who
reached it could inject events or take the replies.

Events in flight on a daemon that is killed are lost with it: producers resend what gets
no reply (``streamtrk replay --retries``), and replies carry the message id so that a late
duplicate is recognised.

With ``http``, a forwarder serves ``/metrics`` (the messages it forwarded, and its sockets'
connections as the daemon counts its own: ``front`` and ``back``), ``/healthz``, ``/readyz``
and ``/status``, as the daemon does (docs/metrics.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import zmq
from prometheus_client import Counter

from streamtrk.client import Consumer, Producer
from streamtrk.errors import SettingError
from streamtrk.service.auth import start_authenticator
from streamtrk.service.config import one_endpoint, split_http
from streamtrk.service.health import HealthServer, Readiness
from streamtrk.service.monitor import SocketMonitor, events_of
from streamtrk.service.telemetry import SocketMetrics
from streamtrk.stop import Stop, StopFlag
from streamtrk.wire import DEFAULT_LIMITS, Limits
from streamtrk.wire.curve import exposed_without_curve
from streamtrk.wire.sockets import free_ended_peers

log = logging.getLogger(__name__)
ROLES = ("distributor", "collector")
POLL_MS = 100
STOP_DRAIN_MAX = 10_000  # messages taken off the front at a stop, at most
STOP_LINGER_MS = 1000  # at a stop, how long the messages taken and queued have to go out
UNBIND_QUIET_MS = 50  # after an unbind, messages libzmq had read still arrive this late


class ForwarderMetrics(SocketMetrics):
    """What a forwarder exports: its sockets' (``front``, ``back``), and the messages it
    forwarded."""

    def __init__(self, role: str) -> None:
        super().__init__()
        self.forwarded = Counter(
            "streamtrk_farm_forwarded",
            "Messages a farm forwarder passed from its front to its back socket, by role.",
            ["role"],
            registry=self.registry,
        ).labels(role)


def forward(
    role: str,
    front: str,
    back: str,
    *,
    hwm: int = 2,
    max_hits: int = DEFAULT_LIMITS.max_hits,
    curve_key: Path | None = None,
    curve_server_key: Path | None = None,
    server_key: Path | None = None,
    allowed_keys: Path | None = None,
    allow_insecure: bool = False,
    http: str | None = None,
    stop: Stop | None = None,
) -> None:
    """Bind PULL ``front`` and PUSH ``back`` and forward until ``stop`` (or forever).

    ``role`` says which side faces the daemons (``back`` for a distributor, ``front`` for a
    collector): that socket gets the CURVE client keys, when given; the other side is a
    CURVE server with ``server_key`` (clients from ``allowed_keys``). A JSON ``listening``
    line on stdout gives the bound addresses (``front``, ``back``). A frame longer than a
    message of ``max_hits`` hits can have drops its sender's connection (as the daemon's
    ``max_hits``: give both the same). With ``http`` (``HOST:PORT``), the HTTP endpoints of
    the module docstring, its address in the ``listening`` line.
    """
    if role not in ROLES:
        raise SettingError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    if one_endpoint(front, back):
        raise SettingError(f"--from and --to must be two endpoints, got {front!r} and {back!r}")
    back_faces_daemons = role == "distributor"
    inside, outside = (back, front) if back_faces_daemons else (front, back)
    for endpoint, curve, flags in (
        (outside, server_key, "--server-key and --allowed-keys"),
        (inside, curve_key, "--curve-key and --curve-server-key (the daemons' CURVE)"),
    ):
        if curve is None and not allow_insecure:
            remedy = (
                f"Give {flags} (docs/operations.md, Keys), or --allow-insecure on a trusted network"
            )
            if why := exposed_without_curve(endpoint, remedy):
                raise SettingError(why)
    if server_key is None and allowed_keys is not None:
        raise SettingError("--allowed-keys needs --server-key (the forwarder's own certificate)")
    if server_key is not None and allowed_keys is None:  # as the daemon warns
        peers = "producer" if back_faces_daemons else "consumer"
        log.warning("--server-key without --allowed-keys: no %s can connect", peers)
    daemons = {"curve_key": curve_key, "curve_server_key": curve_server_key}
    # The front's frame limit: hits messages come in (distributor) or replies (collector);
    # never truth, whose particle columns would allow 8 MB frames whatever max_hits says.
    no_tracks = {"max_tracks": 0} if back_faces_daemons else {}
    front_limits = Limits(max_hits=max_hits, max_particles=0, **no_tracks)
    clients = {"curve_secret_key": server_key}
    try:
        http_address = None if http is None else split_http(http)
    except ValueError as e:
        raise SettingError(f"--http {http!r} {e}") from None
    metrics = ForwarderMetrics(role)
    front_keys, back_keys = (clients, daemons) if back_faces_daemons else (daemons, clients)

    def monitored(keys: dict[str, Path | None]) -> int:
        """A socket's monitored events (set before binding), by the CURVE keys it is made
        with; none without ``http``."""
        return 0 if http is None else events_of(any(k is not None for k in keys.values()))

    # The ZAP authenticator's and both sockets', its own: ended once they close, so that what
    # is queued for peers goes out within STOP_LINGER_MS.
    ctx: zmq.Context[Any]
    with zmq.Context() as ctx, contextlib.ExitStack() as stack:
        if server_key is not None:
            auth = start_authenticator(ctx, allowed_keys)
            stack.callback(auth.stop)
        with _bind_named("--from", front):
            pull = stack.enter_context(
                Consumer(front, bind=True, rcvhwm=hwm, linger_ms=0, limits=front_limits,
                         context=ctx, monitor_events=monitored(front_keys), **front_keys)
            )  # fmt: skip
        with _bind_named("--to", back):
            push = stack.enter_context(
                Producer(back, bind=True, sndhwm=hwm, linger_ms=STOP_LINGER_MS, context=ctx,
                         monitor_events=monitored(back_keys), **back_keys)
            )  # fmt: skip
        bound = {
            "message": "listening",
            "role": role,
            "front": pull.endpoint,
            "back": push.endpoint,
        }
        stop = StopFlag() if stop is None else stop
        monitor = None
        if http_address is not None:
            status = {k: v for k, v in bound.items() if k != "message"}
            sockets = {"front": pull.socket, "back": push.socket}
            served = _serve_http(stack, http_address, metrics, sockets, status, stop)
            bound["http"], monitor = served
        print(json.dumps(bound), flush=True)
        forwarded, dropped, push.linger_ms = _proxy(pull.socket, push.socket, stop, metrics)
        stopped = {"message": "stopped", "role": role, "forwarded": forwarded}
        print(json.dumps({**stopped, "not_forwarded": dropped}), flush=True)
        if monitor is not None and monitor.error is not None:
            raise OSError(f"stopped: the socket monitor died ({monitor.error!r})")


@contextlib.contextmanager
def _bind_named(flag: str, endpoint: str) -> Iterator[None]:
    """libzmq's bind errors (a port in use) as an OSError naming the side by its flag."""
    try:
        yield
    except zmq.ZMQError as e:
        raise OSError(f"cannot bind {flag} {endpoint}: {e.strerror}") from None


def _serve_http(
    stack: contextlib.ExitStack,
    address: tuple[str, int],
    metrics: ForwarderMetrics,
    sockets: dict[str, zmq.Socket[Any]],
    status: dict[str, str],
    stop: Stop,
) -> tuple[str, SocketMonitor]:
    """Monitor ``sockets`` and serve the HTTP endpoints on ``address`` until ``stack``
    closes (the monitor stops before the sockets close); the address served, and the
    monitor, whose death sets ``stop`` (the sockets' traffic would soon wait for it)."""
    monitor = SocketMonitor(sockets, metrics, on_failure=lambda _: stop.set())
    monitor.start()
    stack.callback(monitor.stop)
    readiness = Readiness()
    readiness.set("ready")  # forwarding from the start

    def problems() -> list[str]:
        return ["monitor: the thread died (the forwarder stops)"] if monitor.died else []

    try:
        server = HealthServer(address, metrics, readiness, lambda: status, problems)
    except OSError as e:
        raise OSError(
            f"cannot serve HTTP on {address[0]}:{address[1]}: {e.strerror or e}"
        ) from None
    stack.callback(server.close)
    server.start()
    return server.host_port, monitor


def _proxy(
    pull: zmq.Socket[Any], push: zmq.Socket[Any], stop: Stop, metrics: ForwarderMetrics
) -> tuple[int, int, int]:
    """Forward whole messages (zero-copy) until ``stop``; the messages forwarded, those
    dropped at the stop, and the milliseconds left of the stop's second (``push``'s
    LINGER). A message is taken from ``pull`` only when ``push`` has a peer with room, so
    back-pressure reaches the producers; the
    stop is seen within two polls of ``POLL_MS`` even when no peer is left (``zmq.proxy``
    would block in its send). A message taken just before its peer left waits for another
    peer.

    At the stop, ``pull`` is unbound first (its peers keep what they have not sent, for a
    forwarder that takes its place; their bytes in flight are lost), then the message held
    and those that had arrived (at most ``STOP_DRAIN_MAX``) are taken off it and sent on
    as peers make room, until ``STOP_LINGER_MS`` after the stop; what finds no room by then
    is dropped and counted, instead of vanishing with the socket. Those queued for a peer
    (up to its high-water mark) go out within what is left of that time (what is left then
    goes with the socket, as what the socket buffers hold does when a peer is gone)."""
    held: list[zmq.Frame] | None = None
    forwarded = 0
    while not stop.is_set():
        if held is None:
            if not push.poll(POLL_MS, zmq.POLLOUT):
                free_ended_peers(pull)
                continue
            if not pull.poll(POLL_MS, zmq.POLLIN):
                continue
            if (held := _taken(pull)) is None:
                continue
        try:
            push.send_multipart(held, flags=zmq.NOBLOCK, copy=False)
            held = None
            forwarded += 1
            metrics.forwarded.inc()
        except zmq.Again:
            push.poll(POLL_MS, zmq.POLLOUT)
            free_ended_peers(pull)
    give_up = time.monotonic() + STOP_LINGER_MS / 1000
    pull.unbind(pull.getsockopt_string(zmq.LAST_ENDPOINT))  # by libzmq's I/O thread, soon
    dropped = 0
    for _ in range(STOP_DRAIN_MAX):
        if held is None:
            if not pull.poll(UNBIND_QUIET_MS, zmq.POLLIN):
                break
            if (held := _taken(pull)) is None:
                continue  # nothing behind the poll: poll again
        if _send_by(push, held, give_up):
            forwarded += 1
            metrics.forwarded.inc()
        else:
            dropped += 1
        held = None
    return forwarded, dropped, max(0, round((give_up - time.monotonic()) * 1000))


def _taken(pull: zmq.Socket[Any]) -> list[zmq.Frame] | None:
    """The message ``pull`` polled in, without blocking: None where there was none behind
    the poll (a CURVE server's, whose peer's dropped connection took its message back; a
    blocking receive would wait for the next one, past a stop)."""
    try:
        return pull.recv_multipart(zmq.NOBLOCK, copy=False)
    except zmq.Again:
        return None


def _send_by(push: zmq.Socket[Any], message: list[zmq.Frame], give_up: float) -> bool:
    """Send ``message`` once a peer has room, by ``give_up`` (a monotonic time) at the
    latest: whether it was sent."""
    while True:
        try:
            push.send_multipart(message, flags=zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            if (left := give_up - time.monotonic()) <= 0:
                return False
            push.poll(min(POLL_MS, max(1, round(left * 1000))), zmq.POLLOUT)
