"""Options every send-only (PUSH) socket of the project sets, and what an idle socket's
owner calls (:func:`free_ended_peers`).

A PUSH socket never reads, but libzmq still decodes what a peer sends on its connection
and queues it, up to ``ZMQ_RCVHWM`` messages (1,000 by default) of any size: a peer that
sends there (a raw client, a misconfigured one) would make the daemon or a forwarder hold
gigabytes, unread and uncounted. One message of at most ``MAX_INBOUND_BYTES`` is queued;
a larger one makes libzmq drop that connection (the ZMTP handshake's commands, a few
hundred bytes, pass: the limit applies to them too).
"""

from __future__ import annotations

from typing import Any

import zmq

MAX_INBOUND_BYTES = 65_536
SEND_ONLY_OPTIONS: dict[int, int] = {zmq.RCVHWM: 1, zmq.MAXMSGSIZE: MAX_INBOUND_BYTES}


def free_ended_peers(socket: zmq.Socket[Any]) -> None:
    """Let libzmq free the connections of ``socket`` that ended: it does that only when
    the thread owning the socket calls into it, so a socket left idle (an emitter with no
    reply to send, a forwarder's front while its back has no room) kept about 11 KB for
    each peer that connected and left, for ever (4,000 collectors reconnecting: +46 MB)."""
    socket.getsockopt(zmq.EVENTS)
