"""Struct-of-arrays event model: hits, optional truth, and reconstructed tracks.

Arrays are NumPy or CuPy (anything with the array API used here); dtypes are fixed
so that the wire codec and the TrackML reader agree on them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Self

import numpy as np
from numpy.typing import ArrayLike

from streamtrk.xp import Array, array_module, to_host

HIT_DTYPES: dict[str, str] = {
    "hit_id": "<i8",
    "x": "<f4",
    "y": "<f4",
    "z": "<f4",
    "volume_id": "<i4",
    "layer_id": "<i4",
    "module_id": "<i4",
}
HIT_TRUTH_DTYPES: dict[str, str] = {
    "particle_id": "<i8",
    "tx": "<f4",
    "ty": "<f4",
    "tz": "<f4",
    "tpx": "<f4",
    "tpy": "<f4",
    "tpz": "<f4",
    "weight": "<f4",
    "hit_order": "<i4",
}
PARTICLE_DTYPES: dict[str, str] = {
    "particle_id": "<i8",
    "vx": "<f4",
    "vy": "<f4",
    "vz": "<f4",
    "px": "<f4",
    "py": "<f4",
    "pz": "<f4",
    "q": "<i4",
    "nhits": "<i4",
}
TRACK_PARAM_DTYPES: dict[str, str] = {
    "pt": "<f4",
    "eta": "<f4",
    "phi": "<f4",
    "d0": "<f4",
    "z0": "<f4",
    "charge": "<i4",
    "chi2": "<f4",  # total chi-square of the helix fit
    "ndf": "<i4",  # its degrees of freedom: 2 x hits - 5
    # The fit's standard errors (square roots of its covariance's diagonal):
    "sigma_q_over_pt": "<f4",  # of charge / pt, 1/GeV
    "sigma_eta": "<f4",
    "sigma_phi": "<f4",  # rad
    "sigma_d0": "<f4",  # mm
    "sigma_z0": "<f4",  # mm
    # Correlations of those errors (covariance over the two standard errors; the circle's and
    # the line's parameters are uncorrelated in this fit, so these are all there are):
    "corr_q_over_pt_phi": "<f4",
    "corr_q_over_pt_d0": "<f4",
    "corr_phi_d0": "<f4",
    "corr_eta_z0": "<f4",
}


def _check_columns(obj: Any, dtypes: dict[str, str], what: str) -> int:
    n = None
    for name, dt in dtypes.items():
        a = getattr(obj, name)
        if a.ndim != 1:
            raise ValueError(f"{what}.{name} must be 1-D, got shape {a.shape}")
        if np.dtype(a.dtype) != np.dtype(dt):
            raise TypeError(f"{what}.{name} must have dtype {np.dtype(dt)}, got {a.dtype}")
        if n is None:
            n = len(a)
        elif len(a) != n:
            raise ValueError(f"{what}.{name} has length {len(a)}, expected {n}")
    return int(n or 0)


def _cast(a: Array, dt: str, name: str) -> Array:
    """``a`` as dtype ``dt``, refused (ValueError) where that would change a value: see
    :meth:`_Columns.from_columns`."""
    target, xp = np.dtype(dt), array_module(a)
    if a.dtype == target:
        return a
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be numeric, got {a.dtype}")
    if target.kind in "iu":
        info = np.iinfo(target)
        if a.dtype.kind == "f":  # whole numbers within range (NaN fails every comparison)
            whole = (a == xp.floor(a)) & (a >= info.min) & (a < float(info.max) + 1)
            fits = bool(xp.all(whole))
        else:
            fits = a.size == 0 or (int(a.min()) >= info.min and int(a.max()) <= info.max)
        if not fits:
            raise ValueError(f"{name} must hold whole numbers of {target}'s range")
        return a.astype(target)
    with np.errstate(over="ignore"):
        out = a.astype(target)
    if a.dtype.kind == "f" and not bool(xp.all(xp.isfinite(out) == xp.isfinite(a))):
        raise ValueError(f"{name} holds a finite number past {target}'s range")
    return out


def as_int64(values: ArrayLike, name: str) -> np.ndarray:
    """``values`` (host) as int64; ValueError where that would change one (a label 1.7 read
    as 1 would merge two tracks; pandas makes a column of ids float where it holds a NaN)."""
    return _cast(np.asarray(values), "int64", name)


class _Columns:
    """Shared helpers for the column dataclasses; made, one checks its columns against
    ``DTYPES`` (1-D, of that dtype, all of one length)."""

    DTYPES: ClassVar[dict[str, str]] = {}

    def __post_init__(self) -> None:
        self._n = _check_columns(self, self.DTYPES, type(self).__name__)

    def __len__(self) -> int:
        return self._n

    def columns(self) -> dict[str, Array]:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_columns(cls, cols: dict[str, Any]) -> Self:
        """The columns ``cols`` (arrays or sequences) cast to ``DTYPES``; a value the cast
        would turn into another (an integer column's value out of its range or not a whole
        number, a finite number past float32's) raises ValueError naming its column, as
        a column missing does."""
        if missing := [k for k in cls.DTYPES if k not in cols]:
            raise ValueError(f"{cls.__name__} has no column {', '.join(missing)}")
        xp = array_module(next(iter(cols.values()))) if cols else np
        return cls(
            **{
                k: _cast(xp.asarray(cols[k]), dt, f"{cls.__name__}.{k}")
                for k, dt in cls.DTYPES.items()
            }
        )

    def take(self, idx: Array) -> Self:
        return type(self)(**{k: v[idx] for k, v in self.columns().items()})

    def to(self, xp: Any) -> Self:
        """Copy to the array module ``xp`` (numpy or cupy)."""
        conv = (lambda a: a.get()) if xp is np else xp.asarray
        return type(self)(
            **{k: (conv(v) if array_module(v) is not xp else v) for k, v in self.columns().items()}
        )

    def digest(self) -> bytes:
        """A hash of the columns' values: equal columns have equal digests."""
        h = hashlib.blake2b(digest_size=16)
        for column in self.columns().values():
            h.update(np.ascontiguousarray(to_host(column)).data)
        return h.digest()

    def equals(self, other: _Columns) -> bool:
        return type(self) is type(other) and all(
            np.array_equal(to_host(a), to_host(b))
            for a, b in zip(self.columns().values(), other.columns().values(), strict=True)
        )


@dataclass(eq=False)
class Hits(_Columns):
    """Measured 3-D points of one event (mm)."""

    hit_id: Array
    x: Array
    y: Array
    z: Array
    volume_id: Array
    layer_id: Array
    module_id: Array
    DTYPES: ClassVar[dict[str, str]] = HIT_DTYPES


@dataclass(eq=False)
class Particles(_Columns):
    """Truth particles of one event (mm, GeV, elementary charge)."""

    particle_id: Array
    vx: Array
    vy: Array
    vz: Array
    px: Array
    py: Array
    pz: Array
    q: Array
    nhits: Array
    DTYPES: ClassVar[dict[str, str]] = PARTICLE_DTYPES

    @property
    def pt(self) -> Array:
        xp = array_module(self.px)
        return xp.hypot(self.px, self.py)

    @property
    def eta(self) -> Array:
        xp = array_module(self.px)
        return xp.arcsinh(self.pz / xp.maximum(self.pt, 1e-12))

    @property
    def vr(self) -> Array:
        xp = array_module(self.vx)
        return xp.hypot(self.vx, self.vy)

    def vr_from(self, beam_line: tuple[float, float]) -> Array:
        """The production vertices' distance (mm) from the beam line at ``(x, y)``."""
        xp = array_module(self.vx)
        return xp.hypot(self.vx - beam_line[0], self.vy - beam_line[1])


@dataclass(eq=False)
class HitTruth(_Columns):
    """Per-hit truth, aligned with :class:`Hits` (particle_id 0 is noise).

    ``hit_order`` is the hit's index along its particle's trajectory (0 first, -1 noise).
    """

    particle_id: Array
    tx: Array
    ty: Array
    tz: Array
    tpx: Array
    tpy: Array
    tpz: Array
    weight: Array
    hit_order: Array
    DTYPES: ClassVar[dict[str, str]] = HIT_TRUTH_DTYPES


@dataclass(eq=False)
class Truth:
    """Simulation truth of one event: per-hit (aligned with the hits) and per-particle."""

    hits: HitTruth
    particles: Particles

    def equals(self, other: Truth) -> bool:
        return self.hits.equals(other.hits) and self.particles.equals(other.particles)


@dataclass(eq=False)
class Event:
    """One bunch crossing: run and event numbers, hits, and optional truth."""

    run: int
    event: int
    hits: Hits
    truth: Truth | None = None

    def __post_init__(self) -> None:
        if self.truth is not None and len(self.truth.hits) != len(self.hits):
            raise ValueError(f"truth has {len(self.truth.hits)} hits, event has {len(self.hits)}")


@dataclass(eq=False)
class Tracks:
    """Track candidates of one event: CSR hit-index lists plus helix parameters.

    Track ``i`` holds hits ``hit_index[offsets[i]:offsets[i + 1]]`` (indices into the
    event's :class:`Hits`, ordered along the track).
    """

    offsets: Array
    hit_index: Array
    params: dict[str, Array] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.offsets.ndim != 1 or len(self.offsets) < 1:
            raise ValueError("Tracks.offsets must be 1-D with at least one entry")
        n = len(self.offsets) - 1
        for k, v in self.params.items():
            if len(v) != n:
                raise ValueError(f"Tracks.params[{k!r}] has length {len(v)}, expected {n}")

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def sizes(self) -> Array:
        return self.offsets[1:] - self.offsets[:-1]

    @classmethod
    def empty(cls) -> Tracks:
        return cls(
            offsets=np.zeros(1, dtype=np.int64),
            hit_index=np.zeros(0, dtype=np.int64),
            params={k: np.zeros(0, dtype=dt) for k, dt in TRACK_PARAM_DTYPES.items()},
        )

    def hit_lists(self) -> list[np.ndarray]:
        """Per-track hit-index arrays (host); for inspection and tests, not hot paths."""
        off, idx = to_host(self.offsets), to_host(self.hit_index)
        return [idx[off[i] : off[i + 1]] for i in range(len(off) - 1)]

    def track_id_per_hit(self, n_hits: int) -> np.ndarray:
        """TrackML submission labels: track ids from 1, 0 for hits in no track; a hit in
        several tracks (the track builder makes none; a label holds one) gets the last."""
        off, idx = to_host(self.offsets), to_host(self.hit_index)
        labels = np.zeros(n_hits, dtype=np.int64)
        labels[idx] = np.repeat(np.arange(1, len(off), dtype=np.int64), np.diff(off))
        return labels


def alone_as_tracks(track_id: np.ndarray) -> np.ndarray:
    """``track_id`` (0: a hit in no track) with each such hit a track of its own, numbered
    after the largest id: how a submission must give them, as the TrackML scorer reads every
    id, 0 too, as a track."""
    track_id = as_int64(track_id, "track_id")
    alone = track_id == 0
    return np.where(alone, track_id.max(initial=0) + np.cumsum(alone), track_id)
