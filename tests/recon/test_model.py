"""Model directories: card round trip, refusal of mismatched models, the shipped model."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
import zipfile
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch

from streamtrk.recon import model as model_module
from streamtrk.recon.buckets import PRUNED_EDGES_PER_NODE, UNPRUNED_EDGES_PER_NODE
from streamtrk.recon.card import ModelCardError, model_card
from streamtrk.recon.engine import EngineScorer
from streamtrk.recon.gnn import GNNConfig, InteractionNetwork
from streamtrk.recon.graph import GraphConfig
from streamtrk.recon.load import ChainSettings, load_reconstructor
from streamtrk.recon.model import (
    CARD,
    DEFAULT_MODEL_NAME,
    WEIGHTS,
    default_model_path,
    load_model,
    model_missing,
    read_card,
    save_model,
    shipped_model_path,
)
from streamtrk.recon.prune import MODEL_WINDOWS_FILE, WINDOWS_FILE, PruneConfig
from streamtrk.recon.tracks import TrackConfig

ARCH = GNNConfig(hidden=8, edge_hidden=4, steps=2)


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, InteractionNetwork]:
    torch.manual_seed(0)
    model = InteractionNetwork(ARCH)
    card = model_card("test", ARCH, GraphConfig(), 0.7, metrics={"sim": {"eff": 0.9}})
    save_model(tmp_path / "m", model, card)
    return tmp_path / "m", model


def test_model_round_trip(saved: tuple[Path, InteractionNetwork]) -> None:
    path, model = saved
    assert sorted(p.name for p in path.iterdir()) == ["card.toml", "weights.pt"]  # no .partial
    loaded, card = load_model(path)
    assert card["model"]["name"] == "test" and card["metrics"]["sim"]["eff"] == 0.9
    assert loaded.config == ARCH
    for a, b in zip(loaded.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    rec = load_reconstructor(path)
    assert rec.threshold == 0.7 and rec.graph_config == GraphConfig()
    assert load_reconstructor(path, threshold=0.4).threshold == 0.4


def test_a_failed_save_leaves_the_model_there_as_it_was(
    saved: tuple[Path, InteractionNetwork], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = saved
    before = {p.name: p.read_bytes() for p in path.iterdir()}

    def disk_full(obj: object, f: Path) -> None:
        Path(f).write_bytes(b"half a file")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(model_module, "save_torch", disk_full)
    card = model_card("other", ARCH, GraphConfig(), 0.5)
    with pytest.raises(OSError, match="No space left"):
        save_model(path, InteractionNetwork(ARCH), card)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before


def test_pruning_and_track_settings_round_trip(tmp_path: Path) -> None:
    prune = PruneConfig(scale=2.0, min_hits=3)
    tracks = TrackConfig(stitch_threshold=0.1, min_hits=4, max_chi2_ndf=3.0, max_d0=1.0)
    card = model_card("t", ARCH, GraphConfig(), 0.5, prune=prune, tracks=tracks)
    save_model(tmp_path / "m", InteractionNetwork(ARCH), card)
    rec = load_reconstructor(tmp_path / "m")
    assert rec.prune == prune and rec.tracks == tracks
    # A model made before pruning and track cuts: unpruned graphs, the plain chain.
    save_model(
        tmp_path / "old", InteractionNetwork(ARCH), model_card("o", ARCH, GraphConfig(), 0.5)
    )
    old = load_reconstructor(tmp_path / "old")
    assert old.prune is None and old.tracks == TrackConfig()
    # Warm-up shapes paired for the graphs each chain scores.
    assert isinstance(rec.scorer, EngineScorer) and isinstance(old.scorer, EngineScorer)
    assert rec.scorer.buckets.edges_per_node == PRUNED_EDGES_PER_NODE
    assert old.scorer.buckets.edges_per_node == UNPRUNED_EDGES_PER_NODE
    _edit_card(tmp_path / "m", "stitch_threshold = 0.1", "stitch_treshold = 0.1")
    with pytest.raises(ModelCardError, match=r"\[tracks\].*stitch_treshold") as refused:
        load_reconstructor(tmp_path / "m")
    assert str(refused.value).startswith(f"{tmp_path / 'm' / 'card.toml'}: model card [tracks]")


def test_pruning_windows_are_looked_for_beside_the_card(tmp_path: Path) -> None:
    """A model directory may carry its own windows; a name the card gives is looked for there
    first, and one found nowhere refuses the model at load, not at the first event."""
    shipped = resources.files("streamtrk.data").joinpath(WINDOWS_FILE).read_text()
    card = model_card("w", ARCH, GraphConfig(), 0.5, prune=PruneConfig(windows="own.toml"))
    save_model(tmp_path / "m", InteractionNetwork(ARCH), card)
    with pytest.raises(ModelCardError, match=r"\[prune\].*own\.toml"):
        load_reconstructor(tmp_path / "m")
    (tmp_path / "m" / "own.toml").write_text(shipped)
    rec = load_reconstructor(tmp_path / "m")
    assert rec.prune is not None and rec.prune.windows == str(tmp_path / "m" / "own.toml")
    # The package's file of the same name is not the one used while the model has its own.
    card = model_card("p", ARCH, GraphConfig(), 0.5, prune=PruneConfig())
    save_model(tmp_path / "p", InteractionNetwork(ARCH), card)
    assert load_reconstructor(tmp_path / "p").prune == PruneConfig()
    (tmp_path / "p" / WINDOWS_FILE).write_text(shipped)
    prune = load_reconstructor(tmp_path / "p").prune
    assert prune is not None
    assert prune.windows == str(tmp_path / "p" / WINDOWS_FILE)


def test_pruning_windows_that_are_no_regular_file_are_refused(tmp_path: Path) -> None:
    """A card from a hostile source naming /dev/zero (read until memory runs out) or a FIFO
    (read forever) as its windows: refused unread, as /dev/null is here."""
    card = model_card("w", ARCH, GraphConfig(), 0.5, prune=PruneConfig(windows="/dev/null"))
    save_model(tmp_path / "m", InteractionNetwork(ARCH), card)
    with pytest.raises(ModelCardError, match=r"\[prune\]: windows /dev/null is not a regular file"):
        load_reconstructor(tmp_path / "m")


def test_the_shipped_card_prunes_stitches_and_joins_doubles(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("STREAMTRK_MODEL", raising=False)
    card = read_card(default_model_path())
    rec = load_reconstructor()
    assert rec.prune == PruneConfig(**card["prune"]) and rec.prune.min_hits == 4
    assert rec.tracks.stitch_threshold == card["tracks"]["stitch_threshold"] is not None
    assert rec.tracks.join_doubles is card["tracks"]["join_doubles"] is True
    assert card["metrics"]["test"]["gnn_edge_efficiency"] > 0.98  # measured on pruned graphs


def _edit_card(path: Path, edit: str, new: str) -> None:
    text = (path / CARD).read_text()
    assert edit in text
    (path / CARD).write_text(text.replace(edit, new))


@pytest.mark.parametrize(
    ("edit", "new", "message"),
    [
        ("feature_version = 1", "feature_version = 99", "features version 99"),
        ("card_format = 1", "card_format = 2", "card format 2"),
        ("card_format = 1", "card_format = true", "card format True"),
        ("feature_version = 1", "feature_version = true", "features version True"),
        ("threshold = 0.7", "threshold = false", r"threshold must be a number .* got False"),
        ("feature_version = 1", 'feature_version = "1"', "features version '1'"),
        ("threshold = 0.7", 'threshold = "0.7"', r"threshold must be a number in \[0, 1\)"),
        ("steps = 2\n", "", r"missing \['steps'\]"),
        ("n_bins = ", "n_bins_old = ", r"\[graph\].*unknown \['n_bins_old'\]"),
        ("edge_in = 6", "edge_in = 7", r"edge_in must be 6 \(the graph's\), got 7"),
        ("threshold = 0.7", "threshold = 1.5", "threshold"),
        ("pt_min = 1.0", "pt_min = 0.0", r"\[graph\].*pt_min must be a finite number > 0, got 0"),
        ("n_phi_bins = 256", "n_phi_bins = 0", r"n_phi_bins must be >= 1, got 0"),
        ("steps = 2\n", 'steps = "2"\n', r"\[architecture\]: steps must be int, got '2'"),
    ],
)
def test_mismatched_card_refused(
    saved: tuple[Path, InteractionNetwork], edit: str, new: str, message: str
) -> None:
    path, _ = saved
    _edit_card(path, edit, new)
    with pytest.raises(ModelCardError, match=message):
        load_reconstructor(path)


def test_weights_of_another_size_refused(saved: tuple[Path, InteractionNetwork]) -> None:
    path, _ = saved
    torch.save(
        InteractionNetwork(GNNConfig(hidden=16, edge_hidden=4, steps=2)).state_dict(),
        path / WEIGHTS,
    )
    with pytest.raises(ModelCardError, match=r"weights\.pt does not match the architecture"):
        load_model(path)


@pytest.mark.parametrize(
    ("edit", "new"),
    [("hidden = 8", "hidden = 1000000"), ("steps = 2\n", "steps = 200000\n")],
)
def test_a_card_claiming_a_huge_network_is_refused_before_it_is_built(
    saved: tuple[Path, InteractionNetwork], edit: str, new: str
) -> None:
    """A hostile or garbled card cannot make the loader allocate the network it names (4 TB
    of weights; 200,000 steps: minutes and gigabytes): the weights' shapes are compared first."""
    path, _ = saved
    _edit_card(path, edit, new)
    with pytest.raises(ModelCardError, match=r"weights\.pt does not match the architecture"):
        load_model(path)


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        ("zip_not_torch", r"weights\.pt: cannot be read as a torch state dict"),
        ("nan_weights", r"weights\.pt: not finite in"),
        ("card_not_toml", r"card\.toml: not valid TOML"),
        ("card_not_utf8", r"card\.toml: not valid TOML \('utf-8' codec"),
        ("card_wrong_type", r"card\.toml: "),
    ],
)
def test_a_broken_model_directory_is_named(
    saved: tuple[Path, InteractionNetwork], spoil: str, message: str
) -> None:
    path, model = saved
    if spoil == "zip_not_torch":  # a whole zip, as torch.save writes (a cut one: below)
        with zipfile.ZipFile(path / WEIGHTS, "w") as z:
            z.writestr("data.txt", "not a state dict")
    elif spoil == "nan_weights":
        state = {k: torch.full_like(v, float("nan")) for k, v in model.state_dict().items()}
        torch.save(state, path / WEIGHTS)
    elif spoil == "card_not_toml":
        (path / "card.toml").write_text("[model\n")
    elif spoil == "card_not_utf8":  # saved as Latin-1 by an editor
        (path / CARD).write_bytes((path / CARD).read_bytes().replace(b'"test"', b'"t\xe9st"'))
    else:
        _edit_card(path, "hidden = 8", 'hidden = "8"')
    with pytest.raises(ModelCardError, match=message):
        load_model(path)


def test_missing_model_explains(tmp_path: Path) -> None:
    with pytest.raises(
        FileNotFoundError,
        match=r"no model at .*nothing \(no such directory; a model holds card.toml and "
        r"weights.pt\): check the path \(the shipped model is .*\), or train one there with "
        r"`streamtrk train --config models/configs/default.toml --out .*nothing`$",
    ):
        load_reconstructor(tmp_path / "nothing")


def test_weights_cut_short_are_no_model(saved: tuple[Path, InteractionNetwork]) -> None:
    """A copy cut short (a full disk): said before anything loads it, so that serve refuses
    it before its sockets bind (exit 2) and --print-config warns of it."""
    path, _ = saved
    weights = path / "weights.pt"
    os.truncate(weights, weights.stat().st_size // 2)
    assert model_missing(path) == (
        f"{weights} is not a whole torch file (cut short in a copy?): copy the model again, "
        "or train it again"
    )


@pytest.mark.parametrize("name", ["weights.pt", "card.toml"])
def test_a_model_file_that_is_no_regular_file_is_named_so(
    saved: tuple[Path, InteractionNetwork], name: str
) -> None:
    """A folder (or a FIFO) where the file belongs: said as what it is, not an
    IsADirectoryError, nor "missing" (it was: the folder is there to see)."""
    path, _ = saved
    (path / name).unlink()
    (path / name).mkdir()
    assert model_missing(path) == f"{path / name} is not a regular file: a model's {name} is one"


def test_a_card_with_a_byte_order_mark_is_read(saved: tuple[Path, InteractionNetwork]) -> None:
    path, _ = saved
    (path / CARD).write_bytes(b"\xef\xbb\xbf" + (path / CARD).read_bytes())
    assert read_card(path)["model"]["name"] == "test"


def test_load_reconstructor_says_why_a_device_cannot_run() -> None:
    from streamtrk.recon.device import cuda_unavailable

    if (why := cuda_unavailable()) is None:
        pytest.skip("this machine runs device=cuda")
    with pytest.raises(ValueError, match=f"^device cuda: {re.escape(why)}$"):
        load_reconstructor(device="cuda")  # not torch's bare AssertionError
    assert load_reconstructor(device="auto").device == "cpu"


def test_weights_in_torchs_older_format_load(saved: tuple[Path, InteractionNetwork]) -> None:
    """torch.save's format before its zip one (``_use_new_zipfile_serialization=False``) is
    no zip, and whole: loaded, not refused as cut short."""
    path, model = saved
    torch.save(model.state_dict(), path / "weights.pt", _use_new_zipfile_serialization=False)
    assert model_missing(path) is None
    loaded, _ = load_model(path)
    for a, b in zip(loaded.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_model_lacking_a_file_is_said_so(saved: tuple[Path, InteractionNetwork]) -> None:
    """The file that is missing is named, and the training suggested would replace what is
    there (without --overwrite, train refuses a directory that is not empty)."""
    path, _ = saved
    (path / "weights.pt").unlink()
    with pytest.raises(FileNotFoundError) as e:
        read_card(path)
    assert f"no model at {path} (weights.pt missing; a model holds" in str(e.value)
    assert str(e.value).endswith(f"--out {path} --overwrite`")


def test_a_folder_of_other_files_is_not_suggested_for_overwrite(tmp_path: Path) -> None:
    """``--model keys/`` (a folder of certificates): the suggested ``train --out keys
    --overwrite`` would have deleted them."""
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "daemon.key").write_text("a certificate")
    why = model_missing(tmp_path / "keys")
    assert why is not None and "--overwrite" not in why
    assert why.endswith(f"--out NEW_FOLDER` ({tmp_path / 'keys'} holds other files)")
    (tmp_path / "empty").mkdir()
    assert str(model_missing(tmp_path / "empty")).endswith(f"--out {tmp_path / 'empty'}`")


def test_a_model_s_file_given_for_its_directory_is_named(
    saved: tuple[Path, InteractionNetwork],
) -> None:
    """Not "train one with ... --out DIR/weights.pt"."""
    path, _ = saved
    with pytest.raises(
        FileNotFoundError,
        match=rf"weights.pt is a file: a model is the .*\({re.escape(str(path))}\?\)$",
    ):
        read_card(path / "weights.pt")


def test_env_var_selects_model(
    saved: tuple[Path, InteractionNetwork], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = saved
    monkeypatch.setenv("STREAMTRK_MODEL", str(path))
    assert default_model_path() == path
    assert load_reconstructor().threshold == 0.7


def test_shipped_model_reconstructs(monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import replace

    from streamtrk.detector import load_detector
    from streamtrk.eval.evaluate import evaluate
    from streamtrk.sim.generator import GeneratorConfig
    from streamtrk.sim.simulate import SimConfig, simulate

    monkeypatch.delenv("STREAMTRK_MODEL", raising=False)
    card = read_card(default_model_path())
    rec = load_reconstructor()
    assert rec.threshold == card["model"]["threshold"]
    cfg = SimConfig(generator=replace(GeneratorConfig(), mu=50))
    report = evaluate(rec, simulate(load_detector(), cfg, 4242, 1)).report()
    # One event (about 150 target particles): a floor a little under the card's figures.
    assert report["tracking_efficiency"] >= 0.93
    assert report["fake_rate"] <= 0.05
    assert report["duplicate_rate"] <= 0.05


def test_the_shipped_chain_scores_graphs_of_the_warm_up_ratio(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The network sees the pruned graph less its hits without an edge, about
    PRUNED_EDGES_PER_NODE edges a hit: graphs of that ratio, of any size up to the top node
    bucket, pad to the shapes the warm-up runs."""
    from dataclasses import replace

    from streamtrk.detector import load_detector
    from streamtrk.recon.graph import without_isolated_hits
    from streamtrk.sim.generator import GeneratorConfig
    from streamtrk.sim.simulate import SimConfig, simulate

    monkeypatch.delenv("STREAMTRK_MODEL", raising=False)
    rec = load_reconstructor()
    cfg = SimConfig(generator=replace(GeneratorConfig(), mu=50))
    graph = rec.reconstruct(list(simulate(load_detector(), cfg, 4242, 1))).graph
    scored = without_isolated_hits(graph)
    ratio = scored.num_edges / scored.num_nodes
    assert graph.num_edges / graph.num_nodes < 0.5 < 1.4 < ratio < 2.0, ratio
    assert isinstance(rec.scorer, EngineScorer)
    buckets = rec.scorer.buckets
    edges = np.unique(np.geomspace(1, buckets.edges[-1], 5000).astype(int))
    edges = np.concatenate([edges, buckets.edges])
    shapes = {buckets.shape(round(e / ratio), int(e)) for e in edges}
    assert {s for s in shapes if s[0] <= buckets.nodes[-1]} <= set(buckets.pairs())


@pytest.mark.realdata
def test_shipped_model_on_the_real_barrel_event(
    shared_trackml: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Physics on real TrackML data, never trained or tuned on."""
    from streamtrk.eval.evaluate import evaluate
    from streamtrk.io.trackml import iter_events

    monkeypatch.delenv("STREAMTRK_MODEL", raising=False)
    events = iter_events(shared_trackml / "qallse_ez-0.5_hpt-1.0" / "event000001000")
    report = evaluate(load_reconstructor(), events).report()
    assert report["tracking_efficiency"] >= 0.90
    assert report["fake_rate"] <= 0.10


def test_packaged_model_is_the_repository_model() -> None:
    # One copy: the package data links to models/, where models are trained and versioned.
    repo = Path(__file__).resolve().parents[2] / "models" / DEFAULT_MODEL_NAME
    for name in (CARD, WEIGHTS):
        assert (shipped_model_path() / name).read_bytes() == (repo / name).read_bytes()


def test_a_threshold_of_one_passes_no_edge_and_is_refused(saved: tuple[Path, InteractionNetwork]):
    path, _ = saved
    _edit_card(path, "threshold = 0.7", "threshold = 0")
    assert load_reconstructor(path).threshold == 0.0
    _edit_card(path, "threshold = 0", "threshold = 1")
    with pytest.raises(ModelCardError, match=r"in \[0, 1\) \(1 passes no edge\), got 1"):
        load_reconstructor(path)


def test_a_model_save_the_disk_refuses_is_an_oserror_naming_the_file(tmp_path) -> None:
    """torch's own writer raises a RuntimeError ("unexpected pos") on a full disk: the CLI
    would show a traceback. Here the file size limit refuses the write (EFBIG, as ENOSPC).
    The file there (a checkpoint of the same name) is left as it was, none cut short."""
    script = (
        "import resource, sys, torch\n"
        "from pathlib import Path\n"
        "from streamtrk.recon.model import save_torch\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))\n"
        "try:\n"
        "    save_torch({'w': torch.zeros(10_000)}, Path(sys.argv[1]))\n"
        "except OSError as e:\n"
        "    print(e)\n"
    )
    path = tmp_path / "w.pt"
    path.write_bytes(b"before")
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == f"cannot write {path}: File too large"
    assert path.read_bytes() == b"before" and os.listdir(tmp_path) == ["w.pt"]


@pytest.mark.parametrize("value", [float("inf"), float("-inf")])
def test_infinite_weights_are_refused(saved: tuple[Path, InteractionNetwork], value: float) -> None:
    path, model = saved
    state = model.state_dict()
    state["head.2.bias"] = torch.full_like(state["head.2.bias"], value)
    torch.save(state, path / WEIGHTS)
    with pytest.raises(ModelCardError, match=r"weights\.pt: not finite in head\.2\.bias"):
        load_model(path)


def test_an_encoder_weight_of_no_matrix_is_refused(
    saved: tuple[Path, InteractionNetwork],
) -> None:
    path, model = saved
    state = model.state_dict()
    state["node_encoder.0.weight"] = torch.tensor(1.0)
    torch.save(state, path / WEIGHTS)
    with pytest.raises(ModelCardError, match=r"weights\.pt does not match .* other keys"):
        load_model(path)


def test_an_empty_model_variable_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMTRK_MODEL", "")
    assert default_model_path() == shipped_model_path()


def test_another_file_given_for_a_model_is_not_said_to_be_a_models(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    why = model_missing(tmp_path / "notes.txt")
    assert why is not None and why.endswith(f"holding {CARD} and {WEIGHTS}")


def test_a_threshold_of_zero_overrides_the_cards(
    saved: tuple[Path, InteractionNetwork],
) -> None:
    path, _ = saved
    assert load_reconstructor(path, threshold=0.0).threshold == 0.0


def test_warm_up_runs_the_engine_before_returning(
    saved: tuple[Path, InteractionNetwork], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = saved
    warmed: list[EngineScorer] = []

    def warm_up(self: EngineScorer) -> float:
        warmed.append(self)
        return 0.0

    monkeypatch.setattr(EngineScorer, "warm_up", warm_up)
    rec = load_reconstructor(path, warm_up=True)
    assert warmed == [rec.scorer]
    load_reconstructor(path)
    assert len(warmed) == 1


def test_a_card_without_its_model_table_is_refused(
    saved: tuple[Path, InteractionNetwork],
) -> None:
    path, _ = saved
    _edit_card(path, "[model]", "[modell]")
    with pytest.raises(ModelCardError, match=r"card\.toml: .* unknown table 'modell' \(did you"):
        load_model(path)


@pytest.mark.parametrize(
    ("old", "new", "match"),
    [
        ("[graph]", "[track]\nmin_hits = 4\n[graph]", "unknown table 'track' (did you mean"),
        ("[graph]", "[graphs]\n[graph]", "unknown table 'graphs' (did you mean 'graph'?)"),
        ("threshold =", "treshold =", "unknown [model] key 'treshold' (did you mean 'threshold'?)"),
    ],
)
def test_a_table_or_model_key_of_another_name_is_refused(
    saved: tuple[Path, InteractionNetwork], old: str, new: str, match: str
) -> None:
    """A misspelt table would leave its settings at their defaults without a word (the
    shipped model with ``[track]``: 117 tracks instead of 111 on a test event)."""
    path, _ = saved
    _edit_card(path, old, new)
    with pytest.raises(ModelCardError, match=re.escape(match)):
        load_model(path)


def test_a_card_that_does_not_match_is_not_saved(tmp_path: Path) -> None:
    card = model_card("bad", ARCH, GraphConfig(), 1.5)  # threshold outside [0, 1)
    with pytest.raises(ModelCardError, match="threshold"):
        save_model(tmp_path / "m", InteractionNetwork(ARCH), card)
    assert not (tmp_path / "m" / CARD).exists() and not (tmp_path / "m" / WEIGHTS).exists()


def test_a_card_whose_model_entry_is_no_table_is_refused(
    saved: tuple[Path, InteractionNetwork],
) -> None:
    """``model = 1`` where the [model] table belongs: a ModelCardError naming the table, not
    an AttributeError from reading it as one."""
    path, _ = saved
    _edit_card(path, "[model]", "model = 1\n[metrics.old_model]")
    with pytest.raises(ModelCardError, match=r"card\.toml: model card has no \[model\] table"):
        load_model(path)


def test_a_card_without_its_graph_table_is_refused(
    saved: tuple[Path, InteractionNetwork],
) -> None:
    """A card that lost its [graph] table is refused, not run with default graph settings
    the model may not have been trained on."""
    path, _ = saved
    _edit_card(path, "[graph]", "[metrics.old_graph]")
    with pytest.raises(ModelCardError, match=r"card\.toml: model card has no \[graph\] table"):
        load_reconstructor(path)


def test_a_model_whose_own_windows_were_not_copied_is_told_to_copy_the_directory(
    tmp_path: Path,
) -> None:
    """A card naming the model's own windows file, missing beside it: the error says the
    file belongs in the model directory (copy it whole), not that no such package file is."""
    prune = PruneConfig(windows=MODEL_WINDOWS_FILE)
    card = model_card("w", ARCH, GraphConfig(), 0.5, prune=prune)
    save_model(tmp_path / "m", InteractionNetwork(ARCH), card)
    with pytest.raises(
        ModelCardError,
        match=rf"windows {MODEL_WINDOWS_FILE} is not in the model directory .*copy the whole",
    ):
        load_reconstructor(tmp_path / "m")


def test_a_folder_named_as_the_windows_does_not_hide_the_packages(tmp_path: Path) -> None:
    """Only a file beside the card stands for the package's windows of its name: a folder
    of that name there is not read as the windows (the package's are used)."""
    card = model_card("p", ARCH, GraphConfig(), 0.5, prune=PruneConfig())
    save_model(tmp_path / "p", InteractionNetwork(ARCH), card)
    (tmp_path / "p" / WINDOWS_FILE).mkdir()
    assert load_reconstructor(tmp_path / "p").prune == PruneConfig()


@pytest.mark.parametrize(
    "state",
    [
        [1, 2, 3],
        {"node_encoder.0.weight": torch.zeros(8, 3), "edge_encoder.0.weight": torch.tensor(1.0)},
    ],
)
def test_weights_of_no_state_dict_are_refused(
    saved: tuple[Path, InteractionNetwork], state: object
) -> None:
    """A weights file holding a list, or an edge encoder weight of no matrix: refused as not
    matching the card (ModelCardError), not a bare AttributeError or IndexError."""
    path, _ = saved
    torch.save(state, path / WEIGHTS)
    with pytest.raises(ModelCardError, match=r"weights\.pt does not match .* other keys"):
        load_model(path)


class _NotATensor:
    """A pickled object of a class of its own: what a hostile weights file would hold."""


def test_weights_holding_other_objects_are_not_unpickled(
    saved: tuple[Path, InteractionNetwork],
) -> None:
    """Weights are loaded tensors-only (``weights_only``): a file pickling any other object
    (which could run code as it loads) is refused unread."""
    path, model = saved
    torch.save({**model.state_dict(), "extra": _NotATensor()}, path / WEIGHTS)
    with pytest.raises(ModelCardError, match=r"weights\.pt: cannot be read as a torch state"):
        load_model(path)


def test_a_threshold_chosen_as_a_numpy_number_is_saved(tmp_path: Path) -> None:
    """A threshold picked from a NumPy scan (a float32) is written as a plain TOML float."""
    card = model_card("t", ARCH, GraphConfig(), np.float32(0.75))  # type: ignore[arg-type]
    save_model(tmp_path / "m", InteractionNetwork(ARCH), card)
    assert "threshold = 0.75\n" in (tmp_path / "m" / CARD).read_text()
    assert load_reconstructor(tmp_path / "m").threshold == 0.75


def test_weights_with_a_key_of_no_name_are_refused(
    saved: tuple[Path, InteractionNetwork],
) -> None:
    """A state dict with a key that is no string (an int): a ModelCardError naming the
    weights, not an AttributeError from reading the key as a name."""
    path, model = saved
    state: dict[object, torch.Tensor] = {1: torch.zeros(1)}
    state.update(model.state_dict())
    torch.save(state, path / WEIGHTS)
    with pytest.raises(ModelCardError, match=r"weights\.pt does not match the architecture"):
        load_model(path)


def test_an_empty_prune_table_prunes_with_the_defaults(
    saved: tuple[Path, InteractionNetwork],
) -> None:
    """A card's ``[prune]`` table with no settings in it means pruning with the default
    settings, not no pruning (a table absent means that)."""
    path, _ = saved
    (path / CARD).write_text((path / CARD).read_text() + "\n[prune]\n")
    assert load_reconstructor(path).prune == PruneConfig()


def test_the_reconstructor_loaded_is_centred_on_the_beam_spot_given(
    saved: tuple[Path, InteractionNetwork],
) -> None:
    """``beam_spot`` reaches the Reconstructor, not the default axis."""
    rec = load_reconstructor(saved[0], beam_spot=(1.5, -2.0))
    assert rec.beam_spot == (1.5, -2.0)


def test_a_bad_card_without_its_directory_is_a_card_error_of_its_own_words() -> None:
    """``of_card`` without ``model_dir`` raises the card's ModelCardError as it is."""
    with pytest.raises(ModelCardError, match="model card format"):
        ChainSettings.of_card({"model": {"card_format": 0}})
