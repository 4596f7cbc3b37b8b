"""The daemon's side of CurveZMQ: a ZAP authenticator (pyzmq's ``ThreadAuthenticator``)
that admits a client when its public key is in the allowed-keys directory.

The directory is read at every handshake, so adding or removing a client's ``NAME.key``
takes effect for its next connection without a restart (key rotation). A client whose key
is not there is refused and logged with its key; the socket monitor counts the refusals.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator

from streamtrk.wire.curve import CurveError, allowed_keys

log = logging.getLogger(__name__)


class AllowedKeys:
    """ZAP credentials provider: the ``*.key`` certificates of one directory."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory

    def callback(self, domain: str, key: bytes) -> bool:
        """Whether the client with this (Z85) public key may connect."""
        if self.directory is None:
            allowed: set[bytes] = set()
        else:
            try:
                allowed = allowed_keys(self.directory)
            except (OSError, CurveError) as e:
                log.error("cannot read the allowed CURVE keys: %s", e)
                return False
        if key in allowed:
            return True
        where = self.directory or "(no curve_allowed_keys: none allowed)"
        log.warning(
            "refused a CURVE client whose key is not allowed",
            extra={"fields": {"client_key": key.decode(), "allowed_keys": str(where)}},
        )
        return False


def start_authenticator(context: zmq.Context[Any], directory: Path | None) -> ThreadAuthenticator:
    """Start ZAP authentication on ``context`` for the clients allowed by ``directory``; a
    CurveError first when the directory or a certificate in it cannot be read."""
    if directory is not None and not allowed_keys(directory):
        log.warning(
            "no *.key certificate in %s: no client can connect until one is added", directory
        )
    auth = ThreadAuthenticator(context, log=logging.getLogger("streamtrk.service.zap"))
    auth.start()
    auth.configure_curve_callback("*", AllowedKeys(directory))
    return auth
