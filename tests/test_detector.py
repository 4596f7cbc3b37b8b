"""The detector file: the shipped one, and files the loader refuses."""

from __future__ import annotations

import tomllib
from importlib import resources

import pytest

from streamtrk.detector import DEFAULT_DETECTOR, parse_detector

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
