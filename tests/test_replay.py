"""Replay against a real PULL socket that never answers: what is sent, and when resends go."""

from __future__ import annotations

import zmq

from streamtrk.detector import load_detector
from streamtrk.replay import Recorded, ReplayOptions, replay
from streamtrk.sim.generator import GeneratorConfig
from streamtrk.sim.simulate import SimConfig, simulate
from streamtrk.wire.codec import encode_hits, peek_msg_id


def test_resends_go_out_while_later_events_are_still_being_sent() -> None:
    events = [
        Recorded([bytes(f) for f in encode_hits(ev)], ev)
        for ev in simulate(load_detector(), SimConfig(generator=GeneratorConfig(mu=1)), 3, 20)
    ]
    ctx = zmq.Context.instance()
    with ctx.socket(zmq.PULL) as sink, ctx.socket(zmq.PULL) as replies:
        sink.setsockopt(zmq.LINGER, 0)
        replies.setsockopt(zmq.LINGER, 0)
        to = f"tcp://127.0.0.1:{sink.bind_to_random_port('tcp://127.0.0.1')}"
        # The replay's consumer connects here: a PUSH that never sends stands for a daemon
        # that lost every event.
        with ctx.socket(zmq.PUSH) as silent:
            silent.setsockopt(zmq.LINGER, 0)
            from_ = f"tcp://127.0.0.1:{silent.bind_to_random_port('tcp://127.0.0.1')}"
            opts = ReplayOptions(to=to, from_=from_, rate=10.0, timeout_s=1.0, retries=1,
                                 retry_after_s=0.5)  # fmt: skip
            result = replay(events, opts)
        ids = []
        while sink.poll(500):
            ids.append(peek_msg_id(sink.recv_multipart()))
    report = result.report(events, opts.rate)
    assert report["sent"] == 20 and report["missing"] == 20 and report["resent"] == 20
    assert len(ids) == 40 and len(set(ids)) == 20  # each event sent twice, no more
    first_resend = next(k for k, m in enumerate(ids) if m in ids[:k])
    assert first_resend < ids.index(max(ids))  # a resend went before the last event went once
