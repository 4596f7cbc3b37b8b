"""Derive the pruning windows (``streamtrk/data/prune_windows.toml``) from simulated truth.

Training events only: simulated MU=200 events of a fresh seed (5000 by default; the model's
seeds are 1000 train, 2000 validation, 3000 test, and windows must never see 2000..2010 or 3000).
Per event: build the graph, label its edges with truth, and take every true triplet (two
true segments of one pT >= 1 GeV particle from r < 10 mm sharing a hit, both in the graph).
Per layer triplet (disks at -z folded onto +z) the window of |dtheta|, |dkappa| and |kappa|
is the ``--quantile`` of those triplets, or ``--sparse-factor`` x the largest value where
there are fewer than ``--min-count``; per layer pair, the doublet windows (|kappa| from the
beam line, |z0|) are ``--pair-factor`` x the largest value over true segments.

Run (the shipped windows): PYTHONPATH=. .venv/bin/python bench/prune_windows.py --events 100
     --seed 5000 [--out streamtrk/data/prune_windows.toml] [--quantile 0.999]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from streamtrk.detector import load_detector
from streamtrk.recon.graph import build_graph
from streamtrk.recon.prune import edge_geometry, layer_code, triplet_geometry
from streamtrk.recon.truth import particle_pt, true_segments
from streamtrk.sim.generator import GeneratorConfig
from streamtrk.sim.simulate import SIMULATOR_VERSION, SimConfig, simulate

#: Validation (2000..2010, where bench/track_building.py chose the threshold and track cuts)
#: and test (3000): never derive cuts from them.
FORBIDDEN_SEEDS = frozenset(range(2000, 2011)) | {3000}


def central_target_edges(event, edge_index: np.ndarray) -> np.ndarray:
    """Mask of edges that are segments of pT >= 1 GeV particles made within r < 10 mm."""
    n = len(event.hits)
    seg = true_segments(event, 1.0)
    pid = event.truth.hits.particle_id[seg[0]]
    p = event.truth.particles
    srt = np.argsort(p.particle_id)
    pos = np.clip(np.searchsorted(p.particle_id[srt], pid), 0, max(len(p) - 1, 0))
    seg = seg[:, p.vr[srt][pos] < 10.0]
    assert (particle_pt(event, pid) >= 1.0).all()
    key = np.sort(seg[0].astype(np.int64) * n + seg[1])
    ek = edge_index[0].astype(np.int64) * n + edge_index[1]
    at = np.clip(np.searchsorted(key, ek), 0, max(len(key) - 1, 0))
    return (key[at] == ek) if len(key) else np.zeros(len(ek), bool)


def collect(seed: int, n_events: int, mu: float) -> dict[str, np.ndarray]:
    det = load_detector()
    nl = len(det)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("triple", "dtheta", "dk2", "kappa")}
    pairs: dict[str, list[np.ndarray]] = {k: [] for k in ("pair", "k2", "z0")}
    events = simulate(det, SimConfig(generator=GeneratorConfig(mu=mu)), seed, n_events)
    for ev in events:
        h = ev.hits
        g = build_graph(h.x, h.y, h.z, h.volume_id, h.layer_id, np.array([0, len(h)]), det)
        true = central_target_edges(ev, g.edge_index)
        geo = edge_geometry(g, det)
        te = np.nonzero(true)[0]
        pairs["pair"].append(geo["pair"][te])
        pairs["k2"].append(np.abs(geo["k2"][te]))
        pairs["z0"].append(np.abs(geo["z0"][te]))
        # True triplets: a true edge into hit h and a true edge out of h (one particle).
        i, j = g.edge_index[:, te]
        out_of = np.full(len(h), -1)
        out_of[i] = te  # a hit has at most one true outgoing segment
        nxt = out_of[j]
        a, b = te[nxt >= 0], nxt[nxt >= 0]
        q = triplet_geometry(geo, a, b, nl)
        for k in parts:
            parts[k].append(np.abs(q[k]) if k != "triple" else q[k])
    out = {k: np.concatenate(v) for k, v in parts.items()}
    out |= {f"pair_{k}": np.concatenate(v) for k, v in pairs.items()}
    return out


def windows(
    data: dict[str, np.ndarray], quantile: float, min_count: int, sparse: float, pair_factor: float
) -> tuple[list[list], list[list]]:
    det = load_detector()
    nl = len(det)
    code = layer_code(det)
    rows = []
    for t in np.unique(data["triple"]):
        sel = data["triple"] == t
        n = int(sel.sum())
        vals = [data[k][sel] for k in ("dtheta", "dk2", "kappa")]
        w = [
            float(np.quantile(v, quantile)) if n >= min_count else float(v.max() * sparse)
            for v in vals
        ]
        li, lj, lk = t // (nl * nl), (t // nl) % nl, t % nl
        rows.append([int(code[li]), int(code[lj]), int(code[lk]), *w, n])
    prow = []
    for p in np.unique(data["pair_pair"]):
        sel = data["pair_pair"] == p
        prow.append(
            [
                int(code[p // nl]),
                int(code[p % nl]),
                float(data["pair_k2"][sel].max() * pair_factor),
                float(data["pair_z0"][sel].max() * pair_factor),
                int(sel.sum()),
            ]
        )
    return rows, prow


def write(path: Path, rows: list[list], prow: list[list], header: list[str]) -> None:
    def num(v: int | float) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = [f"# {h}" if h else "#" for h in header]
    lines += ["", "[triplets]", "# inner, middle, outer layer code, |dtheta|, |dkappa|, |kappa|, n"]
    lines.append("rows = [")
    lines += ["  [" + ", ".join(num(v) for v in r) + "]," for r in rows]
    lines += ["]", "", "[pairs]", "# inner, outer layer code, |kappa from beam line|, |z0|, n"]
    lines.append("rows = [")
    lines += ["  [" + ", ".join(num(v) for v in r) + "]," for r in prow]
    lines += ["]", ""]
    path.write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, default=48)
    ap.add_argument("--seed", type=int, default=5000)
    ap.add_argument("--mu", type=float, default=200)
    ap.add_argument("--quantile", type=float, default=0.999)
    ap.add_argument("--min-count", type=int, default=30)
    ap.add_argument("--sparse-factor", type=float, default=1.5)
    ap.add_argument("--pair-factor", type=float, default=1.1)
    ap.add_argument(
        "--out",
        type=Path,
        required=True,  # the shipped file (streamtrk/data/prune_windows.toml) only on purpose
        help="windows file to write (the shipped model's are streamtrk/data/prune_windows.toml)",
    )
    ap.add_argument("--save-raw", type=Path, help="also save the true triplets (npz)")
    args = ap.parse_args()
    if args.seed in FORBIDDEN_SEEDS:
        raise SystemExit(f"seed {args.seed} is a validation/test seed: derive cuts elsewhere")
    t0 = time.perf_counter()
    data = collect(args.seed, args.events, args.mu)
    if args.save_raw:
        # (the ignore: mypy matches **data to savez's allow_pickle parameter too)
        np.savez(args.save_raw, **data)  # type: ignore[arg-type]
    rows, prow = windows(data, args.quantile, args.min_count, args.sparse_factor, args.pair_factor)
    header = [
        "Pruning windows for streamtrk.recon.prune (PruneConfig), learnt from simulated truth.",
        f"Made by: bench/prune_windows.py --events {args.events} --seed {args.seed} "
        f"--mu {args.mu:g} --quantile {args.quantile} --min-count {args.min_count} "
        f"--sparse-factor {args.sparse_factor} --pair-factor {args.pair_factor}",
        f"True triplets: {len(data['triple'])} (pT >= 1 GeV, production r < 10 mm, both "
        f"segments in the built graph); true segments: {len(data['pair_pair'])}.",
        f"Triplet windows: the {args.quantile} quantile per layer triplet "
        f"({sum(r[-1] >= args.min_count for r in rows)} of {len(rows)} triplets), else "
        f"{args.sparse_factor} x the largest value. Pair windows: {args.pair_factor} x the "
        "largest value.",
        "Layer code = volume_id * 100 + layer_id; disks at -z are folded onto their +z mirror.",
        f"Simulator version {SIMULATOR_VERSION} (streamtrk.sim.simulate.SIMULATOR_VERSION; its "
        "events differ from a later version's: rerunning the command today gives other windows).",
    ]
    write(args.out, rows, prow, header)
    print(
        f"{len(data['triple'])} true triplets, {len(rows)} layer triplets, {len(prow)} pairs, "
        f"{time.perf_counter() - t0:.0f} s -> {args.out}"
    )


if __name__ == "__main__":
    main()
