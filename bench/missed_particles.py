"""The reconstructable particles no track found, by the stage that lost them and by what they
are: their production vertex's distance from the beam line, pT, |eta|, hits, and where their
helix passes the beam line (its perigee's d0 and z0: the graph cuts each segment's z0 to the
luminous region).

``streamtrk evaluate`` counts the missed particles by stage (``missed_by_stage``, see
``streamtrk.eval.missed``); this says which particles they are, to tell a stage's cuts
(displaced vertices, low pT, the forward disks) from its chance losses.

Run: PYTHONPATH=. .venv/bin/python bench/missed_particles.py run.stk [--events N] [--json out.json]
(``streamtrk simulate --events 20 --mu 200 --seed 3000 -o run.stk`` for the docs' sample)
"""

from __future__ import annotations

from streamtrk.threads import wait_passively

wait_passively()  # before the imports below load torch's OpenMP runtime, as `serve` does

import argparse
import json
from pathlib import Path

import numpy as np

from streamtrk.eval.evaluate import Evaluation
from streamtrk.eval.missed import STAGES, lost_at
from streamtrk.eval.score import classify
from streamtrk.io.events import read_events
from streamtrk.recon.budget import EventTooDense
from streamtrk.recon.load import load_reconstructor
from streamtrk.xp import to_host

#: Columns of the table: name, test on (vr mm, pT GeV, |eta|, hits, |z0| mm) per particle.
#: 30 mm: the shipped graph's ``z0_max`` (the luminous region; its cut adds the resolution).
CLASSES = (
    ("vr < 1 mm", lambda vr, pt, eta, n, z0: vr < 1),
    ("vr 1-5 mm", lambda vr, pt, eta, n, z0: (vr >= 1) & (vr < 5)),
    ("vr 5-10 mm", lambda vr, pt, eta, n, z0: vr >= 5),
    ("pT < 1.5 GeV", lambda vr, pt, eta, n, z0: pt < 1.5),
    ("\\|eta\\| > 2", lambda vr, pt, eta, n, z0: eta > 2),
    ("<= 6 hits", lambda vr, pt, eta, n, z0: n <= 6),
    ("\\|z0\\| > 30 mm", lambda vr, pt, eta, n, z0: z0 > 30),
)


def missed_particles(path: Path, events: int | None, model: Path | None) -> list[dict]:
    """One row per reconstructable particle: the stage that lost it (``stage``, None when
    found), vr, pt, abs_eta, hits, and its perigee's d0 and z0 (mm, to the beam line the chain
    is centred on). An event over the work budget loses all at ``refused``, as ``streamtrk
    evaluate`` counts it."""
    rec = load_reconstructor(model)
    perigee = Evaluation.of(rec).perigee_truth
    rows = []
    for ev in read_events(path, events):
        assert ev.truth is not None, "the particles need truth"
        try:
            result = rec.reconstruct([ev])
        except EventTooDense:
            result = None
        labels = (
            np.zeros(len(ev.hits), dtype=np.int64)
            if result is None
            else result.tracks[0].track_id_per_hit(len(ev.hits))
        )
        c = classify(ev, labels, rec.beam_spot)
        particles = ev.truth.particles.to(np)
        pid = ev.truth.hits.to(np).particle_id
        missed = c.reconstructable & ~c.found
        stage = np.full(len(particles), -1)
        if result is None:
            stage[missed] = STAGES.index("refused")
        else:
            built, graph = to_host(result.built.edge_index), to_host(result.graph.edge_index)
            above = graph[:, to_host(result.scores) > rec.threshold]
            stage[missed] = lost_at(pid, particles.particle_id[missed], (built, graph, above))
        hits = np.unique(pid, return_counts=True)
        n_hits = dict(zip(hits[0].tolist(), hits[1].tolist(), strict=True))
        vr = particles.vr_from(rec.beam_spot)
        truth = perigee(particles, particles.particle_id)
        for k in np.flatnonzero(c.reconstructable):
            rows.append({
                "stage": STAGES[stage[k]] if stage[k] >= 0 else None,
                "vr": float(vr[k]),
                "pt": float(particles.pt[k]),
                "abs_eta": float(abs(particles.eta[k])),
                "hits": n_hits[int(particles.particle_id[k])],
                "d0": float(truth["d0"][k]),
                "z0": float(truth["z0"][k]),
            })  # fmt: skip
    return rows


def table(rows: list[dict]) -> str:
    """Markdown: per stage, how many missed particles of each class; then all reconstructable
    particles of each class and their efficiency."""

    def counts(sel: list[dict]) -> np.ndarray:
        a = [np.array([r[k] for r in sel]) for k in ("vr", "pt", "abs_eta", "hits")]
        a.append(np.abs([r["z0"] for r in sel]))
        return np.array([int(f(*a).sum()) if sel else 0 for _, f in CLASSES])

    def line(*cells: object) -> str:
        return "| " + " | ".join(map(str, cells)) + " |"

    head = ["lost at", "particles", *(name for name, _ in CLASSES)]
    lines = [line(*head), "|" + " --- |" * len(head)]
    for stage in STAGES:
        sel = [r for r in rows if r["stage"] == stage]
        lines.append(line(stage, len(sel), *counts(sel)))
    missed = [r for r in rows if r["stage"] is not None]
    every, lost = counts(rows), counts(missed)
    lines.append(line("(reconstructable)", len(rows), *every))
    found = [f"{100 * (1 - m / a):.2f}%" if a else "-" for m, a in zip(lost, every, strict=True)]
    lines.append(
        line("(efficiency)", f"{100 * (1 - len(missed) / max(len(rows), 1)):.2f}%", *found)
    )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("recording", type=Path, help="a .stk recording with truth")
    p.add_argument("--events", type=int, help="only the first N events")
    p.add_argument("--model", type=Path, help="model directory (default: the shipped one)")
    p.add_argument("--json", type=Path, help="write the rows here")
    args = p.parse_args()
    rows = missed_particles(args.recording, args.events, args.model)
    print(table(rows))
    if args.json:  # the missed particles, and the table
        missed = [r for r in rows if r["stage"] is not None]
        out = {"recording": str(args.recording), "reconstructable": len(rows), "missed": missed}
        args.json.write_text(json.dumps(out | {"table": table(rows)}, indent=1) + "\n")


if __name__ == "__main__":
    main()
