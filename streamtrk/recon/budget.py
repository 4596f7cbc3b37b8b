"""Work budgets: how much graph an event may make before the chain refuses it.

A valid event can be made to cost any amount of time and memory: hits piled in one place
make every pair of them on neighbouring layers a doublet candidate (hits squared) and every
pair of doublets through a hit a triplet candidate (hits cubed). 1,200 such hits (a 38 kB
message) took 20-40 s and 3.7 GB, 2,000 ran out of memory. The chain raises
:class:`EventTooDense` (the daemon answers ``too_dense``) for events over their budget in:

- doublet candidates (hits in the search windows, before the cuts), counted before they
  are expanded: at most ``candidates_per_hit`` per hit on a layer, plus ``allowance``;
- doublets (edges after the cuts), counted before pruning (on the GPU before the kernels
  write them): at most ``edges_per_hit`` per hit on a layer, plus ``allowance``;
- triplet candidates of the pruning stage, counted before they are expanded: at most
  ``triplets_per_hit`` per hit that an edge touches, plus ``allowance``.

Hits that can make no edge (on no layer, or off their layer's surface by more than the
search windows reach: the graph's ``layer_margin`` plus the beam line's offset, or on the
beam line) buy no budget, so
padding an event with them does not raise its limits; hits that can (on a layer's surface)
do, so an event's cost is bounded by those hits.

Simulated events use far less (per hit, ``bench/budget.py``): at MU=200 about 60
candidates, 9 doublets and 15 triplet candidates; at MU=400 about 110, 15 and 46. The
defaults leave about four times the MU=400 figures, and bound an event's working set by its
hits (40 bytes a candidate, in chunks; 40 a doublet as built, about 190 through the chain;
8 a compatible triplet): a MU=200 event with a pile just within the budget took 2.3 s and
720 MiB peak RSS, against 0.64 s and 557 MiB without the pile (``bench/budget.py``); hits as
dense as the doublets' budget admits everywhere, about 11 KiB a hit
(``bench/dense_events.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from streamtrk.event import Event
from streamtrk.xp import Array, array_module, bincount, to_host

T = TypeVar("T")
R = TypeVar("R")
_MOST = int(np.iinfo(np.int64).max)  # the largest allowance: more than any count


@dataclass(frozen=True)
class Budget:
    """Per-event limits of the graph stages (see the module docstring)."""

    candidates_per_hit: float = 400.0
    edges_per_hit: float = 64.0
    triplets_per_hit: float = 200.0
    # Of every event, whatever its hits: a small event is cheap even at the allowance (a pile
    # within it takes 0.03 s), and a collimated jet in a quiet event needs it (30 tracks
    # within 0.02 of one another in eta and phi: 300,000 triplet candidates).
    allowance: int = 500_000

    def scaled(self, factor: float) -> Budget:
        """The whole budget times ``factor``: the per-hit budgets and the allowance (a
        jet denser than the allowance admits in a quiet event needs the latter)."""
        return Budget(
            self.candidates_per_hit * factor,
            self.edges_per_hit * factor,
            self.triplets_per_hit * factor,
            round(min(self.allowance * factor, _MOST)),  # a huge factor: no limit, not inf
        )

    def __post_init__(self) -> None:
        for name in ("candidates_per_hit", "edges_per_hit", "triplets_per_hit", "allowance"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and value >= 0):  # NaN fails too
                raise ValueError(f"Budget.{name} must be a number >= 0, got {value!r}")


class EventTooDense(ValueError):
    """Events of a batch over their budget: ``events`` their positions in the batch, each
    with the quantity it passed (``whats``), its count and its limit."""

    reason = "too_dense"

    def __init__(
        self,
        events: list[int],
        whats: list[str],
        counts: list[int],
        limits: list[int],
        names: list[str] | None = None,
    ) -> None:
        self.events, self.whats, self.counts, self.limits = events, whats, counts, limits
        names = names or [f"event {e} of the batch" for e in events]
        parts = [
            f"too many {what} ({name}: {c:,} > {lim:,})"
            for name, what, c, lim in zip(names, whats, counts, limits, strict=True)
        ]
        more = f"; {len(parts) - 3} more" if len(parts) > 3 else ""
        super().__init__("; ".join(parts[:3]) + more)

    def naming(self, events: Sequence[Event]) -> EventTooDense:
        """The same refusal, its message naming the events' run and event numbers."""
        names = [f"run {events[k].run} event {events[k].event}" for k in self.events]
        return EventTooDense(self.events, self.whats, self.counts, self.limits, names)

    @classmethod
    def of_events(cls, refusals: dict[int, EventTooDense]) -> EventTooDense:
        """One refusal of the events of a batch refused one by one (position: refusal)."""
        return cls(
            list(refusals),
            [e.whats[0] for e in refusals.values()],
            [e.counts[0] for e in refusals.values()],
            [e.limits[0] for e in refusals.values()],
        )


def event_by_event(items: Iterable[T], make: Callable[[T], R]) -> list[R]:
    """``make`` of each event of a batch (``items``, in order); every event over its budget
    is named, by its place, in one EventTooDense after all were tried."""
    made, dense = [], {}
    for k, item in enumerate(items):
        try:
            made.append(make(item))
        except EventTooDense as e:
            dense[k] = e
    if dense:
        raise EventTooDense.of_events(dense)
    return made


def per_event(
    hit: Array, node_offsets: np.ndarray, weights: Array | None = None, of: Array | None = None
) -> Array:
    """Per event of the batch (``node_offsets``), the number of items whose hit is ``hit``
    (or the sum of their ``weights``), on ``hit``'s device. With ``of``, the items' hits are
    ``hit[of]``, gathered only where the batch has several events."""
    xp: Any = array_module(hit)
    if len(node_offsets) == 2:  # one event (the CPU builds events one by one)
        if weights is None:
            return xp.full(1, len(hit if of is None else of), dtype=xp.int64)
        return weights.sum(keepdims=True)  # stays on the device, as bincount's would
    if of is not None:
        hit = hit[of]
    bounds = xp.asarray(np.asarray(node_offsets[1:], dtype=np.int64))
    event = xp.searchsorted(bounds, hit, side="right")
    return bincount(event, len(node_offsets) - 1, weights)


def enforce(what: str, totals: Array, hits: Array, per_hit: float, budget: Budget) -> np.ndarray:
    """Raise :class:`EventTooDense` for the events whose ``totals`` of ``what`` pass
    ``per_hit`` per hit (``hits``: per event, those that can be in its graph) plus the
    allowance; else return the totals on the host (one copy for both arrays)."""
    xp: Any = array_module(totals)
    host_totals, host_hits = to_host(xp.stack([xp.asarray(totals), xp.asarray(hits)]))
    host = host_totals.astype(np.int64)
    with np.errstate(invalid="ignore"):  # an infinite budget times no hits
        limits = np.nan_to_num(per_hit * host_hits, nan=0.0) + budget.allowance
    over = np.nonzero(host > limits)[0]
    if len(over):
        raise EventTooDense(
            over.tolist(),
            [what] * len(over),
            host[over].tolist(),
            limits[over].astype(np.int64).tolist(),
        )
    return host
