"""Encode and strictly decode wire messages (schema v6, v1 to v5 still decoded).

A message is a list of ZeroMQ frames: frame 0 is a msgpack header map, frames 1..N are
raw little-endian column buffers in the order the header's ``columns`` lists them.
Encoding and decoding are zero-copy: encoders return ``memoryview`` s of the column
arrays, :func:`decode` returns read-only ``numpy.frombuffer`` views of the frames. The
exceptions are compact messages (version 5): ``encode_hits(..., compact=True)`` writes each
integer column of non-negative values in the smallest unsigned dtype that holds them, and
:func:`decode` widens such a column to the schema's dtype (a read-only copy).

:func:`decode` raises :class:`~streamtrk.wire.schema.WireError` for every malformed
input and never allocates memory in proportion to a number written in a header.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import operator
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypeGuard

import msgpack
import numpy as np

from streamtrk.event import (
    TRACK_PARAM_DTYPES,
    Event,
    Hits,
    HitTruth,
    Particles,
    Tracks,
    Truth,
)
from streamtrk.wire.schema import (
    ALLOWED_DTYPES,
    COLUMNS,
    COMMON_KEYS,
    DEFAULT_LIMITS,
    ENCODED_VERSIONS,
    KIND_KEYS,
    MAX_INT,
    NARROW_VERSION,
    SCHEMA,
    STATUSES,
    SUPPORTED_VERSIONS,
    Limits,
    WireError,
    columns_of,
    dtype_allowed,
    keys_of,
    version_adding,
)
from streamtrk.xp import index_of, to_host

OutFrame = bytes | memoryview
Spec = tuple[str, int, str]  # a column's declared dtype, length, and the schema's dtype
Frames = Iterable[Any]  # bytes, bytearray, memoryview, zmq.Frame or other buffers


# --------------------------------------------------------------------------- encoding


def _whole(value: Any) -> Any:
    """``value`` as an int where it is an integer (a NumPy one too); else ``value`` itself,
    for the header's checks to refuse as the decoder would (5.7 was sent as 5, and two
    messages' ids 5.2 and 5.7 as one)."""
    if isinstance(value, bool | np.bool_):
        return value
    try:
        return operator.index(value)
    except TypeError:
        return value


def _narrowest(a: np.ndarray) -> np.ndarray:
    """Integer ``a`` in the smallest unsigned dtype that holds its values, if they are all
    non-negative (ids) and one is smaller; else ``a`` itself. One pass: the largest value of
    ``a`` read as unsigned (a negative value reads as too large to narrow)."""
    if a.dtype.kind not in "iu" or not a.size:
        return a
    small = np.min_scalar_type(int(a.view(f"u{a.dtype.itemsize}").max()))
    return a.astype(small) if small.itemsize < a.dtype.itemsize else a


def _frames(
    kind: str,
    run: int,
    event: int,
    t_send_ns: int | None,
    cols: dict[str, Any],
    compact: bool = False,
    **extra: Any,
) -> list[OutFrame]:
    ids = {"run": _whole(run), "event": _whole(event)}
    ids["t_send_ns"] = time.time_ns() if t_send_ns is None else _whole(t_send_ns)
    _check_ids(ids, ids)  # before packing: what msgpack cannot pack (2**64) said as refused
    spec = COLUMNS[kind]
    arrays = [np.ascontiguousarray(to_host(cols[name]), dtype=dt) for name, dt in spec.items()]
    if compact:
        arrays = [_narrowest(a) for a in arrays]
    narrowed = any(a.dtype != np.dtype(dt) for a, dt in zip(arrays, spec.values(), strict=True))
    header = {
        "schema": SCHEMA,
        "version": NARROW_VERSION if narrowed else ENCODED_VERSIONS[kind],
        "kind": kind,
        **ids,
        "columns": [[n, a.dtype.str, len(a)] for n, a in zip(spec, arrays, strict=True)],
        **extra,
    }
    head: bytes = msgpack.packb(header, use_bin_type=True)
    # What the decoder would refuse is not sent: the header's size, map sizes and fields.
    _check_envelope(_unpack_header(memoryview(head), DEFAULT_LIMITS))
    # NumPy declares ndarray.__buffer__ for Python 3.12 on only; arrays are buffers in 3.11.
    return [head, *(memoryview(a.view(np.uint8)) for a in arrays)]  # type: ignore[arg-type, unused-ignore]


def encode_hits(
    event: Event,
    *,
    t_send_ns: int | None = None,
    deadline_ms: float | None = None,
    msg_id: int | None = None,
    compact: bool = False,
) -> list[OutFrame]:
    """Frames of a ``hits`` message; ``t_send_ns`` defaults to now. ``msg_id`` identifies
    this message (a resend carries the same one); the reply echoes it. ``compact``: the id
    columns in the smallest unsigned dtypes that hold them (about 20 bytes a hit instead of
    32): a version 5 message, which decoders of version 4 and older refuse (``bad_version``),
    where any column narrows (an event without hits stays version 2)."""
    given: Any = deadline_ms  # typed float; a caller's True or str is refused below
    extra: dict[str, Any] = {} if given is None else {"deadline_ms": given}
    if isinstance(given, int | float | np.integer | np.floating) and not isinstance(given, bool):
        extra["deadline_ms"] = float(given)  # a NumPy float too
    if msg_id is not None:
        extra["msg_id"] = _whole(msg_id)
    _check_ids(extra, ("msg_id",))  # what the decoder would refuse is not sent
    _check_deadline(extra)
    cols = event.hits.columns()
    return _frames("hits", event.run, event.event, t_send_ns, cols, compact, **extra)


def with_msg_id(frames: list[Any], msg_id: int, t_send_ns: int | None = None) -> list[Any]:
    """A ``hits`` message's frames sent again: ``msg_id`` set in its header, and
    ``t_send_ns`` (default now: a recording's stamp is its producer's, 0 in simulated ones);
    column frames are not copied. A version 1 header (a recording made before ``msg_id``) is
    raised to version 2, which has the same hits columns and admits the key."""
    frames = _frame_list(frames, DEFAULT_LIMITS)  # a WireError for what is no message,
    header = _unpack_header(frame_view(frames[0]), DEFAULT_LIMITS)  # or no message's header,
    if (kind := _check_envelope(header)) != "hits":  # or a message of another kind
        raise WireError("bad_kind", f"expected a 'hits' message, got {kind!r}")
    header["msg_id"] = _whole(msg_id)
    header["t_send_ns"] = time.time_ns() if t_send_ns is None else _whole(t_send_ns)
    header["version"] = max(header["version"], ENCODED_VERSIONS["hits"])
    _check_ids(header, ("msg_id", "t_send_ns"))  # what the decoder would refuse is not sent
    return [msgpack.packb(header, use_bin_type=True), *frames[1:]]


def encode_truth(
    run: int, event: int, truth: Truth, *, t_send_ns: int | None = None
) -> list[OutFrame]:
    """Frames of a ``truth`` message (per-hit and per-particle truth of one event)."""
    cols = {f"hit.{k}": v for k, v in truth.hits.columns().items()}
    cols |= {f"particle.{k}": v for k, v in truth.particles.columns().items()}
    return _frames("truth", run, event, t_send_ns, cols)


def encode_tracks(
    run: int,
    event: int,
    hit_ids: Any,
    tracks: Tracks | None,
    *,
    status: str = "ok",
    reason: str = "",
    timings: dict[str, float] | None = None,
    t_send_ns: int | None = None,
    msg_id: int | None = None,
    beam_line: tuple[float, float] | None = None,
    model: ModelId | None = None,
) -> list[OutFrame]:
    """Frames of a ``tracks`` reply (``msg_id``: the one of the hits message answered;
    ``beam_line``: the x, y in mm that the tracks' phi, d0 and z0 are about; ``model``: the
    model that made the tracks).

    ``tracks.hit_index`` indexes ``hit_ids`` (the event's hit ids); the message carries the
    hit ids themselves. ``tracks=None`` means no tracks, as an error reply requires.
    """
    if status not in STATUSES:
        raise ValueError(f"status must be one of {sorted(STATUSES)}, got {status!r}")
    if (status == "ok") == bool(reason):
        raise ValueError("reason must be empty for status 'ok' and non-empty for 'error'")
    tracks = Tracks.empty() if tracks is None else tracks
    if status == "error" and len(tracks):
        raise ValueError("an error reply carries no tracks")
    missing = TRACK_PARAM_DTYPES.keys() - tracks.params.keys()
    if missing:
        raise ValueError(f"tracks.params lacks {sorted(missing)}")
    hit_id = np.asarray(to_host(hit_ids))[np.asarray(to_host(tracks.hit_index), dtype=np.int64)]
    cols = {"offsets": tracks.offsets, "hit_id": hit_id, **tracks.params}
    times = {str(k): float(v) for k, v in (timings or {}).items()}
    extra: dict[str, Any] = {"status": status, "reason": reason, "timings": times}
    if msg_id is not None:
        extra["msg_id"] = _whole(msg_id)
    if beam_line is not None:
        extra["beam_line"] = [float(v) for v in beam_line]
    if model is not None:
        extra["model"] = {
            "name": model.name,
            "hash": model.hash,
            "threshold": float(model.threshold),
        }
    _check_reply_header(extra)  # what the decoder would refuse is not sent
    return _frames("tracks", run, event, t_send_ns, cols, **extra)


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class ModelId:
    """What identifies the model that made a reply's tracks: the name and hash of its
    directory (as ``/status`` and ``streamtrk_model_info`` give them) and the edge-score
    threshold it served with."""

    name: str
    hash: str
    threshold: float


@dataclass(frozen=True, eq=False)
class TrackReply:
    """The daemon's answer for one event: status, stage timings, and CSR track lists."""

    run: int
    event: int
    status: str
    reason: str
    timings: dict[str, float]
    offsets: np.ndarray
    hit_id: np.ndarray
    params: dict[str, np.ndarray]
    msg_id: int | None = None
    beam_line: tuple[float, float] | None = None  # x, y (mm) of the perigee parameters
    model: ModelId | None = None  # the model that made the tracks (version 6)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def to_tracks(self, hit_ids: np.ndarray) -> Tracks:
        """Tracks with ``hit_index`` into ``hit_ids`` (the event's hit ids, all unique)."""
        index, found = index_of(np.asarray(hit_ids), self.hit_id)
        if not found.all():
            raise ValueError(f"reply references {int((~found).sum())} hit ids not in the event")
        return Tracks(offsets=self.offsets, hit_index=index, params=dict(self.params))


@dataclass(frozen=True, eq=False)
class Message:
    """A validated message: header fields plus zero-copy column views."""

    kind: str
    run: int
    event: int
    t_send_ns: int
    header: dict[str, Any]
    columns: dict[str, np.ndarray]

    @property
    def version(self) -> int:
        return int(self.header["version"])

    @property
    def msg_id(self) -> int | None:
        """The sender's identity of this message (hits), or of the one answered (tracks)."""
        m = self.header.get("msg_id")
        return None if m is None else int(m)

    @property
    def deadline_ms(self) -> float | None:
        """Per-event deadline override of a ``hits`` message, if any."""
        d = self.header.get("deadline_ms")
        return None if d is None else float(d)

    def _expect(self, kind: str) -> None:
        if self.kind != kind:
            raise WireError("bad_kind", f"expected a {kind!r} message, got {self.kind!r}")

    def to_event(self) -> Event:
        """The :class:`Event` of a ``hits`` message (no truth)."""
        self._expect("hits")
        return Event(self.run, self.event, Hits(**self.columns))

    def to_truth(self) -> Truth:
        """The :class:`Truth` of a ``truth`` message."""
        self._expect("truth")
        hits = {k[4:]: v for k, v in self.columns.items() if k.startswith("hit.")}
        parts = {k[9:]: v for k, v in self.columns.items() if k.startswith("particle.")}
        return Truth(hits=HitTruth(**hits), particles=Particles(**parts))

    def to_reply(self) -> TrackReply:
        """The :class:`TrackReply` of a ``tracks`` message."""
        self._expect("tracks")
        h, c = self.header, self.columns
        n_tracks = len(c["offsets"]) - 1
        # Columns an older version lacks: ndf -1 (v1: chi2 per ndf), errors and correlations NaN.
        params = {}
        for k, dt in TRACK_PARAM_DTYPES.items():
            if k in c:
                params[k] = c[k]
            else:
                params[k] = np.full(n_tracks, -1 if k == "ndf" else np.nan, dtype=dt)
                params[k].flags.writeable = False  # read-only, as every decoded column
        beam_line, model = h.get("beam_line"), h.get("model")
        return TrackReply(
            self.run,
            self.event,
            h["status"],
            h["reason"],
            dict(h["timings"]),
            c["offsets"],
            c["hit_id"],
            params,
            self.msg_id,
            None if beam_line is None else (float(beam_line[0]), float(beam_line[1])),
            None
            if model is None
            else ModelId(model["name"], model["hash"], float(model["threshold"])),
        )


# --------------------------------------------------------------------------- decoding


def _short(x: Any, n: int = 80) -> str:
    try:
        r = repr(x)
    except RecursionError:  # msgpack nests up to 1023 deep
        r = f"<{type(x).__name__} nested too deeply>"
    return r if len(r) <= n else r[: n - 3] + "..."


def _is_int(x: Any) -> TypeGuard[int]:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    """A finite int or float (not bool)."""
    return _is_int(x) or (isinstance(x, float) and math.isfinite(x))


def frame_view(frame: Any) -> memoryview:
    """Flat unsigned-byte view of one frame (bytes, memoryview, zmq.Frame, any buffer)."""
    try:
        if not isinstance(frame, bytes | bytearray | memoryview) and hasattr(frame, "buffer"):
            frame = frame.buffer
        view = memoryview(frame)
        if not view.c_contiguous:
            raise BufferError("not C-contiguous")
        return view if view.format == "B" and view.ndim == 1 else view.cast("B")
    except Exception as e:
        raise WireError(
            "bad_frame", f"a {type(frame).__name__} frame is not a contiguous byte buffer"
        ) from e


def _frame_list(frames: Frames, limits: Limits) -> list[Any]:
    try:
        out = list(itertools.islice(frames, limits.max_columns + 2))
    except Exception as e:
        raise WireError("bad_frame", "frames must be an iterable of buffers") from e
    if not out or len(out) > limits.max_columns + 1:
        raise WireError("frame_count", f"expected 1 to {limits.max_columns + 1} frames")
    return out


def _unique_keys(pairs: Iterable[tuple[Any, Any]]) -> dict[Any, Any]:
    """A header map from its pairs; a key twice is refused (msgpack would keep the last).
    The pairs come as a list from msgpack's C extension, as a generator from its pure-Python
    one before 1.2.4 (installed where no wheel fits)."""
    pairs = list(pairs)
    out = dict(pairs)
    if len(out) != len(pairs):
        keys = [k for k, _ in pairs]
        twice = next(k for k in keys if keys.count(k) > 1)
        raise WireError("bad_header", f"header key {_short(twice)} appears more than once")
    return out


def _unpack_header(view: memoryview, limits: Limits) -> Any:
    if view.nbytes > limits.max_header_bytes:
        raise WireError(
            "header_too_large", f"header is {view.nbytes} bytes, limit {limits.max_header_bytes}"
        )
    try:
        return msgpack.unpackb(
            view,
            raw=False,
            strict_map_key=True,
            max_str_len=limits.max_header_bytes,
            max_bin_len=limits.max_header_bytes,
            max_array_len=max(limits.max_columns, 3),
            max_map_len=limits.max_map_entries,
            max_ext_len=0,
            object_pairs_hook=_unique_keys,
        )
    except WireError:
        raise
    except Exception as e:
        # Well-formed msgpack over the size limits, or with a non-string map key.
        if any(s in str(e) for s in ("exceeds max_", "not allowed for map key")):
            raise WireError("bad_header", f"header not acceptable: {e}") from e
        if isinstance(e, msgpack.exceptions.StackError):  # read no further: maybe well-formed
            raise WireError("bad_header", "header nested deeper than msgpack reads") from e
        why = {"ExtraData": "bytes follow the first object", "FormatError": "invalid format"}
        detail = str(e) or why.get(type(e).__name__, type(e).__name__)
        raise WireError(
            "not_msgpack", f"frame 0 ({view.nbytes} bytes) is not one msgpack object: {detail}"
        ) from e


def _check_envelope(header: Any) -> str:
    """Check the fields common to all kinds; return the kind."""
    if not isinstance(header, dict):
        raise WireError("bad_header", f"header must be a map, got {type(header).__name__}")
    if bad := [k for k in header if not isinstance(k, str)]:  # msgpack bin keys unpack as bytes
        raise WireError("bad_header", f"header keys must be strings, got {_short(bad[0])}")
    if header.get("schema") != SCHEMA:
        raise WireError(
            "bad_schema", f"schema must be {SCHEMA!r}, got {_short(header.get('schema'))}"
        )
    version = header.get("version")
    if not (_is_int(version) and version in SUPPORTED_VERSIONS):
        raise WireError(
            "bad_version",
            f"version {_short(version)} not supported (supported: {sorted(SUPPORTED_VERSIONS)})",
        )
    kind = header.get("kind")
    if not (isinstance(kind, str) and kind in COLUMNS):
        raise WireError("bad_kind", f"unknown kind {_short(kind)}")
    required, optional = keys_of(kind, version)
    missing = (COMMON_KEYS | required) - header.keys()
    unknown = header.keys() - COMMON_KEYS - required - optional
    if missing or unknown:
        parts = [f"lacks {', '.join(map(repr, sorted(missing)))}"] if missing else []
        # A key of this kind in a later version: the version said (a peer half upgraded).
        current = KIND_KEYS[kind][1]
        later = {k: v for k in sorted(unknown & current) if (v := version_adding(k) or 0) > version}
        parts += [f"has {k!r}, a key of version {v} and later" for k, v in later.items()]
        if unknown := unknown.difference(later):
            names = ", ".join(sorted(map(repr, unknown)))
            names = names if len(names) <= 200 else names[:197] + "..."
            parts.append(f"has unknown key{'s' if len(unknown) > 1 else ''} {names}")
        raise WireError("bad_header", f"{kind} header {' and '.join(parts)}")
    _check_ids(header, ("run", "event", "t_send_ns"))
    return kind


def _column_specs(header: dict[str, Any], kind: str) -> dict[str, Spec]:
    cols = header["columns"]
    if not isinstance(cols, list):
        raise WireError("bad_header", "columns must be a list of [name, dtype, length]")
    for i, c in enumerate(cols):
        if not (
            isinstance(c, list)
            and len(c) == 3
            and isinstance(c[0], str)
            and isinstance(c[1], str)
            and _is_int(c[2])
        ):
            raise WireError(
                "bad_header", f"columns[{i}] must be [name, dtype, length], got {_short(c)}"
            )
    expected = columns_of(kind, header["version"])
    names = [c[0] for c in cols]
    if names != list(expected):
        raise WireError(
            "bad_column", f"{kind} columns must be {list(expected)}, got {_short(names, 200)}"
        )
    for name, dt, n in cols:
        if dt not in ALLOWED_DTYPES:
            raise WireError(
                "bad_dtype",
                f"column {name!r}: {_short(dt)} is not an allowed little-endian numeric dtype",
            )
        if not dtype_allowed(dt, expected[name], header["version"]):
            ints = dt[1] in "iu" and expected[name][1] in "iu"
            narrower = " or (version 5) a narrower integer dtype" if ints else ""
            raise WireError(
                "bad_dtype", f"column {name!r} must be {expected[name]}{narrower}, got {dt}"
            )
        if not 0 <= n < MAX_INT:
            raise WireError("bad_column", f"column {name!r} length {n} out of range")
    return {name: (dt, n, expected[name]) for name, dt, n in cols}


def _common_length(specs: dict[str, Spec], names: Iterable[str], what: str) -> int:
    lengths = {specs[k][1] for k in names}
    if len(lengths) != 1:
        raise WireError("bad_column", f"{what} columns have different lengths {sorted(lengths)}")
    return lengths.pop()


def _check_lengths(kind: str, specs: dict[str, Spec], limits: Limits) -> None:
    """Row-count consistency and limits, from the header alone."""

    def limit(n: int, most: int, what: str) -> None:
        if n > most:
            raise WireError(f"too_many_{what}", f"{n} {what}, limit {most}")

    if kind == "hits":
        limit(_common_length(specs, specs, "hit"), limits.max_hits, "hits")
    elif kind == "truth":
        hits = _common_length(specs, (k for k in specs if k.startswith("hit.")), "hit truth")
        limit(hits, limits.max_hits, "hits")
        parts = _common_length(specs, (k for k in specs if k.startswith("particle.")), "particle")
        limit(parts, limits.max_particles, "particles")
    else:
        n_off = specs["offsets"][1]
        if n_off < 1:
            raise WireError("bad_offsets", "offsets must have n_tracks + 1 >= 1 entries")
        params = [k for k in TRACK_PARAM_DTYPES if k in specs]
        n_tracks = _common_length(specs, params, "track parameter")
        if n_tracks != n_off - 1:
            raise WireError("bad_column", f"{n_tracks} track parameters for {n_off - 1} tracks")
        limit(n_tracks, limits.max_tracks, "tracks")
        limit(specs["hit_id"][1], limits.max_hits, "hits")


def _arrays(frames: list[Any], specs: dict[str, Spec]) -> dict[str, np.ndarray]:
    if len(frames) != 1 + len(specs):
        raise WireError(
            "frame_count", f"{len(frames)} frames for {len(specs)} columns (expected 1 + columns)"
        )
    out = {}
    for (name, (dt, n, _)), frame in zip(specs.items(), frames[1:], strict=True):
        view = frame_view(frame)
        want = n * np.dtype(dt).itemsize
        if view.nbytes != want:
            raise WireError(
                "buffer_length",
                f"column {name!r}: frame has {view.nbytes} bytes, {n} x {dt} needs {want}",
            )
        out[name] = np.frombuffer(view, dtype=dt)  # made read-only by _widened
    return out


def _widened(cols: dict[str, np.ndarray], specs: dict[str, Spec]) -> dict[str, np.ndarray]:
    """The columns in the schema's dtypes, all read-only (views of writable buffers too):
    narrow ones (version 5) as copies."""
    out = {}
    for name, column in cols.items():
        wide = column.astype(specs[name][2], copy=False)
        wide.flags.writeable = False
        out[name] = wide
    return out


def _nonneg(cols: dict[str, np.ndarray], names: Iterable[str]) -> None:
    for k in names:
        if cols[k].dtype.kind == "i" and cols[k].size and cols[k].min() < 0:
            raise WireError("id_range", f"column {k!r} has negative values")


def _check_ids(header: dict[str, Any], keys: Iterable[str]) -> None:
    """``bad_header`` unless each of ``keys`` in ``header`` is an int in [0, 2**63)."""
    for key in keys:
        if key in header and not (_is_int(header[key]) and 0 <= header[key] < MAX_INT):
            raise WireError(
                "bad_header", f"{key} must be an int in [0, 2**63), got {_short(header[key])}"
            )


def _check_deadline(header: dict[str, Any]) -> None:
    if "deadline_ms" in header:
        d = header["deadline_ms"]
        if not (_is_number(d) and d > 0):
            raise WireError("bad_header", f"deadline_ms must be a positive number, got {_short(d)}")


def _check_hits(header: dict[str, Any], cols: dict[str, np.ndarray]) -> None:
    _check_ids(header, ("msg_id",))
    _check_deadline(header)
    for k in ("x", "y", "z"):
        if not np.isfinite(cols[k]).all():
            raise WireError("non_finite", f"column {k!r} has NaN or infinite values")
    _nonneg(cols, ("volume_id", "layer_id", "module_id"))
    ids = cols["hit_id"]
    ascending = bool((ids[1:] > ids[:-1]).all())  # the usual case: no sort needed
    ids = ids if ascending else np.sort(ids)
    _nonneg({"hit_id": ids[:1]}, ("hit_id",))  # in order, the first is the least
    if not ascending and (ids[1:] == ids[:-1]).any():
        raise WireError("duplicate_hit_id", "hit_id values are not unique")


def _check_truth(header: dict[str, Any], cols: dict[str, np.ndarray]) -> None:
    _nonneg(cols, ("hit.particle_id", "particle.particle_id"))
    for k, col in cols.items():
        if col.dtype.kind == "f" and not np.isfinite(col).all():
            raise WireError("non_finite", f"column {k!r} has NaN or infinite values")
    if (cols["hit.weight"] < 0).any():  # a hit's share of the score (all 0: no score, NaN)
        raise WireError("negative_weight", "column 'hit.weight' has values below 0")
    pids = np.sort(cols["particle.particle_id"])
    if (pids[1:] == pids[:-1]).any():
        raise WireError("duplicate_particle_id", "particle.particle_id values are not unique")
    on_hits = cols["hit.particle_id"]
    on_hits = on_hits[on_hits != 0]  # 0: noise
    missing = on_hits[~np.isin(on_hits, pids, assume_unique=False)]
    if len(missing):
        raise WireError(
            "unknown_particle", f"hit.particle_id {int(missing[0])} is not in the particle table"
        )


def _check_reply_header(header: dict[str, Any]) -> None:
    _check_ids(header, ("msg_id",))
    if "beam_line" in header:
        b = header["beam_line"]
        if not (isinstance(b, list) and len(b) == 2 and all(_is_number(v) for v in b)):
            raise WireError("bad_header", f"beam_line must be [x, y] in mm, got {_short(b)}")
    if "model" in header:
        m = header["model"]
        if not (
            isinstance(m, dict)
            and m.keys() == {"name", "hash", "threshold"}
            and isinstance(m["name"], str)
            and isinstance(m["hash"], str)
            and _is_number(m["threshold"])
            and 0 <= m["threshold"] <= 1
        ):
            raise WireError(
                "bad_header",
                f"model must map name and hash to text and threshold to [0, 1], got {_short(m)}",
            )
    status, reason, timings = header["status"], header["reason"], header["timings"]
    if not (isinstance(status, str) and status in STATUSES):
        raise WireError("bad_header", f"status must be 'ok' or 'error', got {_short(status)}")
    if not isinstance(reason, str) or (status == "ok") == bool(reason):
        raise WireError("bad_header", "reason must be '' when ok and a non-empty str on error")
    if not (
        isinstance(timings, dict)
        and all(isinstance(k, str) and _is_number(v) and v >= 0 for k, v in timings.items())
    ):
        raise WireError("bad_header", "timings must map stage names to seconds >= 0")


def _check_tracks(header: dict[str, Any], cols: dict[str, np.ndarray]) -> None:
    _check_reply_header(header)
    status = header["status"]
    off, hit_id = cols["offsets"], cols["hit_id"]
    if off[0] != 0 or off[-1] != len(hit_id) or (off[1:] < off[:-1]).any():
        raise WireError("bad_offsets", f"offsets must rise monotonically from 0 to {len(hit_id)}")
    if status == "error" and len(off) > 1:
        raise WireError("bad_header", "an error reply must carry zero tracks")
    _nonneg(cols, ("hit_id",))


_CHECKS = {"hits": _check_hits, "truth": _check_truth, "tracks": _check_tracks}


def decode(frames: Frames, *, limits: Limits = DEFAULT_LIMITS) -> Message:
    """Validate and decode one multipart message; raise :class:`WireError` if malformed."""
    frames = _frame_list(frames, limits)
    header = _unpack_header(frame_view(frames[0]), limits)
    kind = _check_envelope(header)
    specs = _column_specs(header, kind)
    _check_lengths(kind, specs, limits)
    cols = _arrays(frames, specs)
    _CHECKS[kind](header, cols)  # on the columns as sent: narrow ones check faster
    cols = _widened(cols, specs)
    return Message(kind, header["run"], header["event"], header["t_send_ns"], header, cols)


#: The header fields a peek reads: what a reply needs, and what a message is.
PEEKED = frozenset({"run", "event", "msg_id", "kind", "version"})


def peek_header(frames: Frames) -> dict[str, Any] | None:
    """The fields of :data:`PEEKED` that a header map holds, unvalidated, or None (no map);
    never raises. Lenient where decode is strict, so that a header it refuses still names
    the event to answer: every other key's value is skipped unread (any type, text not
    UTF-8, more entries than the limits allow), in time bounded by the header's bytes, and
    the keys and those fields read whatever their size (a long key or ``version`` before
    ``run`` hides nothing), in memory bounded by them; the fields before an entry that does
    not parse are kept; a key twice: the last. A header over the default
    ``max_header_bytes`` is read up to them (an entry cut there ends it)."""
    try:
        view = frame_view(next(iter(frames)))[: DEFAULT_LIMITS.max_header_bytes]
        size = max(view.nbytes, 1)  # no string or container read is longer than the header
        limits = {f"max_{k}_len": size for k in ("str", "bin", "array", "map", "ext")}
        unpacker = msgpack.Unpacker(
            raw=False,
            unicode_errors="surrogateescape",
            strict_map_key=False,
            max_buffer_size=size,  # its buffer, 1 MiB by default
            **limits,
        )
        unpacker.feed(view)
        entries = unpacker.read_map_header()
    except Exception:
        return None
    out: dict[str, Any] = {}
    with contextlib.suppress(Exception):
        for _ in range(entries):
            key = unpacker.unpack()
            if isinstance(key, str) and key in PEEKED:
                out[key] = unpacker.unpack()
            else:
                unpacker.skip()
    return out


def identity_of(header: dict[str, Any]) -> tuple[int, int] | None:
    """``(run, event)`` of a peeked header (:func:`peek_header`), or None."""
    run, event = header.get("run"), header.get("event")
    if _is_int(run) and _is_int(event) and 0 <= run < MAX_INT and 0 <= event < MAX_INT:
        return run, event
    return None


def msg_id_of(header: dict[str, Any]) -> int | None:
    """``msg_id`` of a peeked header (:func:`peek_header`), or None."""
    m = header.get("msg_id")
    return m if _is_int(m) and 0 <= m < MAX_INT else None


def peek_identity(frames: Frames) -> tuple[int, int] | None:
    """Best-effort ``(run, event)`` of a possibly invalid message, or None; never raises."""
    return identity_of(peek_header(frames) or {})


def peek_msg_id(frames: Frames) -> int | None:
    """Best-effort ``msg_id`` of a possibly invalid message, or None; never raises."""
    return msg_id_of(peek_header(frames) or {})
