"""What the commands share: the check of output files, strict JSON."""

import json
import math
import shutil
from importlib import resources
from pathlib import Path

import pytest

from streamtrk.cli import main
from streamtrk.cli.common import check_outputs, strict_json
from streamtrk.detector import DEFAULT_DETECTOR
from streamtrk.recon.model import shipped_model_path


def test_two_outputs_named_alike_are_refused_before_the_work(tmp_path) -> None:
    """``evaluate --report x --submission x``: the submission replaced the report, or (with
    ``--plots x``) the folder failed after the work."""
    x = tmp_path / "x"
    for files, folder in (((x, None, tmp_path / "." / "x"), None), ((x,), x)):
        with pytest.raises(ValueError, match=f"{tmp_path}/(./)?x is given for two outputs"):
            check_outputs(*files, folder=folder)
    check_outputs(x, None, tmp_path / "y", folder=tmp_path / "z")
    check_outputs(Path("/dev/null"), Path("/dev/null"))  # written in place, not replaced


def test_an_output_that_is_an_input_is_refused_before_the_work(tmp_path) -> None:
    """``evaluate v.stk --report v.stk``: the report replaced the recording, and the
    command exited 0. Another spelling of the path, or a link to it, is the same file."""
    read = tmp_path / "v.stk"
    read.write_bytes(b"events")
    (tmp_path / "link.stk").symlink_to(read)
    for given in (read, tmp_path / "." / "v.stk", tmp_path / "link.stk"):
        with pytest.raises(ValueError, match="is an input too: the output would replace it"):
            check_outputs(tmp_path / "report.json", given, inputs=[read])
    check_outputs(tmp_path / "report.json", inputs=[read])
    assert read.read_bytes() == b"events"


def test_the_commands_refuse_to_write_over_what_they_read(tmp_path, capsys) -> None:
    """Exit status 2, the input as it was: a report over the recording (evaluate, replay),
    a recording over a TrackML file (import-trackml), a submission over a particles file."""
    run = tmp_path / "v.stk"
    assert main(["simulate", "--events", "1", "--mu", "2", "-q", "-o", str(run)]) == 0
    assert main(["export-trackml", str(run), "-o", str(tmp_path / "csv"), "-q"]) == 0
    hits = tmp_path / "csv" / "event000000000-hits.csv"
    particles = hits.with_name("event000000000-particles.csv")
    before = {path: path.read_bytes() for path in (run, hits, particles)}
    for args, output in [
        (["evaluate", str(run), "--oracle", "-q", "--report"], run),
        (["replay", str(run), "--report"], run),
        (["import-trackml", "-q", str(tmp_path / "csv"), "-o"], hits),
        (["evaluate", str(tmp_path / "csv"), "--oracle", "-q", "--submission"], particles),
    ]:
        assert main([*args, str(output)]) == 2
        assert f"{output} is an input too" in capsys.readouterr().err
    assert {path: path.read_bytes() for path in before} == before


def test_no_output_replaces_a_model_detector_or_certificate_read(tmp_path, capsys) -> None:
    """The model's card (evaluate), the detector file (simulate), a CURVE certificate
    (replay, record): exit status 2, each as it was (each command had written over it)."""
    model = tmp_path / "model"
    shutil.copytree(shipped_model_path(), model)
    detector = tmp_path / "det.toml"
    detector.write_text(resources.files("streamtrk.data").joinpath(DEFAULT_DETECTOR).read_text())
    run = tmp_path / "v.stk"
    assert main(["simulate", "--events", "1", "--mu", "2", "-q", "-o", str(run)]) == 0
    assert main(["keys", str(tmp_path), "client"]) == 0
    assert main(["keys", str(tmp_path), "server"]) == 0
    secret, public = tmp_path / "client.key_secret", tmp_path / "server.key"
    before = {p: p.read_bytes() for p in (model / "card.toml", detector, secret, public)}
    capsys.readouterr()
    curve = ["--curve-key", str(secret), "--curve-server-key", str(public)]
    for args, output in [
        (["evaluate", str(run), "--model", str(model), "-q", "--report"], model / "card.toml"),
        (["simulate", "--detector", str(detector), "-q", "-o"], detector),
        (["replay", str(run), *curve, "--report"], secret),
        (["record", "--from", "tcp://127.0.0.1:1", *curve, "-o"], public),
    ]:
        assert main([*args, str(output)]) == 2, args
        assert f"{output} is an input too" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in before} == before


def test_strict_json_writes_every_non_finite_number_as_null() -> None:
    """NaN and infinities, in lists, tuples and dicts alike (json.dumps writes a tuple as a
    list; with allow_nan=False a NaN inside one raised)."""
    report = {"rate": math.nan, "bins": {"1-3": (math.inf, 0.5)}, "interval": [-math.inf, 1.0]}
    assert json.loads(strict_json(report)) == {
        "rate": None, "bins": {"1-3": [None, 0.5]}, "interval": [None, 1.0]
    }  # fmt: skip


def test_an_output_named_as_an_input_not_there_yet_is_refused_too(tmp_path) -> None:
    """An input that does not exist (yet: a replay given the recording a tap is about to
    write) compares by its resolved path: ``--report v.stk`` for the input ``./v.stk`` is
    refused as one file, not left for the read to fail on."""
    read = tmp_path / "v.stk"
    with pytest.raises(ValueError, match="is an input too: the output would replace it"):
        check_outputs(tmp_path / "." / "v.stk", inputs=[read])
    check_outputs(tmp_path / "w.stk", inputs=[read])
