"""systemd's service notifications (``sd_notify(3)``; ``Type=notify`` in the unit).

Rules:
- Each notification is one datagram of ``KEY=value`` lines to the ``$NOTIFY_SOCKET``
  systemd gives the process (a path, or ``@name`` for the abstract namespace); where it is
  unset (not started by systemd with ``Type=notify``) nothing is sent.
- The daemon says ``READY=1`` once it serves (``systemctl start`` returns then, and a
  ``systemctl reload`` asked for meanwhile is queued until then), ``RELOADING=1`` then
  ``READY=1`` around a SIGHUP's reload, ``STOPPING=1`` as it drains (or stops while
  loading); nothing after ``STOPPING=1``.
- Where the unit sets ``WatchdogSec=`` (``$WATCHDOG_USEC``, for this process by
  ``$WATCHDOG_PID``), :meth:`Notifier.watchdog` sends ``WATCHDOG=1`` at most every half
  period, and only while the daemon is healthy (``/healthz`` passes): a stalled daemon stops
  pinging and systemd restarts it.
- A notification that cannot be sent (within ``SEND_TIMEOUT_S``: a receiver that stopped
  reading) is logged once and never stops the daemon.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

_STOPPING = "STOPPING=1"
SEND_TIMEOUT_S = 1.0


class Notifier:
    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        path = environ.get("NOTIFY_SOCKET", "")
        self.address = "\0" + path[1:] if path.startswith("@") else path or None
        self.watchdog_s = _watchdog_period_s(environ)
        self._lock = threading.Lock()
        self._stopping = False
        self._pinged: float | None = None
        self._failed = False

    def send(self, *fields: str) -> None:
        """One notification of ``fields`` (``"READY=1"``, ``"STATUS=serving"``, ...)."""
        with self._lock:
            if self.address is None or self._stopping:
                return
            self._stopping = _STOPPING in fields
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                    # Bounded: a receiver that stopped reading (its queue full) must not hold
                    # the main loop (signals, pings) or a failing thread. Connected, the wait
                    # is for room in the receiver's queue.
                    s.settimeout(SEND_TIMEOUT_S)
                    s.connect(self.address)
                    s.send("\n".join(fields).encode())
            except OSError as e:
                if not self._failed:
                    self._failed = True
                    log.warning("cannot notify systemd at NOTIFY_SOCKET: %s", e)

    def state(self, state: str) -> None:
        """The daemon's readiness (``health.Readiness``) changed to ``state``."""
        if state == "ready":
            self.send("READY=1", "STATUS=serving")
        elif state == "draining":
            self.send(_STOPPING, "STATUS=draining")

    def reloading(self) -> None:
        """A reload began; :meth:`state` ``"ready"`` ends it, whatever its outcome."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading; serving meanwhile")

    def watchdog(self, healthy: Callable[[], bool]) -> None:
        """``WATCHDOG=1`` if half the watchdog period has passed since the last one and
        ``healthy()``; called often (the daemon's main loop)."""
        if self.watchdog_s is None:
            return
        now = time.monotonic()
        if self._pinged is not None and now - self._pinged < self.watchdog_s / 2:
            return
        if healthy():
            self._pinged = now
            self.send("WATCHDOG=1")


def _watchdog_period_s(environ: Mapping[str, str]) -> float | None:
    """The watchdog period systemd set for this process, in seconds, or None."""
    pid = environ.get("WATCHDOG_PID")
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
        if pid is not None and int(pid) != os.getpid():
            return None
    except ValueError:
        return None
    return usec / 1e6 if usec > 0 else None
