"""Detector description, loaded from a TOML file (the TrackML-like default ships in the package).

The layers are flattened into one table of NumPy arrays (one entry per barrel cylinder or
endcap disk) so that the simulator and the graph builder can work on all layers at once.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from functools import cache, cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from streamtrk.xp import array_module

BARREL, ENDCAP = 0, 1
#: GeV per (T mm): a charged particle on a helix of radius R mm in B tesla has pT = c B R,
#: c = 0.299792458 GeV per (T m) (the speed of light in units that make it so).
GEV_PER_TESLA_MM = 0.299792458e-3
#: mm: the farthest off the z axis (inside the beam pipe) a beam line may be, served or simulated.
MAX_BEAM_SPOT = 20.0
PION_MASS = 0.13957  # GeV: the particles simulated, and the fit's scattering assumption
DEFAULT_DETECTOR = "trackml_detector.toml"
MAX_ID = 1000  # volume and layer ids are below it: Detector.layer_lut has a cell per id pair
MAX_MODULES = 2**31 - 1  # of a layer: module ids (from 1) are the hits' int32 module_id


def layer_keys(lut: Any, volume_id: Any, layer_id: Any) -> Any:
    """Each (volume_id, layer_id)'s cell in ``Detector.layer_lut`` (a NumPy or CuPy table,
    the integer ids alike), as an index of the flattened table: unsigned, ids negative or past
    the table's clipped into its last row or column (whose cells are -1), so that any id is
    safe. Two temporaries the size of the ids, no more (they are a batch's hits)."""
    xp = array_module(lut)
    rows, cols = lut.shape
    key = xp.minimum(_unsigned(volume_id, xp), rows - 1)
    key *= cols
    key += xp.minimum(_unsigned(layer_id, xp), cols - 1)
    return key


def _unsigned(ids: Any, xp: Any) -> Any:
    """Integer ``ids`` viewed as unsigned (a negative id becomes one past any table),
    widened to at least 32 bits so that a table's cell index fits."""
    u = ids.view(f"u{ids.dtype.itemsize}") if ids.dtype.kind == "i" else ids
    return u if u.dtype.itemsize >= 4 else u.astype(xp.uint32)


def lookup_layer(lut: Any, volume_id: Any, layer_id: Any) -> Any:
    """Layer-table index of each (volume_id, layer_id) through ``Detector.layer_lut``; -1
    where unknown (any id is safe)."""
    return lut.reshape(-1)[layer_keys(lut, volume_id, layer_id)]


@dataclass(frozen=True, eq=False)
class Detector:
    """Flattened layer table. Index ``i`` is one layer; ``kind`` is BARREL or ENDCAP.

    Barrel layers use ``r`` and ``half_length``; endcap disks use ``z``, ``r_min``, ``r_max``.
    ``res_a``/``res_b`` are the hit resolutions (r-phi, and z for barrels or r for disks).
    """

    name: str
    version: int
    bfield: float
    envelope_r: float
    envelope_z: float
    volume_id: np.ndarray
    layer_id: np.ndarray
    kind: np.ndarray
    r: np.ndarray
    z: np.ndarray
    half_length: np.ndarray
    r_min: np.ndarray
    r_max: np.ndarray
    x0: np.ndarray
    res_a: np.ndarray
    res_b: np.ndarray
    inefficiency: np.ndarray
    n_phi: np.ndarray
    n_z: np.ndarray
    rings: tuple[tuple[int, ...], ...]

    def __len__(self) -> int:
        return len(self.volume_id)

    @property
    def n_modules(self) -> np.ndarray:
        """Modules per layer."""
        return np.array(
            [
                self.n_phi[i] * self.n_z[i] if self.kind[i] == BARREL else sum(self.rings[i])
                for i in range(len(self))
            ],
            dtype=np.int64,
        )

    def layer_index(self, volume_id: np.ndarray, layer_id: np.ndarray) -> np.ndarray:
        """Table index of each (volume_id, layer_id) pair; -1 where unknown (any id, negative
        or past the table's, is safe)."""
        return lookup_layer(self.layer_lut, np.asarray(volume_id), np.asarray(layer_id))

    @cached_property
    def layer_lut(self) -> np.ndarray:
        """Table index of layer (v, l) at ``[v, l]``, else -1; one more row and column than
        the ids need, all -1, for ids past the table's (``layer_keys``)."""
        lut = np.full((int(self.volume_id.max()) + 2, int(self.layer_id.max()) + 2), -1, np.int64)
        lut[self.volume_id, self.layer_id] = np.arange(len(self))
        return lut

    @cached_property
    def layer_cells(self) -> np.ndarray:
        """Each layer's cell in the flattened ``layer_lut`` (its ``layer_keys``), in table
        order: counts of keys taken at these cells are counts per layer."""
        return self.volume_id.astype(np.int64) * self.layer_lut.shape[1] + self.layer_id

    def module_id(
        self, layer: np.ndarray, x: np.ndarray, y: np.ndarray, z: np.ndarray
    ) -> np.ndarray:
        """Module id (from 1) of points on the given layers (table indices)."""
        row, iphi, _, _ = self._module_cells(layer, x, y, z)
        return (row + iphi + 1).astype(np.int32)

    def overlapping_module(
        self, layer: np.ndarray, x: np.ndarray, y: np.ndarray, z: np.ndarray
    ) -> np.ndarray:
        """Module id of the module overlapping the one holding each point: its neighbour in
        phi (the same z row or ring) on the side of the point's nearer edge."""
        row, iphi, nphi, frac = self._module_cells(layer, x, y, z)
        return (row + np.mod(iphi + np.where(frac < 0.5, -1, 1), nphi) + 1).astype(np.int32)

    def _module_cells(
        self, layer: np.ndarray, x: np.ndarray, y: np.ndarray, z: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per point: the ids before its module's row (z row or ring), its phi index in the
        row, the row's modules, and where in its module's phi range it lies (0 to 1)."""
        phi = np.mod(np.arctan2(y, x), 2 * np.pi) / (2 * np.pi)
        row, nphi = np.zeros(len(layer), dtype=np.int64), np.zeros(len(layer), dtype=np.int64)
        barrel = self.kind[layer] == BARREL
        if barrel.any():
            lb = layer[barrel]
            n, nz, hl = self.n_phi[lb].astype(np.int64), self.n_z[lb], self.half_length[lb]
            iz = np.clip(((z[barrel] + hl) / (2 * hl) * nz).astype(np.int64), 0, nz - 1)
            row[barrel], nphi[barrel] = iz * n, n
        for i in np.unique(layer[~barrel]):
            sel = layer == i
            rings = np.asarray(self.rings[i], dtype=np.int64)
            width = (self.r_max[i] - self.r_min[i]) / len(rings)
            r = np.hypot(x[sel], y[sel])
            ring = np.clip(((r - self.r_min[i]) / width).astype(np.int64), 0, len(rings) - 1)
            row[sel] = np.concatenate([[0], np.cumsum(rings)[:-1]])[ring]
            nphi[sel] = rings[ring]
        cells = phi * nphi
        iphi = np.minimum(cells.astype(np.int64), nphi - 1)
        return row, iphi, nphi, cells - iphi


def highland(p: Any, t: Any, xp: Any = np) -> Any:
    """Multiple-scattering angle (rad, per plane) of a pion of momentum ``p`` (GeV) through
    ``t`` radiation lengths (Highland's formula), on ``xp``'s arrays."""
    t = xp.maximum(t, 1e-12)
    beta = p / xp.sqrt(p * p + PION_MASS**2)
    log_term = xp.maximum(1 + 0.038 * xp.log(t / beta**2), 0.0)
    return 0.0136 / (beta * p) * xp.sqrt(t) * log_term


def _float(d: dict[str, Any], key: str, where: str, default: float | None = None) -> float:
    """``d[key]``, a number (an integer is one; not a boolean or a string)."""
    if key not in d and default is None:
        raise ValueError(f"detector file: {where} lacks {key!r}")
    value = d.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"detector file: {where} {key} must be a number, got {value!r}")
    return float(value)


def _int(d: dict[str, Any], key: str, where: str) -> int:
    """``d[key]``, an integer (not a boolean, a float or a string)."""
    if key not in d:
        raise ValueError(f"detector file: {where} lacks {key!r}")
    value = d[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"detector file: {where} {key} must be an integer, got {value!r}")
    return value


def _check_row(row: dict[str, Any], envelope_r: float, envelope_z: float) -> None:
    """ValueError naming the first value of a layer-table row out of its range (a NaN fails
    every comparison: it is refused too)."""
    res = [row["res_a"], row["res_b"]]
    _most = f"at most {MAX_MODULES}"
    checks: list[tuple[str, Any, bool, str]] = [
        ("id", row["layer_id"], 0 <= row["layer_id"] < MAX_ID, f">= 0 and below {MAX_ID}"),
        # > 0: the fit weighs each hit by its inverse variance (0 made every track through
        # the layer NaN)
        ("resolution", res, all(0 < v < math.inf for v in res), "two finite numbers > 0"),
        ("inefficiency", row["inefficiency"], 0 <= row["inefficiency"] <= 1, "in [0, 1]"),
        ("x0", row["x0"], 0 <= row["x0"] < math.inf, "a finite number >= 0"),
    ]
    if row["kind"] == BARREL:
        r, hl = row["r"], row["half_length"]
        checks += [
            ("r", r, 0 < r < envelope_r, f"> 0 and below envelope_r ({envelope_r:g})"),
            ("half_length", hl, 0 < hl < math.inf, "a finite number > 0"),
            ("n_phi", row["n_phi"], row["n_phi"] >= 1, ">= 1"),
            ("n_z", row["n_z"], row["n_z"] >= 1, ">= 1"),
            ("modules (n_phi x n_z)", n := row["n_phi"] * row["n_z"], n <= MAX_MODULES, _most),
        ]
    else:
        z, r_min, r_max, rings = row["z"], row["r_min"], row["r_max"], row["rings"]
        checks += [
            ("z", z, abs(z) < envelope_z, f"within +-envelope_z ({envelope_z:g})"),
            ("r_min", r_min, r_min >= 0, ">= 0"),
            ("r_max", r_max, r_min < r_max < math.inf, "finite and above r_min"),
            ("rings", list(rings), min(rings, default=0) >= 1, "module counts >= 1, one at least"),
            ("modules (sum of rings)", n := sum(rings), n <= MAX_MODULES, _most),
        ]
    for name, value, ok, rule in checks:
        if not ok:
            where = f"volume {row['volume_id']} layer {row['layer_id']}"
            raise ValueError(f"detector file: {where} {name} must be {rule}, got {value}")


# The keys of the detector file's tables: others (a typo) are refused, not ignored.
_HEADER_KEYS = {"name", "version", "bfield_tesla", "envelope_r", "envelope_z", "volumes"}
_VOLUME_KEYS = {"id", "name", "kind", "resolution", "inefficiency", "x0", "layers"}
_ENDCAP_KEYS = {"r_min", "r_max", "rings"}  # of an endcap volume, besides _VOLUME_KEYS
_LAYER_KEYS = {"id", "x0", "r", "half_length", "n_phi", "n_z"}  # of a barrel's layer
_DISK_KEYS = {"id", "x0", "z"}  # of an endcap's layer


def _known_keys(table: dict[str, Any], known: set[str], where: str) -> None:
    if unknown := sorted(set(table) - known):
        raise ValueError(
            f"detector file: {where} has unknown keys {', '.join(unknown)} (known: "
            f"{', '.join(sorted(known))})"
        )


def _volume_rows(vol: dict[str, Any]) -> list[dict[str, Any]]:
    """The detector table's rows of one volume's layers (the values a layer's kind lacks:
    NaN or 0)."""
    rows: list[dict[str, Any]] = []
    if not isinstance(vol, dict):
        raise ValueError(f"detector file: each of volumes must be a table, got {vol!r}")
    where = f"volume {vol.get('id')}"
    vid = _int(vol, "id", where)
    if not 0 <= vid < MAX_ID:
        raise ValueError(f"detector file: volume id must be >= 0 and below {MAX_ID}, got {vid}")
    kinds = {"barrel": BARREL, "endcap": ENDCAP}
    if vol.get("kind") not in kinds:
        raise ValueError(
            f"detector file: {where} kind must be barrel or endcap, got {vol.get('kind')!r}"
        )
    kind = kinds[vol["kind"]]
    _known_keys(vol, _VOLUME_KEYS | (_ENDCAP_KEYS if kind == ENDCAP else set()), where)
    resolution = vol.get("resolution")
    if not (isinstance(resolution, list) and len(resolution) == 2):
        raise ValueError(
            f"detector file: {where} resolution must be two numbers, got {resolution!r}"
        )
    res_a, res_b = (_float({"resolution": v}, "resolution", where) for v in resolution)
    layers = vol.get("layers")
    bad = (
        next((la for la in layers if not isinstance(la, dict)), None)
        if isinstance(layers, list)
        else layers
    )
    if bad is not None or not layers:
        raise ValueError(f"detector file: {where} layers must be a list of tables, got {bad!r}")
    for lay in layers:
        where = f"volume {vid} layer {lay.get('id')}"
        _known_keys(lay, _LAYER_KEYS if kind == BARREL else _DISK_KEYS, where)
        x0 = _float(vol, "x0", where, 0.0)
        row = {
            "volume_id": vid,
            "layer_id": _int(lay, "id", where),
            "kind": kind,
            "res_a": res_a,
            "res_b": res_b,
            "inefficiency": _float(vol, "inefficiency", where, 0.0),
            "x0": _float(lay, "x0", where, x0),
            "r": np.nan,
            "z": np.nan,
            "half_length": np.nan,
            "r_min": np.nan,
            "r_max": np.nan,
            "n_phi": 0,
            "n_z": 0,
            "rings": (),
        }
        if kind == BARREL:
            row |= {
                "r": _float(lay, "r", where),
                "half_length": _float(lay, "half_length", where),
                "n_phi": _int(lay, "n_phi", where),
                "n_z": _int(lay, "n_z", where),
            }
        else:
            row |= {
                "z": _float(lay, "z", where),
                "r_min": _float(vol, "r_min", where),
                "r_max": _float(vol, "r_max", where),
                "rings": tuple(_int({"rings": n}, "rings", where) for n in vol.get("rings", [])),
            }
        rows.append(row)
    return rows


def parse_detector(doc: dict[str, Any]) -> Detector:
    """Build a :class:`Detector` from a parsed TOML document."""
    _known_keys(doc, _HEADER_KEYS, "the header")
    envelope_r = _float(doc, "envelope_r", "the header")
    envelope_z = _float(doc, "envelope_z", "the header")
    for name, value in (("envelope_r", envelope_r), ("envelope_z", envelope_z)):
        if not 0 < value < math.inf:
            raise ValueError(f"detector file: {name} must be a finite number > 0, got {value}")
    volumes = doc.get("volumes")
    if not (isinstance(volumes, list) and volumes):
        raise ValueError(f"detector file: volumes must be a list of tables, got {volumes!r}")
    rows = [row for vol in volumes for row in _volume_rows(vol)]
    for row in rows:
        _check_row(row, envelope_r, envelope_z)

    def col(name: str, dtype: type) -> np.ndarray:
        return np.array([r[name] for r in rows], dtype=dtype)

    ids = [(r["volume_id"], r["layer_id"]) for r in rows]
    if len(set(ids)) != len(ids):
        twice = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"detector file: volume {twice[0]} layer {twice[1]} is given twice")
    bfield = _float(doc, "bfield_tesla", "the header")
    if not (math.isfinite(bfield) and bfield != 0):
        raise ValueError(f"detector file: bfield_tesla must be finite and not 0, got {bfield}")
    if "name" not in doc:
        raise ValueError("detector file: the header lacks 'name'")
    return Detector(
        name=str(doc["name"]),
        version=_int(doc, "version", "the header"),
        bfield=bfield,
        envelope_r=envelope_r,
        envelope_z=envelope_z,
        volume_id=col("volume_id", np.int32),
        layer_id=col("layer_id", np.int32),
        kind=col("kind", np.int8),
        r=col("r", np.float64),
        z=col("z", np.float64),
        half_length=col("half_length", np.float64),
        r_min=col("r_min", np.float64),
        r_max=col("r_max", np.float64),
        x0=col("x0", np.float64),
        res_a=col("res_a", np.float64),
        res_b=col("res_b", np.float64),
        inefficiency=col("inefficiency", np.float64),
        n_phi=col("n_phi", np.int64),
        n_z=col("n_z", np.int64),
        rings=tuple(r["rings"] for r in rows),
    )


@cache
def load_detector(path: str | Path | None = None) -> Detector:
    """Load a detector file; ``None`` loads the shipped TrackML-like detector."""
    if path is None:
        text = resources.files("streamtrk.data").joinpath(DEFAULT_DETECTOR).read_text()
    else:
        try:
            text = Path(path).read_text(encoding="utf-8-sig")  # a BOM as editors write it
        except UnicodeDecodeError as exc:  # a recording given for it: name the file
            raise ValueError(f"invalid detector file {path}: not UTF-8 text ({exc})") from None
    try:
        return parse_detector(tomllib.loads(text))
    except (KeyError, TypeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"invalid detector file {path or DEFAULT_DETECTOR}: {exc}") from exc
    except ValueError as exc:  # parse_detector's, which knows no file: named
        raise ValueError(f"{path or DEFAULT_DETECTOR}: {exc}") from exc
