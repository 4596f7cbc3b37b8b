"""What widening graph construction's z0 window would recover, and what it would cost.

The particles the shipped chain loses at the graph stage are mostly made 2-10 mm from the
beam line with helices that pass it outside the luminous region (``bench/missed_particles.py``,
its |z0| > 30 mm column): the graph's z0 cut (``GraphConfig.z0_max``, 30 mm plus the
segment's resolution) drops their segments. For each ``z0_max`` asked for (mm; the shipped
one first), on every event: the edges built, the seconds it took (the project's 2-core
CPU: compare within one run), the events the work budget refuses, and how many of the
particles lost at the graph stage the widened graph joins (more than half of their hits
joined by edges between their own hits, as ``streamtrk.eval.missed`` counts). An upper
bound on what widening recovers: pruning (whose pair windows cut |z0| too), the network
and track building come after it, none of them made for such segments.

Run: PYTHONPATH=. .venv/bin/python bench/z0_window.py run.stk [--events N]
       [--z0 60 100 250] [--json out.json]
(``streamtrk simulate --events 20 --mu 200 --seed 3000 -o run.stk`` for the docs' sample)
"""

from __future__ import annotations

from streamtrk.threads import wait_passively

wait_passively()  # before the imports below load torch's OpenMP runtime, as `serve` does

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from streamtrk.eval.missed import STAGES, lost_at
from streamtrk.eval.score import classify
from streamtrk.event import Event
from streamtrk.io.events import read_events
from streamtrk.recon.budget import EventTooDense
from streamtrk.recon.graph import batch_columns, build_graph
from streamtrk.recon.load import load_reconstructor
from streamtrk.recon.reconstructor import Reconstructor
from streamtrk.xp import to_host

GRAPH = STAGES.index("graph")


def _built(rec: Reconstructor, ev: Event, z0_max: float) -> tuple[np.ndarray, float]:
    """The edges (2, k) the reconstructor's graph stage builds of ``ev`` with ``z0_max``,
    centred on its beam line as ``reconstruct`` does, and the seconds it took."""
    cols, offsets = batch_columns([ev])
    for name, shift in zip(("x", "y"), rec.beam_spot, strict=True):
        cols[name] = cols[name] - cols[name].dtype.type(shift)
    cfg = replace(rec.graph_config, z0_max=z0_max)
    t0 = time.perf_counter()
    graph = build_graph(**cols, node_offsets=offsets, det=rec.detector, cfg=cfg, budget=rec.budget)
    return to_host(graph.edge_index), time.perf_counter() - t0


def z0_window(path: Path, events: int | None, z0s: list[float], model: Path | None) -> dict:
    """Per z0_max (the reconstructor's first): edges, seconds, refused events and the graph
    stage's lost particles joined; and how many the shipped chain lost there (none of an
    event it refuses: ``streamtrk evaluate`` counts those at ``refused``)."""
    rec = load_reconstructor(model)
    z0s = [rec.graph_config.z0_max, *z0s]
    rows = [{"z0_max": z, "events": 0, "refused": 0, "edges": 0, "seconds": 0.0, "joined": 0}
            for z in z0s]  # fmt: skip
    lost = 0
    for ev in read_events(path, events):
        assert ev.truth is not None, "the particles need truth"
        pid = ev.truth.hits.to(np).particle_id
        try:
            result = rec.reconstruct([ev])
        except EventTooDense:  # its particles are lost at 'refused', none at the graph stage
            shipped, at_graph = None, pid[:0]
        else:
            c = classify(ev, result.tracks[0].track_id_per_hit(len(ev.hits)), rec.beam_spot)
            missed = ev.truth.particles.to(np).particle_id[c.reconstructable & ~c.found]
            shipped = to_host(result.built.edge_index)
            at_graph = missed[lost_at(pid, missed, (shipped,)) == GRAPH]
        lost += len(at_graph)
        for row in rows:
            try:
                edges, seconds = _built(rec, ev, row["z0_max"])
            except EventTooDense:
                row["refused"] += 1
                continue
            if row is rows[0] and shipped is not None:
                assert np.array_equal(edges, shipped), "the shipped graph, built again"
            row["events"] += 1
            row["edges"] += edges.shape[1]
            row["seconds"] += seconds
            row["joined"] += int((lost_at(pid, at_graph, (edges,)) != GRAPH).sum())
    return {"recording": str(path), "lost_at_graph": lost, "rows": rows}


def table(out: dict) -> str:
    """Markdown: one line per z0_max, edges and seconds per built event against the
    shipped window's ("-" where no event was built)."""
    base = out["rows"][0]
    per = base["edges"] / base["events"] if base["events"] else 0.0
    lines = [
        "| z0_max (mm) | edges per event | x shipped | seconds per event | refused | "
        f"joined (of {out['lost_at_graph']} lost at graph) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in out["rows"]:
        n = row["events"]
        edges = f"{row['edges'] / n:,.0f}" if n else "-"
        ratio = f"{row['edges'] / n / per:.2f}" if n and per else "-"
        seconds = f"{row['seconds'] / n:.2f}" if n else "-"
        lines.append(
            f"| {row['z0_max']:g} | {edges} | {ratio} | {seconds} | {row['refused']} | "
            f"{row['joined']} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("recording", type=Path, help="a .stk recording with truth")
    p.add_argument("--events", type=int, help="only the first N events")
    p.add_argument("--z0", type=float, nargs="+", default=[60.0, 100.0, 250.0],
                   help="z0_max values (mm) to try after the shipped one")  # fmt: skip
    p.add_argument("--model", type=Path, help="model directory (default: the shipped one)")
    p.add_argument("--json", type=Path, help="write the rows here")
    args = p.parse_args()
    out = z0_window(args.recording, args.events, args.z0, args.model)
    print(table(out))
    if args.json:
        args.json.write_text(json.dumps(out | {"table": table(out)}, indent=1) + "\n")


if __name__ == "__main__":
    main()
