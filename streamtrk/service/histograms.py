"""Histograms filled from whole arrays: one vectorised update per batch where
prometheus-client's ``Histogram`` takes one ``observe`` call per value (about 76,000 edge
scores of the pruned graph per MU=200 event). Exported as ordinary Prometheus histograms."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

import numpy as np
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from streamtrk.xp import Array, array_module, to_host_packed


class ArrayHistogram(Collector):
    """An unlabelled histogram with fixed bucket bounds; :meth:`observe` takes an array
    (NumPy or CuPy: counted on its device, only the bucket counts come to the host)."""

    def __init__(
        self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry
    ) -> None:
        bounds = np.asarray(buckets, dtype=np.float64)
        if not (np.all(np.isfinite(bounds)) and np.all(np.diff(bounds) > 0)):
            raise ValueError(f"{name}: bucket bounds must be finite and increasing")
        self.name = name
        self.documentation = documentation
        self.bounds = bounds
        self._counts = np.zeros(len(bounds) + 1, dtype=np.int64)  # the last one: above all
        self._sum = 0.0
        self._rounded: dict[np.dtype, list[np.generic]] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def observe(self, values: Array) -> None:
        """Count every value (NaN left out) in the first bucket whose bound is >= it: one
        vectorised comparison per bound, in the values' own type (the bounds rounded down
        to it, so that a float32 value lands where its exact value would), the counts and
        the sum brought to the host in one copy. No sort and no per-value search (a sort was
        most of the physics metrics' time; a branchy search per value, more)."""
        xp = array_module(values)
        nan = xp.isnan(values) if values.dtype.kind == "f" else xp.zeros(0, dtype=bool)
        at_or_below = [xp.count_nonzero(values <= b) for b in self._bounds_in(values.dtype)]
        host = to_host_packed(  # one copy to the host
            {"counts": xp.stack([*at_or_below, xp.count_nonzero(nan)]),
             "sum": values.sum(dtype=xp.float64)}
        )  # fmt: skip
        at_most, n_nan = host["counts"][:-1], int(host["counts"][-1])
        total = float(host["sum"])
        if n_nan:  # NaN in the values (rare): the sum of the others
            total = float(values[~nan].sum(dtype=xp.float64))
        counts = np.diff(at_most, prepend=0, append=len(values) - n_nan)
        with self._lock:
            self._counts += counts
            self._sum += total

    def _bounds_in(self, dtype: np.dtype) -> list[np.generic]:
        """The bounds as scalars of ``dtype`` (a float one; others compare with the float64
        bounds), each the largest value of that type at or below its bound: ``v <= b`` in
        ``dtype`` then holds exactly where it holds for ``v``'s value against the bound."""
        dtype = np.dtype(dtype)
        if dtype.kind != "f" or dtype.itemsize >= self.bounds.itemsize:
            return list(self.bounds)
        if dtype not in self._rounded:
            b = self.bounds.astype(dtype)
            b = np.where(b > self.bounds, np.nextafter(b, dtype.type(-np.inf)), b)
            self._rounded[dtype] = list(b)
        return self._rounded[dtype]

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            cumulative = np.cumsum(self._counts).tolist()
            total = self._sum
        family = HistogramMetricFamily(self.name, self.documentation)
        bounds = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        for bound, count in zip(bounds, cumulative, strict=True):
            family.add_sample(f"{self.name}_bucket", {"le": bound}, count)
        family.add_sample(f"{self.name}_count", {}, cumulative[-1])
        if self.bounds[0] >= 0:  # as prometheus-client: a sum that can fall is left out
            family.add_sample(f"{self.name}_sum", {}, total)
        yield family
