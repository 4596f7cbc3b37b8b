"""The ``streamtrk`` command: simulate, inspect, import/export TrackML, errors."""

import argparse
import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from streamtrk.cli import build_parser, main
from streamtrk.cli.common import _stop_on_signals
from streamtrk.io.recording import RecordingWriter, iter_events, iter_records
from streamtrk.io.trackml import read_event
from streamtrk.recon.device import cuda_unavailable
from streamtrk.recon.model import default_model_path
from streamtrk.wire import decode


def _simulate(out: Path) -> None:
    rc = main(
        [
            "simulate",
            "--events",
            "2",
            "--mu",
            "20",
            "--seed",
            "1",
            "-q",
            "-o",
            str(out / "a.stk"),
            "--trackml-dir",
            str(out / "csv"),
        ]
    )
    assert rc == 0


def test_simulate_is_byte_identical_and_outputs_agree(tmp_path):
    _simulate(tmp_path / "one")
    _simulate(tmp_path / "two")
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.*"))
    assert len(files) == 1 + 2 * 3
    for f in files:
        assert (tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes(), f
    # The recording and the CSV files hold the same events, truth included.
    for ev in iter_events(tmp_path / "one" / "a.stk"):
        csv = read_event(tmp_path / "one" / "csv" / f"event{ev.event:09d}")
        assert csv.hits.equals(ev.hits)
        assert csv.truth.equals(ev.truth)


def test_simulate_compact_writes_the_same_events_in_fewer_bytes(tmp_path):
    args = ["simulate", "--events", "2", "--mu", "5", "--seed", "2", "-q", "-o"]
    assert main([*args, str(tmp_path / "wide.stk")]) == 0
    assert main([*args, str(tmp_path / "compact.stk"), "--compact"]) == 0
    wide, compact = (list(iter_events(tmp_path / f)) for f in ("wide.stk", "compact.stk"))
    assert len(wide) == len(compact) == 2
    for a, b in zip(wide, compact, strict=True):
        assert a.hits.equals(b.hits) and a.truth.equals(b.truth)
    hits = {
        f: [m for _, m in iter_records(tmp_path / f) if decode(m).kind == "hits"]
        for f in ("wide.stk", "compact.stk")
    }
    assert {decode(m).version for m in hits["compact.stk"]} == {5}
    size = {f: sum(len(x) for m in ms for x in m[1:]) for f, ms in hits.items()}
    n_hits = sum(len(ev.hits) for ev in wide)
    assert size["wide.stk"] == 32 * n_hits and size["compact.stk"] <= 20 * n_hits


def test_simulate_adds_a_hard_scatter_in_the_asked_pt_range(tmp_path, capsys):
    out = tmp_path / "hs.stk"
    args = ["simulate", "--events", "2", "--mu", "2", "--seed", "4", "-q", "-o", str(out)]
    assert main([*args, "--hard-scatter", "6", "--hard-scatter-pt", "200,300"]) == 0
    for ev in iter_events(out):
        pt = ev.truth.particles.pt
        hard = (pt >= 200) & (pt <= 300)
        assert hard.sum() == 6 and (pt[~hard] < 200).all()
        # on the first vertex
        p = ev.truth.particles
        assert len(set(zip(p.vz[hard].tolist(), p.vx[hard].tolist(), strict=True))) == 1
    with pytest.raises(SystemExit) as stop:
        main([*args, "--hard-scatter", "1", "--hard-scatter-pt", "200"])
    assert stop.value.code == 2
    assert "expected LO,HI in GeV" in capsys.readouterr().err
    assert main([*args, "--hard-scatter", "1", "--hard-scatter-pt", "300,200"]) == 1
    assert "hard_scatter_pt must be 0 < low <= high" in capsys.readouterr().err


def test_evaluate_centres_the_chain_on_the_beam_spot_given(tmp_path, capsys):
    out = tmp_path / "bs.stk"
    sim = ["simulate", "--events", "1", "--mu", "20", "--seed", "5", "-q", "-o", str(out)]
    assert main([*sim, "--beam-spot=1.5,-1,0"]) == 0
    reports = {}
    for name, extra in (("axis", []), ("beam", ["--beam-spot=1.5,-1"])):
        report = tmp_path / f"{name}.json"
        args = ["evaluate", str(out), "--oracle", "-q", "--report", str(report), *extra]
        assert main(args) == 0
        reports[name] = json.loads(report.read_text())["tracking_efficiency"]
    assert reports["beam"] > 0.99 and reports["axis"] < 0.97
    with pytest.raises(SystemExit) as stop:
        main(["evaluate", str(out), "--oracle", "--beam-spot", "1"])
    assert stop.value.code == 2
    assert "expected X,Y in mm" in capsys.readouterr().err


def test_a_list_value_may_start_with_a_minus(tmp_path):
    sim = ["simulate", "--events", "1", "--mu", "5", "--seed", "3", "-q"]
    joined, spaced = tmp_path / "joined.stk", tmp_path / "spaced.stk"
    assert main([*sim, "-o", str(joined), "--beam-spot=-0.5,0.25,3"]) == 0
    assert main([*sim, "-o", str(spaced), "--beam-spot", "-0.5,0.25,3"]) == 0
    assert spaced.read_bytes() == joined.read_bytes()
    assert main([*sim, "-o", str(spaced), "--beam-spot", "-.5,-1,0", "--hard-scatter", "1"]) == 0


def test_simulate_provokes_detector_faults(tmp_path, capsys):
    out = tmp_path / "faulty.stk"
    args = ["simulate", "--events", "2", "--mu", "5", "--seed", "3", "-q", "-o", str(out)]
    faults = ["--dead-layer", "8:4", "--dead-layer", "13:2", "--noisy-layer", "17:2:300"]
    assert main([*args, *faults, "--beam-spot=-0.5,0.25,3"]) == 0
    for ev in iter_events(out):
        layers = set(zip(ev.hits.volume_id.tolist(), ev.hits.layer_id.tolist(), strict=True))
        assert (8, 4) not in layers and (13, 2) not in layers and (8, 2) in layers
        noise = ev.truth.hits.particle_id == 0
        on_17_2 = (ev.hits.volume_id == 17) & (ev.hits.layer_id == 2)
        assert (noise & on_17_2).sum() > 200
        p = ev.truth.particles
        primary = np.hypot(p.vx + 0.5, p.vy - 0.25) < 0.1
        assert primary.sum() > 0.5 * len(p)
    # Malformed values are usage errors (exit 2) that say what was expected.
    for bad, expected in [
        (["--dead-layer", "8"], "expected VOL:LAYER"),
        (["--noisy-layer", "8:2:many"], "expected VOL:LAYER:HITS"),
        (["--beam-spot", "1,2"], "expected X,Y,Z in mm"),
    ]:
        with pytest.raises(SystemExit) as stop:
            main([*args, *bad])
        assert stop.value.code == 2
        assert expected in capsys.readouterr().err
    assert main([*args, "--dead-layer", "8:3"]) == 1
    assert "the detector has no layer 8:3" in capsys.readouterr().err


def test_inspect_reports_events_and_truth(tmp_path, capsys):
    _simulate(tmp_path)
    capsys.readouterr()
    assert main(["inspect", "--json", str(tmp_path / "a.stk")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["events"] == 2 and summary["events_with_truth"] == 2
    assert summary["hits_max"] >= summary["hits_mean"] > 1000
    assert summary["versions"] == [1, 2] and summary["error"] is None


def test_inspect_names_the_offset_of_a_truncated_file(tmp_path, capsys):
    _simulate(tmp_path)
    data = (tmp_path / "a.stk").read_bytes()
    (tmp_path / "cut.stk").write_bytes(data[:-100])
    capsys.readouterr()
    assert main(["inspect", "--json", str(tmp_path / "cut.stk")]) == 1  # counts, then the error
    out = capsys.readouterr()
    summary = json.loads(out.out)
    assert summary["events"] == 2 and summary["events_with_truth"] == 1
    assert "offset" in summary["error"]
    assert out.err == f"streamtrk inspect: error: {summary['error']}\n"


@pytest.mark.realdata
def test_import_trackml_round_trips_to_csv(tmp_path, shared_trackml):
    prefix = shared_trackml / "qallse_ez-0.5_hpt-1.0" / "event000001000"
    assert main(["import-trackml", str(prefix), "-o", str(tmp_path / "real.stk"), "-q"]) == 0
    assert main(["export-trackml", str(tmp_path / "real.stk"), "-o", str(tmp_path / "out")]) == 0
    before, after = read_event(prefix), read_event(tmp_path / "out" / "event000001000")
    assert len(after.hits) == 27_543
    assert after.hits.equals(before.hits) and after.truth.equals(before.truth)
    # Numerically unchanged: every value equals the float32 parse of the original text.
    orig = np.loadtxt(f"{prefix}-hits.csv", delimiter=",", skiprows=1)
    assert np.array_equal(after.hits.x, orig[:, 1].astype(np.float32))


def test_export_trackml_never_overwrites_an_event_of_another_run(tmp_path, capsys):
    _simulate(tmp_path)
    first = next(iter_events(tmp_path / "a.stk"))
    with RecordingWriter(tmp_path / "runs.stk") as w:
        w.write_event(first)
        w.write_event(first)  # recorded twice (a looped replay): written once, said
        other = replace(first, run=first.run + 1, hits=first.hits.take(np.arange(10)), truth=None)
        w.write_event(other)
    out = tmp_path / "out"
    assert main(["export-trackml", str(tmp_path / "runs.stk"), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"event number {first.event} occurs in run {first.run} and run {first.run + 1}" in err
    assert not any(out.iterdir())  # all events or none: not the first one alone
    with RecordingWriter(tmp_path / "twice.stk") as w:
        w.write_event(first)
        w.write_event(first)
    assert main(["export-trackml", str(tmp_path / "twice.stk"), "-o", str(tmp_path / "o2")]) == 0
    assert "1 events recorded more than once were written once" in capsys.readouterr().err


def test_two_events_of_one_run_and_number_are_refused_not_merged(tmp_path, capsys):
    """Two recordings joined (two simulations of one run) hold other events under the same
    run and number: ``export-trackml`` would write the first alone and ``evaluate`` pair
    one's submission rows with the other's; both refuse, writing nothing."""
    _simulate(tmp_path)
    first, second = list(iter_events(tmp_path / "a.stk"))
    joined = tmp_path / "joined.stk"
    with RecordingWriter(joined) as w:
        w.write_event(first)
        w.write_event(replace(second, event=first.event))
    out = tmp_path / "out"
    assert main(["export-trackml", str(joined), "-o", str(out)]) == 1
    where = f"event number {first.event} occurs in run {first.run} twice, with other hits"
    assert where in capsys.readouterr().err
    assert not any(out.iterdir())
    submission = tmp_path / "s.csv"
    assert main(["evaluate", str(joined), "--oracle", "-q", "--submission", str(submission)]) == 1
    err = capsys.readouterr().err
    assert f"two events with other hits are both run {first.run}, event {first.event}" in err
    assert not submission.exists()


def test_export_trackml_of_no_events_is_an_error(tmp_path, capsys):
    empty = tmp_path / "empty.stk"
    RecordingWriter(empty).close()
    assert main(["export-trackml", str(empty), "-o", str(tmp_path / "out")]) == 1
    assert f"streamtrk export-trackml: error: no events in {empty}" in capsys.readouterr().err


def test_export_trackml_again_replaces_the_event_files_and_says_so(tmp_path, capsys):
    _simulate(tmp_path)
    first = next(iter_events(tmp_path / "a.stk"))
    with RecordingWriter(tmp_path / "bare.stk") as w:
        w.write_event(replace(first, hits=first.hits.take(np.arange(10)), truth=None))
    out = tmp_path / "out"
    assert main(["export-trackml", str(tmp_path / "a.stk"), "-o", str(out)]) == 0
    assert "replaced" not in capsys.readouterr().err
    assert main(["export-trackml", str(tmp_path / "bare.stk"), "-o", str(out)]) == 0
    assert f"1 events replaced the files of the same event number in {out}" in (
        capsys.readouterr().err
    )
    back = read_event(out / f"event{first.event:09d}")
    assert back.truth is None and len(back.hits) == 10  # not the first export's truth


def test_simulate_into_a_csv_folder_again_says_what_it_replaced(tmp_path, capsys):
    csv = tmp_path / "csv"
    args = ["simulate", "--mu", "1", "-q", "-o", str(tmp_path / "s.stk"), "--trackml-dir", str(csv)]
    assert main([*args, "--events", "1"]) == 0
    assert "replaced" not in capsys.readouterr().err
    assert main([*args, "--events", "2", "--seed", "9"]) == 0
    assert f"1 events replaced the files of the same event number in {csv}" in (
        capsys.readouterr().err
    )
    assert sorted(p.name for p in csv.glob("*-hits.csv")) == [
        "event000000000-hits.csv", "event000000001-hits.csv"
    ]  # fmt: skip


def test_evaluate_without_truth_or_with_few_tracks_plots_and_says_so(tmp_path, capsys):
    main(
        [
            "simulate",
            "--events",
            "1",
            "--mu",
            "1",
            "--seed",
            "3",
            "-q",
            "-o",
            str(tmp_path / "e.stk"),
        ]
    )
    event = next(iter_events(tmp_path / "e.stk"))
    with RecordingWriter(tmp_path / "mixed.stk") as w:
        w.write_event(event)
        w.write_event(replace(event, event=event.event + 1, truth=None))
    names = ["efficiency_vs_pt", "efficiency_vs_eta", "fake_rate_vs_eta", "pt_resolution_vs_pt"]
    for name, truthless in (("e.stk", 0), ("mixed.stk", 1)):
        plots = tmp_path / f"plots-{name}"
        args = ["evaluate", str(tmp_path / name), "-q", "--plots", str(plots)]  # the model
        assert main(args) == 0
        out, err = capsys.readouterr()
        report = json.loads(out)
        assert report["events"] == 1 + truthless and report["events_with_truth"] == 1
        note = f"{truthless} of 2 events have no truth: reconstructed, not scored"
        assert (note in err) == bool(truthless)
        for png in (plots / f"{n}.png" for n in [*names, "pulls"]):
            assert png.read_bytes()[:4] == b"\x89PNG"


def test_evaluate_says_when_truth_has_no_particle_kinematics(tmp_path, capsys):
    main(["simulate", "--events", "1", "--mu", "2", "-q", "-o", str(tmp_path / "e.stk")])
    assert main(["export-trackml", str(tmp_path / "e.stk"), "-o", str(tmp_path / "csv")]) == 0
    (prefix,) = {p.name.split("-")[0] for p in (tmp_path / "csv").iterdir()}
    args = ["evaluate", str(tmp_path / "csv" / prefix), "-q"]  # the model
    assert main(args) == 0
    out, err = capsys.readouterr()
    whole = json.loads(out)
    assert whole["tracking_efficiency"] > 0.9 and "no particle vertices" not in err
    (tmp_path / "csv" / f"{prefix}-particles.csv").unlink()
    assert main(args) == 0
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert report["tracking_efficiency"] is None
    assert report["trackml_score"] == whole["trackml_score"]  # the truth file's weights
    assert "1 events have truth but no particle vertices or momenta" in err


def test_evaluate_writes_no_file_when_one_cannot_be_written(tmp_path):
    """Two runs of one event number cannot share a submission: nothing is written."""
    main(["simulate", "--events", "1", "--mu", "2", "-q", "-o", str(tmp_path / "e.stk")])
    event = next(iter_events(tmp_path / "e.stk"))
    with RecordingWriter(tmp_path / "runs.stk") as w:
        w.write_event(event)
        w.write_event(replace(event, run=event.run + 1))
    report, sub = tmp_path / "r.json", tmp_path / "sub.csv"
    args = ["evaluate", str(tmp_path / "runs.stk"), "--oracle", "-q", "--report", str(report)]
    out = _run(*args, "--submission", str(sub))
    assert out.returncode == 1 and "occurs in more than one run" in out.stderr
    assert not report.exists() and not sub.exists()


def test_errors_are_clear_and_exit_nonzero(tmp_path, capsys):
    assert main(["import-trackml", str(tmp_path / "nope"), "-o", str(tmp_path / "x.stk")]) == 1
    (tmp_path / "bad.stk").write_bytes(b"not a recording")
    assert main(["inspect", str(tmp_path / "bad.stk")]) == 1
    err = capsys.readouterr().err
    assert "streamtrk import-trackml: error" in err and "streamtrk inspect: error" in err
    assert not (tmp_path / "x.stk").exists()


def test_a_failed_import_leaves_the_recording_there(tmp_path, capsys):
    kept = tmp_path / "kept.stk"
    assert main(["simulate", "--events", "1", "--mu", "1", "-q", "-o", str(kept)]) == 0
    before = kept.read_bytes()
    (tmp_path / "event000000001-hits.csv").write_text("hit_id,x,y,z,volume_id,layer_id,module_id\n")
    (tmp_path / "event000000002-hits.csv").write_text("not,a,trackml,file\n")
    assert main(["import-trackml", str(tmp_path), "-o", str(kept), "-q"]) == 1
    assert "event000000002-hits.csv: missing column" in capsys.readouterr().err
    assert kept.read_bytes() == before  # neither cut short nor replaced by the first event
    assert sorted(p.name for p in tmp_path.glob("kept.stk*")) == ["kept.stk"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--batch", "0"], "--batch must be at least 1, got 0"),  # not "no events in"
        (["--events", "-1"], "--events must be at least 1, got -1"),
        (["--threshold", "nan"], "--threshold must lie in [0, 1) (1 passes no edge), got nan"),
        (["--threshold", "1"], "--threshold must lie in [0, 1) (1 passes no edge), got 1.0"),
        (["--torch-threads", "100000"], "torch threads must be 0 to 4096, got 100000"),
    ],
)
def test_evaluate_refuses_settings_out_of_range(tmp_path, capsys, flags, message):
    run = tmp_path / "e.stk"
    assert main(["simulate", "--events", "1", "--mu", "1", "-q", "-o", str(run)]) == 0
    assert main(["evaluate", str(run), "--oracle", "-q", *flags]) == 1
    assert f"streamtrk evaluate: error: {message}" in capsys.readouterr().err


def test_evaluate_with_an_engine_that_cannot_run_here_is_one_line(tmp_path, capsys):
    if not cuda_unavailable():
        pytest.skip("a GPU here: engine=tensorrt may run")
    run = tmp_path / "e.stk"
    assert main(["simulate", "--events", "1", "--mu", "1", "-q", "-o", str(run)]) == 0
    assert main(["evaluate", str(run), "--engine", "tensorrt", "-q"]) == 2
    assert "streamtrk evaluate: error: engine=tensorrt needs device=cuda" in (
        capsys.readouterr().err
    )


def _sigint_default() -> None:
    # A job started in the background of a script inherits SIGINT ignored (and Python then
    # installs no handler): the child gets the default, as a command typed at a terminal.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_in_a_long_command_is_one_line_and_exit_130(tmp_path):
    cmd = [sys.executable, "-m", "streamtrk", "simulate", "--events", "100000", "-o"]
    csv = tmp_path / "csv"
    proc = subprocess.Popen(
        [*cmd, str(tmp_path / "s.stk"), "--trackml-dir", str(csv)],
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_sigint_default,  # a signal disposition, set before exec
    )
    try:
        assert proc.stderr is not None
        ready, _, _ = select.select([proc.stderr], [], [], 120)  # its progress bar: simulating
        assert ready, "no progress bar in 120 s"
        t_end = time.monotonic() + 120  # and events written, whose CSV files are not kept
        while not any(csv.rglob("*-hits.csv")) and time.monotonic() < t_end:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130
    assert "streamtrk simulate: interrupted" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == [csv] and not any(csv.iterdir())  # nothing left


def test_truth_without_particles_is_imported_only_as_hits_alone(tmp_path, capsys):
    csv = tmp_path / "csv"
    main(["simulate", "--events", "1", "--mu", "1", "-q", "-o", str(tmp_path / "s.stk"),
          "--trackml-dir", str(csv)])  # fmt: skip
    (particles,) = csv.glob("*-particles.csv")
    particles.unlink()
    out = tmp_path / "x.stk"
    assert main(["import-trackml", str(csv), "-o", str(out), "-q"]) == 1
    assert "has truth but no -particles.csv" in capsys.readouterr().err
    assert main(["import-trackml", str(csv), "-o", str(out), "-q", "--no-truth"]) == 0
    (ev,) = iter_events(out)
    assert ev.truth is None and ev.hits.equals(next(iter_events(tmp_path / "s.stk")).hits)


@pytest.mark.parametrize(
    "args",
    [
        ["replay", "RUN", "--to", "notanendpoint"],
        ["replay", "RUN", "--to", "tcp://127.0.0.1"],
        ["record", "--from", "bogus://x", "-o", "OUT"],
        ["farm", "distributor", "--from", "tcp://127.0.0.1:*", "--to", "nope"],
    ],
)
def test_a_bad_endpoint_is_one_line(tmp_path, args):
    run = tmp_path / "e.stk"
    main(["simulate", "--events", "1", "--mu", "1", "-q", "-o", str(run)])
    argv = [str(run) if a == "RUN" else str(tmp_path / "o.stk") if a == "OUT" else a for a in args]
    out = _run(*argv)
    assert out.returncode == 1, out.stderr
    assert out.stderr.startswith(f"streamtrk {args[0]}: error: ") and "Traceback" not in out.stderr


COMMANDS = (
    "simulate", "import-trackml", "inspect", "export-trackml", "evaluate", "export", "serve",
    "replay", "record", "train", "farm", "keys", "demo",
)  # fmt: skip


def test_help_lists_every_command_with_its_summary():
    out = subprocess.run(
        [sys.executable, "-m", "streamtrk", "--help"], capture_output=True, text=True, check=True
    ).stdout
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("    ")]
    assert [c for c in listed if c in COMMANDS] == list(COMMANDS), out
    words = " ".join(out.split())  # help text is wrapped to the terminal's width
    assert "serve run the daemon: hits in, tracks out, metrics and health over HTTP" in words
    assert "demo the `make demo` job" in words


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_documents_its_options(command, capsys):
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: streamtrk {command}")
    assert "-h, --help" in out
    expected = {"simulate": "--mu", "evaluate": "--report", "serve": "--max-batch-events",
                "replay": "--rate", "train": "--config", "demo": "--ready-timeout"}  # fmt: skip
    if command in expected:
        assert expected[command] in out
    # every option and argument of the command (and of its own subcommands) says what it is
    undocumented = [
        f"{name} {action.option_strings or action.dest}"
        for name, parser in _parsers(_subcommands(build_parser())[command], command)
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction) and not (action.help or "").strip()
    ]
    assert undocumented == []


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(
        (a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {}
    )


def _parsers(parser: argparse.ArgumentParser, name: str) -> list:
    """``parser`` and its subcommands' parsers, depth first, with their names."""
    nested = [_parsers(p, f"{name} {sub}") for sub, p in _subcommands(parser).items()]
    return [(name, parser), *(pair for pairs in nested for pair in pairs)]


def _run(*args: str, env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("STREAMTRK_")}
    return subprocess.run(
        [sys.executable, "-m", "streamtrk", *args],
        capture_output=True, text=True, timeout=300, env={**base, **(env or {})}, **kw,
    )  # fmt: skip


def test_evaluate_names_the_model_it_used(tmp_path):
    main(["simulate", "--events", "1", "--mu", "2", "-q", "-o", str(tmp_path / "e.stk")])
    model = default_model_path()
    out = _run("evaluate", str(tmp_path / "e.stk"), "-q", env={"STREAMTRK_MODEL": str(model)})
    assert out.returncode == 0, out.stderr

    def not_json(constant: str) -> None:
        raise AssertionError(f"{constant} in the report: not JSON")

    report = json.loads(out.stdout, parse_constant=not_json)
    assert report["scorer"] == str(model)
    assert None in report["fake_rate_by_pt"].values()  # an empty bin: null, not NaN
    out = _run("evaluate", str(tmp_path / "e.stk"), "-q", "--model", str(tmp_path / "none"))
    assert out.returncode == 1
    assert out.stderr.startswith(f"streamtrk evaluate: error: no model at {tmp_path / 'none'}")
    assert out.stderr.rstrip().endswith(", or pass --oracle")


def test_evaluate_reports_events_over_the_work_budget(tmp_path, capsys):
    # MU=200: its 6 M doublet candidates pass the allowance alone (500,000)
    main(["simulate", "--events", "1", "--mu", "200", "-q", "-o", str(tmp_path / "e.stk")])
    args = ["evaluate", str(tmp_path / "e.stk"), "--oracle", "-q"]
    assert main([*args, "--budget-scale", "1e-6", "--report", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["events_refused"] == report["events"] == 1
    assert report["refused"][0]["what"] == "doublet candidates"
    assert "1 of 1 events over the work budget" in capsys.readouterr().err
    assert main([*args, "--budget-scale", "0"]) == 1
    err = capsys.readouterr().err
    assert err == "streamtrk evaluate: error: --budget-scale must be a finite number > 0, got 0.0\n"


def test_cuda_without_cuda_is_one_line_and_exit_2(tmp_path):
    if cuda_unavailable() is None:
        pytest.skip("this machine can run device=cuda")
    main(["simulate", "--events", "1", "--mu", "2", "-q", "-o", str(tmp_path / "e.stk")])
    for args, who in (
        (["evaluate", str(tmp_path / "e.stk"), "--device", "cuda"], "streamtrk evaluate: error"),
        (["serve", "--device", "cuda"], "streamtrk serve: invalid configuration"),
    ):
        out = _run(*args)
        assert out.returncode == 2 and out.stdout == ""
        assert out.stderr.startswith(f"{who}: device cuda: {cuda_unavailable()}")
        assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    # Printing the configuration checks it, not this host: a GPU node's prints here too.
    out = _run("serve", "--device", "cuda", "--print-config")
    assert out.returncode == 0 and 'device = "cuda"' in out.stdout
    assert "warning: device cuda: " in out.stderr and "serving would refuse it here" in out.stderr


def test_serve_s_start_up_error_is_a_json_line_where_json_logs_are_asked_for(tmp_path):
    """A log shipper reading the daemon's JSON lines gets its start-up failure as one, asked
    for by flag, variable or the file itself; plain text otherwise."""
    bad = tmp_path / "bad.toml"
    bad.write_text('log_format = "json"\nmax_batch_events = 0\n')
    for args, env in (
        (["--log-format", "json", "--max-batch-events", "0"], None),
        (["--max-batch-events", "0"], {"STREAMTRK_LOG_FORMAT": "json"}),
        (["--config", str(bad)], None),
    ):
        out = _run("serve", *args, env=env)
        assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
        line = json.loads(out.stderr)
        assert line["level"] == "error" and line["logger"] == "streamtrk.serve"
        assert line["message"].startswith("invalid configuration: max_batch_events must be")
    out = _run("serve", "--max-batch-events", "0")
    assert out.returncode == 2
    assert out.stderr.startswith("streamtrk serve: invalid configuration: max_batch_events")


def test_output_cut_short_by_its_reader_is_no_error(tmp_path):
    _simulate(tmp_path)
    with subprocess.Popen(
        [sys.executable, "-m", "streamtrk", "inspect", str(tmp_path / "a.stk")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    ) as proc:  # fmt: skip
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # like `| head -0`: the reader is gone before the first line
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=120) == 141
    assert "BrokenPipeError" not in err and "Traceback" not in err


def test_replay_to_nobody_says_no_reply_came_and_where_it_went(tmp_path):
    main(["simulate", "--events", "2", "--mu", "2", "-q", "-o", str(tmp_path / "e.stk")])
    to, from_ = "tcp://127.0.0.1:1", "tcp://127.0.0.1:2"  # nothing listens on ports 1 and 2
    out = _run("replay", str(tmp_path / "e.stk"), "--to", to, "--from", from_, "--timeout", "1")
    assert out.returncode == 1
    assert f"no reply at all: 2 events were sent to {to} and nothing came back from {from_}" in (
        out.stderr
    )


@pytest.mark.parametrize("flag", ["--report", "--submission", "--tracks", "--plots"])
def test_evaluate_refuses_an_output_it_cannot_write_before_it_works(tmp_path, capsys, flag):
    """Before the model loads and the events run (minutes), not with the results."""
    events, taken = tmp_path / "e.stk", tmp_path / "taken"
    main(["simulate", "--events", "1", "--mu", "2", "-q", "-o", str(events)])
    taken.write_text("")  # a file where --plots wants a folder, a folder for the others
    if flag != "--plots":
        taken.unlink()
        taken.mkdir()
    assert main(["evaluate", str(events), "--oracle", "-q", flag, str(taken)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("streamtrk evaluate: error: ") and str(taken) in err
    assert err.count("\n") == 1  # nothing ran before it


def test_replay_refuses_an_output_it_cannot_write_before_it_sends(tmp_path):
    main(["simulate", "--events", "2", "--mu", "2", "-q", "-o", str(tmp_path / "e.stk")])
    (tmp_path / "report.json").mkdir()
    to, from_ = "tcp://127.0.0.1:1", "tcp://127.0.0.1:2"
    args = [
        "--to",
        to,
        "--from",
        from_,
        "--timeout",
        "1",
        "--report",
        str(tmp_path / "report.json"),
    ]
    out = _run("replay", str(tmp_path / "e.stk"), *args)
    assert out.returncode == 1
    assert (
        out.stderr
        == f"streamtrk replay: error: {tmp_path / 'report.json'} is a folder, not a file\n"
    )


def test_onnx_export_prints_one_line(tmp_path):
    out = _run("export", "--onnx", str(default_model_path()), "-o", str(tmp_path / "m.onnx"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("\n") == 1 and out.stdout.startswith(f"wrote {tmp_path / 'm.onnx'}")
    assert out.stderr == ""


def test_the_readme_tours_every_command() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    toured = set(re.findall(r"^\| `streamtrk ([a-z-]+)", readme, flags=re.MULTILINE))
    assert toured == set(COMMANDS)


def test_a_signal_inside_the_stop_handler_does_not_wait_for_itself() -> None:
    """A signal handler runs on the main thread between any two bytecodes, inside another
    handler too (Ctrl-C twice, or Ctrl-C then a supervisor's SIGTERM). Here the stop handler
    of replay, record and farm runs again at every Python call it makes (a profile hook), as
    a second signal could: one that took a lock there, as ``threading.Event.set`` takes its
    condition's, would wait for itself for ever."""
    with _stop_on_signals() as stop:
        handler = signal.getsignal(signal.SIGINT)
    assert callable(handler)
    nested: list[str] = []  # where the handler ran again (not inside a nested run)

    def hook(frame, event, arg) -> None:
        if event == "call":
            nested.append(frame.f_code.co_qualname)
            sys.setprofile(None)
            handler(signal.SIGTERM, None)
            sys.setprofile(hook)

    def interrupted() -> None:
        sys.setprofile(hook)
        try:
            handler(signal.SIGINT, None)
        finally:
            sys.setprofile(None)

    thread = threading.Thread(target=interrupted, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), f"the handler waits for itself, nested at {nested}"
    assert stop.is_set() and nested


@pytest.mark.parametrize(("flag", "value"), [("--hwm", "0"), ("--hwm", "-1"), ("--max-hits", "0")])
def test_a_forwarder_refuses_limits_below_one(capsys, flag: str, value: str) -> None:
    args = ["farm", "distributor", "--from", "tcp://127.0.0.1:*", "--to", "tcp://127.0.0.1:*"]
    assert main([*args, flag, value]) == 1
    assert f"{flag} must be at least 1, got {value}" in capsys.readouterr().err


@pytest.mark.parametrize("http", ["10062", "127.0.0.1:http", "127.0.0.1:70000"])
def test_a_forwarder_refuses_an_http_address_that_is_not_host_port(capsys, http: str) -> None:
    args = ["farm", "collector", "--from", "tcp://127.0.0.1:*", "--to", "tcp://127.0.0.1:*"]
    assert main([*args, "--http", http]) == 1
    assert f"--http {http!r} must be HOST:PORT" in capsys.readouterr().err
