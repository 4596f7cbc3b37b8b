"""``streamtrk evaluate``: its options, its report, its files and its errors."""

import json
import re
import sys
from dataclasses import replace

import pytest
from cli_helpers import _run, _run_unread

from streamtrk.cli import main
from streamtrk.cli.evaluate import _headline
from streamtrk.io.recording import RecordingWriter, iter_events
from streamtrk.recon.device import cuda_unavailable
from streamtrk.recon.model import default_model_path


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
    names = ["efficiency_vs_pt", "efficiency_vs_eta", "efficiency_vs_vertex_r", "fake_rate_vs_eta"]
    names += ["pt_resolution_vs_pt"]
    for name, truthless in (("e.stk", 0), ("mixed.stk", 1)):
        plots = tmp_path / f"plots-{name}"
        args = ["evaluate", str(tmp_path / name), "-q", "--plots", str(plots)]  # the model
        assert main(args) == 0
        out, err = capsys.readouterr()
        report = json.loads(out)
        assert report["events"] == 1 + truthless and report["events_with_truth"] == 1
        note = f"{truthless} of 2 events have no truth: reconstructed, not scored"
        assert (note in err) == bool(truthless) == ("have no truth" in err)
        for png in (plots / f"{n}.png" for n in [*names, "pulls"]):
            assert png.read_bytes()[:4] == b"\x89PNG"


def test_evaluate_of_events_none_with_truth_reports_and_headlines(tmp_path, capsys):
    """No event with truth (a tap of the detector, TrackML hits alone): the report has no
    physics keys, and the headline leaves them out (it failed on them: a traceback, and
    neither the report file nor the submission written)."""
    main(["simulate", "--events", "1", "--mu", "2", "-q", "-o", str(tmp_path / "e.stk")])
    event = next(iter_events(tmp_path / "e.stk"))
    with RecordingWriter(tmp_path / "bare.stk") as w:
        w.write_event(replace(event, truth=None))
    report, sub = tmp_path / "r.json", tmp_path / "sub.csv"
    args = ["evaluate", str(tmp_path / "bare.stk"), "-q", "--report", str(report)]
    assert main([*args, "--submission", str(sub)]) == 0
    out, err = capsys.readouterr()
    assert json.loads(report.read_text()) == json.loads(out)
    assert json.loads(out)["events_with_truth"] == 0 and sub.exists()
    assert "streamtrk evaluate: 1 events, " in err and "efficiency" not in err


def test_evaluate_counts_and_says_the_hits_on_layers_the_detector_lacks(tmp_path, capsys):
    """Another detector's data (volume 999 here) made no edge and no track, and the report
    said only that the particles were missed at the graph."""
    main(["simulate", "--events", "1", "--mu", "2", "-q", "-o", str(tmp_path / "e.stk")])
    event = next(iter_events(tmp_path / "e.stk"))
    volume = event.hits.volume_id.copy()
    volume[::4] = 999
    with RecordingWriter(tmp_path / "other.stk") as w:
        w.write_event(replace(event, hits=replace(event.hits, volume_id=volume)))
    for name, off in (("e.stk", 0), ("other.stk", len(volume[::4]))):
        assert main(["evaluate", str(tmp_path / name), "--oracle", "-q"]) == 0
        out, err = capsys.readouterr()
        assert json.loads(out)["hits_on_no_layer"] == off
        said = f"warning: {off} of {len(volume)} hits ({off / len(volume):.2%}) are on layers "
        assert (said in err) == bool(off), err


def test_evaluate_says_when_truth_has_no_particle_kinematics(tmp_path, capsys):
    main(["simulate", "--events", "1", "--mu", "2", "-q", "-o", str(tmp_path / "e.stk")])
    assert main(["export-trackml", str(tmp_path / "e.stk"), "-o", str(tmp_path / "csv")]) == 0
    (prefix,) = {p.name.split("-")[0] for p in (tmp_path / "csv").iterdir()}
    args = ["evaluate", str(tmp_path / "csv" / prefix), "-q"]  # the model
    assert main(args) == 0
    out, err = capsys.readouterr()
    whole = json.loads(out)
    assert whole["tracking_efficiency"] > 0.9 and "no particle vertices" not in err
    found, of = whole["n_reconstructed"], whole["n_reconstructable"]  # the last line says them
    said = f"tracking efficiency {100 * found / of:.2f}% ({found} of {of}; 68.3% interval "
    assert said in err and f"TrackML score {whole['trackml_score']:.4f}" in err
    of_particles = whole["n_tracks"] - whole["n_fake"]  # the duplicate rate's denominator
    assert f"({whole['n_duplicate']} of {of_particles} tracks of a particle)" in err
    (tmp_path / "csv" / f"{prefix}-particles.csv").unlink()
    assert main(args) == 0
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert report["tracking_efficiency"] is None
    assert report["trackml_score"] == whole["trackml_score"]  # the truth file's weights
    assert "1 events have truth but no particle vertices or momenta" in err
    assert "tracking efficiency" not in err and "TrackML score" in err  # what it can score


@pytest.mark.parametrize(  # Wilson's interval by hand: (k + 1/2 +- sqrt(k (n - k) / n + 1/4)) / 11
    ("missed", "said"),
    [
        (
            {"graph": 1, "gnn": 2},
            "(7 of 10; 68.3% interval 54.25-82.12%; missed at graph 1, gnn 2)",
        ),
        ({}, "(10 of 10; 68.3% interval 90.91-100.00%)"),
    ],
)
def test_the_headline_names_the_stages_that_lost_the_missed_particles(missed, said) -> None:
    found = 10 - sum(missed.values())
    report = {
        "events": 2,
        "seconds_per_event": 0.5,
        "tracking_efficiency": found / 10,
        "n_reconstructed": found,
        "n_reconstructable": 10,
        "missed_by_stage": {"refused": 0, "graph": 0, "pruning": 0, "gnn": 0, "tracks": 0} | missed,
        "fake_rate": None,
        "duplicate_rate": None,
        "trackml_score": None,
    }
    assert (
        _headline(report)
        == f"2 events, 0.5 s an event; tracking efficiency {found * 10:.2f}% {said}"
    )


def test_evaluate_keeps_the_report_when_a_file_by_event_number_cannot_be_written(tmp_path):
    """Two runs of one event number cannot share a submission (nor a tracks file): neither
    is written, and the report, which holds both runs, is kept (the work is not lost)."""
    main(["simulate", "--events", "1", "--mu", "2", "-q", "-o", str(tmp_path / "e.stk")])
    event = next(iter_events(tmp_path / "e.stk"))
    with RecordingWriter(tmp_path / "runs.stk") as w:
        w.write_event(event)
        w.write_event(replace(event, run=event.run + 1))
    report, sub = tmp_path / "r.json", tmp_path / "sub.csv"
    args = ["evaluate", str(tmp_path / "runs.stk"), "--oracle", "-q", "--report", str(report)]
    tracks = tmp_path / "tracks.csv"
    out = _run(*args, "--submission", str(sub), "--tracks", str(tracks))
    assert out.returncode == 1 and "occurs in more than one run" in out.stderr
    assert json.loads(report.read_text()) == json.loads(out.stdout)
    assert json.loads(out.stdout)["events"] == 2
    assert not sub.exists() and not tracks.exists()


def test_evaluate_writes_its_files_when_the_reader_of_its_output_has_gone(tmp_path):
    """``streamtrk evaluate ... --report r.json | head -0``: the report, plots and
    submission are written all the same, and the exit status is a cut pipe's (141)."""
    main(["simulate", "--events", "1", "--mu", "2", "-q", "-o", str(tmp_path / "e.stk")])
    report, sub, plots = tmp_path / "r.json", tmp_path / "sub.csv", tmp_path / "plots"
    args = ["evaluate", str(tmp_path / "e.stk"), "--oracle", "-q", "--report", str(report)]
    args += ["--submission", str(sub), "--plots", str(plots)]
    status, err = _run_unread(*args)
    assert status == 141 and "Traceback" not in err, err
    assert json.loads(report.read_text())["events"] == 1
    assert sub.read_text().startswith("event_id,hit_id,track_id\n") and any(plots.glob("*.png"))


def test_evaluate_prints_its_report_before_a_full_disk_refuses_the_file(tmp_path):
    """The report file is written after the work: one a full disk refuses (here past the
    process's file size limit, EFBIG, as ENOSPC) is named in the error and left absent, and
    the report is still printed (the work is not lost with the file)."""
    import resource

    main(["simulate", "--events", "1", "--mu", "2", "-q", "-o", str(tmp_path / "e.stk")])
    report = tmp_path / "r.json"

    def small_files() -> None:  # the recording is read, not written; the report is 2 kB
        resource.setrlimit(resource.RLIMIT_FSIZE, (256, 256))

    args = ["evaluate", str(tmp_path / "e.stk"), "--oracle", "-q", "--report", str(report)]
    out = _run(*args, preexec_fn=small_files)
    assert out.returncode == 1
    assert f"cannot write {report}: File too large" in out.stderr
    assert json.loads(out.stdout)["events"] == 1
    assert not list(tmp_path.glob("r.json*"))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--batch", "0"], f"--batch must be 1 to {sys.maxsize}, got 0"),  # not "no events in"
        (["--events", "-1"], f"--events must be 1 to {sys.maxsize}, got -1"),
        (["--batch", str(10**20)], f"--batch must be 1 to {sys.maxsize}, got {10**20}"),
        (["--threshold", "nan"], "--threshold must lie in [0, 1) (1 passes no edge), got nan"),
        (["--threshold", "1"], "--threshold must lie in [0, 1) (1 passes no edge), got 1.0"),
        (["--torch-threads", "100000"], "torch threads must be 0 to 4096, got 100000"),
        (["--beam-spot", "50,0"], "--beam-spot must be within 20 mm of the z axis, got 50,0"),
        (["--beam-spot", "nan,0"], "--beam-spot must be within 20 mm of the z axis, got nan,0"),
    ],
)
def test_evaluate_refuses_settings_out_of_range(tmp_path, capsys, flags, message):
    run = tmp_path / "e.stk"
    assert main(["simulate", "--events", "1", "--mu", "1", "-q", "-o", str(run)]) == 0
    assert main(["evaluate", str(run), "--oracle", "-q", *flags]) == 2
    assert f"streamtrk evaluate: error: {message}" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags", [["--threshold", "0.7"], ["--engine", "compile"], ["--precision", "bf16"]]
)
def test_evaluate_refuses_model_settings_with_the_oracle(tmp_path, capsys, flags):
    """The oracle's scores come from truth: a threshold, engine or precision for it would be
    taken silently and change nothing, as if the run had measured them."""
    run = tmp_path / "e.stk"
    assert main(["simulate", "--events", "1", "--mu", "1", "-q", "-o", str(run)]) == 0
    assert main(["evaluate", str(run), "--oracle", "-q", *flags]) == 2
    assert (
        f"streamtrk evaluate: error: {flags[0]} is a setting of a model's chain: --oracle "
        "scores edges from truth" in capsys.readouterr().err
    )


def test_evaluate_with_an_engine_that_cannot_run_here_is_one_line(tmp_path, capsys):
    if not cuda_unavailable():
        pytest.skip("a GPU here: engine=tensorrt may run")
    run = tmp_path / "e.stk"
    assert main(["simulate", "--events", "1", "--mu", "1", "-q", "-o", str(run)]) == 0
    assert main(["evaluate", str(run), "--engine", "tensorrt", "-q"]) == 2
    assert "streamtrk evaluate: error: engine=tensorrt needs device=cuda" in (
        capsys.readouterr().err
    )


def test_evaluate_names_the_model_it_used(tmp_path):
    main(["simulate", "--events", "1", "--mu", "2", "-q", "-o", str(tmp_path / "e.stk")])
    model = default_model_path()
    out = _run("evaluate", str(tmp_path / "e.stk"), "-q", env={"STREAMTRK_MODEL": str(model)})
    assert out.returncode == 0, out.stderr

    def not_json(constant: str) -> None:
        raise AssertionError(f"{constant} in the report: not JSON")

    report = json.loads(out.stdout, parse_constant=not_json)
    assert report["scorer"] == str(model)
    keys = ("device", "engine", "engine_requested", "engine_note", "precision")
    assert [report[k] for k in keys] == ["cpu", "eager", "eager", None, "fp32"]
    assert None in report["fake_rate_by_pt"].values()  # an empty bin: null, not NaN
    out = _run("evaluate", str(tmp_path / "e.stk"), "-q", "--model", str(tmp_path / "none"))
    assert out.returncode == 2  # a setting refused, as serve's --model
    assert out.stderr.startswith(f"streamtrk evaluate: error: no model at {tmp_path / 'none'}")
    assert out.stderr.rstrip().endswith(", or pass --oracle")
    out = _run("evaluate", str(tmp_path / "e.stk"), "-q", env={"STREAMTRK_MODEL": "/none"})
    assert out.returncode == 2
    assert out.stderr.startswith("streamtrk evaluate: error: no model at /none")
    assert out.stderr.rstrip().endswith(
        ", or pass --oracle (that path is $STREAMTRK_MODEL's: unset it for the shipped model)"
    )


def test_evaluate_reports_events_over_the_work_budget(tmp_path, capsys):
    # MU=200: its 6 M doublet candidates pass the allowance alone (500,000)
    main(["simulate", "--events", "1", "--mu", "200", "-q", "-o", str(tmp_path / "e.stk")])
    args = ["evaluate", str(tmp_path / "e.stk"), "--oracle", "-q"]
    assert main([*args, "--budget-scale", "1e-6", "--report", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["events_refused"] == report["events"] == 1
    assert report["refused"][0]["what"] == "doublet candidates"
    assert "1 of 1 events over the work budget" in capsys.readouterr().err
    assert main([*args, "--budget-scale", "0"]) == 2
    err = capsys.readouterr().err
    assert err == "streamtrk evaluate: error: --budget-scale must be a finite number > 0, got 0.0\n"


def test_evaluate_scores_an_event_read_again_once_and_says_so(tmp_path, capsys):
    """A looped replay's recording holds its events more than once: scored once each, as
    replay scores them."""
    main(["simulate", "--events", "2", "--mu", "10", "-q", "-o", str(tmp_path / "e.stk")])
    first, second = iter_events(tmp_path / "e.stk")
    with RecordingWriter(tmp_path / "looped.stk") as w:
        for ev in (first, second, first):
            w.write_event(ev)
    reports = {}
    for name in ("e", "looped"):
        args = ["evaluate", str(tmp_path / f"{name}.stk"), "--oracle", "-q"]
        assert main([*args, "--report", str(tmp_path / f"{name}.json")]) == 0
        reports[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert "1 reads were of an event read before" in capsys.readouterr().err
    assert (reports["looped"].pop("events_repeated"), reports["e"].pop("events_repeated")) == (1, 0)
    for key in ("events", "n_reconstructable", "n_tracks", "trackml_score"):
        assert reports["looped"][key] == reports["e"][key], key


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


def test_evaluate_help_names_every_report_key(tmp_path, capsys):
    run, report = tmp_path / "e.stk", tmp_path / "r.json"
    main(["simulate", "--events", "1", "--mu", "2", "-q", "-o", str(run)])
    assert main(["evaluate", str(run), "--oracle", "-q", "--report", str(report)]) == 0
    capsys.readouterr()  # the report printed
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    words = " ".join(capsys.readouterr().out.split())
    # graph_/pruned_/gnn_edge_efficiency and _purity (and their _all), counts (n_*)
    shorthand = r"(graph|pruned|gnn)_edge_(efficiency|purity)(_all)?|n_\w+"
    keys = json.loads(report.read_text())
    assert [k for k in keys if k not in words and not re.fullmatch(shorthand, k)] == []


def test_the_report_s_bins_are_in_their_order(tmp_path, capsys) -> None:
    """The keys sorted, the bins within each as they are ordered (a sort of all keys put
    the pT bin 10-100 before 3-10)."""
    main(["simulate", "--events", "1", "--mu", "2", "-q", "-o", str(tmp_path / "e.stk")])
    assert main(["evaluate", str(tmp_path / "e.stk"), "--oracle", "-q"]) == 0
    out = capsys.readouterr().out
    report = json.loads(out)
    assert list(report) == sorted(report)
    bins = list(report["fake_rate_by_pt"])
    assert bins.index("3-10") < bins.index("10-inf")


def test_the_tracks_file_names_the_beam_line_its_perigees_are_to(tmp_path):
    """phi, d0 and z0 are at the perigee to --beam-spot's line: a file that did not say
    which would be read about the z axis."""
    main(["simulate", "--events", "1", "--mu", "2", "-q", "-o", str(tmp_path / "e.stk")])
    tracks = tmp_path / "tracks.csv"
    args = ["evaluate", str(tmp_path / "e.stk"), "--oracle", "-q", "--tracks", str(tracks)]
    assert main([*args, "--beam-spot", "0.5,-0.25"]) == 0
    header, *rows = tracks.read_text().splitlines()
    assert header.split(",")[-2:] == ["beam_x", "beam_y"] and rows
    assert {tuple(map(float, row.split(",")[-2:])) for row in rows} == {(0.5, -0.25)}


def test_evaluate_reads_at_most_the_events_asked_for(tmp_path, capsys):
    run = tmp_path / "e.stk"
    assert main(["simulate", "--events", "2", "--mu", "2", "-q", "-o", str(run)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--oracle", "-q", "--events", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["events"] == 1


def test_evaluate_of_a_recording_of_no_events_is_an_error(tmp_path, capsys):
    empty = tmp_path / "empty.stk"
    RecordingWriter(empty).close()
    assert main(["evaluate", str(empty), "--oracle", "-q"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.endswith(f"streamtrk evaluate: error: no events in {empty}\n")


def test_evaluate_runs_the_model_at_the_threshold_and_precision_given(tmp_path, capsys):
    """--threshold and --precision reach the model's chain: the report says the precision,
    and a threshold few true edges pass (0.9999) keeps fewer of them than the model's."""
    run = tmp_path / "e.stk"
    assert main(["simulate", "--events", "1", "--mu", "2", "-q", "-o", str(run)]) == 0
    capsys.readouterr()
    reports = []
    for flags in ([], ["--precision", "bf16", "--threshold", "0.9999"]):
        assert main(["evaluate", str(run), "-q", *flags]) == 0
        reports.append(json.loads(capsys.readouterr().out))
    assert [r["precision"] for r in reports] == ["fp32", "bf16"]
    assert reports[1]["gnn_edge_efficiency"] < reports[0]["gnn_edge_efficiency"] - 0.1


def test_evaluate_centres_the_model_s_chain_on_the_beam_spot_given(tmp_path, capsys):
    """As the oracle's (test above): the model's chain too fits and cuts about --beam-spot."""
    out = tmp_path / "bs.stk"
    sim = ["simulate", "--events", "1", "--mu", "20", "--seed", "5", "-q", "-o", str(out)]
    assert main([*sim, "--beam-spot=1.5,-1,0"]) == 0
    capsys.readouterr()
    efficiency = {}
    for name, extra in (("axis", []), ("beam", ["--beam-spot=1.5,-1"])):
        assert main(["evaluate", str(out), "-q", *extra]) == 0
        efficiency[name] = json.loads(capsys.readouterr().out)["tracking_efficiency"]
    assert efficiency["beam"] > efficiency["axis"] + 0.02, efficiency


def test_the_headline_s_duplicate_rate_is_of_the_tracks_of_a_particle() -> None:
    report = {
        "events": 1, "seconds_per_event": 0.5, "tracking_efficiency": None,
        "fake_rate": 0.25, "n_fake": 1, "n_tracks": 4,
        "duplicate_rate": 1 / 3, "n_duplicate": 1, "trackml_score": None,
    }  # fmt: skip
    assert _headline(report) == (
        "1 events, 0.5 s an event; fake rate 25.00% (1 of 4 tracks); "
        "duplicate rate 33.33% (1 of 3 tracks of a particle)"
    )


def test_the_report_names_the_engine_asked_for_beside_the_one_used(tmp_path, capsys):
    """engine=auto on the CPU runs eager: the report says both, and why."""
    run = tmp_path / "e.stk"
    assert main(["simulate", "--events", "1", "--mu", "1", "-q", "-o", str(run)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "-q", "--engine", "auto"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["engine"], report["engine_requested"]) == ("eager", "auto")
    assert report["engine_note"].startswith("auto on the CPU: eager")


def test_evaluate_takes_a_beam_spot_at_the_limit(tmp_path, capsys):
    """20 mm is within 20 mm, as the simulation and the daemon take it."""
    run = tmp_path / "e.stk"
    assert main(["simulate", "--events", "1", "--mu", "1", "-q", "-o", str(run)]) == 0
    assert main(["evaluate", str(run), "--oracle", "-q", "--beam-spot", "20,0"]) == 0


def test_the_report_names_its_input_and_scorer(tmp_path, capsys) -> None:
    """A report kept beside others says what it scored: the input as given, and the oracle
    (or the model directory) that scored its edges, on the device it ran on."""
    run = tmp_path / "e.stk"
    assert main(["simulate", "--events", "1", "--mu", "1", "-q", "-o", str(run)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--oracle", "-q"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["input"], report["scorer"], report["device"]) == (str(run), "oracle", "cpu")
