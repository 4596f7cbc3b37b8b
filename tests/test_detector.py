"""The detector file: the shipped one, and files the loader refuses."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from importlib import resources
from typing import Any

import numpy as np
import pytest

from streamtrk.detector import (
    DEFAULT_DETECTOR,
    highland,
    layer_keys,
    load_detector,
    parse_detector,
)

TEXT = resources.files("streamtrk.data").joinpath(DEFAULT_DETECTOR).read_text()


def test_the_shipped_detector_has_each_layer_once() -> None:
    det = parse_detector(tomllib.loads(TEXT))
    ids = set(zip(det.volume_id.tolist(), det.layer_id.tolist(), strict=True))
    assert len(ids) == len(det) == 48 and det.bfield == 2.0


def test_a_detector_file_with_a_byte_order_mark_is_read(tmp_path) -> None:
    """As editors write UTF-8 (and as the daemon's configuration reads): not "Invalid
    statement (at line 1, column 1)"."""
    path = tmp_path / "det.toml"
    path.write_bytes(b"\xef\xbb\xbf" + TEXT.encode())
    assert len(load_detector(path)) == len(load_detector())


@pytest.mark.parametrize("field", [0.0, float("nan")])
def test_a_field_of_zero_is_refused(field: float) -> None:
    doc = tomllib.loads(TEXT)
    doc["bfield_tesla"] = field  # straight tracks: no pT, no turning sense
    with pytest.raises(ValueError, match="bfield_tesla must be finite and not 0"):
        parse_detector(doc)


def test_a_layer_given_twice_is_refused() -> None:
    doc = tomllib.loads(TEXT)
    layers = doc["volumes"][-1]["layers"]
    layers.append(dict(layers[-1]))  # its hits would be written under one id for two layers
    vol, lay = doc["volumes"][-1]["id"], layers[-1]["id"]
    with pytest.raises(ValueError, match=f"volume {vol} layer {lay} is given twice"):
        parse_detector(doc)


@pytest.mark.parametrize("dtype", ["i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8"])
def test_layer_lookup_takes_ids_of_any_integer_type(dtype: str) -> None:
    """Ids of every width and sign find their layer; those of no layer (negative, past the
    table's, at its edge) find -1, with no overflow into another layer."""
    det = load_detector()
    rows, cols = det.layer_lut.shape
    info = np.iinfo(dtype)
    last = len(det) - 1  # the highest ids: their cell is past 8 bits
    # A volume that has the highest layer id: a layer id past the table is not that layer.
    top = det.volume_id[np.argmax(det.layer_id)]
    volume = [8, det.volume_id[last], 8, rows - 1, rows - 2, 8, info.max, info.min, 8]
    layer = [2, det.layer_id[last], cols - 1, 2, cols - 1, info.max, 2, 2, info.min]
    volume += [top, top, info.max, rows - 1]
    layer += [cols - 1, info.max, info.max, cols - 1]
    got = det.layer_index(np.array(volume, dtype), np.array(layer, dtype)).tolist()
    assert got[:2] == [np.flatnonzero((det.volume_id == 8) & (det.layer_id == 2))[0], last]
    assert got[2:] == [-1] * 11


@pytest.mark.parametrize(
    ("p", "t", "theta0"),
    [
        # Highland (PDG): 13.6 MeV / (beta c p) sqrt(t) (1 + 0.038 ln(t / beta^2)), pion mass
        # 139.57 MeV. p = 1 GeV: beta = 0.990400, log term 1 + 0.038 ln(0.01 / 0.980892)
        # = 0.825737, so 0.0136 / 0.990400 * 0.1 * 0.825737 = 1.13389 mrad.
        (1.0, 0.01, 1.13389e-3),
        # p = 0.2 GeV: beta = 0.2 / sqrt(0.04 + 0.019480) = 0.820059; log term
        # 1 + 0.038 ln(0.02 / 0.672497) = 0.866419: 0.0136 / 0.164012 * 0.141421 * 0.866419.
        (0.2, 0.02, 10.1603e-3),
        # One radiation length at 10 GeV: beta = 0.999903, log term 1 + 0.038 * 0.000195.
        (10.0, 1.0, 1.36014e-3),
    ],
)
def test_highland_gives_the_pdg_scattering_angle(p: float, t: float, theta0: float) -> None:
    got = highland(np.array([p]), np.array([t]))[0]
    assert got == pytest.approx(theta0, rel=2e-5)


def test_highland_of_no_material_is_no_scattering() -> None:
    """Down to 1e-12 radiation lengths (a layer without material in a test), the log term
    falls below 0 and is held at 0: no deflection, not a negative or NaN width."""
    assert highland(np.array([1.0, 1.0]), np.array([1e-12, 0.0])).tolist() == [0.0, 0.0]


def test_module_ids_follow_the_detector_file() -> None:
    """Barrel module = iz * n_phi + iphi + 1 (iz counted from -half_length, iphi from phi 0,
    anticlockwise); disk module = modules of the inner rings + iphi + 1, rings of equal width
    from r_min: the rule in the detector file's header, on points at cell centres and past
    the layer's edges (clipped into the outermost cells)."""
    det = load_detector()
    b = int(np.flatnonzero((det.volume_id == 13) & (det.layer_id == 4))[0])
    nphi, nz, hl, r = int(det.n_phi[b]), int(det.n_z[b]), det.half_length[b], det.r[b]
    iphi = np.array([0, 5, nphi - 1, nphi - 1, 0])
    iz = np.array([0, 7, nz - 1, 3, nz - 1])
    phi = (iphi + 0.5) * 2 * np.pi / nphi
    z = -hl + (iz + 0.5) * 2 * hl / nz
    z[3:] = [-hl - 2.0, hl + 2.0]  # smeared past the ends: the end cells
    iz[3] = 0
    got = det.module_id(np.full(5, b), r * np.cos(phi), r * np.sin(phi), z)
    assert got.tolist() == (iz * nphi + iphi + 1).tolist()

    d = int(np.flatnonzero((det.volume_id == 14) & (det.layer_id == 6))[0])
    rings = det.rings[d]  # (40, 56, 72) between r_min and r_max
    width = (det.r_max[d] - det.r_min[d]) / len(rings)
    ring = np.array([0, 1, 2, 2, 0])
    iphi = np.array([3, 0, rings[2] - 1, 10, 0])
    rr = det.r_min[d] + (ring + 0.5) * width
    rr[3:] = [det.r_max[d] + 1.0, det.r_min[d] - 1.0]  # past the edges: outer, inner ring
    phi = (iphi + 0.5) * 2 * np.pi / np.array(rings)[ring]
    got = det.module_id(np.full(5, d), rr * np.cos(phi), rr * np.sin(phi), np.full(5, det.z[d]))
    first = np.array([0, rings[0], rings[0] + rings[1]])
    assert got.tolist() == (first[ring] + iphi + 1).tolist()
    assert det.n_modules[[b, d]].tolist() == [nphi * nz, sum(rings)]
    # Just below the +x axis, phi mod 2 pi rounds to 2 pi: the last sector, not one past it.
    x, y = np.array([r, 500.0]), np.array([-1e-300, -1e-300])
    got = det.module_id(np.array([b, d]), x, y, np.array([0.0, det.z[d]]))
    assert got.tolist() == [(nz // 2) * nphi + nphi, rings[0] + rings[1]]


def test_the_overlapping_module_is_the_neighbour_in_phi_on_the_nearer_edge() -> None:
    """A point in the lower half of its module's phi range overlaps the module before it,
    one in the upper half the module after it, in its z row (barrel) or ring (disk), round
    the circle at phi 0."""
    det = load_detector()
    b = int(np.flatnonzero((det.volume_id == 13) & (det.layer_id == 4))[0])
    nphi, r = int(det.n_phi[b]), det.r[b]
    iphi = np.array([5, 5, 0, nphi - 1])
    phi = (iphi + np.array([0.25, 0.75, 0.25, 0.75])) * 2 * np.pi / nphi
    z = np.full(4, det.half_length[b] / 3)
    row = det.module_id(np.full(4, b), r * np.cos(phi), r * np.sin(phi), z) - 1 - iphi
    got = det.overlapping_module(np.full(4, b), r * np.cos(phi), r * np.sin(phi), z)
    assert got.tolist() == (row + np.array([4, 6, nphi - 1, 0]) + 1).tolist()
    d = int(np.flatnonzero((det.volume_id == 14) & (det.layer_id == 6))[0])
    rings = det.rings[d]
    rr = np.full(2, det.r_min[d] + 1.5 * (det.r_max[d] - det.r_min[d]) / len(rings))  # ring 1
    phi = (np.array([0, rings[1] - 1]) + np.array([0.25, 0.75])) * 2 * np.pi / rings[1]
    got = det.overlapping_module(np.full(2, d), rr * np.cos(phi), rr * np.sin(phi), det.z[[d, d]])
    assert got.tolist() == [rings[0] + rings[1], rings[0] + 1]


def test_material_and_inefficiency_defaults_of_the_detector_file() -> None:
    """A layer's x0 is its own, else its volume's; a volume without ``inefficiency`` loses no
    hits."""
    doc = tomllib.loads(TEXT)
    barrel = next(v for v in doc["volumes"] if v["kind"] == "barrel")
    disks = next(v for v in doc["volumes"] if v["kind"] == "endcap")
    barrel["x0"] = 0.5
    del barrel["layers"][0]["x0"]
    barrel["layers"][1]["x0"] = 0.25
    disks["x0"] = 0.125
    del disks["inefficiency"]
    bare = doc["volumes"][-1]  # no x0 anywhere: 0, which propagation refuses
    bare.pop("x0", None)
    for la in bare["layers"]:
        la.pop("x0", None)
    det = parse_detector(doc)
    assert np.all(det.x0[det.volume_id == bare["id"]] == 0)
    lay = [
        int(np.flatnonzero((det.volume_id == barrel["id"]) & (det.layer_id == la["id"]))[0])
        for la in barrel["layers"][:2]
    ]
    assert det.x0[lay].tolist() == [0.5, 0.25]
    on_disks = det.volume_id == disks["id"]
    assert np.all(det.x0[on_disks] == 0.125) and np.all(det.inefficiency[on_disks] == 0)


def _set(path: str, value: object) -> Callable[[dict[str, Any]], None]:
    """A change of the shipped document: ``value`` at ``path`` (keys and list indices)."""

    def change(doc: dict[str, Any]) -> None:
        *parents, last = [int(k) if k.isdigit() else k for k in path.split(".")]
        node: Any = doc
        for key in parents:
            node = node[key]
        node[last] = value

    return change


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (_set("envelope_r", float("nan")), "envelope_r must be a finite number > 0, got nan"),
        (_set("envelope_z", -3000.0), "envelope_z must be a finite number > 0"),
        (_set("version", "x"), "the header version must be an integer, got 'x'"),
        (lambda doc: doc.pop("name"), "the header lacks 'name'"),  # was a bare KeyError
        (_set("volumes", []), "volumes must be a list of tables"),
        (_set("volumes.0.kind", "barel"), "volume 8 kind must be barrel or endcap, got 'barel'"),
        (_set("volumes.0.id", -8), "volume id must be >= 0 and below 1000, got -8"),
        (_set("volumes.0.id", 10**8), "volume id must be >= 0 and below 1000"),
        (_set("volumes.0.id", 1000), "volume id must be >= 0 and below 1000, got 1000"),
        (_set("envelope_r", float("inf")), "envelope_r must be a finite number > 0, got inf"),
        (_set("volumes.0.layers.0.id", 1000), "layer 1000 id must be >= 0 and below 1000"),
        (_set("volumes.0.layers.0.id", True), "id must be an integer, got True"),
        (_set("volumes.0.layers.0.n_phi", True), "n_phi must be an integer, got True"),
        (_set("volumes.0.resolution", [0.1, 0.1, 1]), "volume 8 resolution must be two numbers"),
        (_set("volumes.0.resolution", [-0.1, 0.1]), "resolution must be two finite numbers > 0"),
        (_set("volumes.0.resolution", [0.015, 0]), "resolution must be two finite numbers > 0"),
        (_set("volumes.0.resolution", [0.1, float("nan")]), "resolution must be two finite"),
        (_set("volumes.0.inefficiency", 2.0), "volume 8 layer 2 inefficiency must be in"),
        (_set("volumes.0.layers.0", 5), "volume 8 layers must be a list of tables, got 5"),
        (_set("volumes.0.layers.0.id", 2.5), "layer 2.5 id must be an integer, got 2.5"),
        (_set("volumes.0.layers.0.r", "abc"), "volume 8 layer 2 r must be a number, got 'abc'"),
        (_set("volumes.0.layers.0.r", True), "layer 2 r must be a number, got True"),
        (_set("volumes.0.layers.0.r", -32.0), "layer 2 r must be > 0 and below envelope_r"),
        (_set("volumes.0.layers.0.r", 1100.0), "layer 2 r must be > 0 and below envelope_r"),
        (_set("volumes.0.layers.0.half_length", 0.0), "half_length must be a finite number > 0"),
        (_set("volumes.0.layers.0.n_phi", 0), "volume 8 layer 2 n_phi must be >= 1, got 0"),
        (_set("volumes.0.layers.0.n_z", 1.5), "layer 2 n_z must be an integer, got 1.5"),
        (_set("volumes.0.layers.0.x0", -1.0), "layer 2 x0 must be a finite number >= 0"),
        (_set("volumes.3.rings", []), "volume 7 layer 2 rings must be module counts >= 1"),
        (_set("volumes.3.rings", [0, 48]), "rings must be module counts >= 1, one at least"),
        (_set("volumes.3.r_min", 300.0), "volume 7 layer 2 r_max must be finite and above r_min"),
        (lambda doc: doc["volumes"][3].update(r_min=doc["volumes"][3]["r_max"]), "r_max must be"),
        (_set("volumes.3.layers.0.z", -3000.0), "layer 2 z must be within \\+-envelope_z"),
        # Module ids past int32 (the hits' module_id): simulated as negative, then refused
        # by the recording's writer ("column 'module_id' has negative values").
        (_set("volumes.0.layers.0.n_phi", 2**31), "layer 2 modules \\(n_phi x n_z\\) must be"),
        (_set("volumes.3.rings", [2**30, 2**30]), "layer 2 modules \\(sum of rings\\) must"),
        # Typos, which loaded as the key's default (no inefficiency) or not at all.
        (_set("bfield", 4.0), "the header has unknown keys bfield \\(known: bfield_tesla, "),
        (_set("volumes.0.inefficency", 0.5), "volume 8 has unknown keys inefficency \\(known: "),
        (_set("volumes.0.rings", [3]), "volume 8 has unknown keys rings"),  # a barrel's
        (_set("volumes.0.layers.0.nphi", 3), "volume 8 layer 2 has unknown keys nphi \\(known"),
        (_set("volumes.3.layers.0.r", 3.0), "volume 7 layer 2 has unknown keys r \\(known"),
    ],
)
def test_a_detector_file_with_values_out_of_range_is_refused(
    change: Callable[[dict[str, Any]], None], match: str
) -> None:
    """Nonsense values (no modules, a layer outside the envelope, NaN, ids that do not fit
    the layer table or the wire, a typo in the kind) are refused in one line naming the
    layer; they loaded, and simulated module id 0 or below, or failed later in NumPy."""
    doc = tomllib.loads(TEXT)
    change(doc)
    with pytest.raises(ValueError, match=f"detector file: .*{match}"):
        parse_detector(doc)


def test_a_layer_that_reads_nothing_is_taken() -> None:
    """inefficiency 1 is in [0, 1]: a dead layer described in the file."""
    doc = tomllib.loads(TEXT)
    _set("volumes.0.inefficiency", 1.0)(doc)
    assert parse_detector(doc).inefficiency.max() == 1.0


def test_a_detector_file_that_is_no_text_is_named(tmp_path) -> None:
    """A recording given as ``--detector``: it failed with the codec's words alone ("'utf-8'
    codec can't decode byte ..."), no file named."""
    path = tmp_path / "run.stk"
    path.write_bytes(b"STKREC\x00\x01\xa6\xff")
    with pytest.raises(ValueError, match=f"^invalid detector file {path}: not UTF-8 text"):
        load_detector(path)


def test_a_layer_of_as_many_modules_as_int32_ids_allow_is_taken() -> None:
    """Module ids run from 1 to the layer's module count, an int32 (the hits' module_id):
    2**31 - 1 modules on a barrel layer or a disk is the most, and is taken."""
    doc = tomllib.loads(TEXT)
    _set("volumes.0.layers.0.n_phi", 2**31 - 1)(doc)
    _set("volumes.0.layers.0.n_z", 1)(doc)
    _set("volumes.3.rings", [2**30, 2**30 - 1])(doc)
    det = parse_detector(doc)
    assert np.sort(det.n_modules)[-2:].tolist() == [2**31 - 1, 2**31 - 1]


def test_each_layers_cell_is_its_key_in_the_lookup_table() -> None:
    """``layer_cells`` is each layer's ``layer_keys`` cell, in table order: the flattened
    ``layer_lut`` holds the layer's own index there (counts per cell are counts per layer)."""
    det = load_detector()
    keys = layer_keys(det.layer_lut, det.volume_id, det.layer_id)
    assert det.layer_cells.tolist() == keys.tolist()
    assert det.layer_lut.reshape(-1)[det.layer_cells].tolist() == list(range(len(det)))


def test_a_disk_from_the_axis_is_taken() -> None:
    """r_min >= 0: a disk whose inner ring starts on the z axis (r_min = 0) is taken, and a
    point near its centre is in its first ring's modules."""
    doc = tomllib.loads(TEXT)
    _set("volumes.3.r_min", 0.0)(doc)
    det = parse_detector(doc)
    d = np.flatnonzero(det.volume_id == doc["volumes"][3]["id"])
    assert np.all(det.r_min[d] == 0.0)
    got = det.module_id(d[:1], np.array([0.5]), np.array([0.0]), det.z[d[:1]])
    assert got.tolist() == [1]
