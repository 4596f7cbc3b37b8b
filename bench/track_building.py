"""Track-building settings and fit quality: a scan on validation events from cached scores.

Validation events only, never the test seed 3000 nor real data: MU=200, seeds 2000..2010
(4 events each: the training recipe's validation seed and ten more) and, as a check of
events like the shared real one, seeds 2000..2005 cut to their barrel hits. Each event's
graph and edge scores (the shipped model, or ``--model``) are computed once and cached as
.npz under ``--cache``/<model name>/. The scan then rebuilds the tracks from the cache for
every build setting (threshold, junction passes, stitch threshold, joined doubles), fits
them, and applies every combination of the track cuts of ``TrackConfig`` (min hits, min
mean edge score, and for short tracks max chi2/ndf and max |d0|) to the same tracks: cuts
drop whole tracks, so the counts follow from one per-track table (they equal ``streamtrk
evaluate``'s). ``--overlaps F`` simulates the events with a share F of the crossings
doubled on their layer (``SimConfig.overlap_fraction``).

The chosen setting meets the targets on the full events (efficiency >= 99.2%, fake and
duplicate <= 0.3%) and, among those, has the largest sum of (efficiency - fake - duplicate)
over the full and the barrel-only events. Prints the plain chain, each build's best, the
chosen setting and its neighbours (one setting changed at a time), the median chi2/ndf of
matched and of fake tracks, and the time of tracks + fit per event; ``--json`` writes every
row, ``--plot`` the chi2/ndf of matched and fake tracks at the chosen build.

Run: PYTHONPATH=. .venv/bin/python bench/track_building.py [--json f] [--plot f.png]
"""

from __future__ import annotations

from streamtrk.threads import wait_passively

wait_passively()  # before the imports below load torch's OpenMP runtime, as `serve` does

import argparse
import itertools
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streamtrk.detector import load_detector
from streamtrk.eval.score import classify, match_tracks
from streamtrk.event import Event, Truth
from streamtrk.recon.fit import fit_tracks
from streamtrk.recon.load import load_reconstructor
from streamtrk.recon.model import default_model_path, read_card
from streamtrk.recon.tracks import TrackConfig, build_tracks, fit_cuts
from streamtrk.sim.simulate import SimConfig, simulate

VALIDATION = ["2000:4", *(f"{s}:4" for s in range(2001, 2011))]
BARREL_VALIDATION = ["2000:4", *(f"{s}:4" for s in range(2001, 2006))]
BARREL_VOLUMES = (8, 13, 17)
TARGETS = {"tracking_efficiency": 0.992, "fake_rate": 0.003, "duplicate_rate": 0.003}
BUILD = ("threshold", "junction_passes", "stitch_threshold", "join_doubles")
CUTS = ("min_hits", "min_mean_score", "short_hits", "max_chi2_ndf", "max_d0")


@dataclass
class Cached:
    event: Event
    edge_index: np.ndarray
    scores: np.ndarray
    r: np.ndarray
    layer: np.ndarray
    seconds: dict[str, float]  # graph and gnn time when the cache was made


def barrel_only(ev: Event) -> Event:
    """``ev`` with its barrel hits only (and their truth), like the shared real event."""
    assert ev.truth is not None
    keep = np.nonzero(np.isin(ev.hits.volume_id, BARREL_VOLUMES))[0]
    return Event(
        ev.run, ev.event, ev.hits.take(keep), Truth(ev.truth.hits.take(keep), ev.truth.particles)
    )


def cached_events(
    model: Path, specs: list[str], cache: Path, *, barrel: bool = False, overlaps: float = 0.0
) -> Iterator[Cached]:
    """Simulated events (``overlaps``: the share of crossings doubled, see ``SimConfig``)
    with their graph and edge scores, scored once and cached; ``barrel``: the events cut to
    their barrel hits."""
    det = load_detector()
    folder = cache / model.name
    folder.mkdir(parents=True, exist_ok=True)
    rec = None
    for spec in specs:
        seed, n = (int(v) for v in spec.split(":"))
        for k, ev in enumerate(simulate(det, SimConfig(overlap_fraction=overlaps), seed, n)):
            if barrel:
                ev = barrel_only(ev)
            kind = ("_barrel" if barrel else "") + (f"_o{overlaps:g}" if overlaps else "")
            path = folder / f"mu200{kind}_s{seed}_e{k}.npz"
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


def track_table(c: Cached, threshold: float, cfg: TrackConfig) -> dict[str, Any]:
    """Per-track figures of one event's tracks (built with ``min_hits`` 3, no cuts)."""
    det = load_detector()
    h = c.event.hits
    t0 = time.perf_counter()
    offsets, hits = build_tracks(c.edge_index, c.scores, c.r, threshold=threshold, config=cfg)
    t1 = time.perf_counter()
    params = fit_tracks(offsets, hits, h.x, h.y, h.z, c.layer, det)
    t2 = time.perf_counter()
    n_hits = len(h)
    sizes = np.diff(offsets)
    labels = np.zeros(n_hits, dtype=np.int64)
    labels[hits] = np.repeat(np.arange(1, len(sizes) + 1), sizes)
    assert c.event.truth is not None
    m = match_tracks(labels, c.event.truth.hits.particle_id)
    # mean score of the edges between consecutive hits: build_tracks' mean (chains by radius;
    # a layer's two hits joined have no edge between them, and count in neither sum)
    key = c.edge_index[0] * n_hits + c.edge_index[1]
    order = np.argsort(key)
    inner = np.ones(len(hits), dtype=bool)
    inner[offsets[1:] - 1] = False
    inner = inner[:-1]
    pair = hits[:-1][inner] * n_hits + hits[1:][inner]
    pos = np.clip(np.searchsorted(key[order], pair), 0, len(key) - 1)
    edge = key[order][pos] == pair
    s = np.where(edge, c.scores[order[pos]], 0.0)
    tid = np.repeat(np.arange(len(sizes)), sizes)[:-1][inner]
    n_edges = np.bincount(tid, weights=edge, minlength=len(sizes))
    mean_score = np.bincount(tid, weights=s, minlength=len(sizes)) / np.maximum(n_edges, 1)
    reco = classify(c.event, np.zeros(n_hits, dtype=np.int64)).reconstructable
    return {
        "size": sizes,
        "mean_score": mean_score,
        "params": params,
        "pid": m.particle_id,
        "real": m.pure & (m.particle_id != 0),
        "matched": m.matched & (m.particle_id != 0),
        "reco_pid": c.event.truth.particles.particle_id[reco],
        "seconds": np.array([t1 - t0, t2 - t1]),
    }


def kept(tab: dict[str, Any], cfg: TrackConfig) -> np.ndarray:
    """The tracks ``cfg``'s cuts keep (as build_tracks and the Reconstructor's fit cuts)."""
    keep = tab["size"] >= cfg.min_hits
    if cfg.min_mean_score > 0:
        keep &= tab["mean_score"] > cfg.min_mean_score
    return keep & fit_cuts(tab["size"], tab["params"], cfg)


def counts(tab: dict[str, Any], keep: np.ndarray) -> np.ndarray:
    """(reconstructable, found, tracks, fakes, duplicates) of one event's kept tracks, by the
    definitions of ``streamtrk.eval.score.classify``."""
    real = keep & tab["real"]
    pid_real = np.sort(tab["pid"][real])
    n_dup = int((pid_real[1:] == pid_real[:-1]).sum())
    found = np.isin(tab["reco_pid"], tab["pid"][keep & tab["matched"]])
    return np.array(
        [len(tab["reco_pid"]), found.sum(), keep.sum(), (keep & ~tab["real"]).sum(), n_dup]
    )


def rates(n: np.ndarray) -> dict[str, float]:
    reco, found, tracks, fakes, dups = (int(v) for v in n)
    eff, fake, dup = found / reco, fakes / max(tracks, 1), dups / max(tracks - fakes, 1)
    return {
        "tracking_efficiency": eff,
        "fake_rate": fake,
        "duplicate_rate": dup,
        "objective": eff - fake - dup,
        "tracks": tracks,
        "fakes": fakes,
        "duplicates": dups,
    }


def _none(v: float) -> float | None:
    return None if v < 0 else v


def scan(args: argparse.Namespace, sets: dict[str, list[Cached]]) -> tuple[list, dict]:
    """Every row of the scan, and the per-track tables of each build."""
    rows, tables = [], {}
    builds = itertools.product(args.thresholds, args.passes, args.stitch, args.join_doubles)
    for t, passes, st, jd in builds:
        if jd and st < 0:
            continue  # doubles are joined over edges above the stitch threshold
        build = TrackConfig(junction_passes=passes, stitch_threshold=_none(st), join_doubles=jd)
        tabs = {name: [track_table(c, t, build) for c in data] for name, data in sets.items()}
        tables[(t, passes, _none(st), jd)] = tabs
        secs = np.mean([tab["seconds"] for tab in tabs["full"]], axis=0)
        for mh, ms, sh, mc, md in itertools.product(
            args.min_hits, args.min_mean_score, args.short_hits, args.max_chi2_ndf, args.max_d0
        ):
            if sh <= mh and (mc >= 0 or md >= 0):
                continue  # the fit cuts would apply to no track
            cfg = TrackConfig(
                junction_passes=passes,
                stitch_threshold=_none(st),
                join_doubles=jd,
                min_hits=mh,
                min_mean_score=ms,
                short_hits=sh,
                max_chi2_ndf=_none(mc),
                max_d0=_none(md),
            )
            row: dict[str, Any] = {"threshold": t, **asdict(cfg)}
            for name, tab_list in tabs.items():
                total = np.sum([counts(tab, kept(tab, cfg)) for tab in tab_list], axis=0)
                row[name] = rates(total)
            row["tracks_ms"], row["fit_ms"] = 1000 * secs[0], 1000 * secs[1]
            f = row["full"]
            row["meets_targets"] = bool(
                f["tracking_efficiency"] >= TARGETS["tracking_efficiency"]
                and f["fake_rate"] <= TARGETS["fake_rate"]
                and f["duplicate_rate"] <= TARGETS["duplicate_rate"]
            )
            row["score"] = sum(row[name]["objective"] for name in tabs)
            rows.append(row)
    return rows, tables


def _fmt(r: dict[str, Any], names: list[str]) -> str:
    def v(x: float | None) -> str:
        return "-" if x is None else f"{x:g}"

    cells = [v(r[k]) for k in (*BUILD, *CUTS)]
    for name in names:
        q = r[name]
        cells += [
            f"{100 * q['tracking_efficiency']:.2f}%",
            f"{100 * q['fake_rate']:.2f}%",
            f"{100 * q['duplicate_rate']:.2f}%",
        ]
    cells.append(f"{r['tracks_ms']:.0f} + {r['fit_ms']:.0f}")
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="default: the shipped model")
    ap.add_argument("--seeds", nargs="+", default=VALIDATION, help="seed:events, full events")
    ap.add_argument(
        "--barrel-seeds",
        nargs="*",
        default=BARREL_VALIDATION,
        help="seed:events cut to barrel hits (none: skip)",
    )
    ap.add_argument("--cache", type=Path, default=Path("/tmp/tracks-cache"))
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.6])
    ap.add_argument("--passes", type=int, nargs="+", default=[1, 2])
    ap.add_argument(
        "--stitch",
        type=float,
        nargs="+",
        default=[-1, 0.05, 0.1],
        help="stitch thresholds; negative: no stitching",
    )
    ap.add_argument(
        "--join-doubles",
        type=int,
        nargs="+",
        choices=(0, 1),
        default=[0, 1],
        help="join pieces over a layer's two hits (1) or not (0)",
    )
    ap.add_argument(
        "--overlaps",
        type=float,
        default=0.0,
        help="share of crossings with a second hit on their layer in the simulated events",
    )
    ap.add_argument("--min-hits", type=int, nargs="+", default=[3, 4, 5])
    ap.add_argument("--min-mean-score", type=float, nargs="+", default=[0.0, 0.6, 0.65, 0.7])
    ap.add_argument("--short-hits", type=int, nargs="+", default=[5])
    ap.add_argument(
        "--max-chi2-ndf",
        type=float,
        nargs="+",
        default=[-1, 1.5, 2, 3],
        help="for short tracks; negative: no cut",
    )
    ap.add_argument(
        "--max-d0",
        type=float,
        nargs="+",
        default=[-1, 0.5, 1, 2],
        help="mm, for short tracks; negative: no cut",
    )
    ap.add_argument("--json", type=Path, help="write every row here")
    ap.add_argument("--plot", type=Path, help="PNG of chi2/ndf, matched and fake tracks")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    model = args.model or default_model_path()
    args.join_doubles = [bool(v) for v in args.join_doubles]
    sets = {"full": list(cached_events(model, args.seeds, args.cache, overlaps=args.overlaps))}
    if args.barrel_seeds:
        sets["barrel"] = list(
            cached_events(model, args.barrel_seeds, args.cache, barrel=True, overlaps=args.overlaps)
        )
    rows, tables = scan(args, sets)
    names = list(sets)
    best = max(rows, key=lambda r: (r["meets_targets"], r["score"]))

    print(
        f"model {model.name} (card threshold {read_card(model)['model']['threshold']}); "
        f"validation: {len(sets['full'])} full events ({' '.join(args.seeds)})"
        + (
            f", {len(sets['barrel'])} barrel-only ({' '.join(args.barrel_seeds)})"
            if "barrel" in sets
            else ""
        )
    )
    head = (
        "| "
        + " | ".join(
            [*BUILD, *CUTS] + [f"{n} {k}" for n in names for k in ("eff.", "fake", "dup.")]
        )
        + " | ms tracks + fit |"
    )
    sep = "|---" * (len(BUILD) + len(CUTS) + 3 * len(names) + 1) + "|"

    def same(r: dict[str, Any], keys: tuple[str, ...], ref: dict[str, Any]) -> bool:
        return all(r[k] == ref[k] for k in keys)

    print("\nPlain chain (no cuts, min hits 3) and each build's best (meets targets, max score):")
    print(head + "\n" + sep)
    for key in tables:
        ref = dict(zip(BUILD, key, strict=True))
        sel = [r for r in rows if same(r, BUILD, ref)]
        plain = [
            r
            for r in sel
            if r["min_hits"] == 3
            and r["min_mean_score"] == 0
            and r["max_chi2_ndf"] is None
            and r["max_d0"] is None
        ]
        top = max(sel, key=lambda r: (r["meets_targets"], r["score"]))
        for r in {id(x): x for x in [*plain, top]}.values():
            print(_fmt(r, names) + (" **chosen**" if r is best else ""))
    print("\nThe chosen setting and its neighbours (one setting changed):")
    print(head + "\n" + sep)
    print(_fmt(best, names) + " **chosen**")
    for k in (*BUILD, *CUTS):
        others = [kk for kk in (*BUILD, *CUTS) if kk != k]
        for r in rows:
            if r is not best and same(r, tuple(others), best):
                print(_fmt(r, names))

    chosen = {k: best[k] for k in (*BUILD, *CUTS)}
    print(f"\nchosen: {json.dumps(chosen)}")
    for name in names:
        tabs = tables[tuple(best[k] for k in BUILD)][name]
        cfg = TrackConfig(**{k: best[k] for k in (*BUILD[1:], *CUTS)})
        chi = np.concatenate([t["params"]["chi2"] / t["params"]["ndf"] for t in tabs])
        pre = np.concatenate(
            [  # the cuts before the fit only: the chi2 of what the fit sees
                kept(t, TrackConfig(min_hits=cfg.min_hits, min_mean_score=cfg.min_mean_score))
                for t in tabs
            ]
        )
        matched = np.concatenate([t["matched"] for t in tabs]) & pre
        fake = ~np.concatenate([t["real"] for t in tabs]) & pre
        print(
            f"{name}: chi2/ndf median {np.median(chi[matched]):.3f} over {matched.sum()} "
            f"matched tracks (16-84%: {np.percentile(chi[matched], 16):.2f}-"
            f"{np.percentile(chi[matched], 84):.2f}); median {np.median(chi[fake]):.2f} over "
            f"{fake.sum()} fake tracks"
        )
        if name == "full" and args.plot:
            size = np.concatenate([t["size"] for t in tabs])
            plot(chi, size, matched, fake, args.plot)
    graph = np.median([c.seconds["graph"] for c in sets["full"]])
    gnn = np.median([c.seconds["gnn"] for c in sets["full"]])
    ours = (best["tracks_ms"] + best["fit_ms"]) / 1000
    print(
        f"time per full event: graph {graph:.3f} s and gnn {gnn:.3f} s (when cached), "
        f"tracks + fit {ours:.3f} s: {100 * ours / (graph + gnn + ours):.1f}% of the chain"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "model": model.name,
                    "seeds": args.seeds,
                    "barrel_seeds": args.barrel_seeds,
                    "chosen": best,
                    "rows": rows,
                },
                indent=1,
            )
        )


def plot(
    chi: np.ndarray, size: np.ndarray, matched: np.ndarray, fake: np.ndarray, path: Path
) -> None:
    """chi2/ndf of matched tracks and of fake ones (short and long), fractions per bin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = np.geomspace(1e-3, 1e4, 57)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for sel, label in (
        (matched, "matched"),
        (fake & (size < 5), "fake, 3-4 hits"),
        (fake & (size >= 5), "fake, 5+ hits"),
    ):
        v = np.clip(chi[sel], bins[0], bins[-1])
        ax.hist(
            v,
            bins,  # type: ignore[arg-type]  # matplotlib's stub: bins takes an array too
            histtype="step",
            weights=np.full(len(v), 1 / max(len(v), 1)),
            label=f"{label}: {len(v)} tracks, median {np.median(chi[sel]):.2f}",
        )
    ax.axvline(1.0, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("chi2 / ndf of the helix fit (under- and overflow in the end bins)")
    ax.set_ylabel("fraction of tracks per bin")
    ax.set_title(
        "simulated MU=200 validation events, chosen track building, before the fit cuts", fontsize=9
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
