"""The ingest thread: owns the PULL socket, decodes and validates, queues for batching.

Every message taken off the socket is counted, and its bytes. Messages are read frame by
frame and one over ``max_frames`` frames or ``max_message_bytes`` bytes is refused as it is
read (``frame_count``, ``message_too_large``), so the daemon never holds it whole. A valid
``hits`` message becomes a :class:`Job`; anything else is rejected with the decoder's reason,
answered with an error reply when its header names a (run, event), else counted as
unidentified and offered to the dead-letter file. So is a ``tracks`` message (``bad_kind``,
or the decoder's reason for one it refuses: a reply, on an input wired to a collector or
from a daemon's output wired to a distributor), which is not answered, as the answer would
come back as another reply, for ever; a warning says so at most once a ``MISROUTED_LOG_S``.
A full batch queue blocks this thread (so ZeroMQ's high-water marks push back on the
sender) or, with ``overload = "reject"``, answers ``overloaded``; an event still waiting for
room when the drain gives up on the queue is answered ``shutdown``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import zmq

from streamtrk.service import faults
from streamtrk.service.batcher import Batcher
from streamtrk.service.config import ServeConfig
from streamtrk.service.deadletter import DeadLetters
from streamtrk.service.job import Job, Reply
from streamtrk.service.logs import Throttle
from streamtrk.service.supervised import Supervised
from streamtrk.service.telemetry import Metrics
from streamtrk.wire import Limits, WireError, decode, identity_of, msg_id_of, peek_header

log = logging.getLogger(__name__)
POLL_MS = 100
LEAVE_MAX = 10_000  # most messages taken on stop (connected: rcvhwm + 1 at most, then it leaves)
UNBIND_QUIET_MS = 50  # after an unbind, messages libzmq had read still arrive this late
MISROUTED_LOG_S = 60.0  # at most one warning this often about replies on the input
DEAD_LETTER_LOG_S = 60.0  # at most one warning this often about failed dead-letter writes
REFUSED_LOG_S = 60.0  # at most one warning this often about refused input
DEAD_LETTER_RESULTS = ("written", "over_cap", "failed")  # streamtrk_dead_letters_total{result}


class Ingest(Supervised):
    """Receives until ``stop`` is set, then takes what its socket has queued and closes it."""

    def __init__(
        self,
        socket: zmq.Socket[Any],
        batcher: Batcher,
        replies: queue.Queue[Reply],
        metrics: Metrics,
        config: Callable[[], ServeConfig],
        stop: threading.Event,
        dead_letters: DeadLetters | None = None,
        on_failure: Callable[[Supervised], None] = lambda thread: None,
        reconnect: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__("ingest", on_failure)
        self.reconnect = reconnect  # connect mode: see monitor.Reconnects
        self.socket = socket
        self.batcher = batcher
        self.replies = replies
        self.metrics = metrics
        self.config = config
        self.stop = stop
        self.dead_letters = dead_letters
        if dead_letters is not None:  # at 0: rate() and increase() see the first one
            for result in DEAD_LETTER_RESULTS:
                metrics.dead_letters.labels(result)
        self.limits = Limits(max_hits=config().max_hits)
        self.leave_by: float | None = None  # perf_counter time: answered 'shutdown' after it
        self.give_up_at: float | None = None  # perf_counter time: the drain's end
        self._unbound: str | None = None  # bind mode: the endpoint given up on stop
        self._misrouted = Throttle(MISROUTED_LOG_S)  # replies on the input
        self._dead_failed = Throttle(DEAD_LETTER_LOG_S)  # dead letters that could not be written
        self._dead_error: OSError | None = None  # the last dead letter's write error
        self._refused = Throttle(REFUSED_LOG_S)  # input refused by the decoder or for its size
        self._refused_reasons: Counter[str] = Counter()  # since the last warning
        self._refused_last = ""  # the last refusal: the event it names, its reason and why

    def beat(self) -> None:
        """Progress, and the rest of a burst's warnings once due, said also while the thread
        waits for room downstream (a stalled collector held them back until the drain)."""
        super().beat()
        self._say_pending()

    def loop(self) -> None:
        while not self.stop.is_set():
            self.beat()
            self.reconnect()
            if not self.socket.poll(POLL_MS, zmq.POLLIN):
                continue
            try:
                received = self._receive(zmq.NOBLOCK)
            except zmq.Again:
                continue
            self.handle(*received)
            faults.fail("ingest")
        self._leave()
        self._say_pending(final=True)

    def _say_pending(self, final: bool = False) -> None:
        """The rest of a burst of misrouted replies, refused input or failed dead-letter writes,
        once its warning is due and the burst stopped, or when the thread stops (``final``;
        else said only at the next occurrence, maybe never; a stream still going gets its
        full warnings from the occurrences)."""
        if since := self._misrouted.pending(final):
            log.warning("%d more replies (tracks messages) came in on the input since the last "
                        "warning", since)  # fmt: skip
        if since := self._refused.pending(final):
            self._warn_refused(since)
        if since := self._dead_failed.pending(final):
            log.warning("%d more dead letters could not be written since the last warning: %s",
                        since, self._dead_error)  # fmt: skip

    def _leave(self) -> None:
        """On stop, take what the socket has queued (at most ``LEAVE_MAX`` messages; those
        taken after ``leave_by`` answered ``shutdown`` unread, as the drain has no time left
        to process them), and stop receiving. Connect mode: take the ``rcvhwm`` messages
        the socket holds (and the one libzmq may have read past them), then disconnect, so
        that the distributor sends nothing more here (libzmq drops what is still in
        flight); while they are taken the distributor goes on sending, and those events are
        for other daemons. Bind mode: unbind first (libzmq closes the peers' connections and
        keeps what it had queued readable; a peer keeps what it has not sent, its bytes in
        flight are lost), then take: the port is free for a replacement at once (already
        while an event waits for room in a full batch queue)."""
        cfg = self.config()
        connect = cfg.connect
        faults.delay("leave")  # tests: what arrives as intake stops
        if not connect:
            self._unbind()
        wait_ms = 0 if connect else UNBIND_QUIET_MS
        most = min(cfg.rcvhwm + 1, LEAVE_MAX) if connect else LEAVE_MAX
        taken = late = 0
        while taken < most and self.socket.poll(wait_ms, zmq.POLLIN):
            try:  # not blocking: a CURVE peer's connection cut mid-message (the unbind, a
                # frame over the limit) leaves a credential that the poll takes for one
                received = self._receive(zmq.NOBLOCK)
            except zmq.Again:
                continue
            if self.leave_by is not None and time.perf_counter() >= self.leave_by:
                self._too_late(*received)
                late += 1
            else:
                self.handle(*received)
            taken += 1
        if connect:
            self.socket.disconnect(cfg.input)
        verb = "disconnected the input from" if connect else "unbound the input"
        endpoint = cfg.input if connect else self._unbound
        log.info("%s %s; %d queued messages taken (%d of them after the intake's deadline, "
                 "answered 'shutdown' unread)", verb, endpoint, taken, late)  # fmt: skip

    def _unbind(self) -> None:
        """Bind mode: give up the input's port (once)."""
        if self._unbound is None:
            self._unbound = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
            self.socket.unbind(self._unbound)  # done by libzmq's I/O thread, a little later

    def _waiting_for_room(self) -> None:
        """While an event waits for room in a full batch queue: progress, and once stopping
        (bind mode) the port given up at once, not when the drain makes room."""
        self.beat()
        if self.stop.is_set() and not self.config().connect:
            self._unbind()

    def _too_late(self, frames: list[zmq.Frame], refused: WireError | None, count: int) -> None:
        """A message taken past ``leave_by``: an event answered ``shutdown`` unread (its
        header's identity; by the drain's end, else counted unsent); anything else as ever
        (refused, or not answered)."""
        header = peek_header(frames) or {}
        if identity_of(header) is None or header.get("kind") != "hits":
            self.handle(frames, refused, count)
            return
        self.metrics.received.inc()
        self._reject(frames, "shutdown", time.perf_counter(), until=self.give_up_at)

    def cleanup(self) -> None:
        self.socket.close(linger=0)

    def has_work(self) -> bool:
        return True  # it should always be polling its socket

    def _receive(self, flags: int = 0) -> tuple[list[zmq.Frame], WireError | None, int]:
        """One message, frame by frame (zero-copy), why it is refused, if it is, and how many
        frames it had: past ``max_frames`` frames or ``max_message_bytes`` bytes, the rest of
        its frames are read and dropped at once (those before are kept: frame 0 for its
        identity, and a dead letter's first frames)."""
        cfg = self.config()
        frames: list[zmq.Frame] = []
        size, count, refused = 0, 0, None
        while True:
            frame = self.socket.recv(flags=flags, copy=False)
            flags = 0  # the parts of a message arrive together
            size += len(frame)
            count += 1
            if refused is None and len(frames) >= cfg.max_frames:
                refused = WireError("frame_count", f"over {cfg.max_frames} frames")
            elif refused is None and size > cfg.max_message_bytes:
                refused = WireError("message_too_large", f"over {cfg.max_message_bytes} bytes")
            if refused is None or not frames:
                frames.append(frame)
            if not frame.more:
                self.metrics.received_bytes.inc(size)
                return frames, refused, count

    def handle(
        self, frames: list[zmq.Frame], refused: WireError | None = None, count: int = 0
    ) -> None:
        """Decode one message and queue its event, or reject it (``refused``: already
        refused for its size, ``count`` frames received of which ``frames`` were kept);
        never raises."""
        t_recv = time.perf_counter()
        self.metrics.received.inc()
        if refused is not None:
            self._reject(frames, refused.reason, t_recv, refused, count)
            return
        try:
            self._accept(frames, t_recv)
        except WireError as e:
            self._reject(frames, e.reason, t_recv, e)
        except Exception:
            log.exception("unexpected failure while decoding a message")
            self.metrics.internal_errors.labels("decode").inc()
            self._reject(frames, "internal", t_recv)

    def _accept(self, frames: list[zmq.Frame], t_recv: float) -> None:
        msg = decode(frames, limits=self.limits)
        if msg.kind == "tracks":
            self._reply_on_input(frames)
            return
        event = msg.to_event()  # WireError bad_kind for truth messages
        decode_s = time.perf_counter() - t_recv
        self.metrics.stage.labels("decode").observe(decode_s)
        cfg = self.config()
        deadline_ms = msg.deadline_ms or cfg.deadline_ms
        deadline = None if deadline_ms is None else t_recv + deadline_ms / 1000
        job = Job(event, t_recv, deadline, {"decode": decode_s}, msg.msg_id)
        self.metrics.inflight.inc()
        try:
            queued = self.batcher.put(
                job, block=cfg.overload == "block", waiting=self._waiting_for_room
            )
        except Exception:  # not queued: handle() answers it, counted in flight again there
            self.metrics.inflight.dec()
            raise
        if not queued:
            reason = "shutdown" if self.batcher.closed else "overloaded"
            self.metrics.rejected.labels(reason).inc()
            self.put(self.replies, Reply.failure(job, reason))

    def _reply_on_input(
        self, frames: list[zmq.Frame], error: WireError | None = None, count: int = 0
    ) -> None:
        error = error or WireError("bad_kind", "a reply (tracks message) on the input")
        self._unanswered(frames, error, count)
        if since := self._misrouted.count():
            log.warning(
                "replies (tracks messages) come in on the input and are not answered (%d since "
                "the last warning): is the input connected to a collector, or a daemon's "
                "output to a distributor?",
                since,
            )

    def _reject(
        self,
        frames: list[zmq.Frame],
        reason: str,
        t_recv: float,
        error: WireError | None = None,
        count: int = 0,
        until: float | None = None,
    ) -> None:
        """Answer ``reason`` to the event the header names (its reply queued by ``until``,
        else left unsent, still in flight), or count the message unanswered."""
        header = peek_header(frames) or {}  # read once, leniently
        if header.get("kind") == "tracks":  # a reply, even one refused
            self._reply_on_input(frames, error or WireError(reason, "unexpected failure"), count)
            return
        # Counted before the reply is queued (in flight until it is sent), so that a scrape
        # never sees the reply sent and its rejection not yet counted.
        identity = identity_of(header)
        if error is not None:  # "internal" is logged with its traceback
            self._say_refused(error, identity)
        if identity is not None:
            self.metrics.inflight.inc()
            self.metrics.rejected.labels(reason).inc()
            timings = {"decode": time.perf_counter() - t_recv}
            msg_id = msg_id_of(header)
            reply = Reply(*identity, t_recv, timings, reason=reason, msg_id=msg_id)
            self.put(self.replies, reply, until=until)
        else:
            self._unanswered(frames, error or WireError(reason, "unexpected failure"), count)

    def _say_refused(self, error: WireError, identity: tuple[int, int] | None) -> None:
        """Count a refusal for the throttled warning that says why (the reply carries its
        reason's code alone, and an unidentified message has none)."""
        self._refused_reasons[error.reason] += 1
        who = "unidentified" if identity is None else f"run {identity[0]} event {identity[1]}"
        self._refused_last = f"{who}: {error}"
        if since := self._refused.count():
            self._warn_refused(since)

    def _warn_refused(self, since: int) -> None:
        reasons = ", ".join(f"{r} {n}" for r, n in self._refused_reasons.most_common())
        log.warning("%d input messages refused since the last warning (%s); the last: %s",
                    since, reasons, self._refused_last)  # fmt: skip
        self._refused_reasons.clear()

    def _unanswered(self, frames: list[zmq.Frame], error: WireError, count: int = 0) -> None:
        """Count a message that gets no reply, and offer it to the dead-letter file."""
        if self.dead_letters is not None:
            self._dead_letter(self.dead_letters, frames, error, max(count, len(frames)))
        self.metrics.unidentified.inc()
        self.metrics.rejected.labels(error.reason).inc()

    def _dead_letter(
        self, dead: DeadLetters, frames: list[zmq.Frame], error: WireError, count: int
    ) -> None:
        try:
            result = "written" if dead.write(frames, error, count) else "over_cap"
        except OSError as e:
            self._dead_error = e
            if since := self._dead_failed.count():  # a full disk fails every write
                log.warning("cannot write to the dead-letter file (%d since the last warning): %s",
                            since, e)  # fmt: skip
            result = "failed"
        self.metrics.dead_letters.labels(result).inc()
