"""The commands on recordings and TrackML files: simulate, import-trackml, inspect,
export-trackml."""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

from streamtrk.cli.common import (
    beam_spot_xyz,
    check_count,
    check_outputs,
    compact_argument,
    list_argument,
    noisy_layer,
    pt_range,
    repair_hint,
    strict_json,
    subcommand,
    vol_layer,
)
from streamtrk.errors import SettingError


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
        "--overlaps",
        type=float,
        default=0.0,
        metavar="F",
        help="share of crossings that leave a second hit on their layer, in the overlapping "
        "module (default 0)",
    )
    s.add_argument(
        "--hard-scatter",
        type=int,
        default=0,
        metavar="N",
        help="add N high-pT particles (5-50 GeV unless --hard-scatter-pt) on the first vertex",
    )
    list_argument(
        s,
        "--hard-scatter-pt",
        type=pt_range,
        metavar="LO,HI",
        help="pT range of the hard-scatter particles in GeV, log-uniform (default 5,50; "
        "with --hard-scatter)",
    )
    s.add_argument(
        "--dead-layer",
        type=vol_layer,
        action="append",
        default=[],
        metavar="VOL:LAYER",
        help="a layer that reads nothing, e.g. 8:4 (repeatable)",
    )
    s.add_argument(
        "--noisy-layer",
        type=noisy_layer,
        action="append",
        default=[],
        metavar="VOL:LAYER:HITS",
        help="add HITS noise hits per event (Poisson mean) on a layer (repeatable)",
    )
    list_argument(
        s,
        "--beam-spot",
        type=beam_spot_xyz,
        default=(0.0, 0.0, 0.0),
        metavar="X,Y,Z",
        help="centre of the pileup vertices in mm (default 0,0,0)",
    )
    s.add_argument("--run", type=int, default=1, help="run number (default 1)")
    s.add_argument("--detector", type=Path, default=None, help="detector TOML file")
    s.add_argument("-o", "--output", type=Path, required=True, help="output .stk recording")
    s.add_argument("--trackml-dir", type=Path, help="also write TrackML CSV files here")
    compact_argument(s)
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


@subcommand(
    "simulate",
    _simulate_arguments,
    help="simulate TrackML-like events into a recording",
    description="Simulate pileup events in the TrackML-like detector (docs/simulation.md), "
    "optionally with dead or noisy layers, an offset beam spot and high-pT particles, into a "
    "recording with their truth (and, with --trackml-dir, TrackML CSV files). The same seed "
    "gives byte-identical files. The recording and the CSV files take their place once every "
    "event is written: Ctrl-C or an error leaves what was there. Exit status 0, else 1 with "
    "the error, 2 a setting refused, 130 after Ctrl-C.",
)
def _simulate(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from tqdm import tqdm

    from streamtrk.detector import load_detector
    from streamtrk.io.recording import new_recording
    from streamtrk.io.trackml import new_events
    from streamtrk.sim.generator import GeneratorConfig
    from streamtrk.sim.simulate import SimConfig, simulate

    check_count("--events", args.events)  # none is no simulation (as demo and evaluate)
    if args.hard_scatter_pt is not None and not args.hard_scatter:
        raise SettingError(
            "--hard-scatter-pt is the range of --hard-scatter N's particles: give both"
        )
    gen = replace(
        GeneratorConfig(),
        mu=args.mu,
        hard_scatter=args.hard_scatter,
        beam_spot=args.beam_spot,
        **({"hard_scatter_pt": args.hard_scatter_pt} if args.hard_scatter_pt else {}),
    )
    cfg = SimConfig(
        generator=gen,
        noise_fraction=args.noise,
        overlap_fraction=args.overlaps,
        dead_layers=frozenset(args.dead_layer),
        noisy_layers=tuple(args.noisy_layer),
    )
    try:
        det = load_detector(args.detector)
    except FileNotFoundError:
        raise SettingError(f"--detector {args.detector}: no such file") from None
    except ValueError as e:  # the file is no detector (its errors name it)
        raise SettingError(f"--detector: {e}") from None
    # Before the events are made; not over the detector file read.
    read = [args.detector] if args.detector else []
    check_outputs(args.output, folder=args.trackml_dir, inputs=read)
    events = simulate(det, cfg, args.seed, args.events, run=args.run)
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
        "--no-truth",
        action="store_true",
        help="import the hits alone: their truth and particles files are not read",
    )
    compact_argument(s)
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


@subcommand(
    "import-trackml",
    _import_trackml_arguments,
    help="convert TrackML CSV event(s) to a recording",
    description="Convert TrackML CSV events (a prefix such as .../event000001000, one of its "
    "files, or a directory of events) into a recording, with their truth where there is a "
    "-truth.csv and a -particles.csv (a recording's truth carries each particle's vertex "
    "and momentum: truth without particles is refused; --no-truth imports the hits alone, "
    "their truth files not read). The recording takes its place once every event is written. "
    "Exit status 0, else 1 with the error (no event found, a malformed file).",
)
def _import_trackml(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from streamtrk.io.recording import new_recording
    from streamtrk.io.trackml import files_read, iter_events, kinematics_unknown
    from streamtrk.wire.schema import MAX_INT

    if not 0 <= args.run < MAX_INT:  # as the wire takes it, said before the events are read
        raise SettingError(f"--run must be 0 to 2**63 - 1, got {args.run}")
    check_outputs(args.output, inputs=files_read(args.path))
    n = 0
    with new_recording(args.output) as rec:  # the file there stays if this fails
        for ev in tqdm(
            iter_events(args.path, run=args.run, truth=not args.no_truth),
            desc="import",
            unit="event",
            disable=args.quiet,
        ):
            if ev.truth is not None and kinematics_unknown(ev.truth.particles).any():
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
    s.add_argument(
        "--repair",
        action="store_true",
        help="first cut a damaged tail back to the whole records before it (a tap or writer "
        "that crashed mid-write leaves its last record cut; readers stop at it); says what was "
        "cut. Damage that whole records may follow is left as it is",
    )


@subcommand(
    "inspect",
    _inspect_arguments,
    help="summarise a recording",
    description="Print a recording's counts: events, hits per event (mean, max), truth, the "
    "wire schema versions and the records' kinds. Exit status 1 when the file is damaged "
    "(the summary covers the records before the damage, and the error names its offset and "
    "whether --repair can mend it), else 0; records whole but no valid message (a newer "
    "schema version, a daemon's dead letters) are counted under 'invalid' and said on "
    "stderr.",
)
def _inspect(args: argparse.Namespace) -> int:
    from streamtrk.io.recording import summarize

    if args.repair and not _repair(args.recording):
        return 1
    summary = summarize(args.recording)
    if args.repair and summary["error"] and summary["cut_at"] is None:
        print(
            f"streamtrk inspect: --repair left {args.recording} as it was: it cuts only a "
            "damaged tail, as a crash leaves; cutting at this damage would drop whole records",
            file=sys.stderr,
        )
    if args.json:
        print(strict_json(summary, indent=2, sort_keys=True))
    else:
        width = max(len(k) for k in summary)
        for k, v in summary.items():
            print(f"{k:<{width}}  {v}")
    if invalid := sum(summary["invalid"].values()):
        print(
            f"streamtrk inspect: {invalid} of the records are no valid message (see 'invalid'):"
            " replay, evaluate and export-trackml stop at the first; a daemon's dead letters"
            " are all such records",
            file=sys.stderr,
        )
    if summary["error"]:
        remedy = repair_hint(args.recording, summary["cut_at"])
        print(f"streamtrk inspect: error: {summary['error']}{remedy}", file=sys.stderr)
        return 1
    return 0


def _repair(path: Path) -> bool:
    """``inspect --repair``: cut a damaged tail, said on stderr; False (said why) when
    another process writes the file: its last record may be the one it is writing."""
    from streamtrk.io.recording import exclusive_lock, repair

    if path.is_file():  # else summarize says what it is
        try:
            fd = exclusive_lock(path)
        except BlockingIOError:
            print(
                f"streamtrk inspect: error: {path} is being written by another process (a "
                "`streamtrk record` tap, a daemon's dead letters): --repair would cut the "
                "record it is writing; stop that process first",
                file=sys.stderr,
            )
            return False
        try:
            if cut := repair(path):
                print(f"streamtrk inspect: cut {cut[0]} bytes: {cut[1]}", file=sys.stderr)
        finally:
            os.close(fd)
    return True


def _export_trackml_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("recording", type=Path, help="a .stk recording")
    s.add_argument("-o", "--output", type=Path, required=True, help="output directory")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


@subcommand(
    "export-trackml",
    _export_trackml_arguments,
    help="write a recording's events as TrackML CSV",
    description="Write a recording's events as TrackML CSV files (-hits.csv, and with truth "
    "-truth.csv and -particles.csv), all of them or, on an error or Ctrl-C, none. Files are "
    "named by event number alone: an event number met again in another run, or with other "
    "hits, stops the export (exit status 1, nothing written); an event recorded twice (a "
    "looped replay) is written once, and said; an event whose files are already in the "
    "directory replaces them, and is said.",
)
def _export_trackml(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from streamtrk.io.recording import iter_events
    from streamtrk.io.trackml import new_events

    written: dict[int, tuple[int, bytes]] = {}  # event number -> run, hits digest
    repeats: Counter[int] = Counter()  # event number -> later copies left out
    replaced = 0
    check_outputs(folder=args.output)
    with new_events(args.output) as write:  # all events or, on an error, none
        for ev in tqdm(
            iter_events(args.recording), desc="export", unit="event", disable=args.quiet
        ):
            this, seen = (ev.run, ev.hits.digest()), written.get(ev.event)
            if seen == this:  # recorded twice (a looped replay): written once
                repeats[ev.event] += 1
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
        print(f"streamtrk export-trackml: {len(repeats)} events recorded more than once were "
              f"written once ({repeats.total()} later copies left out)",
              file=sys.stderr)  # fmt: skip
    _say_replaced("export-trackml", replaced, args.output)
    return 0


def _say_replaced(command: str, replaced: int, directory: Path) -> None:
    if replaced:
        print(f"streamtrk {command}: {replaced} events replaced the files of the same event "
              f"number in {directory}", file=sys.stderr)  # fmt: skip
