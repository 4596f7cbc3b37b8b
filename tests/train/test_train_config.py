"""Training recipes: parsing, refusals of settings and of splits that share events."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from train_helpers import REPO, TINY

from streamtrk.detector import load_detector
from streamtrk.errors import SettingError
from streamtrk.recon.model import DEFAULT_MODEL_NAME
from streamtrk.threads import MAX_TORCH_THREADS
from streamtrk.train import EventSource, load_config


def test_shipped_config_parses() -> None:
    cfg = load_config(REPO / "models" / "configs" / "default.toml")
    assert cfg.name == DEFAULT_MODEL_NAME
    assert cfg.test is not None
    assert cfg.train.seed not in (cfg.val.seed, cfg.test.seed)


def test_a_config_may_start_with_a_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"  # as some editors save UTF-8
    path.write_bytes(b"\xef\xbb\xbf" + TINY.encode())
    assert load_config(path).model.hidden == 8


def test_unknown_config_key_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(TINY.replace("[optim]", "[optim]\nlearning_rate = 1"))
    with pytest.raises(SettingError, match="learning_rate"):
        load_config(path)
    path.write_text(TINY.replace("seed = 3", "seeds = 3"))
    with pytest.raises(SettingError, match=r"unknown keys seeds \(did you mean seed\?\)"):
        load_config(path)


@pytest.mark.parametrize(
    ("edit", "new", "match"),
    [
        ("thresholds = [0.4, 0.6]", "thresholds = 0.5", "thresholds must be tuple"),
        ("epochs = 2", 'epochs = "two"', r"\[optim\]: epochs must be int, got 'two'"),
        ('name = "tiny"', "name = 5", "name must be str, got 5"),
        ("seed = 3", "seed = 3\nthreads = 100000", "threads must be 1 to 4096"),
        # ranges, refused before any event is simulated or any weight trained
        *[
            ("thresholds = [0.4, 0.6]", f"thresholds = {v}", r"thresholds must be one or more")
            for v in ("[2.0]", "[]", "[nan]", "[0.5, 1.0]", "[0.4, 0.6, 0.4]")
        ],
        ("epochs = 2", "epochs = 0", r"\[optim\]: epochs must be >= 1, got 0"),
        ("sectors = 2", "sectors = 0", r"\[optim\]: sectors must be >= 1"),
        *[
            ("warmup_steps = 2", f"warmup_steps = 2\n{k} = {v}", rf"{k} must be a finite number")
            for k, v in (("grad_clip", -1.0), ("pos_weight", -3.0), ("lr", 0.0), ("lr", "inf"))
        ],
        ("hidden = 8", "hidden = 0", r"\[model\]: hidden must be >= 1, got 0"),
        ("steps = 2", "steps = 2\nnode_in = 4", r"node_in must be 3 \(the graph's\)"),
        ('name = "tiny"', 'name = ""', "name must be a directory name"),
        ('name = "tiny"', 'name = "../x"', "name must be a directory name"),
        ("seed = 3", "seed = -5", "seed must be >= 0, got -5"),
        ("events = 2", "events = 0", r"\[train\]: events must be 1 to \d+, got 0"),
        ("events = 2", "events = 99999999999999999999", r"\[train\]: events must be 1 to \d+, got"),
        # the simulation's own ranges, refused before the training events are simulated
        *[
            ("[val]\nmu = 10", f"[val]\n{setting}", rf"\[val\]: {message}")
            for setting, message in (
                ("mu = -1.0", r"mu must be > 0 and at most 10000, got -1.0"),
                ("mu = nan", r"mu must be > 0"),
                ("mu = 10\nnoise = 1.5", r"noise must be in \[0, 0.99\], got 1.5"),
                ("mu = 10\nnoise = 0.995", r"noise must be in \[0, 0.99\], got 0.995"),
            )
        ],
        ("[model]", "[model", r"c.toml: not valid TOML \(Expected ']'"),
        # past tomllib's own limits: an integer's digits (ValueError), nesting (RecursionError)
        ("seed = 3", f"seed = {'9' * 5000}", r"c.toml: not valid TOML \(Exceeds the limit"),
        ("seed = 3", f"seed = {'[' * 3000}{']' * 3000}", r"c.toml: not valid TOML \(maximum rec"),
        # a report labelled as the card's own metrics would overwrite them
        *[
            ("[val]", f'[report]\n{label} = "r.stk"\n[val]', r"report must be labels other than")
            for label in ("test", "validation")
        ],
        ("[val]", "[report]\nreal = 5\n[val]", r"report real must be a path \(a string\), got 5"),
        ("[val]", '[report.real]\npath = "r.stk"\n[val]', r"report real must be a path"),
        ('name = "tiny"', 'name = "t\xe9"', r"c.toml: not valid TOML \('utf-8' codec"),
        ("warmup_steps = 2", "warmup_steps = 2\nlr_min = 0.01", r"lr_min must be in \[0, lr\]"),
        ("warmup_steps = 2", "warmup_steps = 2\npatience = 0", r"patience must be >= 1, got 0"),
        ("warmup_steps = 2", "warmup_steps = 2\nsector_margin = 4.0", r"sector_margin must be in"),
        *[('name = "tiny"', f'name = "{n}"', "name must be a directory name") for n in (".", "..")],
        ('name = "tiny"\n', "", r"c.toml: a config needs a name"),
        ('name = "tiny"', 'name = "tiny"\nreport = "r.stk"', "report must be a table of label"),
        # each bound on its own side: a negative lr_min, an infinite clip, weight or pT_min,
        # no threads, a backslash in the name (a Windows path separator)
        ("warmup_steps = 2", "warmup_steps = 2\nlr_min = -0.0001", r"lr_min must be in \[0, lr\]"),
        *[
            ("warmup_steps = 2", f"warmup_steps = 2\n{k} = inf", rf"{k} must be a finite number")
            for k in ("grad_clip", "pos_weight")
        ],
        ("seed = 3", "seed = 3\npt_min = inf", r"pt_min must be a finite number >= 0"),
        ("seed = 3", "seed = 3\nthreads = 0", r"threads must be 1 to \d+, got 0"),
        ('name = "tiny"', 'name = "a\\\\b"', "name must be a directory name"),
    ],
)
def test_settings_of_the_wrong_type_or_range_are_refused(
    tmp_path: Path, edit: str, new: str, match: str
) -> None:
    path = tmp_path / "c.toml"
    path.write_bytes(TINY.replace(edit, new, 1).encode("latin-1"))  # latin-1: not UTF-8
    with pytest.raises(SettingError, match=match):
        load_config(path)


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ("[test]\nseed = 11\n", r"\[train\] and \[test\] would share events \(the same seed 11\)"),
        (
            '[val]\nrecording = "r.stk"\n[test]\nrecording = "r.stk"\n',
            r"\[val\] and \[test\] would share events \(the same recording 'r.stk'\)",
        ),
    ],
)
def test_splits_that_would_share_events_are_refused(tmp_path: Path, extra: str, match: str):
    path = tmp_path / "c.toml"
    text = TINY.replace("[val]\nmu = 10\nseed = 12\nevents = 1\n", "") if "[val]" in extra else TINY
    path.write_text(text + extra)
    with pytest.raises(SettingError, match=match):
        load_config(path)


def test_a_config_that_cannot_be_read_is_refused_as_a_setting(tmp_path: Path) -> None:
    """Exit status 2, as the daemon's configuration file (it was 1: an OSError); a FIFO is
    refused before a read that would wait for a writer."""
    os.mkfifo(tmp_path / "fifo")
    for path, why in (
        (tmp_path / "absent.toml", "cannot read config file .*absent.toml: No such file"),
        (tmp_path, f"config file {tmp_path} is not a regular file"),
        (tmp_path / "fifo", "fifo is not a regular file"),
    ):
        with pytest.raises(SettingError, match=why):
            load_config(path)


def test_pruning_windows_that_cannot_be_read_are_refused_with_the_recipe(tmp_path: Path) -> None:
    """Before any event is simulated (they were refused after all the splits were made)."""
    path = tmp_path / "c.toml"
    path.write_text(TINY + f'[prune]\nwindows = "{tmp_path / "none.toml"}"\n')
    with pytest.raises(SettingError, match=r"\[prune\].*cannot read pruning windows .*none\.toml"):
        load_config(path)
    path.write_text(
        TINY + '[prune]\nwindows = "none.toml"\n'
    )  # meant here, looked for in the package
    with pytest.raises(SettingError, match=r"none\.toml: .*; \./none\.toml for a file here\)"):
        load_config(path)


def test_the_card_records_what_each_source_of_events_was() -> None:
    recorded = EventSource(recording="r.stk", events=3)
    assert recorded.card() == {"recording": "r.stk", "events": 3}  # no mu or seed unused
    assert EventSource(mu=5, seed=7).card() == {"mu": 5, "seed": 7, "events": 1, "noise": 0.19}


def test_settings_at_the_edges_of_their_ranges_are_taken(tmp_path: Path) -> None:
    """The generator's largest MU, no noise, no warm-up, every segment a target (pT_min 0):
    each in range, each as given."""
    path = tmp_path / "c.toml"
    text = TINY.replace("seed = 3", "seed = 3\npt_min = 0.0").replace(
        "warmup_steps = 2", "warmup_steps = 0"
    )
    path.write_text(text.replace("[val]\nmu = 10", "[val]\nmu = 10000\nnoise = 0.0"))
    cfg = load_config(path)
    assert (cfg.pt_min, cfg.optim.warmup_steps, cfg.val.mu, cfg.val.noise) == (0, 0, 10000, 0)
    path.write_text(TINY.replace("seed = 3", "seed = 3\npt_min = 0.5"))
    assert load_config(path).pt_min == 0.5


def test_the_inclusive_ends_of_the_optim_and_thread_ranges_are_taken(tmp_path: Path) -> None:
    """lr_min may equal lr (a constant rate after the warm-up), the sector margin may be 0,
    and the threads may be the most torch takes."""
    path = tmp_path / "c.toml"
    text = TINY.replace("seed = 3", f"seed = 3\nthreads = {MAX_TORCH_THREADS}").replace(
        "warmup_steps = 2", "warmup_steps = 2\nlr = 0.002\nlr_min = 0.002\nsector_margin = 0.0"
    )
    path.write_text(text)
    cfg = load_config(path)
    assert (cfg.threads, cfg.optim.lr_min, cfg.optim.sector_margin) == (
        MAX_TORCH_THREADS,
        0.002,
        0.0,
    )


def test_simulated_events_are_made_at_the_sources_mu() -> None:
    """MU is the simulation's pile-up: ten times the MU, several times the hits (it was not
    passed on, every source simulated at the generator's default)."""
    det = load_detector()
    [low] = EventSource(mu=5, seed=1, noise=0.0).load(det)
    [high] = EventSource(mu=50, seed=1, noise=0.0).load(det)
    assert len(high.hits) > 3 * len(low.hits)


def test_simulated_events_carry_the_sources_noise() -> None:
    """The noise fraction is the simulation's: noise adds hits to the same crossing."""
    det = load_detector()
    [clean] = EventSource(mu=5, seed=1, noise=0.0).load(det)
    [noisy] = EventSource(mu=5, seed=1, noise=0.5).load(det)
    assert len(noisy.hits) > len(clean.hits)
