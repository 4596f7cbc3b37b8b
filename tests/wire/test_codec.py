"""Round trips, zero-copy decoding, and one test per WireError reason."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypedDict

import msgpack
import numpy as np
import pytest

from streamtrk.event import TRACK_PARAM_DTYPES, Event, Hits, HitTruth, Particles, Tracks, Truth
from streamtrk.wire import (
    ENCODED_VERSIONS,
    REASONS,
    Limits,
    ModelId,
    WireError,
    decode,
    encode_hits,
    encode_tracks,
    encode_truth,
    identity_of,
    peek_header,
    peek_identity,
    peek_msg_id,
    with_msg_id,
)
from streamtrk.wire.schema import (
    COMMON_KEYS,
    DEFAULT_LIMITS,
    STATUSES,
    SUPPORTED_VERSIONS,
    columns_of,
    keys_of,
)

DROP = object()
FLOATS = ("vx", "vy", "vz", "px", "py", "pz")
TRUTH_FLOATS = ("tx", "ty", "tz", "tpx", "tpy", "tpz")


def random_event(rng: np.random.Generator, n: int, run: int = 1, event: int = 0) -> Event:
    hits = Hits.from_columns(
        {
            "hit_id": rng.choice(10 * n + 10, n, replace=False) + 1,
            **{k: rng.normal(0, 500, n) for k in "xyz"},
            **{k: rng.integers(0, 20, n) for k in ("volume_id", "layer_id", "module_id")},
        }
    )
    n_p = max(1, n // 10)
    pid = rng.integers(1, 2**62, n_p)
    particles = Particles.from_columns(
        {
            "particle_id": pid,
            **{k: rng.normal(size=n_p) for k in FLOATS},
            "q": rng.choice([-1, 1], n_p),
            "nhits": rng.integers(0, 20, n_p),
        }
    )
    truth_hits = HitTruth.from_columns(
        {
            "particle_id": rng.choice(np.append(pid, 0), n),
            **{k: rng.normal(size=n) for k in TRUTH_FLOATS},
            "weight": rng.exponential(size=n),
            "hit_order": rng.integers(-1, 15, n),
        }
    )
    return Event(run, event, hits, Truth(truth_hits, particles))


def truth_of(ev: Event) -> Truth:
    """``ev.truth``, which ``random_event`` always sets."""
    assert ev.truth is not None
    return ev.truth


def random_tracks(rng: np.random.Generator, n_hits: int, n_tracks: int) -> Tracks:
    cuts: np.ndarray | list[int] = (
        np.sort(rng.integers(0, n_hits + 1, n_tracks - 1)) if n_tracks else []
    )
    offsets = np.concatenate([[0], cuts, [n_hits]]) if n_tracks else np.zeros(1)
    params = {k: rng.normal(size=n_tracks).astype(dt) for k, dt in TRACK_PARAM_DTYPES.items()}
    hit_index = rng.permutation(n_hits)[: int(offsets[-1])]
    return Tracks(offsets.astype(np.int32), hit_index, params)


def patch(frames: list[Any], **changes: Any) -> list[Any]:
    """Frames with header keys replaced (or removed with DROP)."""
    header = msgpack.unpackb(frames[0])
    for k, v in changes.items():
        if v is DROP:
            del header[k]
        else:
            header[k] = v
    return [msgpack.packb(header), *frames[1:]]


def columns(frames: list[Any]) -> list[list[Any]]:
    return msgpack.unpackb(frames[0])["columns"]


def with_column(frames: list[Any], name: str, values: np.ndarray, dtype: str = "") -> list[Any]:
    """Frames with column ``name`` replaced by ``values`` (declared as ``dtype``)."""
    header = msgpack.unpackb(frames[0])
    i = [c[0] for c in header["columns"]].index(name)
    header["columns"][i] = [name, dtype or values.dtype.str, len(values)]
    out = [msgpack.packb(header), *frames[1:]]
    out[1 + i] = values.tobytes()
    return out


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def hits(rng: np.random.Generator) -> list[Any]:
    return encode_hits(random_event(rng, 10, run=7, event=42), t_send_ns=5)


@pytest.fixture
def tracks(rng: np.random.Generator) -> list[Any]:
    ev = random_event(rng, 10)
    return encode_tracks(1, 2, ev.hits.hit_id, random_tracks(rng, 10, 3))


@pytest.fixture
def truth(rng: np.random.Generator) -> list[Any]:
    return encode_truth(1, 2, truth_of(random_event(rng, 10)))


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("n", [0, 1, 1000])
def test_hits_round_trip(rng: np.random.Generator, n: int) -> None:
    ev = random_event(rng, n, run=3, event=2**40)
    msg = decode([bytes(f) for f in encode_hits(ev, t_send_ns=99, deadline_ms=0.25)])
    assert (msg.kind, msg.run, msg.event, msg.t_send_ns, msg.version) == ("hits", 3, 2**40, 99, 2)
    assert msg.deadline_ms == 0.25  # any positive number of milliseconds
    back = msg.to_event()
    assert (back.run, back.event, back.truth) == (3, 2**40, None)
    assert back.hits.equals(ev.hits)


def test_hits_defaults(rng: np.random.Generator) -> None:
    msg = decode(encode_hits(random_event(rng, 5)))
    assert msg.deadline_ms is None
    assert "deadline_ms" not in msg.header
    assert msg.t_send_ns > 0


def test_every_encoder_stamps_now_and_a_reply_names_no_msg_id_by_default(
    rng: np.random.Generator,
) -> None:
    before = time.time_ns()
    truth = decode(encode_truth(1, 2, truth_of(random_event(rng, 5))))
    reply = decode(encode_tracks(1, 2, np.arange(3), None))
    assert truth.t_send_ns >= before and reply.t_send_ns >= before
    assert reply.msg_id is None and "msg_id" not in reply.header


@pytest.mark.parametrize("n", [0, 50])
def test_truth_round_trip(rng: np.random.Generator, n: int) -> None:
    ev = random_event(rng, n)
    assert ev.truth is not None
    msg = decode(encode_truth(5, 6, ev.truth, t_send_ns=1))
    assert (msg.kind, msg.run, msg.event) == ("truth", 5, 6)
    assert len(msg.columns["hit.particle_id"]) != len(msg.columns["particle.particle_id"])
    assert msg.to_truth().equals(ev.truth)


@pytest.mark.parametrize("n_tracks", [0, 1, 7])
def test_tracks_round_trip(rng: np.random.Generator, n_tracks: int) -> None:
    ev = random_event(rng, 40)
    trk = random_tracks(rng, 30, n_tracks)
    timings = {"decode": 1e-4, "gnn": 0.002}
    reply = decode(encode_tracks(1, 2, ev.hits.hit_id, trk, timings=timings)).to_reply()
    assert (reply.run, reply.event, reply.status, reply.reason, reply.ok) == (1, 2, "ok", "", True)
    assert reply.timings == timings
    assert len(reply) == n_tracks
    np.testing.assert_array_equal(reply.hit_id, ev.hits.hit_id[trk.hit_index])
    for k, dt in TRACK_PARAM_DTYPES.items():
        assert reply.params[k].dtype == np.dtype(dt)
        np.testing.assert_array_equal(reply.params[k], trk.params[k])
    back = reply.to_tracks(ev.hits.hit_id)
    for a, b in zip(back.hit_lists(), trk.hit_lists(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_error_reply_round_trip(rng: np.random.Generator) -> None:
    reply = decode(encode_tracks(1, 2, np.arange(3), None, status="error", reason="deadline"))
    r = reply.to_reply()
    assert (r.status, r.reason, r.ok, len(r), r.timings) == ("error", "deadline", False, 0, {})
    np.testing.assert_array_equal(r.offsets, [0])


def test_to_tracks_unknown_hit_id(rng: np.random.Generator) -> None:
    ev = random_event(rng, 10)
    reply = decode(encode_tracks(1, 2, ev.hits.hit_id, random_tracks(rng, 10, 2))).to_reply()
    with pytest.raises(ValueError, match="not in the event"):
        reply.to_tracks(ev.hits.hit_id[:5])


class ReplyStatus(TypedDict, total=False):
    """encode_tracks' status keywords."""

    status: str
    reason: str


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"status": "maybe"}, "status must be one of"),
        ({"status": "error"}, "reason"),
        ({"reason": "why"}, "reason"),
    ],
)
def test_encode_tracks_rejects_bad_arguments(kwargs: ReplyStatus, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        encode_tracks(1, 2, np.arange(3), None, **kwargs)


def test_a_header_key_twice_is_refused_and_its_refusal_answered(hits: list[Any]) -> None:
    """msgpack keeps a map's last value of a key: the decoder refuses the ambiguity, and the
    refusal goes to the event the header names last (as a peek reads it)."""
    header = msgpack.unpackb(hits[0])
    first, *rest = header.items()  # "run" twice: 99, then the header's own
    pairs = [first, ("run", 99), *rest]
    raw = _raw_map([(msgpack.packb(k), msgpack.packb(v)) for k, v in pairs])
    with pytest.raises(WireError, match="bad_header: header key 'run' appears more than once"):
        decode([raw, *hits[1:]])
    assert peek_identity([raw]) == (header["run"], header["event"]) == (7, 42)


def test_headers_decode_where_msgpack_hands_their_pairs_over_as_a_generator(
    hits: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """msgpack's pure-Python unpacker before 1.2.4 (installed where no wheel fits) gives
    ``object_pairs_hook`` a generator, not the C extension's list: every header was refused
    as not msgpack. They decode, and a key twice is still refused."""
    unpackb = msgpack.unpackb

    def pairs_as_a_generator(*args: Any, object_pairs_hook: Any, **kwargs: Any) -> Any:
        hook = lambda pairs: object_pairs_hook(p for p in pairs)  # noqa: E731
        return unpackb(*args, object_pairs_hook=hook, **kwargs)

    monkeypatch.setattr(msgpack, "unpackb", pairs_as_a_generator)
    ev = decode(hits).to_event()
    assert (ev.run, ev.event) == (7, 42) and len(ev.hits) > 0
    pairs = [("run", 99), *unpackb(hits[0]).items()]
    raw = _raw_map([(msgpack.packb(k), msgpack.packb(v)) for k, v in pairs])
    with pytest.raises(WireError, match="bad_header: header key 'run' appears more than once"):
        decode([raw, *hits[1:]])


@pytest.mark.parametrize(("run", "event"), [(2**64, 1), (1, -1), (2**63, 1)])
def test_encoders_refuse_run_and_event_numbers_out_of_range(run: int, event: int) -> None:
    """As the decoder would (past 2**64 msgpack could not even write them)."""
    with pytest.raises(
        WireError, match=r"bad_header: (run|event) must be an int in \[0, 2\*\*63\)"
    ):
        encode_tracks(run, event, np.arange(3), None)


@pytest.mark.parametrize(
    ("encode", "match"),
    [
        (lambda ev: encode_hits(ev, deadline_ms=0), "deadline_ms must be a positive number"),
        (lambda ev: encode_hits(ev, deadline_ms=float("nan")), "deadline_ms must be"),
        (lambda ev: encode_hits(ev, deadline_ms=True), "deadline_ms must be"),  # not 1 ms
        (lambda ev: encode_hits(ev, deadline_ms="5"), "deadline_ms must be"),  # type: ignore[arg-type]
        (lambda ev: encode_hits(ev, msg_id=-1), r"msg_id must be an int in \[0, 2\*\*63\)"),
        (lambda ev: with_msg_id(encode_hits(ev), 2**63), "msg_id must be an int"),
        (
            lambda ev: encode_tracks(1, 2, ev.hits.hit_id, None, timings={"gnn": float("nan")}),
            "timings must map stage names to seconds >= 0",
        ),
        (
            lambda ev: encode_tracks(1, 2, ev.hits.hit_id, None, beam_line=(float("inf"), 0)),
            r"beam_line must be \[x, y\] in mm",
        ),
        (lambda ev: encode_hits(ev, t_send_ns=-1), r"t_send_ns must be an int in \[0, 2\*\*63\)"),
        (
            lambda ev: encode_tracks(
                1, 2, ev.hits.hit_id, None, status="error", reason="x" * 70_000
            ),
            "header_too_large: header is 70",
        ),
        (
            lambda ev: encode_tracks(
                1, 2, ev.hits.hit_id, None, timings={f"stage{i}": 0.0 for i in range(65)}
            ),
            r"65 exceeds max_map_len\(64\)",
        ),
    ],
)
def test_encoders_refuse_what_the_decoder_would(rng: np.random.Generator, encode, match) -> None:
    """A producer learns of a bad header when it sends, not from the daemon's error reply."""
    with pytest.raises(WireError, match=match):
        encode(random_event(rng, 5))


def test_encode_tracks_rejects_error_with_tracks_and_missing_params(
    rng: np.random.Generator,
) -> None:
    trk = random_tracks(rng, 5, 2)
    with pytest.raises(ValueError, match="no tracks"):
        encode_tracks(1, 2, np.arange(5), trk, status="error", reason="x")
    del trk.params["chi2"]
    with pytest.raises(ValueError, match="chi2"):
        encode_tracks(1, 2, np.arange(5), trk)


# --------------------------------------------------------------------------- zero copy, frames


def test_encode_is_zero_copy(rng: np.random.Generator) -> None:
    ev = random_event(rng, 100)
    frames = encode_hits(ev)
    assert isinstance(frames[0], bytes)
    assert all(isinstance(f, memoryview) for f in frames[1:])
    assert np.shares_memory(np.frombuffer(frames[2], np.float32), ev.hits.x)


@pytest.mark.parametrize("buffer", [bytes, bytearray])
def test_decode_is_zero_copy(rng: np.random.Generator, buffer: type) -> None:
    frames = [buffer(f) for f in encode_hits(random_event(rng, 100))]
    msg = decode(frames)
    for name, frame in zip(msg.columns, frames[1:], strict=True):
        assert np.shares_memory(msg.columns[name], np.frombuffer(frame, np.uint8))
        assert not msg.columns[name].flags.writeable


def test_decode_accepts_buffer_kinds(rng: np.random.Generator) -> None:
    class FrameLike:  # like zmq.Frame
        def __init__(self, data: bytes) -> None:
            self.buffer = memoryview(data)

    ev = random_event(rng, 20)
    raw = [bytes(f) for f in encode_hits(ev)]
    typed = np.frombuffer(raw[2], np.float32)  # a memoryview of format "f"
    variants: list[Iterable[Any]] = [
        [bytearray(f) for f in raw],
        [memoryview(f) for f in raw],
        [FrameLike(f) for f in raw],
        # (the ignore: NumPy's stub gives ndarray __buffer__ for Python 3.12 and later only)
        [raw[0], raw[1], memoryview(typed), *raw[3:]],  # type: ignore[arg-type, unused-ignore]
        [raw[0], raw[1], typed, *raw[3:]],  # an array itself: a buffer with no .buffer
        tuple(raw),
        iter(raw),
    ]
    for frames in variants:
        assert decode(frames).to_event().hits.equals(ev.hits)


def test_encode_converts_dtypes(rng: np.random.Generator) -> None:
    trk = random_tracks(rng, 6, 2)  # int32 offsets, int64 hit_index
    reply = decode(encode_tracks(0, 0, np.arange(6, dtype=np.int32), trk)).to_reply()
    assert reply.offsets.dtype == np.dtype("<i8")
    assert reply.hit_id.dtype == np.dtype("<i8")


def test_huge_declared_length_allocates_nothing(hits: list[Any]) -> None:
    header = msgpack.unpackb(hits[0])
    for c in header["columns"]:
        c[2] = 2**62
    with pytest.raises(WireError) as e:
        decode([msgpack.packb(header), *hits[1:]], limits=Limits(max_hits=2**63))
    assert e.value.reason == "buffer_length"


# --------------------------------------------------------------------------- reasons


def _cases() -> list[tuple[str, str, Callable[..., Any]]]:
    """(reason, id, f(hits, tracks, truth) -> frames or (frames, limits))."""
    big = [["c", "<f4", 0]] * 65
    nan = np.array([0.0, np.nan], np.float32)
    error = encode_tracks(1, 2, np.arange(3), None, status="error", reason="x")
    return [
        ("bad_frame", "not_iterable", lambda h, t, u: 42),
        ("bad_frame", "str_frame", lambda h, t, u: [h[0], "text", *h[2:]]),
        ("bad_frame", "none_frame", lambda h, t, u: [h[0], None, *h[2:]]),
        ("bad_frame", "non_contiguous", lambda h, t, u: [memoryview(bytes(h[0]) * 2)[::2]]),
        ("frame_count", "empty", lambda h, t, u: []),
        ("frame_count", "missing", lambda h, t, u: h[:-1]),
        ("frame_count", "extra", lambda h, t, u: [*h, b""]),
        ("frame_count", "too_many", lambda h, t, u: [h[0]] * 100),
        # counted before the header is read: 66 frames of a bad one (64 columns at most)
        ("frame_count", "too_many_bad_header", lambda h, t, u: [b"\xc1"] * 66),
        # 7 columns, 8 frames, 9 with the extra one: past the limit, not one frame ignored
        ("frame_count", "extra_at_limit", lambda h, t, u: ([*h, b""], Limits(max_columns=7))),
        ("header_too_large", "big", lambda h, t, u: [b"\x00" * (64 * 1024 + 1)]),
        ("header_too_large", "limit", lambda h, t, u: (h, Limits(max_header_bytes=10))),
        ("not_msgpack", "garbage", lambda h, t, u: [b"\xc1", *h[1:]]),
        ("not_msgpack", "trailing", lambda h, t, u: [bytes(h[0]) + b"\x00", *h[1:]]),
        ("not_msgpack", "truncated", lambda h, t, u: [bytes(h[0])[:-3], *h[1:]]),
        ("not_msgpack", "empty", lambda h, t, u: [b"", *h[1:]]),
        ("not_msgpack", "bad_utf8", lambda h, t, u: [b"\xa1\xff"]),
        ("bad_header", "not_map", lambda h, t, u: [msgpack.packb([1, 2]), *h[1:]]),
        ("bad_header", "big_array", lambda h, t, u: [b"\xdd\xff\xff\xff\xff"]),
        ("bad_header", "ext", lambda h, t, u: [msgpack.packb(msgpack.ExtType(1, b"x"))]),
        ("bad_header", "missing_run", lambda h, t, u: patch(h, run=DROP)),
        ("bad_header", "unknown_key", lambda h, t, u: patch(h, extra=1)),
        ("bad_header", "int_key", lambda h, t, u: [b"\x81\x01\x02", *h[1:]]),
        (
            "bad_header",
            "bytes_key",
            lambda h, t, u: [msgpack.packb({**msgpack.unpackb(h[0]), b"run2": 1}), *h[1:]],
        ),
        ("bad_header", "negative_run", lambda h, t, u: patch(h, run=-1)),
        ("bad_header", "run_2_63", lambda h, t, u: patch(h, run=2**63)),
        ("bad_header", "msg_id_2_63", lambda h, t, u: patch(h, msg_id=2**63)),
        ("bad_header", "truth_msg_id", lambda h, t, u: patch(u, msg_id=1)),
        ("bad_header", "bool_event", lambda h, t, u: patch(h, event=True)),
        ("bad_header", "float_t_send", lambda h, t, u: patch(h, t_send_ns=1.0)),
        ("bad_header", "nan_deadline", lambda h, t, u: patch(h, deadline_ms=float("nan"))),
        ("bad_header", "zero_deadline", lambda h, t, u: patch(h, deadline_ms=0)),
        ("bad_header", "inf_deadline", lambda h, t, u: patch(h, deadline_ms=float("inf"))),
        ("bad_header", "str_deadline", lambda h, t, u: patch(h, deadline_ms="5")),
        ("bad_header", "columns_map", lambda h, t, u: patch(h, columns={})),
        ("bad_header", "column_pair", lambda h, t, u: patch(h, columns=[["hit_id", "<i8"]])),
        (
            "bad_header",
            "column_of_four",
            lambda h, t, u: patch(h, columns=[[*c, 0] for c in columns(h)]),
        ),
        (
            "bad_header",
            "column_name_type",
            lambda h, t, u: patch(h, columns=[[i, d, n] for i, (_, d, n) in enumerate(columns(h))]),
        ),
        ("bad_header", "deadline_on_tracks", lambda h, t, u: patch(t, deadline_ms=1.0)),
        ("bad_header", "status", lambda h, t, u: patch(t, status="fine")),
        ("bad_header", "status_type", lambda h, t, u: patch(t, status=[1])),
        ("bad_header", "status_with_reason", lambda h, t, u: patch(t, status="fine", reason="x")),
        ("bad_header", "reason_when_ok", lambda h, t, u: patch(t, reason="x")),
        ("bad_header", "no_reason_error", lambda h, t, u: patch(t, status="error")),
        ("bad_header", "empty_reason_error", lambda h, t, u: patch(error, reason="")),
        ("bad_header", "reason_type", lambda h, t, u: patch(error, reason=5)),
        ("bad_header", "error_with_tracks", lambda h, t, u: patch(t, status="error", reason="x")),
        (
            "bad_header",
            "error_with_one_track",
            lambda h, t, u: patch(
                encode_tracks(1, 2, np.arange(3), random_tracks(np.random.default_rng(0), 3, 1)),
                status="error",
                reason="x",
            ),
        ),
        ("bad_header", "timings", lambda h, t, u: patch(t, timings={"a": -1.0})),
        ("bad_header", "timings_bool", lambda h, t, u: patch(t, timings={"a": True})),
        ("bad_header", "timings_bytes_key", lambda h, t, u: patch(t, timings={b"a": 0.5})),
        (
            "bad_header",
            "timings_map_too_long",
            lambda h, t, u: patch(t, timings={f"s{k}": 0.0 for k in range(65)}),
        ),
        ("bad_header", "tracks_negative_msg_id", lambda h, t, u: patch(t, msg_id=-1)),
        ("bad_header", "v1_hits_with_msg_id", lambda h, t, u: patch(h, version=1, msg_id=3)),
        (
            "bad_column",
            "negative_length",
            lambda h, t, u: patch(h, columns=[[n, d, -1] for n, d, _ in columns(h)]),
        ),
        (
            "bad_column",
            "length_2_63",
            lambda h, t, u: (
                patch(h, columns=[[n, d, 2**63] for n, d, _ in columns(h)]),
                Limits(max_hits=2**64),
            ),
        ),
        ("bad_header", "timings_type", lambda h, t, u: patch(t, timings=[])),
        ("bad_schema", "other", lambda h, t, u: patch(h, schema="other")),
        ("bad_schema", "missing", lambda h, t, u: patch(h, schema=DROP)),
        ("bad_version", "seven", lambda h, t, u: patch(h, version=7)),
        ("bad_version", "zero", lambda h, t, u: patch(h, version=0)),
        ("bad_version", "str", lambda h, t, u: patch(h, version="1")),
        ("bad_version", "float", lambda h, t, u: patch(h, version=1.0)),
        # nested 1000 deep (msgpack allows 1023): its repr, in the error, passed Python's
        # recursion limit (RecursionError, the daemon's reply "internal")
        ("bad_version", "deep", lambda h, t, u: [_deep(h[0], "version"), *h[1:]]),
        ("bad_header", "deep_run", lambda h, t, u: [_deep(h[0], "run"), *h[1:]]),
        # deeper than msgpack's 1023 levels: well-formed still, not "not_msgpack"
        ("bad_header", "deeper", lambda h, t, u: [_deep(h[0], "run", 1100), *h[1:]]),
        ("bad_kind", "unknown", lambda h, t, u: patch(h, kind="photons")),
        ("bad_kind", "type", lambda h, t, u: patch(h, kind=[1])),
        ("bad_column", "order", lambda h, t, u: patch(h, columns=columns(h)[::-1])),
        ("bad_column", "missing", lambda h, t, u: patch(h, columns=columns(h)[:-1])[:-1]),
        ("bad_header", "too_many_columns", lambda h, t, u: patch(h, columns=big)),
        ("bad_column", "lengths", lambda h, t, u: with_column(h, "x", np.zeros(3, "<f4"))),
        (
            "bad_column",
            "particle_lengths",
            lambda h, t, u: with_column(u, "particle.q", np.zeros(30, "<i4")),
        ),
        ("bad_column", "track_params", lambda h, t, u: with_column(t, "chi2", np.zeros(30, "<f4"))),
        (
            "bad_column",
            "offsets_vs_params",  # two tracks' offsets, three tracks' parameters
            lambda h, t, u: with_column(t, "offsets", np.array([0, 5, 10])),
        ),
        ("bad_dtype", "big_endian", lambda h, t, u: with_column(h, "x", np.zeros(10, ">f4"))),
        (  # a narrower dtype too must be little-endian
            "bad_dtype",
            "big_endian_narrow",
            lambda h, t, u: patch(
                with_column(h, "hit_id", np.arange(1, 11, dtype=">i8")), version=5
            ),
        ),
        ("bad_dtype", "f8", lambda h, t, u: with_column(h, "x", np.zeros(10, "<f8"))),
        ("bad_dtype", "object", lambda h, t, u: with_column(h, "x", np.zeros(10), "O")),
        ("bad_dtype", "native_name", lambda h, t, u: with_column(h, "x", np.zeros(10), "f")),
        # narrower integer dtypes: only from version 5, only lossless, only for integers
        ("bad_dtype", "narrow_v2", lambda h, t, u: with_column(h, "layer_id", np.zeros(10, "u1"))),
        (
            "bad_dtype",
            "narrow_unsafe",
            lambda h, t, u: patch(with_column(h, "layer_id", np.zeros(10, "<u4")), version=5),
        ),
        (
            "bad_dtype",
            "narrow_u8_for_i8",
            lambda h, t, u: patch(with_column(h, "hit_id", np.arange(10, dtype="<u8")), version=5),
        ),
        (
            "bad_dtype",
            "narrow_float",
            lambda h, t, u: patch(with_column(h, "x", np.zeros(10, "<f2")), version=5),
        ),
        (
            "bad_dtype",
            "int_for_float",
            lambda h, t, u: patch(with_column(h, "x", np.zeros(10, "|u1")), version=5),
        ),
        ("buffer_length", "short", lambda h, t, u: [*h[:-1], bytes(h[-1])[:-1]]),
        ("buffer_length", "long", lambda h, t, u: [*h[:-1], bytes(h[-1]) + b"\x00"]),
        ("too_many_hits", "hits", lambda h, t, u: (h, Limits(max_hits=9))),
        ("too_many_hits", "truth", lambda h, t, u: (u, Limits(max_hits=9))),
        ("too_many_hits", "track_hits", lambda h, t, u: (t, Limits(max_hits=9))),
        ("too_many_tracks", "tracks", lambda h, t, u: (t, Limits(max_tracks=2))),
        ("too_many_particles", "truth", lambda h, t, u: (u, Limits(max_particles=0))),
        ("non_finite", "nan_x", lambda h, t, u: with_column(h, "x", np.resize(nan, 10))),
        ("non_finite", "nan_y", lambda h, t, u: with_column(h, "y", np.resize(nan, 10))),
        ("non_finite", "inf_z", lambda h, t, u: with_column(h, "z", np.full(10, np.inf, "<f4"))),
        (
            "non_finite",
            "particle_px",
            lambda h, t, u: with_column(u, "particle.px", np.full(1, np.nan, "<f4")),
        ),
        ("id_range", "hit_id", lambda h, t, u: with_column(h, "hit_id", -np.arange(10))),
        ("id_range", "hit_id_rising", lambda h, t, u: with_column(h, "hit_id", np.arange(-1, 9))),
        ("id_range", "layer", lambda h, t, u: with_column(h, "layer_id", np.full(10, -1, "<i4"))),
        ("id_range", "volume", lambda h, t, u: with_column(h, "volume_id", np.full(10, -2, "<i4"))),
        ("id_range", "module", lambda h, t, u: with_column(h, "module_id", np.full(10, -3, "<i4"))),
        (
            "id_range",
            "one_module",
            lambda h, t, u: with_column(h, "module_id", np.arange(-1, 9, dtype="<i4")),
        ),
        (
            "id_range",
            "hit_particle",
            lambda h, t, u: with_column(u, "hit.particle_id", np.full(10, -1)),
        ),
        ("id_range", "track_hit", lambda h, t, u: with_column(t, "hit_id", np.full(10, -5))),
        (
            "id_range",
            "particle",
            lambda h, t, u: with_column(u, "particle.particle_id", np.full(1, -1)),
        ),
        ("duplicate_hit_id", "dup", lambda h, t, u: with_column(h, "hit_id", np.ones(10, "<i8"))),
        (
            "duplicate_hit_id",
            "rising_then_repeated",
            lambda h, t, u: with_column(h, "hit_id", np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 9])),
        ),
        (
            "duplicate_particle_id",
            "repeat_of_a_larger_id",
            lambda h, t, u: with_column(
                encode_truth(1, 2, truth_of(random_event(np.random.default_rng(5), 30))),
                "particle.particle_id",
                np.array([5, 1, 5]),
            ),
        ),
        (
            "duplicate_particle_id",
            "dup",
            lambda h, t, u: with_column(
                encode_truth(1, 2, truth_of(random_event(np.random.default_rng(5), 30))),
                "particle.particle_id",
                np.full(3, 7),
            ),
        ),
        (
            "unknown_particle",
            "hit",
            lambda h, t, u: with_column(u, "hit.particle_id", np.full(10, 12345)),
        ),
        (  # only 0 is noise: particle 1 must be in the table too
            "unknown_particle",
            "particle_1",
            lambda h, t, u: with_column(u, "hit.particle_id", np.r_[np.zeros(9, "<i8"), 1]),
        ),
        (
            "non_finite",
            "truth_weight",
            lambda h, t, u: with_column(u, "hit.weight", np.full(10, np.nan, "<f4")),
        ),
        (
            "negative_weight",
            "one_hit",
            lambda h, t, u: with_column(u, "hit.weight", np.r_[np.zeros(9), -1e-3].astype("<f4")),
        ),
        ("bad_offsets", "empty", lambda h, t, u: with_column(t, "offsets", np.zeros(0, "<i8"))),
        (
            "bad_offsets",
            "start",
            lambda h, t, u: with_column(t, "offsets", np.array([1, 2, 3, 10])),
        ),
        ("bad_offsets", "end", lambda h, t, u: with_column(t, "offsets", np.array([0, 2, 3, 9]))),
        (
            "bad_offsets",
            "order",
            lambda h, t, u: with_column(t, "offsets", np.array([0, 5, 3, 10])),
        ),
    ]


CASES = _cases()


def test_every_reason_has_a_case() -> None:
    assert {c[0] for c in CASES} == REASONS


@pytest.mark.parametrize(
    ("reason", "build"), [(c[0], c[2]) for c in CASES], ids=[f"{c[0]}-{c[1]}" for c in CASES]
)
def test_reason(
    reason: str, build: Callable[..., Any], hits: list[Any], tracks: list[Any], truth: list[Any]
) -> None:
    built = build(hits, tracks, truth)
    frames, limits = built if isinstance(built, tuple) else (built, Limits())
    with pytest.raises(WireError) as e:
        decode(frames, limits=limits)
    assert e.value.reason == reason, str(e.value)
    assert str(e.value).startswith(reason + ": ")
    assert isinstance(e.value, ValueError)


def test_limits_are_inclusive(hits: list[Any], tracks: list[Any]) -> None:
    """A message exactly at a limit is accepted; one past it is refused (the cases above)."""
    decode(hits, limits=Limits(max_header_bytes=len(bytes(hits[0])), max_hits=10, max_columns=7))
    decode(tracks, limits=Limits(max_tracks=3, max_hits=10))
    assert decode(patch(tracks, timings={"graph": 0.0})).to_reply().timings == {"graph": 0.0}


def test_the_edges_of_every_range_are_accepted(rng: np.random.Generator, truth: list[Any]) -> None:
    """The largest run, event, t_send_ns and msg_id [0, 2**63) admits; a truth weight of 0
    (TrackML's noise hits have it); a model threshold of 0 (the daemon's [0, 1) admits it)."""
    big = 2**63 - 1
    msg = decode(encode_hits(random_event(rng, 5, run=big, event=big), t_send_ns=big, msg_id=big))
    assert (msg.run, msg.event, msg.t_send_ns, msg.msg_id) == (big, big, big, big)
    got = decode(with_column(truth, "hit.weight", np.zeros(10, "<f4"))).to_truth()
    assert (got.hits.weight == 0).all()
    model = ModelId("m", "h", 0.0)
    frames = encode_tracks(1, 2, np.arange(30), random_tracks(rng, 30, 2), model=model)
    assert decode(frames).to_reply().model == model


def test_numpy_numbers_travel_as_plain_numbers(rng: np.random.Generator) -> None:
    """Timings and a threshold computed with NumPy (float32, int) are sent as msgpack floats."""
    tr = random_tracks(rng, 30, 2)
    timings: dict[str, Any] = {"gnn": np.float32(0.25), "io": 1}
    model = ModelId("m", "h", np.float32(0.5))  # type: ignore[arg-type]
    frames = encode_tracks(1, 2, np.arange(30), tr, timings=timings, model=model)
    reply = decode(frames).to_reply()
    assert reply.timings == {"gnn": 0.25, "io": 1.0}
    assert all(type(v) is float for v in reply.timings.values())
    assert reply.model == ModelId("m", "h", 0.5)


def test_no_frame_within_the_limits_is_longer_than_max_frame_bytes(
    rng: np.random.Generator, hits: list[Any]
) -> None:
    """max_frame_bytes is a receiver's ZMQ_MAXMSGSIZE: the header, or the longest column of
    any kind (here the particles of a truth message) within the limits, must pass it."""
    t = truth_of(random_event(rng, 10_000))  # 1,000 particles
    few = HitTruth.from_columns({k: v[:2] for k, v in t.hits.columns().items()})
    truth = encode_truth(1, 2, Truth(few, t.particles))
    for frames, limits in [
        (hits, Limits(len(bytes(hits[0])), max_hits=10, max_tracks=0, max_particles=0)),
        (truth, Limits(len(bytes(truth[0])), max_hits=2, max_tracks=0, max_particles=1000)),
    ]:
        decode(frames, limits=limits)  # within them
        assert max(len(bytes(f)) for f in frames) <= limits.max_frame_bytes


def test_a_peek_reads_no_further_than_max_header_bytes(hits: list[Any]) -> None:
    """A header over the limit is read up to it: what lies past it is not read (nor held)."""
    header = msgpack.unpackb(hits[0])
    pad = "x" * DEFAULT_LIMITS.max_header_bytes
    assert peek_identity([msgpack.packb({**header, "pad": pad})]) == (7, 42)
    assert peek_identity([msgpack.packb({"pad": pad, **header})]) is None


def test_default_limits_statuses_and_reasons_are_the_documented_ones() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "wire-protocol.md").read_text()
    limits = dict(re.findall(r"^\| `(max_\w+)` +\| ([\d ]+?) +\|", doc, re.M))
    assert {k: int(v.replace(" ", "")) for k, v in limits.items()} == asdict(Limits())
    statuses = re.search(r"^\| `tracks` \| `status` +\| (.*?) \|", doc, re.M)
    assert statuses is not None and set(re.findall(r'"(\w+)"', statuses[1])) == STATUSES
    table = doc[doc.index("| reason ") :].split("\n\n")[0]
    assert set(re.findall(r"^\| `(\w+)` +\| ", table, re.M)) == REASONS
    assert Limits(1, 1, 1, 10, 1, 1).max_frame_bytes == 8 * 11  # a reply's 11 offsets


def test_conversion_to_wrong_kind(hits: list[Any], tracks: list[Any]) -> None:
    with pytest.raises(WireError, match="bad_kind"):
        decode(tracks).to_event()
    with pytest.raises(WireError, match="bad_kind"):
        decode(hits).to_truth()
    with pytest.raises(WireError, match="bad_kind"):
        decode(hits).to_reply()


# --------------------------------------------------------------------------- peek_identity


def test_peek_msg_id(hits: list[Any]) -> None:
    assert peek_msg_id(patch(hits, msg_id=7)) == 7
    assert peek_msg_id(patch(hits, msg_id=0)) == 0
    for bad in (hits, patch(hits, msg_id=-1), patch(hits, msg_id=2**63), patch(hits, msg_id="7")):
        assert peek_msg_id(bad) is None
    assert peek_msg_id([b"\xc1"]) is None and peek_msg_id([]) is None  # no header at all


def test_peek_identity(hits: list[Any]) -> None:
    assert peek_identity(hits) == (7, 42)
    assert peek_identity(patch(hits, run=0, event=0)) == (0, 0)
    assert peek_identity(patch(hits, version=99, kind="?")) == (7, 42)
    assert peek_identity(patch(hits, columns=None)[:1]) == (7, 42)
    # a header past max_header_bytes (decode: header_too_large) named its event before it
    assert peek_identity(patch(hits, note="x" * 70_000)) == (7, 42)
    for bad in (
        [],
        42,
        [b"\xc1"],
        [msgpack.packb([7, 42])],
        patch(hits, run=-1),
        patch(hits, event=-1),
        patch(hits, run=2**63),
        patch(hits, event=2**63),
        patch(hits, event="42"),
        patch(hits, run=DROP),
        [b"\x00" * 70_000],
        ["text"],
    ):
        assert peek_identity(bad) is None  # type: ignore[arg-type]  # 42: deliberately wrong


def _deep(header: bytes, key: str, depth: int = 1000) -> bytes:
    """``header`` with ``key``'s value a one-element array nested ``depth`` deep."""
    items = msgpack.unpackb(header).items()
    deep = b"\x91" * depth + b"\x01"
    return _raw_map([(msgpack.packb(k), deep if k == key else msgpack.packb(v)) for k, v in items])


def _raw_map(items: list[tuple[bytes, bytes]]) -> bytes:
    """A msgpack map of packed (key, value) pairs, in order (a key of any type)."""
    head = (
        bytes([0x80 | len(items)]) if len(items) < 16 else b"\xde" + len(items).to_bytes(2, "big")
    )
    return head + b"".join(k + v for k, v in items)


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        ([(msgpack.packb("note"), b"\xa1\xff")], "text that is not UTF-8"),
        ([(msgpack.packb(f"k{i}"), msgpack.packb(i)) for i in range(60)], "over 64 entries"),
        ([(msgpack.packb(1), msgpack.packb(2))], "an integer key"),
        ([(msgpack.packb("note"), msgpack.packb(list(range(65))))], "an array over 64"),
        ([(msgpack.packb((1, 2)), msgpack.packb(2))], "an array as a key"),
        ([(msgpack.packb("version"), msgpack.packb({1: 2}))], "a map with an integer key"),
        ([(b"\xa2\xff\xfe", msgpack.packb(1))], "a key that is not UTF-8"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_a_header_decode_refuses_still_names_its_event(
    hits: list[Any], extra: list[tuple[bytes, bytes]], why: str
) -> None:
    """The refusal is answered to the event the header names (it was unidentified, and the
    event had no reply), whatever else in the header decode refuses."""
    header = msgpack.unpackb(hits[0])
    items = [(msgpack.packb(k), msgpack.packb(v)) for k, v in header.items()]
    for entries in (items + extra, extra + items):  # after the identity, and before it
        frames = [_raw_map(entries), *hits[1:]]
        with pytest.raises(WireError):
            decode(frames)
        assert peek_identity(frames) == (7, 42), why


def test_a_long_version_or_key_before_the_identity_hides_nothing(hits: list[Any]) -> None:
    """Encoders write ``version`` and ``kind`` before ``run`` and ``event``: a bad one of any
    length (or a long unknown key first) is refused, answered to the event it names."""
    for bad in (patch(hits, version="x" * 65), patch(hits, kind="k" * 65)):
        with pytest.raises(WireError):
            decode(bad)
        assert peek_identity(bad) == (7, 42)
    header = msgpack.unpackb(hits[0])
    long_key = [(msgpack.packb("n" * 65), msgpack.packb(1))]
    items = [(msgpack.packb(k), msgpack.packb(v)) for k, v in header.items()]
    assert peek_identity([_raw_map(long_key + items), *hits[1:]]) == (7, 42)


def test_messages_name_the_problem_plainly(hits: list[Any]) -> None:
    def message(frames: list[Any]) -> str:
        with pytest.raises(WireError) as e:
            decode(frames)
        return str(e.value)

    assert message(patch(hits, extra=1)) == "bad_header: hits header has unknown key 'extra'"
    # another kind's key of a later version is unknown here, not "of version 6"
    assert message(patch(hits, model=1)) == "bad_header: hits header has unknown key 'model'"
    assert message(patch(hits, run=DROP, t_send_ns=DROP, b=2, a=1)) == (
        "bad_header: hits header lacks 'run', 't_send_ns' and has unknown keys 'a', 'b'"
    )
    assert message([b"\xc1", *hits[1:]]) == (
        "not_msgpack: frame 0 (1 bytes) is not one msgpack object: invalid format"
    )
    assert message([b"", *hits[1:]]).startswith("not_msgpack: frame 0 (0 bytes) is not one")


def _as_version(frames: list[Any], version: int) -> list[Any]:
    """A current-version message's frames written as ``version``: the columns and header keys
    that version has (the sender's own columns, not copies)."""
    header = msgpack.unpackb(frames[0])
    kind = header["kind"]
    keep = columns_of(kind, version)
    required, optional = keys_of(kind, version)
    header = {k: v for k, v in header.items() if k in COMMON_KEYS | required | optional}
    header["version"] = version
    at = [i for i, c in enumerate(header["columns"]) if c[0] in keep]
    header["columns"] = [header["columns"][i] for i in at]
    return [msgpack.packb(header), *(frames[1 + i] for i in at)]


def test_version_1_is_still_decoded(rng: np.random.Generator) -> None:
    # A version 1 reply has no ndf column (chi2 was per ndf), no standard errors and no
    # msg_id: ndf comes back -1, the errors NaN.
    tr = random_tracks(rng, 30, 4)
    v1 = _as_version(encode_tracks(1, 2, np.arange(30), tr, msg_id=5, beam_line=(1, 2)), 1)
    assert "ndf" not in [c[0] for c in msgpack.unpackb(v1[0])["columns"]]
    reply = decode(v1).to_reply()
    assert reply.msg_id is None and reply.beam_line is None and len(reply) == 4
    assert (reply.params["ndf"] == -1).all()
    assert np.isnan(reply.params["sigma_d0"]).all()
    assert {len(v) for v in reply.params.values()} == {4}  # the filled ones too: one a track
    assert not reply.params["ndf"].flags.writeable  # read-only, as every decoded column
    np.testing.assert_array_equal(reply.params["chi2"], tr.params["chi2"])
    # Keys that version 2 added are not version 1's.
    header = msgpack.unpackb(v1[0])
    later = "bad_header: tracks header has 'msg_id', a key of version 2 and later"
    with pytest.raises(WireError, match=later):  # not "unknown": a peer half upgraded
        decode([msgpack.packb({**header, "msg_id": 5}), *v1[1:]])
    with pytest.raises(WireError, match=r"tracks header has unknown key 'note'$"):
        decode([msgpack.packb({**header, "note": 5}), *v1[1:]])


def test_version_2_is_still_decoded(rng: np.random.Generator) -> None:
    # A version 2 reply has ndf and msg_id but no standard errors (NaN) and no beam_line.
    tr = random_tracks(rng, 30, 4)
    v2 = _as_version(encode_tracks(1, 2, np.arange(30), tr, msg_id=5, beam_line=(1, 2)), 2)
    reply = decode(v2).to_reply()
    assert reply.msg_id == 5 and reply.beam_line is None
    np.testing.assert_array_equal(reply.params["ndf"], tr.params["ndf"])
    for k in TRACK_PARAM_DTYPES:
        if k.startswith("sigma_"):
            assert np.isnan(reply.params[k]).all() and not reply.params[k].flags.writeable
            assert reply.params[k].dtype == np.dtype(TRACK_PARAM_DTYPES[k])
    header = msgpack.unpackb(v2[0])
    with pytest.raises(WireError, match="has 'beam_line', a key of version 3 and later"):
        decode([msgpack.packb({**header, "beam_line": [1.0, 2.0]}), *v2[1:]])
    # A version 2 message with version 4's columns is refused, naming version 2's.
    v3 = encode_tracks(1, 2, np.arange(30), tr)
    with pytest.raises(WireError, match="bad_column"):
        decode([msgpack.packb({**msgpack.unpackb(v3[0]), "version": 2}), *v3[1:]])


def test_version_3_is_still_decoded(rng: np.random.Generator) -> None:
    # A version 3 reply has the standard errors and the beam line but no correlations (NaN).
    tr = random_tracks(rng, 30, 4)
    v3 = _as_version(encode_tracks(1, 2, np.arange(30), tr, msg_id=5, beam_line=(1, 2)), 3)
    reply = decode(v3).to_reply()
    assert reply.msg_id == 5 and reply.beam_line == (1.0, 2.0)
    np.testing.assert_array_equal(reply.params["sigma_d0"], tr.params["sigma_d0"])
    for k in TRACK_PARAM_DTYPES:
        if k.startswith("corr_"):
            assert np.isnan(reply.params[k]).all() and not reply.params[k].flags.writeable
            assert reply.params[k].dtype == np.dtype(TRACK_PARAM_DTYPES[k])
    # A version 3 message with version 4's columns is refused.
    v4 = encode_tracks(1, 2, np.arange(30), tr)
    with pytest.raises(WireError, match="bad_column"):
        decode([msgpack.packb({**msgpack.unpackb(v4[0]), "version": 3}), *v4[1:]])


@pytest.mark.parametrize("version", sorted(SUPPORTED_VERSIONS))
def test_hits_and_truth_of_every_supported_version_are_decoded(
    rng: np.random.Generator, version: int
) -> None:
    """Their layouts have not changed since versions 2 and 1: any supported version's
    header over them decodes to the same event (version 1's hits without a msg_id)."""
    ev = random_event(rng, 20)
    hits = encode_hits(ev) if version == 1 else encode_hits(ev, msg_id=9)
    got = decode(patch(hits, version=version))
    assert got.version == version and got.msg_id == (None if version == 1 else 9)
    for k in Hits.DTYPES:
        np.testing.assert_array_equal(getattr(got.to_event().hits, k), getattr(ev.hits, k))
    truth = decode(patch(encode_truth(1, 2, truth_of(ev)), version=version)).to_truth()
    np.testing.assert_array_equal(truth.hits.particle_id, truth_of(ev).hits.particle_id)
    np.testing.assert_array_equal(truth.particles.px, truth_of(ev).particles.px)


def test_each_kind_is_written_in_the_oldest_version_that_carries_it(
    rng: np.random.Generator,
) -> None:
    """Hits have not changed since version 2 and truth since version 1: a producer of this
    version feeds a daemon that decodes only version 2; replies need version 6's keys."""
    assert ENCODED_VERSIONS == {"hits": 2, "truth": 1, "tracks": 6}
    ev = random_event(rng, 5)
    hits = encode_hits(ev, msg_id=4, deadline_ms=2.0)
    assert msgpack.unpackb(hits[0])["version"] == 2 and decode(hits).msg_id == 4
    assert msgpack.unpackb(encode_tracks(1, 2, [], None)[0])["version"] == 6
    # A resend keeps a later version it was written with, and raises version 1 to 2.
    assert decode(with_msg_id(patch(hits, version=3), 5)).version == 3
    assert decode(with_msg_id(patch(hits, version=1, msg_id=DROP), 5)).version == 2


def test_compact_hits_travel_in_narrow_dtypes_and_decode_to_the_same_event(
    rng: np.random.Generator,
) -> None:
    ev = random_event(rng, 1000)  # hit ids up to 10,010, detector ids up to 19
    frames = encode_hits(ev, msg_id=3, deadline_ms=2.0, compact=True)
    header = msgpack.unpackb(frames[0])
    assert header["version"] == 5
    assert [c[1] for c in header["columns"]] == ["<u2", "<f4", "<f4", "<f4", "|u1", "|u1", "|u1"]
    assert sum(len(f) for f in frames[1:]) == 17 * len(ev.hits)  # 32 bytes a hit when wide
    msg = decode([bytes(f) for f in frames])
    assert (msg.msg_id, msg.deadline_ms) == (3, 2.0)
    assert msg.to_event().hits.equals(ev.hits)  # Hits checks the schema's dtypes
    assert not any(c.flags.writeable for c in msg.columns.values())
    assert decode(with_msg_id(frames, 4)).version == 5  # a resend stays compact
    # Only columns that fit a smaller dtype narrow; when none does, the message is version 2.
    wide = Hits.from_columns({**ev.hits.columns(), "hit_id": ev.hits.hit_id + 2**40})
    wide_ids = encode_hits(Event(1, 0, wide), compact=True)
    assert columns(wide_ids)[0][1] == "<i8"
    assert decode(wide_ids).to_event().hits.equals(wide)
    negative = Hits.from_columns({**ev.hits.columns(), "volume_id": ev.hits.volume_id - 1})
    assert negative.volume_id.min() == -1  # not an id: left wide, and refused by the decoder
    assert columns(encode_hits(Event(1, 0, negative), compact=True))[4][1] == "<i4"
    ids = {k: [2**31 - 1] for k in ("volume_id", "layer_id", "module_id")}
    one = Hits.from_columns({"hit_id": [2**40], "x": [1.0], "y": [2.0], "z": [3.0], **ids})
    frames = encode_hits(Event(1, 0, one), compact=True)
    assert msgpack.unpackb(frames[0])["version"] == 2
    assert decode(frames).to_event().hits.equals(one)
    # Float columns never narrow, not even zeros (whose bits would fit a byte); nor do empty ones.
    zero = Hits.from_columns({**ev.hits.columns(), **{k: np.zeros(len(ev.hits)) for k in "xyz"}})
    at_zero = encode_hits(Event(1, 0, zero), compact=True)
    assert [c[1] for c in columns(at_zero)[1:4]] == ["<f4"] * 3
    empty = random_event(rng, 0).hits
    assert decode(encode_hits(Event(1, 0, empty), compact=True)).to_event().hits.equals(empty)


def test_any_kind_s_integer_columns_may_be_narrow_from_version_5(rng: np.random.Generator) -> None:
    tr = random_tracks(rng, 30, 4)
    frames = encode_tracks(1, 2, np.arange(30), tr)
    narrow = with_column(frames, "charge", tr.params["charge"].astype("|i1"))
    with pytest.raises(WireError, match=r"bad_dtype: column 'charge' must be <i4 or \(version 5\)"):
        decode(patch(narrow, version=4))
    reply = decode(patch(narrow, version=5)).to_reply()
    assert reply.params["charge"].dtype == np.dtype("<i4")
    np.testing.assert_array_equal(reply.params["charge"], tr.params["charge"])


def test_beam_line_travels_and_is_checked(rng: np.random.Generator) -> None:
    tr = random_tracks(rng, 30, 4)
    reply = decode(encode_tracks(1, 2, np.arange(30), tr, beam_line=(0.5, -1.25))).to_reply()
    assert reply.beam_line == (0.5, -1.25)
    assert decode(encode_tracks(1, 2, np.arange(30), tr)).to_reply().beam_line is None
    frames = encode_tracks(1, 2, np.arange(30), tr, beam_line=(0.5, -1.25))
    for bad in ([0.5], [0.5, "x"], [0.5, float("nan")], [0.5, True], {"x": 0.5}, [1, 2, 3]):
        with pytest.raises(WireError, match="bad_header: beam_line must be"):
            decode(patch(frames, beam_line=bad))
    assert decode(patch(frames, beam_line=[1, -2])).to_reply().beam_line == (1.0, -2.0)


def test_the_model_travels_and_is_checked(rng: np.random.Generator) -> None:
    """Version 6: the name, hash and threshold of the model that made a reply's tracks;
    version 5 and older have no such key (a reply with it is written in version 6)."""
    from streamtrk.wire import ModelId

    tr = random_tracks(rng, 30, 4)
    model = ModelId("in-h32-s6-v2", "0123456789abcdef", 0.5)
    frames = encode_tracks(1, 2, np.arange(30), tr, model=model)
    assert decode(frames).to_reply().model == model
    assert decode(encode_tracks(1, 2, np.arange(30), tr)).to_reply().model is None
    assert decode(patch(frames, model={**model.__dict__, "threshold": 1})).to_reply().model == (
        ModelId(model.name, model.hash, 1.0)
    )
    for bad in (
        "in-h32",
        {"name": "m", "hash": "h"},
        {"name": "m", "hash": "h", "threshold": 0.5, "path": "/m"},
        {"name": 1, "hash": "h", "threshold": 0.5},
        {"name": "m", "hash": b"h", "threshold": 0.5},
        {"name": "m", "hash": "h", "threshold": float("nan")},
        {"name": "m", "hash": "h", "threshold": 1.5},
        {"name": "m", "hash": "h", "threshold": True},
    ):
        with pytest.raises(WireError, match="bad_header: model must map name and hash"):
            decode(patch(frames, model=bad))
    v5 = _as_version(frames, 5)
    assert decode(v5).to_reply().model is None
    with pytest.raises(WireError, match="has 'model', a key of version 6 and later"):
        decode([msgpack.packb({**msgpack.unpackb(v5[0]), "model": model.__dict__}), *v5[1:]])


def test_header_keys_that_are_not_strings_are_a_bad_header(rng: np.random.Generator) -> None:
    """msgpack lets bin (bytes) map keys through its string-key check: a header whose keys
    are bytes is malformed, not a message of another schema."""
    frames = encode_hits(random_event(rng, 3))
    header = msgpack.unpackb(frames[0])
    as_bytes = msgpack.packb({k.encode(): v for k, v in header.items()}, use_bin_type=True)
    with pytest.raises(WireError, match=r"bad_header: header keys must be strings, got b'schema'"):
        decode([as_bytes, *frames[1:]])


def test_msg_id_travels_and_is_checked(rng: np.random.Generator) -> None:
    ev = random_event(rng, 5)
    msg = decode(encode_hits(ev, msg_id=2**40))
    assert msg.msg_id == 2**40
    assert decode(encode_hits(ev, msg_id=0)).msg_id == 0  # the range starts at 0
    assert decode(with_msg_id(encode_hits(ev), 7)).msg_id == 7
    # Sent again, stamped again: a recording's stamp is its producer's (0 when simulated).
    before = time.time_ns()
    assert decode(with_msg_id(encode_hits(ev, t_send_ns=0), 7)).t_send_ns >= before
    assert decode(with_msg_id(encode_hits(ev, t_send_ns=0), 7, t_send_ns=5)).t_send_ns == 5
    with pytest.raises(WireError, match="bad_header: t_send_ns must be an int"):
        with_msg_id(encode_hits(ev), 7, t_send_ns=-1)
    # A version 1 recording's hits, resent with an id by replay: decoded, the same hits.
    v1 = patch(encode_hits(ev), version=1)
    again = decode(with_msg_id(v1, 8))
    assert again.msg_id == 8 and again.to_event().hits.equals(ev.hits)
    with pytest.raises(WireError, match="msg_id must be an int"):
        decode(patch(encode_hits(ev), msg_id=-1))
    # The reply echoes it.
    reply = decode(encode_tracks(1, 2, np.arange(5), None, status="error", reason="x", msg_id=9))
    assert reply.to_reply().msg_id == 9 and reply.msg_id == 9


def test_only_a_hits_message_is_sent_again_with_an_id(truth: list[Any]) -> None:
    """``with_msg_id`` refuses with a WireError what is no hits message: a truth message
    (whose msg_id the decoder would refuse), frames that are no message at all."""
    with pytest.raises(WireError, match="bad_kind: expected a 'hits' message, got 'truth'"):
        with_msg_id(truth, 1)
    for frames, reason in (([], "frame_count"), ([b"\xc1"], "not_msgpack"), ([7], "bad_frame")):
        with pytest.raises(WireError, match=reason):
            with_msg_id(frames, 1)


@pytest.mark.parametrize(
    ("where", "value"),
    [("msg_id", 5.7), ("msg_id", "12"), ("run", 1.9), ("event", 2.5), ("t_send_ns", 1.9),
     ("t_send_ns", 2**64), ("t_send_ns", np.True_)],
)  # fmt: skip
def test_an_id_that_is_no_integer_is_refused_not_truncated(
    rng: np.random.Generator, where: str, value: Any
) -> None:
    """The encoders refuse what the decoder would: msg_ids 5.2 and 5.7 were both sent as 5
    (a reply matched to the wrong message), run 1.9 as run 1; and what msgpack cannot pack
    (an OverflowError, a TypeError escaped)."""
    hits = random_event(rng, 5).hits
    ids: dict[str, Any] = {"run": 1, "event": 2, "msg_id": 3, "t_send_ns": 4} | {where: value}
    refused = rf"bad_header: {where} must be an int in \[0, 2\*\*63\), got {value!r}"
    with pytest.raises(WireError, match=refused):
        encode_hits(Event(ids["run"], ids["event"], hits),
                    msg_id=ids["msg_id"], t_send_ns=ids["t_send_ns"])  # fmt: skip
    with pytest.raises(WireError, match=refused):
        encode_tracks(ids["run"], ids["event"], hits.hit_id, None, status="error", reason="x",
                      msg_id=ids["msg_id"], t_send_ns=ids["t_send_ns"])  # fmt: skip


def test_numpy_integers_are_ids(rng: np.random.Generator) -> None:
    ev = random_event(rng, 5)
    n: Any = np.int64(7)  # typed int: NumPy's are not int subclasses
    msg = decode(encode_hits(Event(n, n, ev.hits), msg_id=n, t_send_ns=n))
    assert (msg.run, msg.event, msg.msg_id, msg.header["t_send_ns"]) == (7, 7, 7, 7)
    assert decode(with_msg_id(encode_hits(ev), n + 2)).msg_id == 9
    with pytest.raises(WireError, match="bad_header: msg_id must be an int"):
        with_msg_id(encode_hits(ev), n + 2.5)
    single: Any = np.float32(2.5)
    assert decode(encode_hits(ev, deadline_ms=single)).deadline_ms == 2.5
    for header in ({}, {"version": None}, [1, 2]):  # no message's: a WireError, not KeyError
        with pytest.raises(WireError, match="bad_"):
            with_msg_id([msgpack.packb(header)], 9)


def test_a_peek_of_a_hostile_header_allocates_next_to_nothing(hits: list[Any]) -> None:
    """A 64 kB header of nested arrays each claiming 65,535 entries: msgpack builds every
    container it reads, so a peek that read them all held tens of MB and took tens of ms,
    two or three times a refused message; one that skips what it does not need holds
    nothing of them. The event it names is still read."""
    import tracemalloc

    header = msgpack.unpackb(hits[0])
    items = [(msgpack.packb(k), msgpack.packb(v)) for k, v in header.items()]
    nest = b"\xdd\x00\x00\xff\xff" * 1100  # array32 of 65,535, inside another, ...
    frame = _raw_map([*items, (msgpack.packb("note"), nest)])
    frame += b"\xc0" * (DEFAULT_LIMITS.max_header_bytes - len(frame))
    tracemalloc.start()
    try:
        found = peek_header([frame])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak
    assert found is not None and identity_of(found) == (7, 42)


def test_encode_tracks_refuses_an_error_reply_with_a_single_track(
    rng: np.random.Generator,
) -> None:
    """An error reply carries no tracks at all: one track is already one too many (the
    decoder refuses it, so the encoder must not send it)."""
    with pytest.raises(ValueError, match="an error reply carries no tracks"):
        encode_tracks(1, 2, np.arange(5), random_tracks(rng, 5, 1), status="error", reason="x")


def test_a_header_string_as_long_as_the_header_allows_is_accepted(
    rng: np.random.Generator,
) -> None:
    """Strings in a header are bounded only by max_header_bytes: an error reason of 60,000
    characters (a 64 KiB header) travels whole, from the encoder through the decoder."""
    reason = "r" * 60_000
    frames = encode_tracks(1, 2, np.arange(3), None, status="error", reason=reason)
    assert decode(frames).to_reply().reason == reason


def test_an_integer_dtype_on_a_float_column_is_not_offered_narrowing(hits: list[Any]) -> None:
    """Only integer columns may narrow: refusing an integer dtype for a float column names
    the column's dtype alone, not "a narrower integer dtype" (which would be refused too)."""
    bad = patch(with_column(hits, "x", np.zeros(10, "|u1")), version=5)
    with pytest.raises(WireError) as e:
        decode(bad)
    assert str(e.value) == "bad_dtype: column 'x' must be <f4, got |u1"


def test_a_resent_message_s_numpy_stamp_is_an_int(rng: np.random.Generator) -> None:
    """``with_msg_id`` takes a NumPy integer ``t_send_ns`` as ``encode_hits`` does (a
    recording's stamps read as NumPy integers): sent as the int, not refused."""
    ev: Event = random_event(rng, 5)
    stamp: Any = np.int64(1_700_000_000_000_000_000)
    assert decode(with_msg_id(encode_hits(ev), 3, t_send_ns=stamp)).header["t_send_ns"] == stamp
