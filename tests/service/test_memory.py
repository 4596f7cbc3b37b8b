"""Memory bounded against a hostile sender: messages of thousands of frames are refused
frame by frame as they are read, so the daemon's peak RSS stays far below what they carry,
and valid events keep being served."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import zmq
from live_daemon import Forwarder, sample
from zmtp_peer import peer_is_dropped

from streamtrk.client import Consumer, Producer
from streamtrk.detector import load_detector
from streamtrk.io.recording import iter_events
from streamtrk.sim.generator import GeneratorConfig
from streamtrk.sim.simulate import SimConfig, simulate
from streamtrk.wire import TrackReply

pytestmark = pytest.mark.slow

MESSAGES, FRAMES, FRAME_BYTES = 30, 2_000, 60_000  # 3.6 GB in all: 1.9 times the bound
BOUND_BYTES = 1.8 * 2**30  # docs/serve.md, "Memory": the bound with default settings


def kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)


def test_a_flood_of_huge_messages_stays_bounded(daemon_factory, sim_run: Path) -> None:
    d = daemon_factory()  # default settings
    pid = d.process.pid
    big = next(simulate(load_detector(), SimConfig(generator=GeneratorConfig(mu=200)), 5, 1))
    with Consumer(d.output, linger_ms=0) as consumer, Producer(d.input, linger_ms=0) as producer:
        assert producer.send_event(big, timeout_ms=30_000)  # the worker is busy with it
        t_end = time.monotonic() + 120
        while sample(d.metrics(), "streamtrk_batch_events_count") < 1:
            assert time.monotonic() < t_end, "the batch never started"
            time.sleep(0.05)
        idle_kib = kib(pid, "VmRSS")
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # peak RSS from here on

        def flood() -> None:
            ctx: zmq.Context[Any] = zmq.Context.instance()
            sock = ctx.socket(zmq.PUSH)
            sock.connect(d.input)
            junk = b"\x00" * FRAME_BYTES
            for _ in range(MESSAGES):
                sock.send_multipart([junk] * FRAMES, copy=False)
            sock.close(linger=120_000)

        attacker = threading.Thread(target=flood)
        attacker.start()
        attacker.join(600)
        assert not attacker.is_alive()
        t_end = time.monotonic() + 300
        while sample(d.metrics(), "streamtrk_events_rejected_total", reason="frame_count") < (
            MESSAGES
        ):
            assert time.monotonic() < t_end, "the flood was not read"
            time.sleep(0.2)
        peak_kib = kib(pid, "VmHWM")
        # Valid events are still served.
        replies: list[TrackReply] = []
        for ev in [e for _, e in zip(range(3), iter_events(sim_run), strict=False)]:
            assert producer.send_event(ev, timeout_ms=30_000)
        while len(replies) < 4 and (msg := consumer.recv(timeout_ms=120_000)) is not None:
            replies.append(msg.to_reply())
    assert len(replies) == 4 and all(r.ok for r in replies)
    grown = (peak_kib - idle_kib) * 1024
    assert grown < BOUND_BYTES, f"peak RSS grew by {grown / 2**30:.2f} GiB"
    m = d.settled()
    assert sample(m, "streamtrk_events_unidentified_total") == MESSAGES


def test_a_peer_sending_to_the_output_is_dropped(daemon_factory) -> None:
    """The output (PUSH) reads nothing: a peer sending there (a raw client) would have
    libzmq queue up to 1,000 messages of any size, unread; it is dropped instead."""
    d = daemon_factory()
    assert peer_is_dropped(d.output, 4 * 2**20)
    assert d.get("/readyz")[0] == 200


def churn(endpoint: str, kind: int, cycles: int) -> None:
    """``cycles`` peers of socket ``kind`` that connect to ``endpoint`` and leave."""
    ctx = zmq.Context()
    try:
        for _ in range(cycles):
            peer = ctx.socket(kind)
            peer.connect(endpoint)
            time.sleep(0.005)  # the handshake done: the bound socket made the peer a pipe
            peer.close(linger=0)
    finally:
        ctx.term()


CYCLES, GROWTH_KIB = 1_500, 6_000  # about 11 KB each kept: 16 MB


def test_collectors_reconnecting_to_an_idle_daemon_leave_no_memory_behind(daemon_factory):
    """libzmq frees a peer's connection once gone only when the socket's thread calls into
    it: the emitter, with no reply to send, never did (4,000 collectors connecting and
    leaving an idle daemon kept 46 MB)."""
    d = daemon_factory()
    churn(d.output, zmq.PULL, 100)  # the first connections' one-off allocations
    before = kib(d.process.pid, "VmRSS")
    churn(d.output, zmq.PULL, CYCLES)
    time.sleep(0.5)  # the emitter's poll (100 ms) frees the last ones
    assert kib(d.process.pid, "VmRSS") - before < GROWTH_KIB
    assert d.get("/readyz")[0] == 200


def test_producers_reconnecting_to_a_distributor_without_daemons_leave_no_memory_behind(
    tmp_path: Path,
) -> None:
    """A distributor with no daemon behind it (documented as a farm waiting) never called
    into its front while its back had no room: 3,000 producers connecting and leaving kept
    33 MB."""
    dist = Forwarder(tmp_path, "distributor")
    try:
        churn(dist.front, zmq.PUSH, 100)
        before = kib(dist.process.pid, "VmRSS")
        churn(dist.front, zmq.PUSH, CYCLES)
        time.sleep(0.5)
        assert kib(dist.process.pid, "VmRSS") - before < GROWTH_KIB
    finally:
        assert dist.stop() == 0
