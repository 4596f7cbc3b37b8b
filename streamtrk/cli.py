"""The ``streamtrk`` command: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from streamtrk import __version__


def _simulate(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from tqdm import tqdm

    from streamtrk.detector import load_detector
    from streamtrk.io.recording import RecordingWriter
    from streamtrk.io.trackml import write_event
    from streamtrk.sim.generator import GeneratorConfig
    from streamtrk.sim.simulate import SimConfig, simulate

    gen = replace(GeneratorConfig(), mu=args.mu, hard_scatter=args.hard_scatter)
    cfg = SimConfig(generator=gen, noise_fraction=args.noise)
    det = load_detector(args.detector)
    events = simulate(det, cfg, args.seed, args.events, run=args.run)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with RecordingWriter(args.output) as rec:
        for ev in tqdm(
            events, total=args.events, desc="simulate", unit="event", disable=args.quiet
        ):
            rec.write_event(ev)
            if args.trackml_dir:
                write_event(ev, args.trackml_dir)
    return 0


def _import_trackml(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from streamtrk.io.recording import RecordingWriter
    from streamtrk.io.trackml import iter_events

    n = 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with RecordingWriter(args.output) as rec:
        for ev in tqdm(
            iter_events(args.path, run=args.run), desc="import", unit="event", disable=args.quiet
        ):
            rec.write_event(ev)
            n += 1
    if n == 0:
        print(f"error: no TrackML event found at {args.path}", file=sys.stderr)
        return 1
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from streamtrk.io.recording import summarize

    summary = summarize(args.recording)
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
    else:
        width = max(len(k) for k in summary)
        for k, v in summary.items():
            print(f"{k:<{width}}  {v}")
    return 0


def _export_trackml(args: argparse.Namespace) -> int:
    from streamtrk.io.recording import iter_events
    from streamtrk.io.trackml import write_event

    for ev in iter_events(args.recording):
        write_event(ev, args.output)
    return 0


def _read_events(path: str, limit: int | None):
    """Events of a recording (``.stk``) or of TrackML CSV files (prefix or directory)."""
    from itertools import islice

    if str(path).endswith(".stk"):
        from streamtrk.io.recording import iter_events
    else:
        from streamtrk.io.trackml import iter_events
    return islice(iter_events(path), limit)


def _evaluate(args: argparse.Namespace) -> int:
    from streamtrk.eval.evaluate import evaluate, plot
    from streamtrk.io.trackml import write_submission
    from streamtrk.recon.reconstructor import Reconstructor

    if args.oracle:
        rec = Reconstructor.oracle(device=args.device)
    else:
        from streamtrk.recon.model import load_reconstructor

        rec = load_reconstructor(args.model, device=args.device, threshold=args.threshold)
    ev = evaluate(
        rec, _read_events(args.input, args.events), batch_size=args.batch, progress=not args.quiet
    )
    if ev.n_events == 0:
        print(f"streamtrk evaluate: error: no events in {args.input}", file=sys.stderr)
        return 1
    report = ev.report()
    report["input"] = str(args.input)
    report["scorer"] = "oracle" if args.oracle else str(args.model or "shipped model")
    text = json.dumps(report, indent=2, sort_keys=True)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(text + "\n")
    if args.submission:
        args.submission.parent.mkdir(parents=True, exist_ok=True)
        write_submission(args.submission, ev.submission)
    if args.plots:
        plot(ev, args.plots)
    print(text)
    return 0


def _demo(args: argparse.Namespace) -> int:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="streamtrk-demo-") as tmp:
        run = str(Path(tmp) / "demo.stk")
        print(f"simulating {args.events} events at mu={args.mu} -> {run}")
        rc = main(
            [
                "simulate",
                "--events",
                str(args.events),
                "--mu",
                str(args.mu),
                "--seed",
                "1",
                "-o",
                run,
            ]
        )
        if rc:
            return rc
        return main(["inspect", run])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamtrk", description=__doc__)
    p.add_argument("--version", action="version", version=f"streamtrk {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("simulate", help="simulate TrackML-like events into a recording")
    s.add_argument("--events", type=int, default=10, help="number of events (default 10)")
    s.add_argument("--mu", type=float, default=200.0, help="mean pileup interactions (200)")
    s.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    s.add_argument(
        "--noise",
        type=float,
        default=0.19,
        help="fraction of all hits that are noise (default 0.19)",
    )
    s.add_argument(
        "--hard-scatter",
        type=int,
        default=0,
        metavar="N",
        help="add N high-pT particles (5-50 GeV) on the first vertex",
    )
    s.add_argument("--run", type=int, default=1, help="run number (default 1)")
    s.add_argument("--detector", type=Path, default=None, help="detector TOML file")
    s.add_argument("-o", "--output", type=Path, required=True, help="output .stk recording")
    s.add_argument("--trackml-dir", type=Path, help="also write TrackML CSV files here")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_simulate)

    s = sub.add_parser("import-trackml", help="convert TrackML CSV event(s) to a recording")
    s.add_argument("path", help="event prefix (.../event000001000) or a directory of events")
    s.add_argument("-o", "--output", type=Path, required=True, help="output .stk recording")
    s.add_argument("--run", type=int, default=0, help="run number (default 0)")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_import_trackml)

    s = sub.add_parser("export-trackml", help="write a recording's events as TrackML CSV")
    s.add_argument("recording", type=Path)
    s.add_argument("-o", "--output", type=Path, required=True, help="output directory")
    s.set_defaults(func=_export_trackml)

    s = sub.add_parser("inspect", help="summarise a recording")
    s.add_argument("recording", type=Path)
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=_inspect)

    s = sub.add_parser(
        "evaluate",
        help="reconstruct offline and score against truth",
        description="Reconstruct events offline (no daemon) and score them. Report keys: "
        "tracking_efficiency (pT>=1 GeV, >=5 hits, vertex r<10 mm), tracking_efficiency_all "
        "(no vertex cut), fake_rate, duplicate_rate, trackml_score, graph_/gnn_edge_efficiency "
        "(pT>=1 GeV segments from r<10 mm; _all: any vertex), graph_/gnn_edge_purity (true "
        "pT>=1 GeV segments over edges, segments of softer particles not counted), events, "
        "seconds_per_event, stage_seconds (per event), edges_per_hit.",
    )
    s.add_argument("input", help="a .stk recording, or TrackML CSV (event prefix or directory)")
    src = s.add_mutually_exclusive_group()
    src.add_argument("--model", type=Path, help="model directory (default: the shipped model)")
    src.add_argument("--oracle", action="store_true", help="edge scores from truth")
    s.add_argument("--threshold", type=float, help="edge-score threshold (default: the model's)")
    s.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    s.add_argument("--batch", type=int, default=1, help="events per batch (default 1)")
    s.add_argument("--events", type=int, help="at most this many events")
    s.add_argument("--submission", type=Path, help="write a TrackML submission CSV")
    s.add_argument("--report", type=Path, help="write the report JSON here")
    s.add_argument("--plots", type=Path, help="write PNG plots into this directory")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_evaluate)

    s = sub.add_parser("demo", help="the `make demo` job")
    s.add_argument("--events", type=int, default=5)
    s.add_argument("--mu", type=float, default=200.0)
    s.set_defaults(func=_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (OSError, ValueError) as exc:
        print(f"streamtrk {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
