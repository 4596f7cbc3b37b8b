"""The ``streamtrk`` command: simulate, inspect, import/export TrackML, errors."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from streamtrk.cli import main
from streamtrk.io.recording import iter_events
from streamtrk.io.trackml import read_event


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
    assert summary["versions"] == [1] and summary["error"] is None


def test_inspect_names_the_offset_of_a_truncated_file(tmp_path, capsys):
    _simulate(tmp_path)
    data = (tmp_path / "a.stk").read_bytes()
    (tmp_path / "cut.stk").write_bytes(data[:-100])
    capsys.readouterr()
    assert main(["inspect", "--json", str(tmp_path / "cut.stk")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["events"] == 2 and summary["events_with_truth"] == 1
    assert "offset" in summary["error"]


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


def test_errors_are_clear_and_exit_nonzero(tmp_path, capsys):
    assert main(["import-trackml", str(tmp_path / "nope"), "-o", str(tmp_path / "x.stk")]) == 1
    (tmp_path / "bad.stk").write_bytes(b"not a recording")
    assert main(["inspect", str(tmp_path / "bad.stk")]) == 1
    err = capsys.readouterr().err
    assert "streamtrk import-trackml: error" in err and "streamtrk inspect: error" in err


COMMANDS = (
    "simulate", "import-trackml", "inspect", "export-trackml", "evaluate", "export", "serve",
    "replay", "record", "train", "demo",
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
