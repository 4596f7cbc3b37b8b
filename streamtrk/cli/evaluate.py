"""``streamtrk evaluate``: reconstruct events offline (no daemon) and score them."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamtrk.cli.common import (
    beam_line_xy,
    check_count,
    check_outputs,
    directory_files,
    list_argument,
    results_printed,
    strict_json,
    subcommand,
    torch_threads_argument,
    write_report,
)
from streamtrk.errors import SettingError
from streamtrk.recon.choices import DEVICES, ENGINES, PRECISIONS, threshold_ok
from streamtrk.threads import set_torch_threads

if TYPE_CHECKING:
    from streamtrk.eval.evaluate import Evaluation
    from streamtrk.recon.reconstructor import Reconstructor


def _evaluate_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "input", help="a .stk recording, or TrackML CSV (event prefix, one of its files, directory)"
    )
    src = s.add_mutually_exclusive_group()
    src.add_argument(
        "--model",
        type=Path,
        help="model directory (default: $STREAMTRK_MODEL, else the shipped one)",
    )
    src.add_argument(
        "--oracle",
        action="store_true",
        help="edge scores from truth (no --threshold, --engine or --precision: no model)",
    )
    s.add_argument("--threshold", type=float, help="edge-score threshold (default: the model's)")
    s.add_argument(
        "--device", default="cpu", choices=DEVICES, help="where the chain runs (default cpu)"
    )
    s.add_argument(
        "--engine",
        default="eager",
        choices=ENGINES,
        help="edge classifier engine (default eager; the daemon's is auto)",
    )
    s.add_argument(
        "--precision",
        default="fp32",
        choices=PRECISIONS,
        help="edge classifier precision (default fp32)",
    )
    s.add_argument("--batch", type=int, default=1, help="events per batch (default 1)")
    s.add_argument(
        "--budget-scale",
        type=float,
        default=1.0,
        help="times the work budget, as the daemon's budget_scale (default 1)",
    )
    list_argument(
        s,
        "--beam-spot",
        type=beam_line_xy,
        default=(0.0, 0.0),
        metavar="X,Y",
        help="the beam line in mm the chain is centred on, as the daemon's beam_spot_x_mm and "
        "beam_spot_y_mm (default 0,0)",
    )
    torch_threads_argument(s)
    s.add_argument(
        "--events", type=int, help="read at most this many events (one read again counts)"
    )
    s.add_argument("--submission", type=Path, help="write a TrackML submission CSV")
    s.add_argument(
        "--tracks",
        type=Path,
        help="write the tracks' parameters (pt ... chi2, ndf, standard errors sigma_*, their "
        "correlations corr_*; phi, d0, z0 at the perigee to the beam line of --beam-spot, "
        "which the columns beam_x, beam_y name) as CSV",
    )
    s.add_argument("--report", type=Path, help="write the report JSON here")
    s.add_argument("--plots", type=Path, help="write PNG plots into this directory")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


@subcommand(
    "evaluate",
    _evaluate_arguments,
    help="reconstruct offline and score against truth",
    description="Reconstruct events offline (no daemon) and score them. Report keys: "
    "tracking_efficiency (pT>=1 GeV, >=5 hits, vertex r<10 mm), tracking_efficiency_all "
    "(no vertex cut), fake_rate, duplicate_rate, their counts (n_*), trackml_score, "
    "events_scored (the events it is the mean of); fake_rate_by_pt, "
    "duplicate_rate_by_pt, fake_rate_by_abs_eta, duplicate_rate_by_abs_eta (by the tracks' "
    "fitted pT and |eta|), chi2_ndf_median (of matched tracks); by the true pT of matched "
    "tracks' particles: pt_resolution_by_true_pt (half-width of the central 68% of fitted / "
    "true pT - 1), pt_bias_by_true_pt (its median), q_over_pt_resolution_by_true_pt (the "
    "same of the error on q/pT, 1/GeV), d0_resolution_by_true_pt, z0_resolution_by_true_pt, "
    "phi_resolution_by_true_pt (the same of the errors on d0 and z0, mm, and phi, rad, against "
    "the perigee of the particle's helix to the beam line), q_over_pt_pull_by_true_pt, "
    "d0_pull_by_true_pt, z0_pull_by_true_pt, phi_pull_by_true_pt (the "
    "same of error / the fit's standard error: 1 where the standard errors are right), "
    "charge_misid_rate_by_true_pt, matched_tracks_by_true_pt; pt_bias_by_abs_eta "
    "(matched tracks of pT>=1 GeV particles, by the tracks' |eta|); graph_/pruned_/gnn_"
    "edge_efficiency (pT>=1 GeV segments from r<10 mm found in the graph as built, after "
    "pruning, above the threshold, all over the same segments; _all: any vertex), "
    "graph_/pruned_/gnn_edge_purity (true pT>=1 GeV segments over edges, segments of softer "
    "particles not counted); missed_by_stage (the reconstructable particles no track found, "
    "by the first stage whose edges join at most half of their hits: graph as built, pruning, "
    "gnn above the threshold; tracks where those still join them: track building or the "
    "fit's cuts; refused: events over the work budget); events, events_with_truth (the "
    "events the physics keys are of: events without truth are reconstructed, not scored), "
    "events_repeated (reads of an event read before, same run, number and hits, as a "
    "looped replay records: each event scored once, in events once), "
    "hits_per_event, hits_on_no_layer (hits whose volume and layer the detector does not "
    "have: they make no edge), graph_edges_per_event (built), "
    "gnn_edges_per_event (after pruning: scored by the network), edges_per_hit, "
    "seconds_per_event (the reconstruction's time over all events, the time up to a "
    "refusal included), stage_seconds (mean per event reconstructed), timings (median per "
    "event reconstructed), scorer (the model directory, or oracle), input (as given), "
    "device (where the chain ran) and, for a model, engine (as used), engine_requested, "
    "engine_note (why they differ, else null) and precision; "
    "events_refused and refused (run, event, what, count, limit): events over the work "
    "budget, which the daemon answers too_dense, scored as events with no tracks.",
)
def _evaluate(args: argparse.Namespace) -> int:
    from streamtrk.detector import MAX_BEAM_SPOT
    from streamtrk.eval.evaluate import evaluate, plot
    from streamtrk.io.events import files_read, read_events
    from streamtrk.io.trackml import by_event_number, write_submission, write_track_parameters
    from streamtrk.recon.device import cuda_unavailable
    from streamtrk.recon.engine import engine_unavailable
    from streamtrk.recon.model import default_model_path

    if args.device == "cuda" and (why := cuda_unavailable()):
        print(f"streamtrk evaluate: error: device cuda: {why}", file=sys.stderr)
        return 2
    if why := engine_unavailable(args.engine, args.device):
        print(f"streamtrk evaluate: error: {why}", file=sys.stderr)
        return 2
    if not math.hypot(*args.beam_spot) <= MAX_BEAM_SPOT:  # NaN too
        raise SettingError(
            f"--beam-spot must be within {MAX_BEAM_SPOT:g} mm of the z axis, got "
            f"{args.beam_spot[0]:g},{args.beam_spot[1]:g}"
        )
    if not (math.isfinite(args.budget_scale) and args.budget_scale > 0):
        raise SettingError(f"--budget-scale must be a finite number > 0, got {args.budget_scale}")
    if args.threshold is not None and not threshold_ok(args.threshold):
        raise SettingError(
            f"--threshold must lie in [0, 1) (1 passes no edge), got {args.threshold}"
        )
    for flag, value in (("--batch", args.batch), ("--events", args.events)):
        if value is not None:
            check_count(flag, value)
    model_settings = (
        ("--threshold", args.threshold is not None),
        ("--engine", args.engine != "eager"),
        ("--precision", args.precision != "fp32"),
    )
    for flag, given in model_settings if args.oracle else ():
        if given:
            raise SettingError(
                f"{flag} is a setting of a model's chain: --oracle scores edges from truth"
            )
    model = [] if args.oracle else directory_files(Path(args.model or default_model_path()))
    check_outputs(
        args.report,
        args.submission,
        args.tracks,
        folder=args.plots,
        inputs=[*files_read(args.input), *model],
    )
    threads = set_torch_threads(args.torch_threads)
    rec, scorer = _reconstructor(args)
    print(f"streamtrk evaluate: {threads}", file=sys.stderr)
    ev = evaluate(
        rec, read_events(args.input, args.events), batch_size=args.batch, progress=not args.quiet
    )
    if ev.n_events == 0:
        print(f"streamtrk evaluate: error: no events in {args.input}", file=sys.stderr)
        return 1
    report = ev.report()
    report["input"] = str(args.input)
    report["scorer"] = scorer
    report |= _engine(rec, args)
    _say_unscored(ev, report["events_with_truth"])
    # The keys in order, the bins within each in theirs (sort_keys put 10-100 before 3-10).
    text = strict_json(dict(sorted(report.items())), indent=2)
    with results_printed(text):
        print(f"streamtrk evaluate: {_headline(report)}", file=sys.stderr)
        if args.report:
            write_report(args.report, text)
        if args.plots:
            plot(ev, args.plots)
        # The files named by event number last, both checked before either is written: two
        # runs sharing a number cannot be in them (ValueError), and the report is kept.
        submission = by_event_number(ev.submission) if args.submission else None
        tracks = by_event_number(ev.tracks) if args.tracks else None
        if submission is not None:
            write_submission(args.submission, submission)
        if tracks is not None:
            write_track_parameters(args.tracks, tracks, args.beam_spot)
    return 0


def _reconstructor(args: argparse.Namespace) -> tuple[Reconstructor, str]:
    """The chain ``--oracle`` or ``--model`` asks for, and the report's name of its scorer."""
    from streamtrk.recon.budget import Budget
    from streamtrk.recon.load import load_reconstructor
    from streamtrk.recon.model import MODEL_ENV, default_model_path, shipped_model_path
    from streamtrk.recon.reconstructor import Reconstructor

    budget = Budget().scaled(args.budget_scale)
    if args.oracle:
        rec = Reconstructor.oracle(device=args.device, budget=budget, beam_spot=args.beam_spot)
        return rec, "oracle"
    model = args.model or default_model_path()
    shipped = args.model or model == shipped_model_path()
    source = "" if shipped else f" (that path is ${MODEL_ENV}'s: unset it for the shipped model)"
    try:
        rec = load_reconstructor(
            model,
            device=args.device,
            threshold=args.threshold,
            engine=args.engine,
            precision=args.precision,
            warm_up=args.engine != "eager",
            budget=budget,
            beam_spot=args.beam_spot,
        )
    except FileNotFoundError as e:  # no model there (model_missing): the setting refused
        raise SettingError(f"{e}, or pass --oracle{source}") from None
    return rec, str(model)


def _engine(rec: Reconstructor, args: argparse.Namespace) -> dict[str, Any]:
    """What scored the edges, for the timings beside it: the device, and for a model its
    engine as used and as asked for, the reason where they differ, and the precision."""
    from streamtrk.recon.engine import EngineScorer

    out: dict[str, Any] = {"device": str(rec.device)}
    if isinstance(rec.scorer, EngineScorer):
        out |= {
            "engine": rec.scorer.engine,
            "engine_requested": args.engine,
            "engine_note": rec.scorer.fallback_reason,
            "precision": rec.scorer.precision,
        }
    return out


def _headline(report: dict[str, Any]) -> str:
    """The report's main figures in a line, the efficiency with its 68.3% interval; those
    without truth to score them left out."""
    import numpy as np

    from streamtrk.eval.evaluate import wilson_interval

    def known(key: str) -> bool:  # NaN (null in the JSON), or absent: nothing to score it on
        return report.get(key) is not None and math.isfinite(report[key])

    parts = [f"{report['events']} events, {report['seconds_per_event']:.3g} s an event"]
    if known("tracking_efficiency"):
        found, of = report["n_reconstructed"], report["n_reconstructable"]
        lo, hi = (100 * float(x) for x in wilson_interval(np.asarray(found), np.asarray(of)))
        lost = ", ".join(f"{k} {n}" for k, n in report["missed_by_stage"].items() if n)
        parts.append(
            f"tracking efficiency {100 * report['tracking_efficiency']:.2f}% ({found} of {of}; "
            f"68.3% interval {lo:.2f}-{hi:.2f}%" + (f"; missed at {lost})" if lost else ")")
        )
    if known("fake_rate"):
        n_fake, n_tracks = report["n_fake"], report["n_tracks"]
        parts.append(f"fake rate {100 * report['fake_rate']:.2f}% ({n_fake} of {n_tracks} tracks)")
    if known("duplicate_rate"):
        parts.append(
            f"duplicate rate {100 * report['duplicate_rate']:.2f}% ({report['n_duplicate']} of "
            f"{report['n_tracks'] - report['n_fake']} tracks of a particle)"
        )
    if known("trackml_score"):
        parts.append(f"TrackML score {report['trackml_score']:.4f} (by the truth's weights)")
    return "; ".join(parts)


def _say_unscored(ev: Evaluation, with_truth: int) -> None:
    """Say on stderr which events the physics keys leave out, or count as trackless, and
    the hits no track can hold."""
    if ev.n_hits_no_layer:
        print(
            f"streamtrk evaluate: warning: {ev.n_hits_no_layer} of {ev.n_hits} hits "
            f"({ev.n_hits_no_layer / ev.n_hits:.2%}) are on layers the detector does not have "
            "(their volume_id and layer_id): they make no edge, no track holds them",
            file=sys.stderr,
        )
    if ev.n_repeated:
        print(
            f"streamtrk evaluate: {ev.n_repeated} reads were of an event read before (same "
            "run, number and hits, as a looped replay records): each event scored once",
            file=sys.stderr,
        )
    if ev.refused:
        print(
            f"streamtrk evaluate: {len(ev.refused)} of {ev.n_events} events over the work "
            "budget (the daemon answers them too_dense), scored as events with no tracks: "
            "'refused' in the report names them",
            file=sys.stderr,
        )
    if (truthless := ev.n_events - with_truth) > 0:
        print(
            f"streamtrk evaluate: {truthless} of {ev.n_events} events have no truth: "
            "reconstructed, not scored (the physics keys are of events_with_truth, "
            f"{with_truth})",
            file=sys.stderr,
        )
    if ev.n_without_kinematics:
        print(
            f"streamtrk evaluate: {ev.n_without_kinematics} events have truth but no particle "
            "vertices or momenta (TrackML without -particles.csv): they count in no efficiency "
            "(null where no event does); the TrackML score uses the truth's weight column "
            "(where it has none, official weights from the truth's momenta)",
            file=sys.stderr,
        )
