"""The detector file: the shipped one, and files the loader refuses."""

from __future__ import annotations

import tomllib
from importlib import resources

import numpy as np
import pytest

from streamtrk.detector import DEFAULT_DETECTOR, load_detector, parse_detector

TEXT = resources.files("streamtrk.data").joinpath(DEFAULT_DETECTOR).read_text()


def test_the_shipped_detector_has_each_layer_once() -> None:
    det = parse_detector(tomllib.loads(TEXT))
    ids = set(zip(det.volume_id.tolist(), det.layer_id.tolist(), strict=True))
    assert len(ids) == len(det) == 48 and det.bfield == 2.0


@pytest.mark.parametrize("field", [0.0, float("nan")])
def test_a_field_of_zero_is_refused(field: float) -> None:
    doc = tomllib.loads(TEXT)
    doc["bfield_tesla"] = field  # straight tracks: no pT, no turning sense
    with pytest.raises(ValueError, match="bfield_tesla must be finite and not 0"):
        parse_detector(doc)


def test_a_layer_given_twice_is_refused() -> None:
    doc = tomllib.loads(TEXT)
    layers = doc["volumes"][0]["layers"]
    layers.append(dict(layers[0]))  # its hits would be written under one id for two layers
    vol, lay = doc["volumes"][0]["id"], layers[0]["id"]
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
    volume = [8, det.volume_id[last], 8, rows - 1, rows - 2, 8, info.max, info.min, 8]
    layer = [2, det.layer_id[last], cols - 1, 2, cols - 1, info.max, 2, 2, info.min]
    got = det.layer_index(np.array(volume, dtype), np.array(layer, dtype)).tolist()
    assert got[:2] == [np.flatnonzero((det.volume_id == 8) & (det.layer_id == 2))[0], last]
    assert got[2:] == [-1] * 7
