"""The emit thread: owns the PUSH socket, encodes replies and sends them zero-copy.

A reply carries the event's hit ids (not indices) and the seconds the event spent in each
stage (``decode``, ``queue``, the batch's ``upload``, ``graph``, ``prune``, ``gnn``,
``tracks``, ``fit``, and ``encode``). When no downstream peer takes replies, sending waits
(backpressure up the pipeline); once a drain deadline is set and passed, unsent replies
are dropped and counted, and so are all replies after the thread failed. A socket that
connects (connect mode) takes replies while no consumer is connected, to send them once
one is: those taken since the last one sent with a consumer connected are counted dropped
if none is connected when the socket closes.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import zmq

from streamtrk.service import faults
from streamtrk.service.job import Reply
from streamtrk.service.supervised import Supervised
from streamtrk.service.telemetry import Metrics
from streamtrk.wire import encode_tracks
from streamtrk.wire.codec import OutFrame
from streamtrk.wire.sockets import free_ended_peers

log = logging.getLogger(__name__)
POLL_MS = 100


def _with_timing(frames: list[OutFrame], stage: str, seconds: float) -> list[OutFrame]:
    """``frames`` with ``timings[stage]`` added to the header (frame 0)."""
    header = msgpack.unpackb(frames[0])
    header["timings"][stage] = seconds
    return [msgpack.packb(header, use_bin_type=True), *frames[1:]]


def _encode(reply: Reply) -> list[OutFrame]:
    return encode_tracks(
        reply.run,
        reply.event,
        reply.hit_ids,
        reply.tracks,
        status=reply.status,
        reason=reply.reason,
        timings=reply.timings,
        msg_id=reply.msg_id,
        beam_line=reply.beam_line,
        model=reply.model,
    )


class Emitter(Supervised):
    """Sends replies until ``upstream_done()`` and the queue is empty, then closes the
    socket (LINGER: :meth:`_linger`)."""

    def __init__(
        self,
        socket: zmq.Socket[Any],
        replies: queue.Queue[Reply],
        metrics: Metrics,
        upstream_done: Callable[[], bool],
        linger_ms: int,
        on_failure: Callable[[Supervised], None] = lambda thread: None,
        reconnect: Callable[[], None] = lambda: None,
        connected: Callable[[], bool] = lambda: True,
    ) -> None:
        super().__init__("emit", on_failure)
        self.reconnect = reconnect  # connect mode: see monitor.Reconnects
        self.connected = connected  # whether a consumer is connected now
        self.unconnected = 0  # replies taken by ZeroMQ since one was with a consumer there
        self.socket = socket
        self.replies = replies
        self.metrics = metrics
        self.upstream_done = upstream_done
        self.linger_ms = linger_ms
        self.give_up_at: float | None = None  # perf_counter time; set when draining
        self.dropped = 0

    def loop(self) -> None:
        for reply in self._incoming():
            try:
                self.emit(reply)
            except BaseException:  # the thread dies: the reply in hand is dropped, counted
                self.dropped += 1
                self.metrics.inflight.dec()
                raise
            faults.fail("emit")

    def cleanup(self) -> None:
        linger = self._linger()
        if self.unconnected and not self.connected():
            log.warning(
                "%d replies taken by ZeroMQ while no consumer was connected are lost unless "
                "one connects within the socket's LINGER (%d ms); counted dropped",
                self.unconnected,
                linger,
            )
            self.dropped += self.unconnected
        self.socket.close(linger=linger)
        self.reconnect = lambda: None  # a reconnection due now would use the closed socket
        if self.error is not None:
            # Nothing can be sent: take the replies still coming, so that the threads
            # upstream never block on a full queue, and count each as dropped.
            for _ in self._incoming():
                self.dropped += 1
                self.metrics.inflight.dec()

    def _incoming(self) -> Iterator[Reply]:
        """The replies as they are queued, until upstream is done and the queue is empty."""
        while True:
            self.beat()
            self.reconnect()
            try:
                reply = self.replies.get(timeout=POLL_MS / 1000)
            except queue.Empty:
                if self.upstream_done():
                    # Done is set after the last reply was queued: take what is there.
                    yield from iter(self._next_now, None)
                    return
                if not self.socket.closed:  # closed: a dead emitter's cleanup
                    free_ended_peers(self.socket)
                continue
            yield reply

    def has_work(self) -> bool:
        return not self.replies.empty()

    def _next_now(self) -> Reply | None:
        try:
            return self.replies.get_nowait()
        except queue.Empty:
            return None

    def _linger(self) -> int:
        """The socket's LINGER at close: in a drain, what is left of it (replies ZeroMQ
        still holds for a slow consumer go out until the drain's end; ZeroMQ discards what
        it holds then, without saying how many), else ``linger_ms``."""
        if self.give_up_at is None:
            return self.linger_ms
        return max(0, int((self.give_up_at - time.perf_counter()) * 1000))

    def emit(self, reply: Reply) -> None:
        faults.delay("emit")  # tests: an emitter still busy when the drain ends
        m = self.metrics
        t0 = time.perf_counter()
        try:
            frames = _encode(reply)
        except Exception:
            log.exception("cannot encode the reply of run %d event %d", reply.run, reply.event)
            if not reply.reason:  # an error reply's rejection was counted with its reason
                m.rejected.labels("internal").inc()
            m.internal_errors.labels("encode").inc()
            reply = Reply(
                reply.run,
                reply.event,
                reply.t_recv,
                reply.timings,
                reason="internal",
                msg_id=reply.msg_id,
            )
            frames = _encode(reply)
        encode_s = time.perf_counter() - t0
        frames = _with_timing(frames, "encode", encode_s)
        if self._send(frames):
            self.unconnected = 0 if self.connected() else self.unconnected + 1
            m.stage.labels("encode").observe(encode_s)
            m.latency.observe(time.perf_counter() - reply.t_recv)
            m.completed.labels(reply.status).inc()
            if reply.tracks is not None:
                m.tracks.inc(len(reply.tracks))
                m.hits.inc(len(reply.hit_ids))
        else:
            self.dropped += 1
        m.inflight.dec()  # last, so that inflight 0 means every counter is up to date

    def _send(self, frames: list[OutFrame]) -> bool:
        faults.fail("send")  # tests: sending raises (the thread dies with a reply in hand)
        while True:
            self.beat()  # waiting for a consumer is back-pressure, not a stall
            self.reconnect()
            late = self.give_up_at is not None and time.perf_counter() > self.give_up_at
            if self.socket.poll(0 if late else POLL_MS, zmq.POLLOUT):
                try:
                    self.socket.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
                    return True
                except zmq.Again:
                    pass
            if late:
                return False
