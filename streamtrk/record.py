"""Tap a stream of hits into a recording, frames stored exactly as received."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

from streamtrk.client import Consumer
from streamtrk.io.recording import RecordingWriter
from streamtrk.wire import WireError, decode

RECORDED_KINDS = ("hits", "truth")


def record(
    source: str,
    output: Path,
    *,
    bind: bool = False,
    events: int | None = None,
    duration_s: float | None = None,
    stop: threading.Event | None = None,
    curve_key: Path | None = None,
    curve_server_key: Path | None = None,
) -> Counter[str]:
    """Write valid ``hits`` (and ``truth``) messages from a PULL socket on ``source`` to
    ``output`` until ``events`` hits messages, ``duration_s`` seconds or ``stop``.

    Returns counts: ``hits``, ``truth``, ``invalid`` (failed to decode), ``other`` (valid
    messages of another kind, not recorded). With CURVE certificates, ``record`` is a client
    of the server it taps (see ``streamtrk.wire.curve``).
    """
    stop = stop or threading.Event()
    n: Counter[str] = Counter()
    t_end = None if duration_s is None else time.monotonic() + duration_s
    output.parent.mkdir(parents=True, exist_ok=True)
    curve = {"curve_key": curve_key, "curve_server_key": curve_server_key}
    with (
        Consumer(source, bind=bind, linger_ms=0, **curve) as consumer,
        RecordingWriter(output) as writer,
    ):
        while not stop.is_set() and (events is None or n["hits"] < events):
            if t_end is not None and time.monotonic() >= t_end:
                break
            frames = consumer.recv_frames(timeout_ms=100)
            if frames is None:
                continue
            try:
                kind = decode(frames).kind
            except WireError:
                n["invalid"] += 1
                continue
            if kind in RECORDED_KINDS:
                writer.write(frames)
            n[kind if kind in RECORDED_KINDS else "other"] += 1
    return n
