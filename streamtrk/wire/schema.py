"""Wire schema v6 (v1 to v5 still decoded; each kind written in the oldest version that
carries it, ``ENCODED_VERSIONS``): header keys, column layouts per message kind, limits, and
errors. Version 2 added the optional ``msg_id`` (hits, echoed in tracks) and
the tracks column ``ndf``, and made ``chi2`` the total chi-square (v1: chi2 per ndf).
Version 3 added the tracks columns ``sigma_*`` (the fit's standard errors) and the optional
tracks key ``beam_line`` (the x, y in mm that phi, d0 and z0 are about). Version 4 added the
tracks columns ``corr_*`` (the correlations of the fit's errors). Version 5 lets an integer
column travel in a narrower integer dtype (``dtype_allowed``): compact hits messages.
Version 6 added the optional tracks key ``model`` (the name, hash and threshold of the
model that made the tracks).

See ``docs/wire-protocol.md`` for the full specification.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streamtrk.event import HIT_DTYPES, HIT_TRUTH_DTYPES, PARTICLE_DTYPES, TRACK_PARAM_DTYPES

SCHEMA = "streamtrk"
VERSION = 6
SUPPORTED_VERSIONS: frozenset[int] = frozenset({1, 2, 3, 4, 5, VERSION})
#: The first version whose integer columns may be sent in a narrower integer dtype.
NARROW_VERSION = 5

#: Little-endian numeric dtypes a column may declare (``numpy.dtype(...).str`` spelling).
ALLOWED_DTYPES: frozenset[str] = frozenset(
    {"|i1", "|u1", "<i2", "<u2", "<i4", "<u4", "<i8", "<u8", "<f2", "<f4", "<f8"}
)

#: Column name -> dtype, in wire order, per message kind.
COLUMNS: dict[str, dict[str, str]] = {
    "hits": dict(HIT_DTYPES),
    "tracks": {"offsets": "<i8", "hit_id": "<i8", **TRACK_PARAM_DTYPES},
    "truth": {
        **{f"hit.{k}": v for k, v in HIT_TRUTH_DTYPES.items()},
        **{f"particle.{k}": v for k, v in PARTICLE_DTYPES.items()},
    },
}

#: Header keys every message carries.
COMMON_KEYS: frozenset[str] = frozenset(
    {"schema", "version", "kind", "run", "event", "t_send_ns", "columns"}
)
#: Extra header keys per kind: (required, optional).
KIND_KEYS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "hits": (frozenset(), frozenset({"deadline_ms", "msg_id"})),
    "tracks": (
        frozenset({"status", "reason", "timings"}),
        frozenset({"msg_id", "beam_line", "model"}),
    ),
    "truth": (frozenset(), frozenset()),
}
STATUSES: frozenset[str] = frozenset({"ok", "error"})

#: Version 3's tracks columns: no ``corr_*``; version 2's: no ``sigma_*`` either; version
#: 1's: no ``ndf`` either (``chi2`` was the chi-square per ndf).
_V3_TRACKS = {k: v for k, v in COLUMNS["tracks"].items() if not k.startswith("corr_")}
_V2_TRACKS = {k: v for k, v in _V3_TRACKS.items() if not k.startswith("sigma_")}
_V1_TRACKS = {k: v for k, v in _V2_TRACKS.items() if k != "ndf"}
_OLD_TRACKS = {1: _V1_TRACKS, 2: _V2_TRACKS, 3: _V3_TRACKS}
#: Optional header keys each version added.
_ADDED_KEYS = {2: frozenset({"msg_id"}), 3: frozenset({"beam_line"}), 6: frozenset({"model"})}


def version_adding(key: str) -> int | None:
    """The version that added header key ``key``; None for one of version 1 (or none)."""
    return next((v for v, keys in sorted(_ADDED_KEYS.items()) if key in keys), None)


def columns_of(kind: str, version: int) -> dict[str, str]:
    """Column name -> dtype, in wire order, of ``kind`` in ``version``."""
    if kind == "tracks" and version in _OLD_TRACKS:
        return _OLD_TRACKS[version]
    return COLUMNS[kind]


def dtype_allowed(declared: str, dtype: str, version: int) -> bool:
    """Whether a column of schema dtype ``dtype`` may be declared ``declared`` (an allowed
    dtype) in ``version``: its own dtype, or from :data:`NARROW_VERSION` on, for an integer
    column, an integer dtype all of whose values it holds (NumPy's safe cast: ``|u1`` or
    ``<u4`` for ``<i8``; ``<u4`` not for ``<i4``). The decoder widens such a column."""
    if declared == dtype:
        return True
    d, s = np.dtype(declared), np.dtype(dtype)
    integers = d.kind in "iu" and s.kind in "iu"
    return version >= NARROW_VERSION and integers and np.can_cast(d, s, casting="safe")


def keys_of(kind: str, version: int) -> tuple[frozenset[str], frozenset[str]]:
    """(required, optional) header keys of ``kind`` in ``version`` besides the common ones."""
    required, optional = KIND_KEYS[kind]
    later = [keys for v, keys in _ADDED_KEYS.items() if v > version]
    return required, optional.difference(*later)


#: The version encoders write per kind: the oldest with the current keys and columns of that
#: kind, so that an older decoder reads every message it can (hits: 2, truth: 1, tracks: 6;
#: a producer of this version can feed a daemon of version 2).
ENCODED_VERSIONS: dict[str, int] = {
    kind: min(
        v
        for v in SUPPORTED_VERSIONS
        if columns_of(kind, v) == COLUMNS[kind] and keys_of(kind, v) == KIND_KEYS[kind]
    )
    for kind in COLUMNS
}


#: Exclusive upper bound of run, event, t_send_ns and column lengths.
MAX_INT = 2**63

#: Machine-readable :class:`WireError` reasons.
REASONS: frozenset[str] = frozenset(
    {
        "bad_frame",  # a frame is not a contiguous byte buffer, or frames is not a sequence
        "frame_count",  # no frames, or not 1 + number of declared columns
        "header_too_large",  # frame 0 exceeds Limits.max_header_bytes
        "not_msgpack",  # frame 0 is not exactly one msgpack object
        "bad_header",  # not a map; missing, unknown or ill-typed field; array/map too long
        "bad_schema",  # header "schema" is not "streamtrk"
        "bad_version",  # header "version" is not a supported version
        "bad_kind",  # header "kind" unknown (or wrong kind for a conversion)
        "bad_column",  # column names/order wrong, or inconsistent row counts
        "bad_dtype",  # dtype not allowed, or neither the column's nor one it may narrow to
        "buffer_length",  # frame byte length != declared length * itemsize
        "too_many_hits",  # more hits (or track hit entries) than Limits.max_hits
        "too_many_tracks",  # more tracks than Limits.max_tracks
        "too_many_particles",  # more truth particles than Limits.max_particles
        "non_finite",  # NaN or infinity in hit coordinates, or in a truth column
        "id_range",  # negative hit, detector or particle id
        "duplicate_hit_id",  # the same hit_id twice in one hits message
        "duplicate_particle_id",  # the same particle_id twice in one truth message
        "unknown_particle",  # a truth hit's particle (not 0, noise) not in the particle table
        "negative_weight",  # a truth hit's score weight below 0
        "bad_offsets",  # track offsets not monotone from 0 to len(hit_id)
    }
)


class WireError(ValueError):
    """A message violates the wire schema; ``reason`` is a code from :data:`REASONS` (the
    decoder's), or ``message_too_large`` from the daemon's ingest, which refuses a message
    while it is still being received."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


@dataclass(frozen=True)
class Limits:
    """Resource limits the decoder enforces before touching column data.

    ``max_columns`` bounds the frame count and every header array (at least 3 entries
    allowed: a column's [name, dtype, length]), ``max_map_entries`` every
    header map (such as ``timings``); ``max_hits`` also bounds a reply's ``hit_id`` column.
    """

    max_header_bytes: int = 64 * 1024
    max_hits: int = 1_000_000
    max_columns: int = 64
    max_tracks: int = 200_000
    max_particles: int = 1_000_000
    max_map_entries: int = 64

    @property
    def max_frame_bytes(self) -> int:
        """The largest frame a message within these limits has: the header, or a column of
        8-byte values as long as the longest allowed (a receiver's ``ZMQ_MAXMSGSIZE``)."""
        longest = max(self.max_hits, self.max_tracks + 1, self.max_particles)
        return max(self.max_header_bytes, 8 * longest)


DEFAULT_LIMITS = Limits()
