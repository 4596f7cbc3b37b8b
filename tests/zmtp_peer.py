"""A raw ZMTP 3.0 peer over TCP (NULL mechanism, calling itself PULL): what a client that
ignores the socket types can send to a PUSH socket."""

from __future__ import annotations

import socket
import struct


def greeting_and_ready() -> bytes:
    """A ZMTP 3.0 greeting (NULL mechanism, as a client) and the READY of a PULL socket."""
    greeting = b"\xff" + bytes(8) + b"\x7f" + bytes([3, 0]) + b"NULL".ljust(20, b"\0")
    greeting += bytes(32)  # as-server 0, then the filler
    prop = bytes([11]) + b"Socket-Type" + struct.pack(">I", 4) + b"PULL"
    body = bytes([5]) + b"READY" + prop
    return greeting + bytes([0x04, len(body)]) + body


def peer_is_dropped(endpoint: str, nbytes: int, timeout_s: float = 10.0) -> bool:
    """Whether the PUSH socket at ``endpoint`` (tcp://host:port) closes the connection of a
    peer that sends it one message of ``nbytes`` bytes."""
    host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout_s) as peer:
        peer.sendall(greeting_and_ready())
        shake = b""
        while not shake.endswith(b"Socket-Type\x00\x00\x00\x04PUSH"):  # its READY, last
            if not (chunk := peer.recv(65_536)):
                raise ConnectionError(f"{endpoint} closed the connection in the handshake")
            shake += chunk
        frame = b"\x00" + bytes([nbytes]) if nbytes < 256 else b"\x02" + struct.pack(">Q", nbytes)
        try:
            peer.sendall(frame + bytes(nbytes))
            while peer.recv(65_536):  # nothing more comes until it closes
                pass
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
        return True  # end of file: closed
