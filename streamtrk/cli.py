"""The ``streamtrk`` command: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from streamtrk import __version__
from streamtrk.recon.choices import DEVICES, ENGINES, PRECISIONS, threshold_ok
from streamtrk.stop import StopFlag
from streamtrk.threads import set_torch_threads, wait_passively

Handler = Callable[[argparse.Namespace], int]
Arguments = Callable[[argparse.ArgumentParser], None]
_COMMANDS: list[tuple[str, Arguments, Handler, dict[str, Any]]] = []
_NEGATIVE_LIST = re.compile(r"-[0-9.][^,]*(,[^,]*)+")  # -1,0,0 (a value, not an option)
_LONG_OPTION = re.compile(r"--[a-z][a-z0-9-]*")  # --beam-spot (not --x=..., not --)


def _json(obj: Any, **kw: Any) -> str:
    """Strict JSON (what jq and browsers parse): NaN and infinities, the rates of empty
    bins, are written as null."""

    def clean(x: Any) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [clean(v) for v in x]
        return x

    return json.dumps(clean(obj), allow_nan=False, **kw)


def _command(name: str, arguments: Arguments, **parser: Any) -> Callable[[Handler], Handler]:
    """Register the decorated handler (parsed arguments -> exit status) as subcommand ``name``;
    ``arguments`` adds its options, ``parser`` goes to ``add_parser`` (help, description)."""

    def register(handler: Handler) -> Handler:
        _COMMANDS.append((name, arguments, handler, parser))
        return handler

    return register


def _split(text: str, sep: str, kinds: tuple[type, ...], what: str) -> list[Any]:
    """``text`` split at ``sep`` into one value of each of ``kinds``, else a usage error."""
    parts = text.split(sep)
    if len(parts) == len(kinds):
        try:
            return [kind(part) for kind, part in zip(kinds, parts, strict=True)]
        except ValueError:
            pass
    raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")


def _layer(text: str) -> tuple[int, int]:
    vol, layer = _split(text, ":", (int, int), "VOL:LAYER (integers)")
    return vol, layer


def _noisy_layer(text: str) -> tuple[tuple[int, int], float]:
    vol, layer, hits = _split(text, ":", (int, int, float), "VOL:LAYER:HITS")
    return (vol, layer), hits


def _beam_spot(text: str) -> tuple[float, float, float]:
    x, y, z = _split(text, ",", (float, float, float), "X,Y,Z in mm")
    return x, y, z


def _beam_line(text: str) -> tuple[float, float]:
    x, y = _split(text, ",", (float, float), "X,Y in mm")
    return x, y


def _pt_range(text: str) -> tuple[float, float]:
    lo, hi = _split(text, ",", (float, float), "LO,HI in GeV")
    return lo, hi


def _simulate_arguments(s: argparse.ArgumentParser) -> None:
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
        help="add N high-pT particles (5-50 GeV unless --hard-scatter-pt) on the first vertex",
    )
    s.add_argument(
        "--hard-scatter-pt",
        type=_pt_range,
        default=(5.0, 50.0),
        metavar="LO,HI",
        help="pT range of the hard-scatter particles in GeV, log-uniform (default 5,50)",
    )
    s.add_argument(
        "--dead-layer",
        type=_layer,
        action="append",
        default=[],
        metavar="VOL:LAYER",
        help="a layer that reads nothing, e.g. 8:4 (repeatable)",
    )
    s.add_argument(
        "--noisy-layer",
        type=_noisy_layer,
        action="append",
        default=[],
        metavar="VOL:LAYER:HITS",
        help="add HITS noise hits per event (Poisson mean) on a layer (repeatable)",
    )
    s.add_argument(
        "--beam-spot",
        type=_beam_spot,
        default=(0.0, 0.0, 0.0),
        metavar="X,Y,Z",
        help="centre of the pileup vertices in mm (default 0,0,0; "
        "write --beam-spot=-1,0,0 for a leading minus)",
    )
    s.add_argument("--run", type=int, default=1, help="run number (default 1)")
    s.add_argument("--detector", type=Path, default=None, help="detector TOML file")
    s.add_argument("-o", "--output", type=Path, required=True, help="output .stk recording")
    s.add_argument("--trackml-dir", type=Path, help="also write TrackML CSV files here")
    _compact_argument(s)
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _compact_argument(s: argparse.ArgumentParser, what: str = "write") -> None:
    s.add_argument(
        "--compact",
        action="store_true",
        help=f"{what} hits messages with their ids in the smallest unsigned types (wire "
        "version 5: about 20 bytes a hit instead of 32; daemons before version 5 refuse them)",
    )


@_command("simulate", _simulate_arguments, help="simulate TrackML-like events into a recording")
def _simulate(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from tqdm import tqdm

    from streamtrk.detector import load_detector
    from streamtrk.io.recording import new_recording
    from streamtrk.io.trackml import new_events
    from streamtrk.sim.generator import GeneratorConfig
    from streamtrk.sim.simulate import SimConfig, simulate

    gen = replace(
        GeneratorConfig(),
        mu=args.mu,
        hard_scatter=args.hard_scatter,
        hard_scatter_pt=args.hard_scatter_pt,
        beam_spot=args.beam_spot,
    )
    cfg = SimConfig(
        generator=gen,
        noise_fraction=args.noise,
        dead_layers=frozenset(args.dead_layer),
        noisy_layers=tuple(args.noisy_layer),
    )
    det = load_detector(args.detector)
    events = simulate(det, cfg, args.seed, args.events, run=args.run)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    replaced = 0
    with (
        new_recording(args.output) as rec,
        new_events(args.trackml_dir) if args.trackml_dir else nullcontext(None) as write_csv,
    ):
        for ev in tqdm(
            events, total=args.events, desc="simulate", unit="event", disable=args.quiet
        ):
            rec.write_event(ev, compact=args.compact)
            if write_csv is not None:
                replaced += write_csv(ev)
    _say_replaced("simulate", replaced, args.trackml_dir)
    return 0


def _import_trackml_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "path", help="event prefix (.../event000001000), one of its files, or a directory of events"
    )
    s.add_argument("-o", "--output", type=Path, required=True, help="output .stk recording")
    s.add_argument("--run", type=int, default=0, help="run number (default 0)")
    s.add_argument(
        "--no-truth", action="store_true", help="import the hits alone, without their truth"
    )
    _compact_argument(s)
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


@_command(
    "import-trackml", _import_trackml_arguments, help="convert TrackML CSV event(s) to a recording"
)
def _import_trackml(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from streamtrk.io.recording import new_recording
    from streamtrk.io.trackml import iter_events, kinematics_unknown

    n = 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with new_recording(args.output) as rec:  # the file there stays if this fails
        for ev in tqdm(
            iter_events(args.path, run=args.run), desc="import", unit="event", disable=args.quiet
        ):
            if args.no_truth:
                ev.truth = None
            elif ev.truth is not None and kinematics_unknown(ev.truth.particles).any():
                raise ValueError(
                    f"event {ev.event} has truth but no -particles.csv: a recording's truth "
                    "carries each particle's vertex and momentum; add the particles file, or "
                    "import the hits alone with --no-truth"
                )
            rec.write_event(ev, compact=args.compact)
            n += 1
        if n == 0:
            raise ValueError(f"no TrackML event found at {args.path}")
    return 0


def _inspect_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("recording", type=Path, help="a .stk recording")
    s.add_argument("--json", action="store_true", help="print JSON")


@_command("inspect", _inspect_arguments, help="summarise a recording")
def _inspect(args: argparse.Namespace) -> int:
    from streamtrk.io.recording import summarize

    summary = summarize(args.recording)
    if args.json:
        print(_json(summary, indent=2, sort_keys=True))
    else:
        width = max(len(k) for k in summary)
        for k, v in summary.items():
            print(f"{k:<{width}}  {v}")
    if summary["error"]:
        print(f"streamtrk inspect: error: {summary['error']}", file=sys.stderr)
        return 1
    return 0


def _export_trackml_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("recording", type=Path, help="a .stk recording")
    s.add_argument("-o", "--output", type=Path, required=True, help="output directory")


@_command(
    "export-trackml", _export_trackml_arguments, help="write a recording's events as TrackML CSV"
)
def _export_trackml(args: argparse.Namespace) -> int:
    from streamtrk.io.recording import iter_events
    from streamtrk.io.trackml import new_events

    written: dict[int, tuple[int, bytes]] = {}  # event number -> run, hits digest
    repeats = replaced = 0
    with new_events(args.output) as write:  # all events or, on an error, none
        for ev in iter_events(args.recording):
            this, seen = (ev.run, ev.hits.digest()), written.get(ev.event)
            if seen == this:  # recorded twice (a looped replay): written once
                repeats += 1
                continue
            if seen is not None:  # its files would overwrite the other event's
                where = (f"run {seen[0]} and run {ev.run}" if seen[0] != ev.run
                         else f"run {ev.run} twice, with other hits,")  # fmt: skip
                raise ValueError(
                    f"event number {ev.event} occurs in {where} of {args.recording}: TrackML "
                    "files name events by number alone"
                )
            written[ev.event] = this
            replaced += write(ev)
        if not written:
            raise ValueError(f"no events in {args.recording}")
    if repeats:
        print(f"streamtrk export-trackml: {repeats} events recorded more than once were "
              "written once", file=sys.stderr)  # fmt: skip
    _say_replaced("export-trackml", replaced, args.output)
    return 0


def _check_outputs(*files: Path | None, folder: Path | None = None) -> None:
    """The output files (and folder of plots) given, checked before the work that fills
    them: a path that cannot be written fails now, not with the results."""
    from streamtrk.io.paths import check_writable

    for path in files:
        if path is not None:
            check_writable(path)
    if folder is not None:
        check_writable(folder, folder=True)


def _say_replaced(command: str, replaced: int, directory: Path) -> None:
    if replaced:
        print(f"streamtrk {command}: {replaced} events replaced the files of the same event "
              f"number in {directory}", file=sys.stderr)  # fmt: skip


def _torch_threads_argument(s: argparse.ArgumentParser, default: int | None = 0) -> None:
    first = "the recipe's `threads`; 0:" if default is None else "0,"
    s.add_argument(
        "--torch-threads",
        type=int,
        default=default,
        metavar="N",
        help=f"torch CPU threads (default {first} the CPUs this process may use: CPU "
        "affinity, cgroup quota)",
    )


def _evaluate_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "input", help="a .stk recording, or TrackML CSV (event prefix, one of its files, directory)"
    )
    src = s.add_mutually_exclusive_group()
    src.add_argument("--model", type=Path, help="model directory (default: the shipped model)")
    src.add_argument("--oracle", action="store_true", help="edge scores from truth")
    s.add_argument("--threshold", type=float, help="edge-score threshold (default: the model's)")
    s.add_argument(
        "--device", default="cpu", choices=DEVICES, help="where the chain runs (default cpu)"
    )
    s.add_argument("--engine", default="eager", choices=ENGINES, help="edge classifier engine")
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
    s.add_argument(
        "--beam-spot",
        type=_beam_line,
        default=(0.0, 0.0),
        metavar="X,Y",
        help="the beam line in mm the chain is centred on, as the daemon's beam_spot_x_mm and "
        "beam_spot_y_mm (default 0,0; write --beam-spot=-1,0 for a leading minus)",
    )
    _torch_threads_argument(s)
    s.add_argument("--events", type=int, help="at most this many events")
    s.add_argument("--submission", type=Path, help="write a TrackML submission CSV")
    s.add_argument(
        "--tracks",
        type=Path,
        help="write the tracks' parameters (pt ... chi2, ndf, standard errors sigma_*, their "
        "correlations corr_*; phi, d0, z0 at the perigee to the beam line of --beam-spot) as CSV",
    )
    s.add_argument("--report", type=Path, help="write the report JSON here")
    s.add_argument("--plots", type=Path, help="write PNG plots into this directory")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


@_command(
    "evaluate",
    _evaluate_arguments,
    help="reconstruct offline and score against truth",
    description="Reconstruct events offline (no daemon) and score them. Report keys: "
    "tracking_efficiency (pT>=1 GeV, >=5 hits, vertex r<10 mm), tracking_efficiency_all "
    "(no vertex cut), fake_rate, duplicate_rate, trackml_score; fake_rate_by_pt, "
    "duplicate_rate_by_pt, fake_rate_by_abs_eta, duplicate_rate_by_abs_eta (by the tracks' "
    "fitted pT and |eta|), chi2_ndf_median (of matched tracks); by the true pT of matched "
    "tracks' particles: pt_resolution_by_true_pt (half-width of the central 68% of fitted / "
    "true pT - 1), pt_bias_by_true_pt (its median), q_over_pt_resolution_by_true_pt (the "
    "same of the error on q/pT, 1/GeV), d0_resolution_by_true_pt, z0_resolution_by_true_pt "
    "(the same of the errors on d0 and z0, mm, against the perigee of the particle's helix to "
    "the beam line), q_over_pt_pull_by_true_pt, d0_pull_by_true_pt, z0_pull_by_true_pt (the "
    "same of error / the fit's standard error: 1 where the standard errors are right), "
    "charge_misid_rate_by_true_pt, matched_tracks_by_true_pt; pt_bias_by_abs_eta "
    "(matched tracks of pT>=1 GeV particles, by the tracks' |eta|); graph_/pruned_/gnn_"
    "edge_efficiency (pT>=1 GeV segments from r<10 mm found in the graph as built, after "
    "pruning, above the threshold, all over the same segments; _all: any vertex), "
    "graph_/pruned_/gnn_edge_purity (true pT>=1 GeV segments over edges, segments of softer "
    "particles not counted); events, events_with_truth (the events the physics keys are "
    "of: events without truth are reconstructed, not scored), hits_per_event, "
    "graph_edges_per_event (built), "
    "gnn_edges_per_event (after pruning: scored by the network), edges_per_hit, "
    "seconds_per_event, stage_seconds (mean per event), timings (median per event); "
    "events_refused and refused (run, event, what, count, limit): events over the work "
    "budget, which the daemon answers too_dense, scored as events with no tracks.",
)
def _evaluate(args: argparse.Namespace) -> int:
    from streamtrk.eval.evaluate import evaluate, plot
    from streamtrk.io.events import read_events
    from streamtrk.io.trackml import by_event_number, write_submission, write_track_parameters
    from streamtrk.recon.budget import Budget
    from streamtrk.recon.device import cuda_unavailable
    from streamtrk.recon.engine import engine_unavailable
    from streamtrk.recon.load import load_reconstructor
    from streamtrk.recon.model import default_model_path
    from streamtrk.recon.reconstructor import Reconstructor

    if args.device == "cuda" and (why := cuda_unavailable()):
        print(f"streamtrk evaluate: error: device cuda: {why}", file=sys.stderr)
        return 2
    if why := engine_unavailable(args.engine, args.device):
        print(f"streamtrk evaluate: error: {why}", file=sys.stderr)
        return 2
    if not (math.isfinite(args.budget_scale) and args.budget_scale > 0):
        raise ValueError(f"--budget-scale must be a finite number > 0, got {args.budget_scale}")
    if args.threshold is not None and not threshold_ok(args.threshold):
        raise ValueError(f"--threshold must lie in [0, 1) (1 passes no edge), got {args.threshold}")
    for flag, value in (("--batch", args.batch), ("--events", args.events)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be at least 1, got {value}")
    _check_outputs(args.report, args.submission, args.tracks, folder=args.plots)
    budget = Budget().scaled(args.budget_scale)
    threads = set_torch_threads(args.torch_threads)
    if args.oracle:
        rec = Reconstructor.oracle(device=args.device, budget=budget, beam_spot=args.beam_spot)
        scorer = "oracle"
    else:
        model = args.model or default_model_path()
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
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{e}, or pass --oracle") from None
        scorer = str(model)
    print(f"streamtrk evaluate: {threads}", file=sys.stderr)
    ev = evaluate(
        rec, read_events(args.input, args.events), batch_size=args.batch, progress=not args.quiet
    )
    if ev.n_events == 0:
        print(f"streamtrk evaluate: error: no events in {args.input}", file=sys.stderr)
        return 1
    if ev.refused:
        print(
            f"streamtrk evaluate: {len(ev.refused)} of {ev.n_events} events over the work "
            "budget (the daemon answers them too_dense), scored as events with no tracks: "
            "'refused' in the report names them",
            file=sys.stderr,
        )
    report = ev.report()
    report["input"] = str(args.input)
    report["scorer"] = scorer
    if (truthless := ev.n_events - report["events_with_truth"]) > 0:
        print(
            f"streamtrk evaluate: {truthless} of {ev.n_events} events have no truth: "
            "reconstructed, not scored (the physics keys are of events_with_truth, "
            f"{report['events_with_truth']})",
            file=sys.stderr,
        )
    if ev.n_without_kinematics:
        print(
            f"streamtrk evaluate: {ev.n_without_kinematics} events have truth but no particle "
            "vertices or momenta (TrackML without -particles.csv): they count in no efficiency "
            "(null where no event does); the TrackML score uses the truth's momenta",
            file=sys.stderr,
        )
    text = _json(report, indent=2, sort_keys=True)
    # Files named by event number are checked before anything is written.
    submission = by_event_number(ev.submission) if args.submission else None
    tracks = by_event_number(ev.tracks) if args.tracks else None
    if args.report:
        args.report.write_text(text + "\n")
    if args.submission:
        write_submission(args.submission, submission)
    if args.tracks:
        write_track_parameters(args.tracks, tracks)
    if args.plots:
        plot(ev, args.plots)
    print(text)
    return 0


def _export_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--onnx", type=Path, required=True, metavar="MODEL_DIR", help="model directory")
    s.add_argument("-o", "--output", type=Path, required=True, help="output .onnx file")


@_command(
    "export",
    _export_arguments,
    help="export the edge classifier of a model directory (ONNX)",
    description="Write the edge classifier as an ONNX graph: inputs x (nodes, 3) float32, "
    "edge_index (2, edges) int64, edge_attr (edges, 6) float32, nodes and edges dynamic; "
    "output scores (edges,) float32, the sigmoid the model's threshold applies to. The "
    "model card's name, threshold and feature version go into the ONNX metadata.",
)
def _export(args: argparse.Namespace) -> int:
    from streamtrk.recon.onnx_export import export_model_dir

    path = export_model_dir(args.onnx, args.output)
    print(f"wrote {path} ({path.stat().st_size} bytes): ONNX edge classifier of {args.onnx}")
    return 0


def _serve_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--config", type=Path, help="TOML configuration file")
    s.add_argument(
        "--print-config", action="store_true", help="print the effective configuration and exit"
    )
    from streamtrk.service.config import add_arguments

    add_arguments(s)


@_command(
    "serve",
    _serve_arguments,
    help="run the daemon: hits in, tracks out, metrics and health over HTTP",
    description="Run the reconstruction daemon. Settings come from the embedded defaults, "
    "then --config FILE (TOML, keys named like the flags with underscores), then "
    "STREAMTRK_<SETTING> environment variables, then these flags. Signals: SIGTERM/SIGINT "
    "drain and exit, SIGHUP reloads configuration and model.",
)
def _serve(args: argparse.Namespace) -> int:
    # SIGHUP's default action ends the process: one during the imports below (seconds, with
    # torch) would stop the daemon unlogged, and a supervisor restarts no process a SIGHUP
    # ended (systemd's Restart=on-failure). Kept, it makes the daemon reload once ready.
    hup = StopFlag()
    signal.signal(signal.SIGHUP, lambda *_: hup.set())
    from streamtrk.recon.device import cuda_unavailable, resolve_device
    from streamtrk.recon.engine import engine_unavailable
    from streamtrk.service.config import (
        ConfigError,
        ServeConfig,
        flags_from_args,
        load_config,
        log_format_asked,
        unknown_variables,
    )

    flags = flags_from_args(args)

    def load() -> ServeConfig:
        return load_config(args.config, os.environ, flags)

    try:
        cfg = load()
    except ConfigError as e:
        _serve_error(
            f"invalid configuration: {e}", log_format_asked(args.config, os.environ, flags)
        )
        return 2
    no_cuda = cuda_unavailable() if cfg.device == "cuda" else None
    no_engine = (  # tensorrt: the one engine refused where it cannot run; the others fall back
        engine_unavailable(cfg.engine, resolve_device(cfg.device))
        if cfg.engine == "tensorrt" and not no_cuda
        else None
    )
    refusal = f"device cuda: {no_cuda}" if no_cuda else no_engine
    if args.print_config:  # the configuration, checked on any host (a GPU node's, on a laptop)
        warnings = unknown_variables(os.environ)
        warnings += [f"{refusal} (serving would refuse it here)"] if refusal else []
        for warning in warnings:
            print(f"streamtrk serve: warning: {warning}", file=sys.stderr)
        print(cfg.to_toml(), end="")
        return 0
    if refusal:
        _serve_error(f"invalid configuration: {refusal}", cfg.log_format)
        return 2
    from streamtrk.service.serve import serve

    return serve(cfg, load, hup)


def _serve_error(message: str, log_format: str) -> None:
    """A start-up failure before the daemon's logging exists: one line on stderr, a JSON
    object where the configuration asks for JSON logs (as a log shipper reads them)."""
    if log_format == "json":
        from streamtrk.service.logs import configure

        configure("json", "error")
        logging.getLogger("streamtrk.serve").error(message)
    else:
        print(f"streamtrk serve: {message}", file=sys.stderr)


def _curve_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--curve-key", type=Path, metavar="FILE", help="CURVE: own secret certificate")
    s.add_argument(
        "--curve-server-key",
        type=Path,
        metavar="FILE",
        help="CURVE: the daemon's public certificate (with --curve-key)",
    )


def _replay_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("recording", type=Path, help="a .stk recording")
    s.add_argument("--to", default="tcp://127.0.0.1:5555", help="daemon input endpoint")
    s.add_argument(
        "--from", dest="from_", default="tcp://127.0.0.1:5556", help="daemon output endpoint"
    )
    s.add_argument("--bind", action="store_true", help="bind both sockets (daemons connect)")
    s.add_argument("--rate", type=float, help="events per second (default: as fast as taken)")
    s.add_argument("--events", type=int, help="only the first N events of the recording")
    s.add_argument("--loop", type=int, default=1, help="send the events K times (default 1)")
    _compact_argument(s, "send, re-encoded at load,")
    s.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for replies (default 30)"
    )
    s.add_argument(
        "--retries", type=int, default=0, metavar="N", help="resend an unanswered event N times"
    )
    s.add_argument(
        "--retry-after", type=float, default=5.0, metavar="S", help="seconds before a resend (5)"
    )
    _curve_arguments(s)
    s.add_argument("--report", type=Path, help="write the report JSON here")
    s.add_argument("--submission", type=Path, help="write a TrackML submission CSV")
    s.add_argument("--plot", type=Path, help="write a latency histogram PNG")
    s.add_argument("--json", action="store_true", help="print the report as JSON")
    s.add_argument(
        "--fail-on-error",
        action="store_true",
        help="exit status 1 also when a reply is an error (a check in CI)",
    )
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


@_command(
    "replay",
    _replay_arguments,
    help="replay a recording through the daemon and report throughput, latency, physics",
    description="Send a recording's hits messages to the daemon (as recorded or, with "
    "--compact, re-encoded compact; the header given a msg_id) and receive the replies, "
    "one per event. Report keys: sent, received, "
    "missing (no reply within the timeout), ok, errors (by reason), unsent (given up: the "
    "daemon took nothing for the timeout, or sending failed), send_error (why sending "
    "failed, else null), refused (the sockets, to and from, whose handshake the daemon "
    "refused: auth or handshake; the replay then stops), resent, duplicates (second "
    "replies to a resent event, not counted again), unexpected (replies to no message of "
    "this replay), "
    "invalid_replies (not decodable as a reply), mismatched_replies (ok replies naming hit "
    "ids their event lacks), interrupted, duration_s (first send to the last send or reply), "
    "events_per_second, offered_rate_hz (--rate), send_rate_hz, "
    "latency_p50/p90/p99/max/mean_ms (first send to reply), beam_lines_mm (the "
    "beam lines, x and y, that the replies' phi, d0 and z0 are about), plus "
    "tracking_efficiency, fake_rate, duplicate_rate, trackml_score and their counts when the "
    "recording has truth. Exit status 1 when events are missing or unsent, sending failed, "
    "a handshake was refused or a reply is mismatched (with --fail-on-error also when a "
    "reply is an error), 130 after Ctrl-C or SIGTERM (the report covers the replies "
    "received until then).",
)
def _replay(args: argparse.Namespace) -> int:
    from streamtrk.client import REFUSAL_HINTS
    from streamtrk.io.trackml import by_event_number, write_submission
    from streamtrk.replay import (
        ReplayOptions,
        format_report,
        labels_of,
        load_recording,
        plot_latency,
        replay,
    )

    if args.events is not None and args.events < 1:
        raise ValueError(f"--events must be at least 1, got {args.events}")
    _check_outputs(args.report, args.submission, args.plot)
    events = load_recording(args.recording, args.events, compact=args.compact)
    if not events:
        print(f"streamtrk replay: error: no hits messages in {args.recording}", file=sys.stderr)
        return 1
    opts = ReplayOptions(
        to=args.to,
        from_=args.from_,
        bind=args.bind,
        rate=args.rate,
        loop=args.loop,
        timeout_s=args.timeout,
        progress=not args.quiet,
        retries=args.retries,
        retry_after_s=args.retry_after,
        curve_key=args.curve_key,
        curve_server_key=args.curve_server_key,
    )
    with _stop_on_signals() as stop:
        result = replay(events, opts, stop)
    labels = labels_of(events, result.scored_replies)
    report = {"recording": str(args.recording)} | result.report(events, args.rate, labels)
    if args.report:
        args.report.write_text(_json(report, indent=2) + "\n")
    if args.submission:
        hit_ids: dict[tuple[int, int], Any] = {}
        for ev in events:  # an event recorded twice: its first copy, as labels_of takes
            hit_ids.setdefault(ev.key, ev.event.hits.hit_id)
        rows = {k: (hit_ids[k], v) for k, v in labels.items() if v is not None}
        write_submission(args.submission, by_event_number(rows))
    if args.plot:
        plot_latency(result.latencies, args.plot, title=Path(args.recording).name)
    print(_json(report, indent=2) if args.json else format_report(report))
    if report["refused"]:  # what follows "no reply" would mislead
        for socket, cause in report["refused"].items():
            address = args.to if socket == "to" else args.from_
            print(
                f"streamtrk replay: error: --{socket} {address} refused the handshake "
                f"({cause}): {REFUSAL_HINTS[cause]}; nothing more was sent",
                file=sys.stderr,
            )
    elif report["sent"] and not report["received"]:
        print(
            f"streamtrk replay: error: no reply at all: {report['sent']} events were sent to "
            f"{args.to} and nothing came back from {args.from_} within {args.timeout:g} s; is "
            "a daemon listening there (and are --to and --from its input and output)?",
            file=sys.stderr,
        )
    elif not report["sent"] and report["unsent"]:
        print(
            f"streamtrk replay: error: nothing could be sent to {args.to} within "
            f"{args.timeout:g} s: is a daemon listening there?",
            file=sys.stderr,
        )
    if report["send_error"]:
        print(f"streamtrk replay: error: sending failed: {report['send_error']}", file=sys.stderr)
    if result.interrupted:
        print(
            "streamtrk replay: interrupted; the report covers the replies so far", file=sys.stderr
        )
        return 130  # 128 + SIGINT
    if mismatched := report["mismatched_replies"]:
        print(
            f"streamtrk replay: error: {mismatched} ok replies name hit ids their events do "
            "not have (left out of the physics and the submission)",
            file=sys.stderr,
        )
        return 1
    if args.fail_on_error and report["errors"]:
        reasons = ", ".join(f"{n} {reason}" for reason, n in report["errors"].items())
        print(f"streamtrk replay: error: error replies: {reasons}", file=sys.stderr)
        return 1
    failed = report["missing"] or report["unsent"] or report["send_error"] or report["refused"]
    return 1 if failed else 0


def _record_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--from", dest="from_", required=True, help="endpoint of a PUSH stream")
    s.add_argument("-o", "--output", type=Path, required=True, help="output .stk recording")
    s.add_argument("--bind", action="store_true", help="bind instead of connecting")
    s.add_argument("--events", type=int, help="stop after N hits messages")
    s.add_argument("--duration", type=float, help="stop after S seconds")
    _curve_arguments(s)


@contextmanager
def _stop_on_signals() -> Iterator[StopFlag]:
    """A flag that SIGINT and SIGTERM set while the block runs (the command stops cleanly
    on either; a flag, not an event: see :mod:`streamtrk.stop`); their handlers from before
    are back after it (``main`` may run in-process: the demo's replay, tests)."""
    stop = StopFlag()
    signals = (signal.SIGINT, signal.SIGTERM)
    before = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in signals}
    try:
        yield stop
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


@_command("record", _record_arguments, help="tap a hits stream into a recording")
def _record(args: argparse.Namespace) -> int:
    from streamtrk.record import record

    with _stop_on_signals() as stop:
        counts = record(
            args.from_,
            args.output,
            bind=args.bind,
            events=args.events,
            duration_s=args.duration,
            stop=stop,
            curve_key=args.curve_key,
            curve_server_key=args.curve_server_key,
        )
    past = counts["past_limit"]
    skipped = f"skipped {counts['invalid']} invalid and {counts['other']} other messages"
    if not counts["hits"] + counts["truth"]:
        print(
            f"streamtrk record: recorded nothing ({skipped}): {args.output} not written",
            file=sys.stderr,
        )
        return 1
    print(
        f"recorded {counts['hits']} hits and {counts['truth']} truth messages to {args.output}; "
        + skipped
        + (f"; {past} more arrived past --events and were not recorded" if past else "")
    )
    return 0


def _train_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--config", type=Path, required=True, help="training config (TOML)")
    s.add_argument("--out", type=Path, help="model directory (default: models/<config name>)")
    s.add_argument(
        "--overwrite",
        action="store_true",
        help="replace what --out holds (a directory that is not empty is refused without it)",
    )
    _torch_threads_argument(s, default=None)
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


@_command(
    "train",
    _train_arguments,
    help="train the edge classifier on simulated events",
    description="Train the edge classifier on simulated events (or a recording) as the "
    "config file says, choose its threshold on the validation events, evaluate it, and "
    "write weights.pt, card.toml, training.png and checkpoints/ into the output directory. "
    "The model is built in OUT.partial and moved to OUT when complete: an interrupted or "
    "failed run leaves OUT as it was (and its checkpoints in OUT.partial, until the next run).",
)
def _train(args: argparse.Namespace) -> int:
    import shlex
    from dataclasses import replace

    import torch

    from streamtrk.train import load_config, train

    cfg = load_config(args.config)
    out = args.out or Path("models") / cfg.name
    argv = ["streamtrk", "train", "--config", str(args.config), "--out", str(out)]
    threads = torch.get_num_threads()
    if args.torch_threads is None:
        torch.set_num_threads(cfg.threads)
        print(f"streamtrk train: torch threads {cfg.threads} (the recipe's)", file=sys.stderr)
    else:
        print(f"streamtrk train: {set_torch_threads(args.torch_threads)}", file=sys.stderr)
        cfg = replace(cfg, threads=torch.get_num_threads())
        argv += ["--torch-threads", str(args.torch_threads)]
    command = shlex.join(argv)
    try:
        card = train(
            cfg,
            out,
            config_text=args.config.read_text(),
            command=command,
            progress=not args.quiet,
            overwrite=args.overwrite,
        )
    finally:
        torch.set_num_threads(threads)
    summary = {
        "model": str(out),
        "threshold": card["model"]["threshold"],
        "seconds": card["training"]["seconds_total"],
        "metrics": card["metrics"],
    }
    print(_json(summary, indent=2, sort_keys=True))
    return 0


def _farm_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("role", choices=("distributor", "collector"), help="which forwarder")
    s.add_argument(
        "--from",
        dest="from_",
        required=True,
        help="PULL endpoint to bind (producers connect to a distributor's, daemons' outputs "
        "to a collector's)",
    )
    s.add_argument(
        "--to",
        required=True,
        help="PUSH endpoint to bind (daemons' inputs connect to a distributor's, consumers "
        "to a collector's)",
    )
    s.add_argument("--hwm", type=int, default=2, help="high-water marks, messages (default 2)")
    s.add_argument(
        "--http",
        metavar="HOST:PORT",
        help="serve /metrics, /healthz, /readyz and /status there (port 0: a free one); "
        "default: none",
    )
    s.add_argument(
        "--max-hits",
        type=int,
        default=1_000_000,
        help="most hits of an event: longer frames drop their sender (the daemons' max_hits)",
    )
    _curve_arguments(s)
    s.add_argument(
        "--server-key",
        type=Path,
        metavar="FILE",
        help="own secret certificate: the socket facing producers (distributor) or consumers "
        "(collector) is a CURVE server",
    )
    s.add_argument(
        "--allowed-keys",
        type=Path,
        metavar="DIR",
        help="directory of the public certificates (NAME.key) of the clients admitted there",
    )
    s.add_argument(
        "--allow-insecure",
        action="store_true",
        help="bind beyond this host without CURVE (a trusted network only)",
    )


@_command(
    "farm",
    _farm_arguments,
    help="run a farm's distributor or collector (a PULL -> PUSH forwarder)",
    description="Forward messages from a bound PULL socket to a bound PUSH socket: as the "
    "distributor, from producers to daemons in connect mode (which join only when ready and "
    "leave first when they stop); as the collector, from the daemons' outputs to consumers. "
    "With --curve-key and --curve-server-key, the socket facing the daemons is a CURVE "
    "client of theirs; with --server-key and --allowed-keys the other one is a CURVE server "
    "for the producers or consumers. A socket bound beyond this host without CURVE is "
    "refused unless --allow-insecure. Prints a JSON 'listening' line with the bound "
    "addresses (front, back); stops on SIGTERM or SIGINT. See docs/farm-topology.md.",
)
def _farm(args: argparse.Namespace) -> int:
    from streamtrk.farm import forward
    from streamtrk.service.logs import configure

    configure("json", "info")  # refused clients and, with --http, connections: JSON on stderr

    if args.max_hits < 1:
        raise ValueError(f"--max-hits must be at least 1, got {args.max_hits}")
    if args.hwm < 1:  # 0 is no limit to ZeroMQ: no back-pressure at all
        raise ValueError(f"--hwm must be at least 1, got {args.hwm}")
    with _stop_on_signals() as stop:
        forward(
            args.role,
            args.from_,
            args.to,
            hwm=args.hwm,
            max_hits=args.max_hits,
            curve_key=args.curve_key,
            curve_server_key=args.curve_server_key,
            server_key=args.server_key,
            allowed_keys=args.allowed_keys,
            allow_insecure=args.allow_insecure,
            http=args.http,
            stop=stop,
        )
    return 0


def _keys_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("directory", type=Path, help="where to write the certificates")
    s.add_argument("name", help="certificate name: NAME.key (public), NAME.key_secret")


@_command(
    "keys",
    _keys_arguments,
    help="write a CURVE certificate pair (NAME.key, NAME.key_secret)",
    description="Write a CurveZMQ certificate pair in pyzmq's zmq.auth format: NAME.key holds "
    "the public key (give it to the other side: a client's goes into the daemon's "
    "curve_allowed_keys directory, the daemon's to its clients' --curve-server-key), "
    "NAME.key_secret the public and the secret key (keep it; readable by its owner only). "
    "See docs/operations.md, Keys.",
)
def _keys(args: argparse.Namespace) -> int:
    from streamtrk.wire.curve import create_certificates

    try:
        public, secret = create_certificates(args.directory, args.name)
    except FileExistsError as e:
        print(f"streamtrk keys: error: {e.filename} exists; not overwritten", file=sys.stderr)
        return 1
    print(f"wrote {public} (public) and {secret} (secret)")
    return 0


def _demo_arguments(s: argparse.ArgumentParser) -> None:
    # MU=50 keeps the demo to about a minute on a 2-core CPU with the eager GNN; MU=200 events
    # take seconds each there (see bench/RESULTS.md).
    s.add_argument("--events", type=int, default=10, help="events to simulate (default 10)")
    s.add_argument("--mu", type=float, default=50.0, help="mean pileup (default 50)")
    s.add_argument(
        "--ready-timeout", type=float, default=300.0, help="seconds to wait for readiness"
    )


@_command(
    "demo",
    _demo_arguments,
    help="the `make demo` job",
    description="Simulate a small run, start the daemon with the embedded default "
    "configuration (on ports it chooses), replay the run through it, print the report, stop "
    "the daemon with SIGTERM.",
)
def _demo(args: argparse.Namespace) -> int:
    import subprocess
    import tempfile

    from streamtrk.client import wait_listening, wait_ready

    with tempfile.TemporaryDirectory(prefix="streamtrk-demo-") as tmp:
        run, log_path = str(Path(tmp) / "demo.stk"), Path(tmp) / "daemon.log"
        print(f"simulating {args.events} events at mu={args.mu:g} -> {run} (compact)", flush=True)
        sim = ["simulate", "--events", str(args.events), "--mu", str(args.mu), "--seed", "1"]
        if rc := main([*sim, "--compact", "-o", run]):
            return rc
        any_port = "tcp://127.0.0.1:*"
        cmd = [sys.executable, "-m", "streamtrk", "serve", "--input", any_port]
        cmd += ["--output", any_port, "--http", "127.0.0.1:0", "--log-format", "json"]
        print(f"starting the daemon: {' '.join(cmd[1:])}", flush=True)
        with log_path.open("wb") as log:
            daemon = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            bound = wait_listening(log_path, args.ready_timeout, daemon)
            if bound is None or not wait_ready(bound["http"], args.ready_timeout, daemon):
                print("streamtrk demo: error: the daemon did not become ready", file=sys.stderr)
                print(log_path.read_text(), file=sys.stderr)
                return 1
            _print_daemon_log(log_path, "streamtrk serve ready")
            print(f"replaying {run} (metrics: http://{bound['http']}/metrics)", flush=True)
            rc = main(["replay", run, "--to", bound["input"], "--from", bound["output"]])
        finally:
            daemon.send_signal(signal.SIGTERM)
            try:
                code = daemon.wait(timeout=120)
            except subprocess.TimeoutExpired:
                daemon.kill()
                code = daemon.wait()
        _print_daemon_log(
            log_path, "drained, exiting", "drain incomplete: replies could not be sent"
        )
        print(f"daemon stopped with SIGTERM, exit code {code}")
        return rc or code


def _print_daemon_log(path: Path, *messages: str) -> None:
    """Print the daemon's JSON log records with these messages as ``daemon: message k=v``."""
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("message") in messages:
            skip = ("time", "level", "logger", "message")
            fields = " ".join(f"{k}={v}" for k, v in record.items() if k not in skip)
            print(f"daemon: {record['message']} {fields}", flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="streamtrk",
        description="Streaming particle-track reconstruction: simulate, train, evaluate, serve, "
        "replay. Run `streamtrk COMMAND --help` for a command's options.",
    )
    p.add_argument("--version", action="version", version=f"streamtrk {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, arguments, handler, parser in _COMMANDS:
        s = sub.add_parser(name, **parser)
        arguments(s)
        s.set_defaults(func=handler)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    wait_passively()  # before any command imports torch
    args = build_parser().parse_args(_negative_lists(sys.argv[1:] if argv is None else argv))
    try:
        return int(args.func(args))
    except BrokenPipeError:
        # The reader of our output went away (``streamtrk replay ... | head``): stop quietly,
        # as command-line tools do, with stdout pointed at nothing for the interpreter's exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a killed writer
    except KeyboardInterrupt:  # Ctrl-C in a command without its own stop (simulate, train)
        print(f"streamtrk {args.command}: interrupted", file=sys.stderr)
        return 130  # 128 + SIGINT
    except Exception as exc:
        if not _user_error(exc):
            raise
        print(f"streamtrk {args.command}: error: {exc}", file=sys.stderr)
        return 1


def _negative_lists(argv: Sequence[str]) -> list[str]:
    """``--beam-spot -1,0,0`` read as ``--beam-spot=-1,0,0``: argparse takes a value that
    starts with a minus, and is not a plain number, for an option (and no option is named so)."""
    out: list[str] = []
    for token in argv:
        if _NEGATIVE_LIST.fullmatch(token) and out and _LONG_OPTION.fullmatch(out[-1]):
            out[-1] += "=" + token
        else:
            out.append(token)
    return out


def _user_error(exc: Exception) -> bool:
    """Errors of the input, files or endpoints given: one line, not a traceback."""
    import zmq  # a bad endpoint or a port in use: ZMQError (neither OSError nor ValueError)

    return isinstance(exc, OSError | ValueError | zmq.ZMQError)


if __name__ == "__main__":
    sys.exit(main())
