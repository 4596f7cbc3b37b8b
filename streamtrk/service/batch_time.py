"""How long a batch of so many hits takes to reconstruct, from the batches so far.

A batch costs a fixed time (launches, the network's call, synchronisations) plus a time per
hit. Both are fitted, by least squares and neither negative, to the last :data:`WINDOW`
batches: a small batch then no longer looks like hundreds of times the cost per hit of a
large one. While the batches' sizes stay within a factor :data:`SPREAD` of each other the
two cannot be told apart and the time is taken as proportional to the hits. The estimate
is raised at once to cover the latest batch when that was slower than the fit predicts (the
batcher and the drain never count on more speed than the last batch showed), and is the fit
again after the next batch that is not; in the fit each batch weighs its share of the
window. Before any batch the estimate is 0 s (the daemon observes its warm-up reconstruct
first). After :meth:`BatchTime.forget` (a new model: the old one's batches say nothing of
its cost) the estimate stands until the next batch, which starts the window afresh.
"""

from __future__ import annotations

from collections import deque

WINDOW = 32
SPREAD = 2.0


class BatchTime:
    """``estimate(hits)`` seconds: ``fixed + per_hit * hits``; :meth:`observe` each batch."""

    def __init__(self, window: int = WINDOW) -> None:
        self._seen: deque[tuple[int, float]] = deque(maxlen=window)
        self.fixed = 0.0
        self.per_hit = 0.0

    def estimate(self, hits: int) -> float:
        return self.fixed + self.per_hit * hits

    def forget(self) -> None:
        """Start the window afresh at the next batch; the estimate stands until then."""
        self._seen.clear()

    def observe(self, hits: int, seconds: float) -> None:
        """A batch of ``hits`` hits took ``seconds``."""
        self._seen.append((hits, seconds))
        self.fixed, self.per_hit = _fit(self._seen)
        predicted = self.estimate(hits)
        if seconds > predicted > 0:
            scale = seconds / predicted
            self.fixed, self.per_hit = self.fixed * scale, self.per_hit * scale
        elif seconds > predicted:  # a batch of no hits, where the fit has no fixed cost
            self.fixed = seconds


def _fit(seen: deque[tuple[int, float]]) -> tuple[float, float]:
    """(fixed, per_hit) of the batches ``seen``: least squares, neither negative."""
    n = [float(h) for h, _ in seen]
    t = [s for _, s in seen]
    total_hits, total_s = sum(n), sum(t)
    if max(n) < SPREAD * min(n) or max(n) == min(n):  # alike: proportional (no hits: fixed)
        return (0.0, total_s / total_hits) if total_hits else (total_s / len(t), 0.0)
    mean_n, mean_t = total_hits / len(n), total_s / len(t)
    var = sum((x - mean_n) ** 2 for x in n)
    cov = sum((x - mean_n) * (y - mean_t) for x, y in zip(n, t, strict=True))
    per_hit = cov / var
    fixed = mean_t - per_hit * mean_n
    if per_hit < 0:
        return mean_t, 0.0
    if fixed < 0:
        return 0.0, sum(x * y for x, y in zip(n, t, strict=True)) / sum(x * x for x in n)
    return fixed, per_hit
