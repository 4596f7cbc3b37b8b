"""Ingest's bookkeeping: a rejection is counted before its reply can be sent."""

from __future__ import annotations

import queue
import threading

import msgpack
import zmq

from streamtrk.service.batcher import Batcher, BatchPolicy
from streamtrk.service.config import ServeConfig
from streamtrk.service.ingest import Ingest
from streamtrk.service.job import Reply
from streamtrk.service.telemetry import Metrics


class Watched(queue.Queue[Reply]):
    """A reply queue noting, for each reply queued, the rejections counted by then."""

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self.metrics = metrics
        self.counted: list[float] = []

    def put(self, item: Reply, block: bool = True, timeout: float | None = None) -> None:
        value = self.metrics.registry.get_sample_value
        self.counted.append(value("streamtrk_events_rejected_total", {"reason": item.reason}))
        super().put(item, block, timeout)


def test_a_rejection_is_counted_before_its_reply_is_queued() -> None:
    """The emitter may send a reply the moment it is queued: a scrape must not then see
    completed{status="error"} without the rejection (docs/metrics.md's identities)."""
    metrics = Metrics()
    replies = Watched(metrics)
    socket = zmq.Context.instance().socket(zmq.PULL)
    try:
        ingest = Ingest(
            socket, Batcher(4, BatchPolicy()), replies, metrics, ServeConfig, threading.Event()
        )
        header = {"schema": "streamtrk", "version": 9, "kind": "hits", "run": 1, "event": 2}
        ingest.handle([zmq.Frame(msgpack.packb(header))])
    finally:
        socket.close(linger=0)
    reply = replies.get_nowait()
    assert (reply.run, reply.event, reply.reason) == (1, 2, "bad_version")
    assert replies.counted == [1.0]
