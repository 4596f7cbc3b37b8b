"""Farm plumbing: the distributor and the collector of docs/farm-topology.md.

Each is a ZeroMQ forwarder from a bound PULL socket to a bound PUSH socket (``zmq.proxy``'s
job, in a loop that also sees a stop when no peer is left), no protocol of its own. The
**distributor** takes events from producers and hands each to one connected daemon:
daemons in connect mode join it only once their model is ready and leave it first when
they stop, and a daemon whose receive queue is full (``overload = "block"``) is skipped by
PUSH's round-robin, so events go to ready daemons with room. Keep its high-water mark
small, so few events wait at any one daemon. The **collector** takes every daemon's
replies and hands them to consumers. With CURVE, the socket facing the daemons is a CURVE
client of theirs (``curve_key``, ``curve_server_key``).

Events in flight on a daemon that is killed are lost with it: producers resend what gets
no reply (``streamtrk replay --retries``), and replies carry the message id so that a late
duplicate is recognised.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any

import zmq

from streamtrk.client import Consumer, Producer

ROLES = ("distributor", "collector")
POLL_MS = 100
STOP_DRAIN_MAX = 10_000  # messages taken off the front at a stop, at most


def forward(
    role: str,
    front: str,
    back: str,
    *,
    hwm: int = 2,
    curve_key: Path | None = None,
    curve_server_key: Path | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Bind PULL ``front`` and PUSH ``back`` and forward until ``stop`` (or forever).

    ``role`` says which side faces the daemons (``back`` for a distributor, ``front`` for a
    collector): that socket gets the CURVE client keys, when given. A JSON ``listening``
    line on stdout gives the bound addresses (``front``, ``back``).
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    keys = {"curve_key": curve_key, "curve_server_key": curve_server_key}
    back_faces_daemons = role == "distributor"
    with (
        Consumer(
            front, bind=True, rcvhwm=hwm, linger_ms=0, **({} if back_faces_daemons else keys)
        ) as pull,
        Producer(
            back, bind=True, sndhwm=hwm, linger_ms=0, **(keys if back_faces_daemons else {})
        ) as push,
    ):
        bound = {
            "message": "listening",
            "role": role,
            "front": pull.endpoint,
            "back": push.endpoint,
        }
        print(json.dumps(bound), flush=True)
        _proxy(pull.socket, push.socket, stop or threading.Event())


def _proxy(pull: zmq.Socket[Any], push: zmq.Socket[Any], stop: threading.Event) -> None:
    """Forward whole messages (zero-copy) until ``stop``. A message is taken from ``pull``
    only when ``push`` has a peer with room, so back-pressure reaches the producers; the
    stop is seen within ``POLL_MS`` even when no peer is left (``zmq.proxy`` would block in
    its send). A message taken just before its peer left waits for another peer.

    At the stop, the messages that have already arrived (at most ``STOP_DRAIN_MAX``) are
    taken off ``pull``: sent on where a peer has room at once, else dropped; the dropped
    ones are counted on stderr, with the one held, instead of vanishing with the socket.
    (Messages queued for a peer, up to its high-water mark, still go with the socket.)"""
    held: list[zmq.Frame] | None = None
    while not stop.is_set():
        if held is None:
            if not (push.poll(POLL_MS, zmq.POLLOUT) and pull.poll(POLL_MS, zmq.POLLIN)):
                continue
            held = pull.recv_multipart(copy=False)
        try:
            push.send_multipart(held, flags=zmq.NOBLOCK, copy=False)
            held = None
        except zmq.Again:
            push.poll(POLL_MS, zmq.POLLOUT)
    dropped = int(held is not None)
    for _ in range(STOP_DRAIN_MAX):
        if not pull.poll(0, zmq.POLLIN):
            break
        message = pull.recv_multipart(copy=False)
        try:
            push.send_multipart(message, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            dropped += 1
    if dropped:
        print(
            f"stopped with {dropped} messages not forwarded (no peer took them; producers "
            "resend what gets no reply)",
            file=sys.stderr,
        )
    sys.stdout.flush()
