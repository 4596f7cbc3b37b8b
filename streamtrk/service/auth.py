"""The daemon's side of CurveZMQ: a ZAP authenticator (pyzmq's ``ThreadAuthenticator``)
that admits a client when its public key is in the allowed-keys directory.

The certificates are read again at a handshake once a ``*.key`` file's name, inode, time or
size has changed, and ``REREAD_S`` after the last read at the latest (a file's time has the
kernel's tick: a change within one of the last read may wait that long), so adding or
removing a client's ``NAME.key`` takes effect for its next connection without a restart (key
rotation), while a peer repeating handshakes at will does not make the daemon read every
certificate each time (150 us for 10 keys, under the GIL the worker needs). A client whose
key is not there is refused and logged with its key; the socket monitor counts the refusals.
A peer can repeat handshakes at will, with a new key each time: one key is named at most
once a ``KEY_LOG_S``, and the lines come at most ``LINES_BURST`` at once, then one a
``LINE_LOG_S`` (libzmq clients do not try a refused key again: after a rotation each stale
client is one refusal, and a farm's worth of them are each named); a line says how many
refusals went unlogged before it. A directory that cannot be read refuses every client: said
at most once a ``KEY_LOG_S``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator

from streamtrk.service.logs import Throttle
from streamtrk.wire.curve import ZAP_DOMAIN, allowed_keys

log = logging.getLogger(__name__)
KEY_LOG_S = 60.0  # one refused key named at most this often
LINES_BURST = 20  # refusal lines at once, whatever the keys ...
LINE_LOG_S = 1.0  # ... then one this often
REREAD_S = 1.0  # the allowed keys read again at least this often


def _stamp(entry: os.DirEntry[str]) -> tuple[str, int, int, int]:
    """What a certificate's change changes: its name, inode, time and size."""
    st = entry.stat()
    return entry.name, entry.inode(), st.st_mtime_ns, st.st_size


class AllowedKeys:
    """ZAP credentials provider: the ``*.key`` certificates of one directory."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self._unreadable = Throttle(KEY_LOG_S)
        self._named: dict[bytes, float] = {}  # refused key -> when it was last named
        self._lines = float(LINES_BURST)  # refusal lines that may go now (refilled with time)
        self._since = time.monotonic()  # when they were counted
        self._unlogged = 0  # refusals since the last line
        self._keys: set[bytes] | None = None  # as last read
        self._files: set[tuple[str, int, int, int]] = set()  # name, inode, mtime, size
        self._read_at = -math.inf  # when (monotonic)

    def _allowed(self, directory: Path) -> set[bytes]:
        """The keys of ``directory``, read again where its certificates changed or
        ``REREAD_S`` after the last read (a listing costs microseconds, reading them all
        150 us for 10 keys)."""
        files = set()
        try:
            with os.scandir(directory) as entries:
                for entry in (e for e in entries if e.name.endswith(".key")):
                    with contextlib.suppress(FileNotFoundError):  # removed as it was listed
                        files.add(_stamp(entry))
        except OSError:
            allowed_keys(directory)  # its CurveError: no such folder, or one it may not list
            raise
        now = time.monotonic()
        if self._keys is None or files != self._files or now >= self._read_at + REREAD_S:
            self._keys, self._files, self._read_at = allowed_keys(directory), files, now
        return self._keys

    def callback(self, domain: str, key: bytes) -> bool:
        """Whether the client with this (Z85) public key may connect."""
        if self.directory is None:
            allowed: set[bytes] = set()
        else:
            try:
                allowed = self._allowed(self.directory)
            except Exception as e:  # raised, it would end the ZAP thread: no client after
                if since := self._unreadable.count():
                    log.error(
                        "cannot read the allowed CURVE keys, every client is refused%s: %s",
                        f" ({since} since the last line)" if since > 1 else "",
                        e,
                    )
                return False
        if key in allowed:
            return True
        if (unlogged := self._due(key)) is not None:
            where = self.directory or "(no curve_allowed_keys: none allowed)"
            fields = {"client_key": key.decode(), "allowed_keys": str(where), "unlogged": unlogged}
            log.warning("refused a CURVE client whose key is not allowed", extra={"fields": fields})
        return False

    def _due(self, key: bytes) -> int | None:
        """Whether a line naming ``key`` may go now: the refusals not logged since the last
        line, else None (this one counted among them)."""
        now = time.monotonic()
        self._lines = min(LINES_BURST, self._lines + (now - self._since) / LINE_LOG_S)
        self._since = now
        if self._lines < 1 or now < self._named.get(key, -math.inf) + KEY_LOG_S:
            self._unlogged += 1
            return None
        self._lines -= 1
        # At most LINES_BURST + KEY_LOG_S / LINE_LOG_S keys were named within KEY_LOG_S: the
        # others are forgotten once twice that many are kept.
        if len(self._named) > 2 * (LINES_BURST + KEY_LOG_S / LINE_LOG_S):
            self._named = {k: t for k, t in self._named.items() if now < t + KEY_LOG_S}
        self._named[key] = now
        unlogged, self._unlogged = self._unlogged, 0
        return unlogged


class Authenticator:
    """pyzmq's ZAP thread (``zap``) admitting the clients of :class:`AllowedKeys`."""

    def __init__(self, zap: ThreadAuthenticator) -> None:
        self.zap = zap

    @property
    def died(self) -> bool:
        """Whether the thread has ended (then no CURVE client can connect)."""
        return not self.zap.is_alive()

    def stop(self) -> None:
        """End the thread. pyzmq's ``stop`` sends it TERMINATE over a PAIR socket, which waits
        for ever where the thread has ended: its socket is closed without it."""
        if self.died and self.zap.pipe is not None:
            self.zap.pipe.close(linger=0)
            self.zap.pipe = None  # type: ignore[assignment]  # pyzmq's own "no pipe"
        self.zap.stop()


def start_authenticator(context: zmq.Context[Any], directory: Path | None) -> Authenticator:
    """Start ZAP authentication on ``context`` for the clients allowed by ``directory``; a
    CurveError first when the directory or a certificate in it cannot be read."""
    if directory is not None and not allowed_keys(directory):
        log.warning(
            "no *.key certificate in %s: no client can connect until one is added", directory
        )
    zap = ThreadAuthenticator(context, log=logging.getLogger("streamtrk.service.zap"))
    zap.start()
    keys = AllowedKeys(directory)
    for domain in (ZAP_DOMAIN, "*"):  # make_server's sockets; any other
        zap.configure_curve_callback(domain, keys)
    return Authenticator(zap)
