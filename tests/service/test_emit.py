"""The emit thread's fallback: a reply that cannot be encoded goes out as 'internal'."""

from __future__ import annotations

import queue

import numpy as np
import zmq

from streamtrk.event import Tracks
from streamtrk.service.emit import Emitter
from streamtrk.service.job import Reply
from streamtrk.service.telemetry import Metrics
from streamtrk.wire import decode


def test_a_reply_that_cannot_be_encoded_is_sent_as_internal() -> None:
    ctx = zmq.Context()
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    try:
        push.bind("inproc://emit-test")
        pull.connect("inproc://emit-test")
        metrics = Metrics()
        emitter = Emitter(push, queue.Queue(), metrics, lambda: True, linger_ms=0)
        # Track parameters lack 'chi2' and friends: encoding refuses the tracks.
        bad = Tracks(np.array([0, 2]), np.array([0, 1]), {"pt": np.ones(1, np.float32)})
        metrics.inflight.inc()
        emitter.emit(Reply(7, 42, 0.0, {"gnn": 0.5}, hit_ids=np.arange(3), tracks=bad))
        assert pull.poll(5000)
        reply = decode(pull.recv_multipart()).to_reply()
    finally:
        push.close(linger=0)
        pull.close(linger=0)
        ctx.term()
    assert (reply.run, reply.event, reply.status, reply.reason) == (7, 42, "error", "internal")
    assert len(reply) == 0 and reply.timings["gnn"] == 0.5 and "encode" in reply.timings
    value = metrics.registry.get_sample_value
    assert value("streamtrk_events_rejected_total", {"reason": "internal"}) == 1
    assert value("streamtrk_events_completed_total", {"status": "error"}) == 1
    assert value("streamtrk_inflight_events") == 0


def test_a_reply_queued_just_before_upstream_finishes_is_sent() -> None:
    # The worker queues its last reply, then says it is done; the emitter may have found the
    # queue empty just before: it must still send that reply before it exits.
    ctx = zmq.Context()
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    replies: queue.Queue[Reply] = queue.Queue()
    last = Reply(7, 43, 0.0, {}, reason="deadline")
    queued = []

    def upstream_done() -> bool:  # called once the queue was found empty
        if not queued:
            queued.append(replies.put(last))
        return True

    try:
        push.bind("inproc://emit-race")
        pull.connect("inproc://emit-race")
        metrics = Metrics()
        metrics.inflight.inc()
        emitter = Emitter(push, replies, metrics, upstream_done, linger_ms=1000)
        emitter.start()
        emitter.join(30)
        assert not emitter.is_alive()
        assert pull.poll(5000), "the last reply was never sent"
        reply = decode(pull.recv_multipart()).to_reply()
    finally:
        pull.close(linger=0)
        ctx.term()
    assert (reply.event, reply.reason) == (43, "deadline")
