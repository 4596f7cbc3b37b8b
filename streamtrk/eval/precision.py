"""Low precision against fp32: edge-score differences and the change in tracking physics.

The same events are reconstructed twice with the same network and requested engine (a
warm-up may fall back to another engine for one of them: the report names both), once in
fp32 and once under ``precision`` (bf16 or fp16 autocast); the graphs are the same, so the scores
compare edge by edge. The target is a tracking-efficiency change of at most 0.2% absolute.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import numpy as np

from streamtrk.eval.evaluate import Evaluation
from streamtrk.event import Event, Tracks
from streamtrk.recon.engine import EngineScorer
from streamtrk.recon.gnn import InteractionNetwork
from streamtrk.recon.load import ChainSettings
from streamtrk.xp import to_host

PHYSICS = ("tracking_efficiency", "fake_rate", "duplicate_rate", "trackml_score")


def track_sets(tracks: Sequence[Tracks]) -> list[set[tuple[int, ...]]]:
    """Per event, the set of tracks as tuples of hit indices."""
    out = []
    for t in tracks:
        off, hits = np.asarray(t.offsets), np.asarray(t.hit_index)
        out.append({tuple(hits[a:b].tolist()) for a, b in pairwise(off.tolist())})
    return out


def tracks_agreement(a: Sequence[Tracks], b: Sequence[Tracks]) -> dict[str, int]:
    """Tracks in ``a``, in ``b``, and in both (same hits), summed over events."""
    sa, sb = track_sets(a), track_sets(b)
    return {
        "tracks_a": sum(map(len, sa)),
        "tracks_b": sum(map(len, sb)),
        "tracks_common": sum(len(x & y) for x, y in zip(sa, sb, strict=True)),
    }


def precision_parity(
    model: InteractionNetwork,
    events: Sequence[Event],
    *,
    precision: str = "bf16",
    device: str = "cpu",
    engine: str = "eager",
    chain: ChainSettings = ChainSettings(),
    batch_size: int = 1,
) -> dict[str, Any]:
    """Score and physics differences of ``precision`` against fp32 on ``events``, the chain
    set up as a model card says (``chain``: threshold, graph, pruning and track settings).

    Keys: ``engine`` (the engine that ran, as ``engine`` resolved and warmed up; two where
    the precisions' differ), score differences (``score_abs_diff_*``), threshold decisions
    flipped, each of ``PHYSICS`` for both precisions and its change, and ``tracks_a``
    (fp32), ``tracks_b`` (``precision``) and ``tracks_common`` (identical in both).
    """
    evals, scores, found, engines = {}, {}, {}, {}
    for p in ("fp32", precision):
        scorer = EngineScorer(model, device, engine, p, buckets=chain.buckets())
        scorer.warm_up()  # where an engine fails (auto: the next one), before any timing
        engines[p] = scorer.engine
        rec = chain.reconstructor(scorer, device)
        ev, s, t = Evaluation.of(rec), [], []
        for i in range(0, len(events), batch_size):
            batch = list(events[i : i + batch_size])
            result = rec.reconstruct(batch)
            ev.add(batch, result, sum(result.timings.values()), chain.threshold)
            s.append(to_host(result.scores).astype(np.float64))
            t.extend(result.tracks)
        evals[p], scores[p], found[p] = ev.report(), np.concatenate(s), t
    ref, low = scores["fp32"], scores[precision]
    if ref.shape != low.shape:
        raise RuntimeError(f"graphs differ between runs: {ref.shape} and {low.shape} edges")
    diff = np.abs(low - ref)
    flipped = int(np.count_nonzero((ref > chain.threshold) != (low > chain.threshold)))
    out: dict[str, Any] = {
        "precision": precision,
        "device": device,
        "engine": " and ".join(dict.fromkeys(engines.values())),  # those that ran
        "events": len(events),
        "edges": int(ref.size),
        "score_abs_diff_max": float(diff.max(initial=0.0)),
        "score_abs_diff_mean": float(diff.mean()) if diff.size else 0.0,
        "score_abs_diff_p99": float(np.quantile(diff, 0.99)) if diff.size else 0.0,
        "edge_decisions_flipped": flipped,
        "edge_decisions_flipped_fraction": flipped / max(ref.size, 1),
    }
    for k in PHYSICS:
        a, b = evals["fp32"].get(k, float("nan")), evals[precision].get(k, float("nan"))
        out |= {f"{k}_fp32": a, f"{k}_{precision}": b, f"{k}_change": b - a}
    return out | tracks_agreement(found["fp32"], found[precision])
