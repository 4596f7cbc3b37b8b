"""Training end to end: a tiny reproducible run through the CLI, its inputs checked, its
model directory written whole."""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import signal
import tomllib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from train_helpers import REPO, TINY

from streamtrk.cli import main
from streamtrk.detector import load_detector
from streamtrk.io.recording import RecordingWriter, iter_events
from streamtrk.recon.card import ModelCardError
from streamtrk.recon.load import load_reconstructor
from streamtrk.recon.model import load_model, read_card
from streamtrk.recon.prune import MODEL_WINDOWS_FILE
from streamtrk.threads import available_cpus
from streamtrk.train import EventSource, load_config


def test_the_card_keeps_the_recipe_as_it_was_read(tmp_path: Path) -> None:
    """As load_config reads it: UTF-8 (not the locale's encoding), no byte order mark."""
    text = TINY.replace('name = "tiny"', 'name = "tiny"  # pT \u2265 1 GeV')
    path = tmp_path / "c.toml"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "m"), "-q"]) == 0
    assert read_card(tmp_path / "m")["reproduce"]["config"] == text


def test_a_recipe_refused_is_exit_status_2(tmp_path: Path, capsys) -> None:
    """A configuration file refused, as every command's (README: exit status 2)."""
    path = tmp_path / "c.toml"
    path.write_text(TINY.replace("epochs = 2", "epochs = 0"))
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "m"), "-q"]) == 2
    assert "epochs must be >= 1, got 0" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("split", "noise", "match"),
    [
        ('[train]\nrecording = "{stk}"\n', "0.19", r"\[train\] event \(\d+, 0\) and \[val\] event"),
        ('[report]\nreal = "{csv}"\n', "0.19", r"\[train\] event \(\d+, 0\) and \[report real\]"),
        ('[train]\nrecording = "{stk}"\n', "0", r"\[train\] event .* share \d+ of their"),
    ],
)
def test_an_event_in_two_splits_is_refused_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], split: str, noise: str, match: str
) -> None:
    """A recording of the validation seed given as training data (or the same crossing
    without noise hits: other hits, the same particles), or the first training event given as
    the report's real event in TrackML files: refused before a model is trained or
    written."""
    seed = 12 if "train" in split else 11  # the validation seed, or the training seed
    args = ["simulate", "--events", "1", "--mu", "10", "--seed", str(seed), "--noise", noise]
    assert main([*args, "-q", "-o", str(tmp_path / "r.stk"), "--trackml-dir", str(tmp_path)]) == 0
    text = (
        TINY.replace("[train]\nmu = 10\nseed = 11\nevents = 2\n", "") if "train" in split else TINY
    )
    extra = split.format(stk=tmp_path / "r.stk", csv=tmp_path / "event000000000")
    config = tmp_path / "tiny.toml"
    config.write_text(text + extra)
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "m"), "-q"]) == 1
    err = capsys.readouterr().err
    assert re.search(match + (".* have the same hits" if noise == "0.19" else ""), err), err
    assert not (tmp_path / "m").exists()


def _simulated_without_truth(path: Path, seed: int) -> Path:
    """Two MU=10 events of ``seed``, recorded without their truth."""
    args = ["simulate", "--events", "2", "--mu", "10", "--seed", str(seed), "-q"]
    assert main([*args, "-o", str(path.with_suffix(".truth.stk"))]) == 0
    with RecordingWriter(path) as w:
        for ev in iter_events(path.with_suffix(".truth.stk")):
            w.write_event(replace(ev, truth=None))
    return path


def test_a_recording_without_truth_is_refused_naming_it(tmp_path: Path, capsys) -> None:
    """For training or validation; a test split without truth is evaluated, unscored."""
    bare = _simulated_without_truth(tmp_path / "bare.stk", 11)
    config = tmp_path / "tiny.toml"
    recorded = f'[train]\nrecording = "{bare}"\nevents = 2\n'
    config.write_text(TINY.replace("[train]\nmu = 10\nseed = 11\nevents = 2\n", recorded))
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "m"), "-q"]) == 1
    assert f"[train] {bare}: run 1 event 0 has no truth, which" in capsys.readouterr().err
    bare_test = _simulated_without_truth(tmp_path / "bare-test.stk", 21)
    config.write_text(TINY + f'[test]\nrecording = "{bare_test}"\nevents = 2\n')
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "m"), "-q"]) == 0
    assert read_card(tmp_path / "m")["metrics"]["test"]["events_with_truth"] == 0


def test_validation_events_without_a_reconstructable_particle_are_refused_before_fitting(
    tmp_path: Path, capsys
) -> None:
    """The threshold is chosen by the efficiency on the validation events: with no
    reconstructable particle (here one crossing of MU 0.01 whose only particle is too soft)
    it is undefined at every threshold, and the scan picked the first one without a word,
    after the whole fit. Refused before it, naming the split."""
    config = tmp_path / "tiny.toml"
    soft = "[val]\nmu = 0.01\nseed = 1\nevents = 1\n"
    config.write_text(TINY.replace("[val]\nmu = 10\nseed = 12\nevents = 1\n", soft))
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "m")]) == 1
    err = capsys.readouterr().err
    said = "[val] simulated (mu 0.01, seed 1): none of its 1 events holds a reconstructable"
    assert said in err, err
    assert "train: graphs of" not in err  # before the work
    assert not (tmp_path / "m").exists()


def test_a_recording_holding_fewer_events_than_asked_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["simulate", "--events", "1", "--mu", "10", "--seed", "11", "-q"]
    assert main([*args, "-o", str(tmp_path / "r.stk")]) == 0
    config = tmp_path / "tiny.toml"
    recorded = f'[train]\nrecording = "{tmp_path / "r.stk"}"\nevents = 2\n'
    config.write_text(TINY.replace("[train]\nmu = 10\nseed = 11\nevents = 2\n", recorded))
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "m"), "-q"]) == 1
    assert "r.stk holds 1 events, fewer than the 2 asked for" in capsys.readouterr().err


def test_hits_fingerprints_ignore_row_order_and_ids() -> None:
    from streamtrk.train import hits_fingerprint

    event = EventSource(mu=5, seed=5, events=1).load(load_detector())[0]
    order = np.random.default_rng(0).permutation(len(event.hits))
    shuffled = replace(event.hits.take(order), hit_id=np.arange(len(order), dtype=np.int64) + 7)
    assert hits_fingerprint(replace(event, hits=shuffled)) == hits_fingerprint(event)
    moved = event.hits.z.copy()
    moved[3] = np.nextafter(moved[3], np.float32(np.inf))
    assert hits_fingerprint(replace(event, hits=replace(event.hits, z=moved))) != (
        hits_fingerprint(event)
    )


def test_events_sharing_half_their_particles_are_refused_in_two_splits() -> None:
    """The same seed simulated with a hard scatter added: other hits (other scattering
    draws) and three particles more, the pile-up's particles the same. An event with the
    whole particle table compared let it through into another split; shared by half the
    particles of either (in any order), it is refused."""
    from streamtrk.event import Particles
    from streamtrk.sim.generator import GeneratorConfig
    from streamtrk.sim.simulate import SimConfig, simulate
    from streamtrk.train import check_no_shared_events

    det = load_detector()
    [plain] = EventSource(mu=10, seed=11, events=1).load(det)
    [hard] = simulate(det, SimConfig(GeneratorConfig(mu=10, hard_scatter=3)), 11, 1)
    [other] = EventSource(mu=10, seed=12, events=1).load(det)
    assert plain.truth is not None and hard.truth is not None
    assert len(hard.truth.particles) == len(plain.truth.particles) + 3
    with pytest.raises(ValueError, match=r"\[train\] event \(\d+, 0\) and \[test\] event .* share"):
        check_no_shared_events({"train": [plain, other], "test": [hard]})
    # Tables half as large again as plain's (on other hits), some of their particles
    # plain's: half of plain's is refused (half of the smaller table), 40% is not (those of
    # one split may share: plain and hard in train).
    p = plain.truth.particles
    n, m = len(p), len(p) * 3 // 2
    rows = np.random.default_rng(1).permutation(n)
    filler = {k: np.concatenate([v + 1000, v + 2000]) for k, v in p.columns().items()}
    assert other.truth is not None
    for shared, refused in ((n // 2, True), (n * 2 // 5, False)):
        cols = {k: np.concatenate([v[rows[:shared]], filler[k][: m - shared]])
                for k, v in p.columns().items()}  # fmt: skip
        cols["particle_id"] = np.arange(1, m + 1, dtype=np.int64)
        mixed = replace(other, truth=replace(other.truth, particles=Particles(**cols)))
        splits = {"train": [plain, hard], "val": [mixed]}
        if refused:
            with pytest.raises(ValueError, match=f"share {shared} of their {n} and {m}"):
                check_no_shared_events(splits)
        else:
            check_no_shared_events(splits)


def test_tiny_training_is_reproducible(tmp_path: Path) -> None:
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        assert main(["train", "--config", str(config), "--out", str(out), "-q"]) == 0
    a, card = load_model(outs[0])
    b, _ = load_model(outs[1])
    for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y)
    best = card["training"]["best_epoch"]
    assert sorted(p.name for p in (outs[0] / "checkpoints").iterdir()) == sorted(
        {f"epoch-{best:03d}.pt", "epoch-001.pt"}  # the best epoch's and the last
    )
    assert (outs[0] / "training.png").stat().st_size > 0
    assert card["model"]["threshold"] in (0.4, 0.6)
    assert card["threshold_scan"]["thresholds"] == [0.4, 0.6]
    assert card["training"]["epochs_run"] == 2
    assert "streamtrk train --config" in card["reproduce"]["command"]
    assert np.isfinite(card["metrics"]["validation"]["val_loss"])


def test_train_called_directly_runs_with_the_recipes_threads(tmp_path: Path) -> None:
    """Not only through the CLI: the card's thread count is the one the fit ran with (the
    caller's count restored after)."""
    from streamtrk.train import train

    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    cfg = replace(load_config(config), threads=1)
    seen = []
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    original = torch.nn.Module.train

    def spy(module: torch.nn.Module, mode: bool = True) -> torch.nn.Module:
        seen.append(torch.get_num_threads())
        return original(module, mode)

    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(torch.nn.Module, "train", spy)
            card = train(cfg, tmp_path / "m", progress=False)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert seen and set(seen) == {1} and card["training"]["threads"] == 1


def test_training_names_its_stages_and_a_report_input_it_cannot_find(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "tiny.toml"
    config.write_text(
        TINY + f'[report]\nreal = "{tmp_path / "nowhere" / "event000001000"}"\n'
        f'here = "{tmp_path / "event000001000"}"\n'  # its folder there, not its files
    )
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "m")]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["model"] == str(tmp_path / "m")  # the epochs' lines on stderr
    assert "epoch 1: train loss" in err
    assert re.search(r"report 'real': .*nowhere/event000001000 not found .*, skipped", err)
    assert re.search(r"report 'here': .*/event000001000 not found .*, skipped", err)
    for stage in ("train: the events", "train: graphs of 2 training and 1 validation events",
                  "train: thresholds [0.4, 0.6]"):  # fmt: skip
        assert stage in err
    card = read_card(tmp_path / "m")
    assert card["metrics"]["real"]["skipped"] == card["metrics"]["here"]["skipped"] == "not found"


def test_a_model_trained_with_windows_of_its_own_carries_them(tmp_path: Path) -> None:
    """A recipe's ``[prune] windows`` file (a path) is copied into the model directory, and
    the card names the copy: the model serves elsewhere, with the windows it was trained on."""
    shipped = REPO / "streamtrk" / "data" / "prune_windows.toml"
    own = tmp_path / "mine" / "windows.toml"
    own.parent.mkdir()
    own.write_bytes(shipped.read_bytes())
    config = tmp_path / "tiny.toml"
    config.write_text(TINY + f'[prune]\nwindows = "{own}"\n')
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "m"), "-q"]) == 0
    own.unlink()
    assert read_card(tmp_path / "m")["prune"]["windows"] == MODEL_WINDOWS_FILE
    assert (tmp_path / "m" / MODEL_WINDOWS_FILE).read_bytes() == shipped.read_bytes()
    rec = load_reconstructor(tmp_path / "m")
    assert rec.prune is not None
    assert rec.prune.windows == str(tmp_path / "m" / MODEL_WINDOWS_FILE)
    # Copied without them (its card and weights only), the model is refused: its copy's name
    # is none of the package's, whose windows it was not trained with.
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("card.toml", "weights.pt"):
        (copy / name).write_bytes((tmp_path / "m" / name).read_bytes())
    with pytest.raises(ModelCardError, match=rf"{MODEL_WINDOWS_FILE} is not in the model "):
        load_reconstructor(copy)


def test_training_replaces_a_model_only_when_told_and_only_when_complete(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A directory that holds anything is refused before any work; with --overwrite the new
    model takes its place whole (nothing of the old one stays); a failed run leaves it."""
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    out = tmp_path / "m"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    train = ["train", "--config", str(config), "--out", str(out), "-q"]
    assert main(train) == 2  # the command line refused
    assert "m exists and is not empty: give another --out, or --overwrite" in (
        capsys.readouterr().err
    )
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("m")] == ["m"]
    assert main([*train, "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "card.toml", "checkpoints", "training.png", "weights.pt"
    ]  # fmt: skip
    # its reproduce command, run where it was, replaces it too (refused without)
    assert tomllib.loads((out / "card.toml").read_text())["reproduce"]["command"].endswith(
        " --overwrite"
    )
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("m")) == ["m"]
    weights = (out / "weights.pt").read_bytes()
    config.write_text(TINY.replace("[val]\nmu = 10\n", '[val]\nrecording = "none.stk"\n'))
    assert main([*train, "--overwrite"]) == 1  # the validation recording is missing
    assert (out / "weights.pt").read_bytes() == weights
    assert not (tmp_path / "m.partial").exists()  # nothing was trained
    (tmp_path / "file").write_text("")
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "file")]) == 2
    assert "file exists and is not a directory" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("out", "match", "status"),
    [
        ("file/m", r"file/m\.partial: .*file is a file, not a folder", 1),
        ("m", r"m\.partial is a file, not a folder", 1),  # what made it, not a run's directory
        (".", r"--out \. names no directory of its own: give the model directory's name", 2),
    ],
)
def test_an_out_that_cannot_be_made_is_refused_before_any_work(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    out: str,
    match: str,
    status: int,
) -> None:
    """Not after the events are simulated and their graphs built (minutes), nor with
    "PosixPath('.') has an empty name"; a refused --out is the command line's (2)."""
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    (tmp_path / "file").write_text("")
    (tmp_path / "m.partial").write_text("")
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    path = out if out == "." else str(tmp_path / out)
    assert main(["train", "--config", str(config), "--out", path]) == status
    err = capsys.readouterr().err
    assert re.search(match, err), err
    assert "train: the events" not in err


def test_a_work_directory_is_removed_only_where_a_run_left_it_and_no_run_holds_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``OUT.partial`` held by a live run (its ``.building`` locked) refuses a second run of
    the same ``--out`` (it removed the first one's checkpoints, then took one of them into
    its model); one that no run made (no ``.building``) is refused, not removed; one an
    interrupted run left is removed, none of its files in the new model."""
    import os

    from streamtrk.io.recording import exclusive_lock

    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    out, work = tmp_path / "m", tmp_path / "m.partial"
    (work / "checkpoints").mkdir(parents=True)
    (work / "checkpoints" / "epoch-160.pt").write_text("another run's")
    train = ["train", "--config", str(config), "--out", str(out), "-q"]
    assert main(train) == 2
    assert "m.partial is no folder a train run left (it holds no .building)" in (
        capsys.readouterr().err
    )
    held = exclusive_lock(work / ".building")  # a live run's
    try:
        assert main(train) == 2
        assert f"another train run is building {out} (in {work})" in capsys.readouterr().err
    finally:
        os.close(held)
    assert (work / "checkpoints" / "epoch-160.pt").read_text() == "another run's"
    assert main(train) == 0  # what that run left, it gone: removed
    assert not work.exists()
    assert "epoch-160.pt" not in [p.name for p in (out / "checkpoints").iterdir()]
    assert not (out / ".building").exists()


def test_a_lock_taken_on_a_removed_building_file_is_no_claim(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs starting together on what a third left: one locks the old ``.building``,
    removes the folder and makes its own; the other, which had opened the old file, locks it
    after (a lock is the file's, not its name's) and went on to remove the first run's new
    folder. A lock on a file that is no longer the folder's ``.building`` is refused."""
    import os

    from streamtrk.errors import SettingError
    from streamtrk.train import _claim

    work = tmp_path / "m.partial"
    work.mkdir()
    mark = work / ".building"
    old = os.open(tmp_path / "old", os.O_RDONLY | os.O_CREAT)  # opened, then removed
    os.unlink(tmp_path / "old")
    mark.write_text("")  # the first run's
    monkeypatch.setattr("streamtrk.train.exclusive_lock", lambda path: old)  # its lock taken
    with pytest.raises(SettingError, match="another train run is building"):
        _claim(mark, tmp_path / "m")
    monkeypatch.undo()
    held = _claim(mark, tmp_path / "m")  # the folder's own: claimed
    os.close(held)


def test_a_model_that_could_not_take_its_place_leaves_a_folder_the_next_run_removes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The last step (the new model taking ``--out``'s place) failing: ``OUT.partial`` keeps
    its ``.building``, so the next run removes it, where it was refused as no run's."""
    import streamtrk.train as train_module

    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    train = ["train", "--config", str(config), "--out", str(tmp_path / "m"), "-q"]

    def refused(out: Path, work: Path) -> None:
        raise PermissionError(13, "Permission denied", str(out))

    monkeypatch.setattr(train_module, "_replace_directory", refused)
    assert main(train) == 1
    assert (tmp_path / "m.partial" / ".building").exists()
    monkeypatch.undo()
    assert main(train) == 0, capsys.readouterr().err
    assert not (tmp_path / "m.partial").exists() and not (tmp_path / "m" / ".building").exists()


def test_a_model_that_finds_no_particle_does_not_replace_one(tmp_path: Path, capsys) -> None:
    """A run that diverged into a network passing no edge (lr 1000) wrote its model, exit 0,
    and with --overwrite put it in place of a working one (0% efficiency); now it fails
    saying so, --out as it was, the checkpoints kept in OUT.partial."""
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    out = tmp_path / "m"
    assert main(["train", "--config", str(config), "--out", str(out), "-q"]) == 0
    weights = (out / "weights.pt").read_bytes()
    config.write_text(TINY.replace("[optim]\n", "[optim]\nlr = 1000.0\n"))
    capsys.readouterr()
    assert main(["train", "--config", str(config), "--out", str(out), "-q", "--overwrite"]) == 1
    err = capsys.readouterr().err
    assert "the trained network finds no reconstructable particle" in err
    assert (out / "weights.pt").read_bytes() == weights
    assert any((tmp_path / "m.partial" / "checkpoints").iterdir())


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_as_the_model_takes_its_place_waits_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stop: signal.Signals
) -> None:
    """Ctrl-C or SIGTERM between the replacement's two renames left no --out (the old
    model moved aside, the new one in OUT.partial, which the next run removed): the
    replacement is the run's last step, milliseconds long, and ends."""
    import streamtrk.train as train_module

    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    replace_directory = train_module._replace_directory

    def stopped_midway(out: Path, work: Path) -> None:
        os.kill(os.getpid(), stop)
        replace_directory(out, work)

    monkeypatch.setattr(train_module, "_replace_directory", stopped_midway)
    handler = signal.getsignal(signal.SIGINT)
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "m"), "-q"]) == 0
    assert (tmp_path / "m" / "weights.pt").is_file() and not (tmp_path / "m.partial").exists()
    assert signal.getsignal(signal.SIGINT) is handler  # given back


def test_a_network_too_large_to_allocate_is_refused_before_the_events(tmp_path: Path, capsys):
    """hidden = 1,000,000 (4 TB of weights) failed with torch's traceback once the events
    were simulated and their graphs built (minutes with the shipped recipe)."""
    config = tmp_path / "huge.toml"
    config.write_text(TINY.replace("hidden = 8", "hidden = 1000000"))
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "m")]) == 1
    err = capsys.readouterr().err
    assert "error: out of memory: the [model] network cannot be allocated" in err
    assert "train: the events" not in err and "Traceback" not in err


def test_the_working_directory_is_no_out_by_any_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """``--out .`` was refused, the same folder by its path not: moved aside with the
    user's files in it and removed, the model in its place."""
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    here = tmp_path / "work" / "here"
    here.mkdir(parents=True)
    (here / "notes.txt").write_text("mine")
    monkeypatch.chdir(here)
    for out in (here, here.parent):
        args = ["train", "--config", str(config), "--out", str(out), "-q", "--overwrite"]
        assert main(args) == 2
        assert "is the working directory or holds it" in capsys.readouterr().err
    assert (here / "notes.txt").read_text() == "mine"


def test_training_shows_the_progress_of_its_long_stages(tmp_path: Path, capsys) -> None:
    """The simulation, the graphs and the evaluations have bars (with their totals), not
    only the fit: the shipped recipe spends minutes in them."""
    config = tmp_path / "tiny.toml"
    config.write_text(TINY + "[test]\nmu = 10\nseed = 13\nevents = 2\n")
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "m")]) == 0
    err = capsys.readouterr().err
    for bar in ("simulate train: 100%", "simulate validation: 100%", "simulate test: 100%",
                "graphs train: 100%", "graphs validation: 100%", "evaluate: 100%"):  # fmt: skip
        assert bar in err, bar
    # the card says how many events its physics figures are of
    assert read_card(tmp_path / "m")["metrics"]["test"]["events_with_truth"] == 2


def test_replacing_a_model_leaves_a_directory_named_like_its_old_copy(tmp_path: Path) -> None:
    """The old model is moved aside under a name of its own while the new one takes its
    place: an ``OUT.old`` of the user's (a backup) is neither removed nor replaced."""
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    out, backup = tmp_path / "m", tmp_path / "m.old"
    backup.mkdir()
    (backup / "important.txt").write_text("mine")
    train = ["train", "--config", str(config), "--out", str(out), "-q"]
    assert main(train) == 0  # a new model
    assert main([*train, "--overwrite"]) == 0  # one replaced
    assert [p.name for p in backup.iterdir()] == ["important.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "m.old", "tiny.toml"]


def test_a_symbolic_link_is_no_model_directory_to_replace(tmp_path: Path, capsys) -> None:
    """``--out current --overwrite``, ``current`` a link to a release's directory: refused
    before any work (the link became a directory and a stale ``current.old`` link stayed)."""
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "card.toml").write_text("kept")
    (tmp_path / "current").symlink_to("v1")
    args = ["train", "--config", str(config), "--out", str(tmp_path / "current"), "--overwrite"]
    assert main([*args, "-q"]) == 2
    assert (
        "current is a symbolic link (to v1): give the model a directory" in capsys.readouterr().err
    )
    assert (tmp_path / "current").is_symlink() and not (tmp_path / "current.old").exists()
    assert (tmp_path / "v1" / "card.toml").read_text() == "kept"


def test_events_past_the_memory_are_one_line_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``events = 9223372036854775807``: the list of events could not be allocated, and a
    MemoryError traceback ended the command."""
    config = tmp_path / "c.toml"
    config.write_text(TINY.replace("events = 1\n", "events = 9223372036854775807\n"))
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "m"), "-q"]) == 1
    err = capsys.readouterr().err
    assert "streamtrk train: error: out of memory" in err and "Traceback" not in err
    assert not (tmp_path / "m").exists() and not (tmp_path / "m.partial").exists()


def test_the_card_names_the_best_finite_epoch_after_a_nan_one(tmp_path: Path, monkeypatch) -> None:
    """The first epoch's validation loss NaN: the card's best epoch and validation metrics
    are of the epoch whose weights were kept, not of the NaN one."""
    from streamtrk.train import loop

    calls: list[int] = []
    validate = loop.validate

    def first_nan(*args, **kwargs):
        calls.append(1)
        v = validate(*args, **kwargs)
        return v | {"loss": float("nan")} if len(calls) == 1 else v

    monkeypatch.setattr(loop, "validate", first_nan)
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "m"), "-q"]) == 0
    card = read_card(tmp_path / "m")
    assert card["training"]["best_epoch"] == 1  # of two: the only finite one
    assert np.isfinite(card["metrics"]["validation"]["val_loss"])


def test_a_recording_holding_more_events_than_asked_gives_its_first(tmp_path: Path) -> None:
    args = ["simulate", "--events", "2", "--mu", "2", "--seed", "11", "-q"]
    assert main([*args, "-o", str(tmp_path / "r.stk")]) == 0
    events = EventSource(recording=str(tmp_path / "r.stk"), events=1).load(load_detector())
    assert [ev.event for ev in events] == [0]


def test_one_particle_of_unknown_momentum_does_not_hide_a_shared_event() -> None:
    """The particles whose momenta are known are compared: a NaN momentum on one particle
    of the same seed with a hard scatter added still shares the pile-up with the plain one."""
    from streamtrk.event import Particles
    from streamtrk.sim.generator import GeneratorConfig
    from streamtrk.sim.simulate import SimConfig, simulate
    from streamtrk.train import check_no_shared_events

    det = load_detector()
    [plain] = EventSource(mu=10, seed=11, events=1).load(det)
    [hard] = simulate(det, SimConfig(GeneratorConfig(mu=10, hard_scatter=3)), 11, 1)
    assert hard.truth is not None
    cols = dict(hard.truth.particles.columns())
    cols["px"] = cols["px"].copy()
    cols["px"][0] = np.nan
    hard = replace(hard, truth=replace(hard.truth, particles=Particles(**cols)))
    with pytest.raises(ValueError, match=r"\[train\] event .* and \[test\] event .* share"):
        check_no_shared_events({"train": [plain], "test": [hard]})


def test_the_test_events_are_scored_at_the_chosen_threshold_and_the_loss_edges_counted(
    tmp_path: Path, monkeypatch
) -> None:
    """The card's test metrics are those at the threshold chosen on the validation events
    (not a fixed 0.5), and train_edges_in_loss counts the counted edges alone: fewer than
    the training graphs' edges (softer segments are out of the loss)."""
    import streamtrk.train as training

    seen: list[float] = []
    evaluate_model = training.evaluate_model

    def spy(model, events, cfg, threshold, progress=False):
        seen.append(threshold)
        return evaluate_model(model, events, cfg, threshold, progress)

    monkeypatch.setattr(training, "evaluate_model", spy)
    config = tmp_path / "tiny.toml"
    config.write_text(TINY + "\n[test]\nmu = 10\nseed = 13\nevents = 1\n")
    card = training.train(load_config(config), tmp_path / "m", progress=False)
    assert seen == [card["model"]["threshold"]] and seen[0] in (0.4, 0.6)
    t = card["training"]
    assert 0 < t["train_edges_in_loss"] < t["train_edges"]


def test_a_config_is_required_as_the_command_line_says(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No --config: argparse's refusal (exit status 2, naming the option), not a traceback."""
    with pytest.raises(SystemExit) as stop:
        main(["train", "--out", str(tmp_path / "m"), "-q"])
    assert stop.value.code == 2
    assert "the following arguments are required: --config" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_without_out_the_model_is_models_slash_the_recipes_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--out left out: models/<config name> under the working directory (models/ made where
    there is none), which the summary names and the card's reproduce command gives as its
    --out (run again, the same place)."""
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", str(config), "-q"]) == 0
    assert (tmp_path / "models" / "tiny" / "weights.pt").is_file()
    assert json.loads(capsys.readouterr().out)["model"] == str(Path("models") / "tiny")
    command = read_card(tmp_path / "models" / "tiny")["reproduce"]["command"]
    assert shlex.split(command) == [
        "streamtrk", "train", "--config", str(config), "--out", "models/tiny"
    ]  # fmt: skip


def test_the_reproduce_command_is_the_command_line_quoted_for_a_shell(tmp_path: Path) -> None:
    """The card's command, split as a shell splits it, is the run's own (a directory with a
    space in its name one argument, --torch-threads kept), so that it can be pasted back."""
    config = tmp_path / "my recipe.toml"
    config.write_text(TINY)
    out = tmp_path / "my model"
    args = ["--config", str(config), "--out", str(out), "--torch-threads", "1"]
    assert main(["train", *args, "-q"]) == 0
    assert shlex.split(read_card(out)["reproduce"]["command"]) == ["streamtrk", "train", *args]


def test_the_summary_is_the_cards_in_strict_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """stdout is the model's directory, its threshold, total seconds and all its metrics as
    the card has them; a rate of no tracks (NaN in the card) is null, not JSON's NaN."""
    config = tmp_path / "tiny.toml"
    config.write_text(  # test events of almost no particles: no tracks, their rates undefined
        TINY + "[test]\nmu = 0.01\nseed = 13\nevents = 1\n"
    )
    out = tmp_path / "m"
    assert main(["train", "--config", str(config), "--out", str(out), "-q"]) == 0

    def refused(constant: str) -> None:
        raise AssertionError(f"{constant} in strict JSON")

    summary = json.loads(capsys.readouterr().out, parse_constant=refused)
    card = read_card(out)
    assert summary["model"] == str(out) and summary["threshold"] == card["model"]["threshold"]
    assert summary["seconds"] == card["training"]["seconds_total"]
    assert summary["metrics"].keys() == card["metrics"].keys() == {"validation", "test"}
    assert summary["metrics"]["validation"] == card["metrics"]["validation"]
    assert math.isnan(card["metrics"]["test"]["fake_rate"])
    assert summary["metrics"]["test"]["fake_rate"] is None


def test_quiet_training_names_no_stage_and_draws_no_bar(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """-q: stderr holds the thread count alone, no stage lines, epochs or progress bars."""
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "m"), "-q"]) == 0
    err = capsys.readouterr().err
    assert err == "streamtrk train: torch threads 1 (the recipe's)\n", err


@pytest.mark.parametrize("asked", ["recipe", "0", "more"])
def test_torch_threads_are_the_recipes_unless_asked_and_the_callers_after(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], asked: str
) -> None:
    """Without --torch-threads the recipe's count (said on stderr); with N, N (0: this
    machine's CPUs) in its place, in the card and in its reproduce command; either way the
    caller's torch thread count is as it was after the run."""
    cpus, _ = available_cpus()
    recipe, caller = cpus + 2, cpus + 3  # neither the machine's nor each other's
    config = tmp_path / "tiny.toml"
    config.write_text(f"threads = {recipe}\n" + TINY)
    args = ["train", "--config", str(config), "--out", str(tmp_path / "m"), "-q"]
    flag = {"recipe": [], "0": ["--torch-threads", "0"], "more": ["--torch-threads", str(cpus + 1)]}
    expected = {"recipe": recipe, "0": cpus, "more": cpus + 1}[asked]
    before = torch.get_num_threads()
    torch.set_num_threads(caller)
    try:
        assert main([*args, *flag[asked]]) == 0
        assert torch.get_num_threads() == caller
    finally:
        torch.set_num_threads(before)
    card = read_card(tmp_path / "m")
    assert card["training"]["threads"] == expected
    assert shlex.split(card["reproduce"]["command"])[6:] == flag[asked]
    err = capsys.readouterr().err
    if asked == "recipe":
        assert f"streamtrk train: torch threads {recipe} (the recipe's)" in err
    else:
        assert f"streamtrk train: torch threads {expected} (" in err


def test_an_out_of_dot_dot_is_refused_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--out ..`` (or ``models/..``) names the directory above, no model's own: refused as
    ``.`` is, not taken for a directory to replace."""
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    for out in ("..", "models/.."):
        assert main(["train", "--config", str(config), "--out", out]) == 2
        err = capsys.readouterr().err
        assert f"--out {out} names no directory of its own" in err, err
        assert "train: the events" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here", "tiny.toml"]


@pytest.mark.parametrize("inside", ["config", "recording"])
def test_a_recipe_or_its_input_inside_out_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], inside: str
) -> None:
    """``--out DIR --overwrite`` with the recipe (or a recording it reads) in DIR: the new
    model replaced DIR whole, the recipe gone with it (the card's reproduce command named
    a file no longer there). Refused before any work, exit status 2, DIR as it was."""
    out = tmp_path / "m"
    out.mkdir()
    config = (out if inside == "config" else tmp_path) / "tiny.toml"
    text = TINY
    if inside == "recording":
        recording = out / "train.stk"
        assert main(["simulate", "--events", "2", "--mu", "10", "-q", "-o", str(recording)]) == 0
        text = TINY.replace(
            "[train]\nmu = 10\nseed = 11\n", f'[train]\nrecording = "{recording}"\n'
        )
    config.write_text(text)
    before = sorted(p.name for p in out.iterdir())
    capsys.readouterr()
    assert main(["train", "--config", str(config), "--out", str(out), "-q", "--overwrite"]) == 2
    read = config if inside == "config" else out / "train.stk"
    assert f"{read} is inside --out {out}, which the new model replaces" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before


def test_an_empty_directory_is_taken_without_overwrite(tmp_path: Path) -> None:
    """Only a directory that holds anything needs --overwrite: one made empty for the model
    (mkdir first, a mount point) is written into."""
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    (tmp_path / "m").mkdir()
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "m"), "-q"]) == 0
    assert (tmp_path / "m" / "weights.pt").is_file()


def test_a_work_directory_that_is_a_symbolic_link_is_refused_not_removed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``OUT.partial`` a link to a folder holding a ``.building``: no folder a run left
    (status 2, its target kept), not a failed rmtree (status 1)."""
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / ".building").write_text("")
    (tmp_path / "m.partial").symlink_to("elsewhere")
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "m"), "-q"]) == 2
    assert "m.partial is no folder a train run left" in capsys.readouterr().err
    assert (tmp_path / "m.partial").is_symlink()
    assert [p.name for p in (tmp_path / "elsewhere").iterdir()] == [".building"]


def test_an_interrupted_run_that_wrote_nothing_leaves_no_work_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C (or SIGTERM) before anything is written in ``OUT.partial``: it is removed as
    after a failure (exit status 130), not left with its ``.building`` alone."""
    import streamtrk.train as train_module

    config = tmp_path / "tiny.toml"
    config.write_text(TINY)

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "_train", interrupted)
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "m"), "-q"]) == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.toml"]
