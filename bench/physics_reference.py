"""Healthy values of the physics metrics, and how the faults move them.

1. Healthy values: simulated MU=200 events replayed through a ``streamtrk serve``
   subprocess (shipped model, one event per batch), then its ``/metrics`` read once:
   hits per event on each layer and their share on tracks, tracks per event, quantiles of
   the track histograms, the share of edges above the threshold and under each edge-score
   bucket bound, the beam spot, and the daemon's own stage means (the cost of the
   ``physics`` stage against the rest).
2. With ``--scan``: the reconstruction API on the same seed at lower pileup and with each
   fault of ``streamtrk simulate``: tracks and hits per event, the accepted edge share, the
   largest gap between the edge-score distribution and the MU=200 one at the bucket
   bounds (what the drift alert measures), the beam spot (mm), the dead and noisy layers.

Prints JSON. Run: .venv/bin/python bench/physics_reference.py [--events 10] [--scan]
"""

from __future__ import annotations

from streamtrk.threads import wait_passively

wait_passively()  # before the imports below load torch's OpenMP runtime, as `serve` does

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from streamtrk.client import DIRECT, wait_listening, wait_ready
from streamtrk.detector import load_detector
from streamtrk.io.recording import RecordingWriter
from streamtrk.recon.load import load_reconstructor
from streamtrk.service.beamspot import BeamSpotWindow
from streamtrk.service.physics import EDGE_SCORE_BUCKETS
from streamtrk.sim.generator import GeneratorConfig
from streamtrk.sim.simulate import SimConfig, simulate

SEED = 2026
SCAN = {
    "mu200": SimConfig(),
    "mu140": SimConfig(generator=GeneratorConfig(mu=140)),
    "mu100": SimConfig(generator=GeneratorConfig(mu=100)),
    "dead 8:4": SimConfig(dead_layers=frozenset({(8, 4)})),
    "noisy 13:2 +3000": SimConfig(noisy_layers=(((13, 2), 3000.0),)),
    "beam spot z +4 mm": SimConfig(generator=GeneratorConfig(beam_spot=(0.0, 0.0, 4.0))),
    "beam spot x +0.5, y -0.3 mm": SimConfig(generator=GeneratorConfig(beam_spot=(0.5, -0.3, 0.0))),
}


def scrape(http: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    with DIRECT.open(f"http://{http}/metrics", timeout=30) as r:
        text = r.read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def scrape_observed(http: str, events: int, timeout: float = 60) -> dict:
    """The metrics once the physics thread has counted ``events`` events (it runs a little
    behind the replies)."""
    t_end = time.monotonic() + timeout
    while True:
        m = scrape(http)
        if m["streamtrk_event_tracks_count"][0][1] >= events or time.monotonic() > t_end:
            return m
        time.sleep(0.1)


def quantiles(m: dict, name: str, qs: tuple[float, ...] = (0.1, 0.5, 0.9)) -> list[float]:
    """Quantiles of a histogram by linear interpolation inside its buckets."""
    rows = sorted((float(labels["le"]), v) for labels, v in m[f"{name}_bucket"])
    bounds, cum = np.array([b for b, _ in rows]), np.array([v for _, v in rows])
    finite = np.isfinite(bounds)
    return [float(np.interp(q * cum[-1], cum[finite], bounds[finite])) for q in qs]


def healthy(events: int) -> dict[str, Any]:
    det = load_detector()
    with tempfile.TemporaryDirectory() as tmp:
        recording = Path(tmp) / "run.stk"
        with RecordingWriter(recording) as w:
            for ev in simulate(det, SimConfig(), SEED, events):
                w.write_event(ev)
        log_path = Path(tmp) / "daemon.log"
        cmd = [sys.executable, "-m", "streamtrk", "serve", "--input", "tcp://127.0.0.1:*"]
        cmd += ["--output", "tcp://127.0.0.1:*", "--http", "127.0.0.1:0", "--log-format", "json"]
        with log_path.open("wb") as log:
            daemon = subprocess.Popen(
                [*cmd, "--max-batch-events", "1"], stdout=log, stderr=subprocess.STDOUT
            )
        try:
            bound = wait_listening(log_path, 300, daemon)
            assert bound is not None and wait_ready(bound["http"], 300, daemon), log_path
            replay = [sys.executable, "-m", "streamtrk", "replay", str(recording), "-q"]
            replay += ["--to", bound["input"], "--from", bound["output"], "--timeout", "900"]
            subprocess.run(replay, check=True, capture_output=True)
            m = scrape_observed(bound["http"], events)
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=300)

    def one(name: str) -> float:
        return m[name][0][1]

    n = one("streamtrk_event_tracks_count")
    layers = {
        f"{labels['volume']}:{labels['layer']}": v / n
        for labels, v in m["streamtrk_layer_hits_total"]
    }
    on_tracks = {
        f"{labels['volume']}:{labels['layer']}": v
        for labels, v in m["streamtrk_layer_track_hits_total"]
    }
    counts = {labels["stage"]: v for labels, v in m["streamtrk_stage_seconds_count"]}
    stage = {
        labels["stage"]: v / counts[labels["stage"]]
        for labels, v in m["streamtrk_stage_seconds_sum"]
        if counts[labels["stage"]]
    }
    return {
        "events": n,
        "hits_per_event": one("streamtrk_hits_total") / n,
        "layer_hits_per_event": layers,
        "layer_share_on_tracks": {k: on_tracks[k] / (layers[k] * n) for k in layers},
        "tracks_per_event": one("streamtrk_event_tracks_sum") / n,
        "events_without_tracks": one("streamtrk_events_without_tracks_total"),
        "accepted_edge_share": one("streamtrk_edges_accepted_total")
        / one("streamtrk_edge_score_count"),
        "edge_score_share_below": {
            labels["le"]: v / one("streamtrk_edge_score_count")
            for labels, v in m["streamtrk_edge_score_bucket"]
        },
        "d0_significance_share_below": {
            labels["le"]: v / one("streamtrk_track_d0_significance_count")
            for labels, v in m["streamtrk_track_d0_significance_bucket"]
        },
        "quantiles_10_50_90": {
            h: quantiles(m, h)
            for h in (
                "streamtrk_track_pt_electronvolts",
                "streamtrk_track_eta",
                "streamtrk_track_d0_meters",
                "streamtrk_track_z0_meters",
                "streamtrk_track_hits",
            )
        },
        "beam_spot": {
            k: one(f"streamtrk_beam_spot_{k}")
            for k in (
                "x_meters",
                "y_meters",
                "z_meters",
                "z_width_meters",
                "z_error_meters",
                "tracks",
            )
        },
        "stage_mean_seconds": stage,
        "physics_over_graph_to_fit": stage["physics"]
        / sum(stage[s] for s in ("graph", "prune", "gnn", "tracks", "fit")),
    }


def scan(events: int) -> dict[str, Any]:
    det = load_detector()
    rec = load_reconstructor()
    bounds = np.array(EDGE_SCORE_BUCKETS)
    layer = {name: int(det.layer_index(np.array([v]), np.array([la]))[0]) for name, (v, la) in
             {"8:4": (8, 4), "13:2": (13, 2)}.items()}  # fmt: skip
    rows: dict[str, Any] = {}
    for name, cfg in SCAN.items():
        tracks, hits, scores, per_layer = [], [], [], np.zeros(len(det))
        window = BeamSpotWindow()
        for i, ev in enumerate(simulate(det, cfg, SEED, events)):
            result = rec.reconstruct([ev])
            tracks.append(len(result.tracks[0]))
            hits.append(len(ev.hits))
            p = result.tracks[0].params
            window.add(p["d0"], p["z0"], p["phi"], np.full(len(p["d0"]), i))
            scores.append(np.asarray(result.scores))
            per_layer += np.bincount(
                det.layer_index(ev.hits.volume_id, ev.hits.layer_id), minlength=len(det)
            )
        s = np.sort(np.concatenate(scores))
        rows[name] = {
            "tracks_per_event": float(np.mean(tracks)),
            "hits_per_event": float(np.mean(hits)),
            "accepted_edge_share": float(np.mean(s > rec.threshold)),
            "cdf": (np.searchsorted(s, bounds, side="right") / len(s)).tolist(),
            "beam_spot_mm": {k: getattr(window.estimate(), k) for k in ("x", "y", "z", "z_error")},
            **{f"hits_per_event_{k}": float(per_layer[i] / events) for k, i in layer.items()},
        }
    ref = np.array(rows["mu200"]["cdf"])
    for row in rows.values():
        row["cdf_distance_to_mu200"] = float(np.abs(np.array(row.pop("cdf")) - ref).max())
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=10)
    ap.add_argument("--scan", action="store_true", help="also the pileup and fault scan")
    ap.add_argument("--scan-events", type=int, default=2)
    args = ap.parse_args()
    out: dict[str, Any] = {"healthy_mu200": healthy(args.events)}
    if args.scan:
        out["scan"] = scan(args.scan_events)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
