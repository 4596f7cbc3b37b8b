"""Acceptance: a storm of 10,000 malformed messages mixed with 100 valid events."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from itertools import islice
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from live_daemon import partitions, sample

from streamtrk.client import Consumer, Producer
from streamtrk.event import Event, Hits
from streamtrk.io.recording import iter_records
from streamtrk.wire import TrackReply, decode, encode_hits, encode_truth, peek_identity

pytestmark = pytest.mark.slow

N_BAD, N_GOOD = 10_000, 100
DEAD_LETTER_CAP = 50_000
Frames = list[bytes]


def small_event(event: int, n: int = 6) -> Event:
    cols = {k: np.arange(n).astype(dt) for k, dt in Hits.DTYPES.items()}
    return Event(7, event, Hits(**cols))


def as_bytes(frames: list[Any]) -> Frames:
    return [bytes(f) for f in frames]


def with_header(frames: Frames, **changes: Any) -> Frames:
    header = msgpack.unpackb(frames[0])
    header.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del header[key]
    return [msgpack.packb(header), *frames[1:]]


def set_column(frames: Frames, index: int, values: np.ndarray) -> Frames:
    return [*frames[:index], values.tobytes(), *frames[index + 1 :]]


def _bad_dtype(f: Frames, rng: np.random.Generator) -> Frames:
    header = msgpack.unpackb(f[0])
    header["columns"][1][1] = "<f8"
    return [msgpack.packb(header), *f[1:]]


Maker = Callable[[Frames, np.random.Generator], Frames]
#: Ways to spoil a hits message, each with the reason it must be rejected for (written out,
#: not asked of the decoder under test); the first five cannot be identified (no reply).
MAKERS: list[tuple[Maker, str]] = [
    # garbage, led by 0xc1 (a byte msgpack never uses)
    (lambda f, rng: [b"\xc1" + rng.bytes(int(rng.integers(0, 64)))], "not_msgpack"),
    (lambda f, rng: [b"\xc1", *f[1:]], "not_msgpack"),
    (lambda f, rng: with_header(f, event=None), "bad_header"),  # unidentifiable header
    (lambda f, rng: [msgpack.packb([1, 2, 3]), *f[1:]], "bad_header"),  # header not a map
    (lambda f, rng: [msgpack.packb({"pad": "x" * 70_000}), *f[1:]], "header_too_large"),
    (lambda f, rng: with_header(f, version=99), "bad_version"),
    (lambda f, rng: with_header(f, schema="other"), "bad_schema"),
    (lambda f, rng: with_header(f, extra=1), "bad_header"),
    (_bad_dtype, "bad_dtype"),
    (lambda f, rng: [*f[:-1], f[-1][:-3]], "buffer_length"),  # truncated column
    (lambda f, rng: [*f, b"extra frame"], "frame_count"),
    (lambda f, rng: set_column(f, 2, np.array([np.nan] * 6, "<f4")), "non_finite"),  # x
    (lambda f, rng: set_column(f, 1, np.array([1, 1, 2, 3, 4, 5], "<i8")), "duplicate_hit_id"),
    (lambda f, rng: set_column(f, 5, np.array([-1, 0, 0, 0, 0, 0], "<i4")), "id_range"),
    (lambda f, rng: with_header(f, deadline_ms=-5), "bad_header"),
]


def storm(good: list[Frames], seed: int = 1) -> tuple[list[Frames], list[dict[str, Any]]]:
    """The messages in sending order, and for each bad one its expected handling."""
    rng = np.random.default_rng(seed)
    truth_ev = small_event(0)
    bad, expect = [], []
    for i in range(N_BAD):
        ev = small_event(1_000_000 + i)
        if i % 50 == 49:  # a valid message of the wrong kind
            frames, reason = as_bytes(encode_truth(7, ev.event, _truth(truth_ev))), "bad_kind"
        else:
            make, reason = MAKERS[i % len(MAKERS)]
            frames = make(as_bytes(encode_hits(ev)), rng)
        bad.append(frames)
        expect.append({"reason": reason, "identity": peek_identity(frames)})
    order = rng.permutation(N_BAD + N_GOOD)
    messages = [*bad, *good]
    return [messages[k] for k in order], expect


def _truth(ev: Event):
    from streamtrk.event import HitTruth, Particles, Truth

    n = len(ev.hits)
    hits = HitTruth(**{k: np.zeros(n, dt) for k, dt in HitTruth.DTYPES.items()})
    return Truth(hits, Particles(**{k: np.zeros(1, dt) for k, dt in Particles.DTYPES.items()}))


def test_storm_of_malformed_messages(daemon_factory, sim_run: Path, offline_tracks, tmp_path):
    dead_letter = tmp_path / "dead.stk"
    d = daemon_factory(
        "--dead-letter", str(dead_letter), "--dead-letter-max-bytes", str(DEAD_LETTER_CAP)
    )
    good = [frames for _, frames in islice(iter_records(sim_run), 0, 2 * N_GOOD, 2)]
    assert all(decode(f).kind == "hits" for f in good)
    messages, expect = storm(good)
    identified = [e for e in expect if e["identity"] is not None]
    n_replies = N_GOOD + len(identified)
    assert 1000 < len(identified) < N_BAD  # both kinds are well represented

    replies: list[TrackReply] = []
    with Consumer(d.output, linger_ms=0, rcvhwm=10_000) as consumer:
        with Producer(d.input, linger_ms=0, sndhwm=10_000) as producer:
            sender = threading.Thread(
                target=lambda: [producer.send_frames(m, timeout_ms=120_000) for m in messages]
            )
            sender.start()
            while len(replies) < n_replies and (msg := consumer.recv(timeout_ms=120_000)):
                replies.append(msg.to_reply())
            sender.join()
        assert consumer.recv(timeout_ms=500) is None  # nothing more

    # One reply per identifiable message and per valid event, with its kind's reason.
    assert len(replies) == n_replies
    errors = {(r.run, r.event): r.reason for r in replies if not r.ok}
    assert errors == {e["identity"]: e["reason"] for e in identified}
    ok = [r for r in replies if r.ok]
    assert sorted(r.event for r in ok) == list(range(N_GOOD))
    hits = {decode(f).event: decode(f).columns["hit_id"] for f in good}
    got = {}
    for r in ok:
        ids = hits[r.event]
        got[r.event] = (ids, r.to_tracks(ids).track_id_per_hit(len(ids)))
    served = partitions(got)
    assert all(served[k] == offline_tracks.get(k, set()) for k in range(N_GOOD))

    # Counters equal what was sent; the daemon is still ready.
    m = d.settled(received=N_BAD + N_GOOD)  # unanswered messages may still be arriving
    reasons = Counter(e["reason"] for e in expect)
    assert sample(m, "streamtrk_events_received_total") == N_BAD + N_GOOD
    for reason, n in reasons.items():
        assert sample(m, "streamtrk_events_rejected_total", reason=reason) == n, reason
    assert sum(v for k, v in m.items() if k[0] == "streamtrk_events_rejected_total") == N_BAD
    assert sample(m, "streamtrk_events_completed_total", status="ok") == N_GOOD
    assert sample(m, "streamtrk_events_completed_total", status="error") == len(identified)
    n_unidentified = N_BAD - len(identified)
    assert sample(m, "streamtrk_events_unidentified_total") == n_unidentified
    assert d.get("/readyz")[0] == 200

    # Unidentifiable input went to the dead-letter file until its cap.
    written = sample(m, "streamtrk_dead_letters_total", result="written")
    assert written + sample(m, "streamtrk_dead_letters_total", result="over_cap") == n_unidentified
    assert 0 < written < n_unidentified
    assert dead_letter.stat().st_size <= DEAD_LETTER_CAP
    records = [frames for _, frames in iter_records(dead_letter)]
    assert len(records) == written
    head = msgpack.unpackb(records[0][0])
    assert head["reason"] in reasons and head["frames"] == len(records[0]) - 1
