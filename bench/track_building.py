"""Track building and fit quality: a settings scan on validation events from cached scores.

Validation events only (MU=200, seeds 2000..2010 by default: the training recipe's
validation seed 2000 and ten more; never the test seed 3000 nor real data). Each event's
graph and edge scores (shipped model, or ``--model``) are computed once and cached as .npz
under ``--cache``/<model name>/; the scan then rebuilds tracks from the cache for every
(threshold, junction passes, stitch threshold), fits them, and applies every combination of
the track cuts (minimum hits, minimum mean edge score, maximum chi2/ndf) to the same tracks
(the cuts drop whole tracks, so the counts follow from one per-track table).

Prints a table of efficiency, fake and duplicate rates per setting (the best setting of
each build, and the overall best by ``efficiency - fake - duplicate`` among those meeting
the targets), the median chi2/ndf of matched and of fake tracks, and the time of tracks +
fit per event; ``--json`` writes every row, ``--plot`` the chi2/ndf of matched and fake
tracks at the chosen setting.

Run: .venv/bin/python bench/track_building.py [--seeds 2000:4 2001:4 ...] [--json f] [--plot f]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from streamtrk.detector import load_detector
from streamtrk.eval.score import classify, match_tracks
from streamtrk.event import Event
from streamtrk.recon.fit import fit_tracks
from streamtrk.recon.model import default_model_path, load_reconstructor, read_card
from streamtrk.recon.tracks import TrackConfig, build_tracks
from streamtrk.sim.simulate import SimConfig, simulate

VALIDATION = ["2000:4", *(f"{s}:4" for s in range(2001, 2011))]
TARGETS = {"tracking_efficiency": 0.992, "fake_rate": 0.003, "duplicate_rate": 0.003}


@dataclass
class Cached:
    event: Event
    edge_index: np.ndarray
    scores: np.ndarray
    r: np.ndarray
    layer: np.ndarray
    seconds: dict[str, float]  # graph and gnn time when the cache was made


def cached_events(model: Path, specs: list[str], cache: Path) -> Iterator[Cached]:
    """Simulated validation events with their graph and edge scores, scored once and cached."""
    det = load_detector()
    folder = cache / model.name
    folder.mkdir(parents=True, exist_ok=True)
    rec = None
    for spec in specs:
        seed, n = (int(v) for v in spec.split(":"))
        for k, ev in enumerate(simulate(det, SimConfig(), seed, n)):
            path = folder / f"mu200_s{seed}_e{k}.npz"
            if not path.exists():
                rec = rec or load_reconstructor(model)
                res = rec.reconstruct([ev])
                np.savez_compressed(
                    path,
                    edge_index=np.asarray(res.graph.edge_index),
                    scores=np.asarray(res.scores),
                    r=np.asarray(res.graph.node_features[:, 0]),
                    layer=np.asarray(res.graph.layer),
                    timings=np.array([res.timings["graph"], res.timings["gnn"]]),
                )
            with np.load(path) as f:
                yield Cached(
                    ev,
                    f["edge_index"],
                    f["scores"],
                    f["r"],
                    f["layer"],
                    dict(zip(("graph", "gnn"), f["timings"][:2].tolist(), strict=True)),
                )


def track_table(c: Cached, threshold: float, cfg: TrackConfig) -> dict[str, np.ndarray]:
    """Per-track figures of one event's tracks (no cuts but ``min_hits`` 3), and timings."""
    det = load_detector()
    h = c.event.hits
    t0 = time.perf_counter()
    offsets, hits = build_tracks(c.edge_index, c.scores, c.r, threshold=threshold, config=cfg)
    t1 = time.perf_counter()
    p = fit_tracks(offsets, hits, h.x, h.y, h.z, c.layer, det)
    t2 = time.perf_counter()
    n_hits = len(h)
    labels = np.zeros(n_hits, dtype=np.int64)
    sizes = np.diff(offsets)
    labels[hits] = np.repeat(np.arange(1, len(sizes) + 1), sizes)
    m = match_tracks(labels, c.event.truth.hits.particle_id)
    # mean score of the edges between consecutive hits (the chain's edges)
    key = np.sort(c.edge_index[0] * n_hits + c.edge_index[1])
    order = np.argsort(c.edge_index[0] * n_hits + c.edge_index[1])
    inner = np.ones(len(hits), dtype=bool)
    inner[offsets[1:] - 1] = False
    pair = hits[:-1][inner[:-1]] * n_hits + hits[1:][inner[:-1]]
    pos = np.clip(np.searchsorted(key, pair), 0, len(key) - 1)
    s = np.where(key[pos] == pair, c.scores[order[pos]], 0.0)
    tid = np.repeat(np.arange(len(sizes)), sizes)[:-1][inner[:-1]]
    mean_score = np.bincount(tid, weights=s, minlength=len(sizes)) / np.maximum(sizes - 1, 1)
    cls = classify(c.event, np.zeros(n_hits, dtype=np.int64))
    parts = c.event.truth.particles
    return {
        "size": sizes,
        "mean_score": mean_score,
        "chi2_ndf": p["chi2"] / p["ndf"],
        "pid": m.particle_id,
        "real": m.pure & (m.particle_id != 0),
        "matched": m.matched & (m.particle_id != 0),
        "reco_pid": parts.particle_id[cls.reconstructable],
        "seconds": np.array([t1 - t0, t2 - t1]),
    }


def counts(tab: dict[str, np.ndarray], keep: np.ndarray) -> np.ndarray:
    """(reconstructable, found, tracks, fakes, duplicates) of the kept tracks of one event,
    as in ``streamtrk.eval.score.classify``."""
    real = keep & tab["real"]
    pid_real = np.sort(tab["pid"][real])
    n_dup = int((pid_real[1:] == pid_real[:-1]).sum())
    found = np.isin(tab["reco_pid"], tab["pid"][keep & tab["matched"]])
    return np.array(
        [len(tab["reco_pid"]), found.sum(), keep.sum(), (keep & ~tab["real"]).sum(), n_dup]
    )


def rates(n: np.ndarray) -> dict[str, float]:
    reco, found, tracks, fakes, dups = (int(v) for v in n)
    return {
        "tracking_efficiency": found / reco,
        "fake_rate": fakes / tracks,
        "duplicate_rate": dups / (tracks - fakes),
        "tracks": tracks,
        "fakes": fakes,
        "duplicates": dups,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="default: the shipped model")
    ap.add_argument("--seeds", nargs="+", default=VALIDATION, help="seed:events (validation)")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/tracks-cache"))
    ap.add_argument("--thresholds", type=float, nargs="+", help="default: the model's")
    ap.add_argument("--passes", type=int, nargs="+", default=[1])
    ap.add_argument("--stitch", type=float, nargs="+", default=[-1, 0.05, 0.1, 0.2, 0.3],
                    help="stitch thresholds; negative: no stitching")
    ap.add_argument("--min-hits", type=int, nargs="+", default=[3, 4, 5])
    ap.add_argument("--min-mean-score", type=float, nargs="+", default=[0.0, 0.7, 0.8])
    ap.add_argument("--max-chi2-ndf", type=float, nargs="+", default=[-1, 5, 10],
                    help="negative: no cut")
    ap.add_argument("--json", type=Path, help="write every row here")
    ap.add_argument("--plot", type=Path, help="PNG of chi2/ndf, matched and fake tracks")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    model = args.model or default_model_path()
    thresholds = args.thresholds or [float(read_card(model)["model"]["threshold"])]
    data = list(cached_events(model, args.seeds, args.cache))
    cuts = list(itertools.product(args.min_hits, args.min_mean_score, args.max_chi2_ndf))
    rows: list[dict[str, Any]] = []
    tables = {}
    for t, passes, st in itertools.product(thresholds, args.passes, args.stitch):
        cfg = TrackConfig(junction_passes=passes, stitch_threshold=None if st < 0 else st)
        tabs = [track_table(c, t, cfg) for c in data]
        tables[(t, passes, st)] = tabs
        secs = np.sum([tab["seconds"] for tab in tabs], axis=0) / len(tabs)
        for mh, ms, mc in cuts:
            total = np.zeros(5, dtype=np.int64)
            for tab in tabs:
                keep = (tab["size"] >= mh) & (tab["mean_score"] > ms)
                if mc >= 0:
                    keep &= tab["chi2_ndf"] <= mc
                total += counts(tab, keep)
            rows.append({
                "threshold": t,
                "junction_passes": passes,
                "stitch_threshold": None if st < 0 else st,
                "min_hits": mh,
                "min_mean_score": ms,
                "max_chi2_ndf": None if mc < 0 else mc,
                **rates(total),
                "tracks_ms": 1000 * secs[0],
                "fit_ms": 1000 * secs[1],
            })
    for r in rows:
        r["objective"] = r["tracking_efficiency"] - r["fake_rate"] - r["duplicate_rate"]
        r["meets_targets"] = (
            r["tracking_efficiency"] >= TARGETS["tracking_efficiency"]
            and r["fake_rate"] <= TARGETS["fake_rate"]
            and r["duplicate_rate"] <= TARGETS["duplicate_rate"]
        )
    best = max(rows, key=lambda r: (r["meets_targets"], r["objective"]))

    def line(r: dict[str, Any]) -> str:
        st = "-" if r["stitch_threshold"] is None else f"{r['stitch_threshold']:g}"
        mc = "-" if r["max_chi2_ndf"] is None else f"{r['max_chi2_ndf']:g}"
        return (
            f"| {r['threshold']:g} | {r['junction_passes']} | {st} | {r['min_hits']} | "
            f"{r['min_mean_score']:g} | {mc} | {100 * r['tracking_efficiency']:.2f}% | "
            f"{100 * r['fake_rate']:.2f}% | {100 * r['duplicate_rate']:.2f}% | {r['tracks']} | "
            f"{r['tracks_ms']:.0f} + {r['fit_ms']:.0f} |" + (" **chosen**" if r is best else "")
        )

    n_ev = len(data)
    print(f"model {model.name}, {n_ev} validation events ({' '.join(args.seeds)})")
    head = ("| threshold | passes | stitch | min hits | min mean score | max chi2/ndf | eff. | "
            "fake | dup. | tracks | ms tracks + fit / event |")
    print("\nPlain chain and each build's best cuts (by eff. - fake - dup.):")
    print(head + "\n" + "|---" * 11 + "|")
    plain = [r for r in rows if r["min_hits"] == 3 and r["min_mean_score"] == 0
             and r["max_chi2_ndf"] is None]
    for key in tables:
        sel = [r for r in rows if (r["threshold"], r["junction_passes"],
                                   -1 if r["stitch_threshold"] is None else r["stitch_threshold"]) == key]
        for r in {id(x): x for x in [p for p in plain if p in sel] + [max(sel, key=lambda r: r["objective"])]}.values():
            print(line(r))
    print("\nCuts at the chosen build:")
    print(head + "\n" + "|---" * 11 + "|")
    for r in rows:
        if (r["threshold"], r["junction_passes"], r["stitch_threshold"]) == (
            best["threshold"], best["junction_passes"], best["stitch_threshold"]):
            print(line(r))
    key = (best["threshold"], best["junction_passes"],
           -1 if best["stitch_threshold"] is None else best["stitch_threshold"])
    chi = np.concatenate([tab["chi2_ndf"] for tab in tables[key]])
    keep = np.concatenate([
        (tab["size"] >= best["min_hits"]) & (tab["mean_score"] > best["min_mean_score"])
        for tab in tables[key]])
    matched = np.concatenate([tab["matched"] for tab in tables[key]]) & keep
    fake = ~np.concatenate([tab["real"] for tab in tables[key]]) & keep
    print(f"\nchosen: {json.dumps({k: best[k] for k in ('threshold', 'junction_passes', 'stitch_threshold', 'min_hits', 'min_mean_score', 'max_chi2_ndf')})}")
    print(f"chi2/ndf before the chi2 cut: median {np.median(chi[matched]):.3f} over "
          f"{matched.sum()} matched tracks (16-84%: {np.percentile(chi[matched], 16):.2f}-"
          f"{np.percentile(chi[matched], 84):.2f}); median {np.median(chi[fake]):.2f} over "
          f"{fake.sum()} fake tracks")
    graph = np.mean([c.seconds["graph"] for c in data])
    gnn = np.mean([c.seconds["gnn"] for c in data])
    print(f"time per event: graph {graph:.3f} s, gnn {gnn:.3f} s (when cached), tracks + fit "
          f"{(best['tracks_ms'] + best['fit_ms']) / 1000:.3f} s "
          f"({100 * (best['tracks_ms'] + best['fit_ms']) / 1000 / (graph + gnn + (best['tracks_ms'] + best['fit_ms']) / 1000):.1f}% of the chain)")
    if args.json:
        args.json.write_text(json.dumps({"model": model.name, "seeds": args.seeds, "events": n_ev,
                                         "chosen": best, "rows": rows}, indent=1))
    if args.plot:
        plot(chi[matched], chi[fake], best, args.plot)


def plot(matched: np.ndarray, fake: np.ndarray, setting: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = np.geomspace(1e-2, 1e3, 61)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for v, label in ((matched, "matched"), (fake, "fake")):
        ax.hist(np.clip(v, bins[0], bins[-1]), bins, histtype="step", density=True,
                label=f"{label} ({len(v)}, median {np.median(v):.2f})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("chi2 / ndf")
    ax.set_ylabel("tracks (normalised)")
    ax.set_title("helix fit chi2/ndf, validation events", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
