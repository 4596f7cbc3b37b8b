"""The real barrel event at its full density, scored on the truth of its half-density subset.

``qallse_ez-1.0_hpt-1.0_no_truth`` holds all 55,446 barrel hits of TrackML event 1000 and
no truth; ``qallse_ez-0.5_hpt-1.0`` holds the hits of a random half of its particles (and
half of the noise), with truth, under the same hit ids and positions. The project's usual
validation reconstructs the half; this reconstructs the whole event, as dense as the real
detector was, and scores it on the half's particles: a hit outside the half belongs to none
of them (it is noise or a particle of the other half), so

- a half particle's efficiency, the duplicates of its tracks and the TrackML score (of the
  half's weights) are exact: whatever the outside hits are, they are no half particle's;
- a track with most of its hits in the half is judged exactly (real or fake), as if all
  truth were known; one with most hits outside is not judged (it may be a track of the other
  half's particles). The fake rate is that of the judged tracks.

Both events are reconstructed by the shipped model (or ``--model``) and scored so, side by
side. Validation only: nothing is tuned on it.

Run: PYTHONPATH=. .venv/bin/python bench/real_full_density.py [--json out.json]
"""

from __future__ import annotations

from streamtrk.threads import wait_passively

wait_passively()  # before the imports below load torch's OpenMP runtime, as `serve` does

import argparse
import json
from pathlib import Path

import numpy as np

from streamtrk.eval.score import classify, trackml_score
from streamtrk.event import Event, HitTruth, Truth
from streamtrk.io.trackml import read_event
from streamtrk.recon.load import load_reconstructor
from streamtrk.recon.model import default_model_path
from streamtrk.xp import index_of

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "trackml"
FULL = "qallse_ez-1.0_hpt-1.0_no_truth/event000001000"
HALF = "qallse_ez-0.5_hpt-1.0/event000001000"


def with_subset_truth(full: Event, subset: Event) -> Event:
    """``full`` with the truth of ``subset``, whose hits are some of ``full``'s (same ids and
    positions): a hit outside the subset gets a particle id of its own below 0 (no particle
    of the subset, no majority with other outside hits), weight 0 and hit order -1."""
    assert subset.truth is not None
    at, found = index_of(np.asarray(full.hits.hit_id), np.asarray(subset.hits.hit_id))
    if not found.all():
        raise ValueError("the subset holds hits the full event does not")
    for axis in ("x", "y", "z"):
        if not np.allclose(getattr(full.hits, axis)[at], getattr(subset.hits, axis)):
            raise ValueError(f"the subset's hits are elsewhere in {axis}")
    n, sub = len(full.hits), subset.truth.hits
    cols = {
        "particle_id": -np.arange(1, n + 1, dtype=np.int64),
        "tx": full.hits.x.astype(np.float32),
        "ty": full.hits.y.astype(np.float32),
        "tz": full.hits.z.astype(np.float32),
        "tpx": np.zeros(n, np.float32),
        "tpy": np.zeros(n, np.float32),
        "tpz": np.zeros(n, np.float32),
        "weight": np.zeros(n, np.float32),
        "hit_order": np.full(n, -1, np.int32),
    }
    for name, col in cols.items():
        cols[name] = col.astype(HitTruth.DTYPES[name])
        cols[name][at] = getattr(sub, name)
    truth = Truth(hits=HitTruth.from_columns(cols), particles=subset.truth.particles)
    return Event(run=full.run, event=full.event, hits=full.hits, truth=truth)


def score(event: Event, labels: np.ndarray) -> dict[str, float]:
    """Efficiency, duplicates and TrackML score of the particles of ``event``'s truth, the
    fake rate of the tracks most of whose hits that truth knows (particle id >= 0)."""
    assert event.truth is not None
    c = classify(event, labels)
    known = np.asarray(event.truth.hits.particle_id) >= 0
    tracks, size = np.unique(labels[labels != 0], return_counts=True)
    known_hits = np.bincount(np.searchsorted(tracks, labels[known & (labels != 0)]),
                             minlength=len(tracks))  # fmt: skip
    judged = 2 * known_hits > size  # c.track_id is tracks, sorted, too
    real = judged & ~c.track_fake
    t = event.truth.hits
    return {
        "hits": len(event.hits),
        "tracks": len(tracks),
        "tracks_judged": int(judged.sum()),
        "reconstructable": int(c.reconstructable.sum()),
        "tracking_efficiency": float((c.found & c.reconstructable).sum() / c.reconstructable.sum()),
        "fake_rate": float((judged & c.track_fake).sum() / judged.sum()),
        "duplicate_rate": float((real & c.track_duplicate).sum() / real.sum()),
        "trackml_score": trackml_score(t.particle_id, t.weight, labels),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=DATA, help="the shared TrackML folder")
    ap.add_argument("--model", type=Path, default=None, help="a model directory (shipped)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    half = read_event(args.data / HALF)
    events = {"half": half, "full": with_subset_truth(read_event(args.data / FULL), half)}
    rec = load_reconstructor(args.model or default_model_path())
    out = {}
    for name, event in events.items():
        labels = rec.reconstruct([event]).tracks[0].track_id_per_hit(len(event.hits))
        out[name] = score(event, labels)
        print(name, json.dumps(out[name]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
