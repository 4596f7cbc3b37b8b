"""Array histograms against prometheus-client's own ``Histogram`` fed the same values one by
one: buckets (``le``), count and sum, for float32, float64 and integer arrays."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.utils import floatToGoString

from streamtrk.service.histograms import ArrayHistogram
from streamtrk.service.physics import EDGE_SCORE_BUCKETS, PHI_BUCKETS


def _samples(registry: CollectorRegistry, name: str) -> dict[tuple[str, str], float]:
    return {
        (s.name, s.labels.get("le", "")): s.value
        for family in registry.collect()
        for s in family.samples
        if s.name.startswith(name) and not s.name.endswith("_created")
    }


def _both(bounds: Sequence[float], batches: Sequence[np.ndarray]) -> tuple[dict, dict]:
    """The samples of an ArrayHistogram fed ``batches`` and of prometheus-client's fed their
    values one by one (NaN left out: prometheus-client would count it in +Inf)."""
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    hist = ArrayHistogram("x_meters", "doc", bounds, ours)
    reference = Histogram("x_meters", "doc", buckets=bounds, registry=theirs)
    for values in batches:
        hist.observe(values)
        for v in values.tolist():
            if v == v:
                reference.observe(v)
    return _samples(ours, "x_meters"), _samples(theirs, "x_meters")


def test_values_land_where_prometheus_client_puts_them_nan_left_out() -> None:
    values = np.array([-3.0, -1.0, -0.5, 0.0, 0.25, 0.5, 0.5, 1.0, 2.0, 7.0], dtype=np.float32)
    got, want = _both((-1.0, 0.0, 0.5, 2.0), [values[:4], np.append(values[4:], np.nan)])
    assert got == want
    # a value on a bound counts in that bound's bucket (le: less or equal)
    assert got[("x_meters_bucket", "0.5")] == 7 and got[("x_meters_count", "")] == 10


def test_float32_values_next_to_bounds_that_float32_cannot_hold() -> None:
    """float32(0.1) is above 0.1: it belongs above the 0.1 bound, its lower neighbour below;
    float32 pi, the phi buckets' last bound, in that bucket."""
    bounds = np.array(EDGE_SCORE_BUCKETS)
    at = bounds.astype(np.float32)
    values = np.concatenate([at, np.nextafter(at, np.float32(0)), np.nextafter(at, np.float32(1))])
    got, want = _both(EDGE_SCORE_BUCKETS, [values])
    assert got == want
    got, want = _both(EDGE_SCORE_BUCKETS, [np.array([0.1], dtype=np.float32)])
    assert (
        got == want and got[("x_meters_bucket", "0.1")] == 0 == got[("x_meters_bucket", "0.2")] - 1
    )
    phi = np.array([np.pi, -np.pi, 0.0], dtype=np.float32)
    got, want = _both(PHI_BUCKETS, [phi])
    assert (
        got == want
        and got[("x_meters_bucket", "+Inf")]
        == got[("x_meters_bucket", floatToGoString(PHI_BUCKETS[-1]))]
    )


@pytest.mark.parametrize("dtype", [np.float64, np.int64, np.int32])
def test_other_dtypes_are_counted_as_their_values(dtype: type) -> None:
    values: np.ndarray = np.array([0, 2, 3, 3, 4, 12, 13, 100], dtype=dtype)
    got, want = _both((3, 3.5, 12.5), [values, values[:3]])
    assert got == want and got[("x_meters_bucket", "3.0")] == 7


def test_the_sum_leaves_nan_out() -> None:
    values = np.array([0.25, np.nan, 2.0, np.nan], dtype=np.float32)
    got, want = _both((1.0, 4.0), [values, np.array([], dtype=np.float32)])
    assert got == want and got[("x_meters_sum", "")] == 2.25


def test_bounds_must_be_finite_and_increasing() -> None:
    with pytest.raises(ValueError, match="increasing"):
        ArrayHistogram("y", "doc", (1.0, 1.0), CollectorRegistry())
    with pytest.raises(ValueError, match="finite"):
        ArrayHistogram("z", "doc", (1.0, float("inf")), CollectorRegistry())


def test_the_sum_of_float32_values_with_nan_is_taken_in_float64() -> None:
    """A float32 sum loses what is below the running total's precision (1e8 + 1 is 1e8 in
    float32): the sum is taken in float64 with NaN in the values as without."""
    values = np.array([1e8, 1.0, 1.0, 1.0, 1.0], dtype=np.float32)
    registry = CollectorRegistry()
    hist = ArrayHistogram("x_meters", "doc", (1.0, 4.0), registry)
    hist.observe(values)
    hist.observe(np.append(values, np.float32("nan")))
    assert _samples(registry, "x_meters")[("x_meters_sum", "")] == 2 * 100_000_004.0


def test_counts_go_past_two_to_the_31() -> None:
    """About 76,000 edge scores an event: 2**31 of them in under an hour at full rate."""
    registry = CollectorRegistry()
    hist = ArrayHistogram("x_meters", "doc", (1.0,), registry)
    hist._counts[:] = 2**31 - 1  # as after hours of serving
    hist.observe(np.array([0.5, 2.0]))
    got = _samples(registry, "x_meters")
    assert got[("x_meters_bucket", "1.0")] == 2**31
    assert got[("x_meters_count", "")] == 2 * 2**31


def test_bounds_from_0_keep_the_sum_as_prometheus_client_does() -> None:
    """A sum is left out only where a value can be negative (a bound below 0): bounds
    starting at 0 (counts, distances) keep it."""
    ours, theirs = _both((0.0, 1.0, 2.0), [np.array([0.0, 0.5, 3.0])])
    assert ours == theirs and ours[("x_meters_sum", "")] == 3.5
