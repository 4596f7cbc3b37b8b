"""Trained models on disk: a directory holding ``weights.pt`` (a torch state dict) and
``card.toml`` (its model card, see ``streamtrk.recon.card``).

The shipped model is package data (``streamtrk/data/models/``), so an installed wheel finds
it; in the repository that directory links to ``models/``, where models are trained and
versioned. ``$STREAMTRK_MODEL`` names another default.
"""

from __future__ import annotations

import io
import os
import pickle
import tomllib
import zipfile
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from streamtrk import tomlio
from streamtrk.io.paths import replaced_whole, write_whole
from streamtrk.recon.card import ModelCardError, check_card
from streamtrk.recon.gnn import InteractionNetwork

DEFAULT_MODEL_NAME = "in-h32-s6-v2"
WEIGHTS, CARD = "weights.pt", "card.toml"
MODEL_ENV = "STREAMTRK_MODEL"


def shipped_model_path() -> Path:
    """The directory of the model shipped with the package."""
    return Path(str(resources.files("streamtrk") / "data" / "models" / DEFAULT_MODEL_NAME))


def default_model_path() -> Path:
    """``$STREAMTRK_MODEL`` if set, else the shipped model."""
    env = os.environ.get(MODEL_ENV)
    return Path(env) if env else shipped_model_path()


def save_torch(obj: Any, path: Path) -> None:
    """``torch.save`` of ``obj`` to ``path`` through a buffer, whole or not at all
    (:func:`write_whole`: a checkpoint cut by a full disk or Ctrl-C is not left under its
    name); a failed write is an OSError naming the file, where torch's own writer raises a
    RuntimeError."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_whole(path, lambda f: f.write(buffer.getbuffer()))


def save_model(directory: str | Path, model: InteractionNetwork, card: dict[str, Any]) -> None:
    """Write ``weights.pt`` and ``card.toml`` (the card is checked first), each whole: to a
    partial file first, renamed into place once both are written (a reader never sees half a
    file; one that reads while both are replaced is refused by the served model's digest
    check). A save that fails (a full disk) leaves the model there as it was."""
    check_card(card)
    directory = Path(directory)
    with replaced_whole(directory / CARD) as card_file, replaced_whole(directory / WEIGHTS) as w:
        save_torch(model.state_dict(), w)
        card_file.write_text(tomlio.dumps(card))


#: How a file of torch.save's format before the zip one starts: its magic number pickled.
_LEGACY_TORCH_MAGIC = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)


def _legacy_torch_file(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(len(_LEGACY_TORCH_MAGIC)) == _LEGACY_TORCH_MAGIC


def model_missing(directory: str | Path) -> str | None:
    """Why ``directory`` holds no model (no card or weights there, weights that are no whole
    torch file, or a file named), saying what to do; None where both files are there."""
    directory = Path(directory)
    if directory.is_file():  # its weights.pt or card.toml named, say
        return f"{directory} is a file: a model is the directory holding {CARD} and {WEIGHTS}" + (
            f" ({directory.parent}?)" if directory.name in (CARD, WEIGHTS) else ""
        )
    lacking = [name for name in (CARD, WEIGHTS) if not (directory / name).is_file()]
    for name in lacking:
        if (directory / name).exists():  # a folder or a FIFO of the name: not "missing"
            return f"{directory / name} is not a regular file: a model's {name} is one"
    if not lacking:
        if zipfile.is_zipfile(directory / WEIGHTS) or _legacy_torch_file(directory / WEIGHTS):
            return None  # torch.save's format, a whole zip; or its older one (load checks)
        return (
            f"{directory / WEIGHTS} is not a whole torch file (cut short in a copy?): copy the "
            "model again, or train it again"
        )
    train = "`streamtrk train --config models/configs/default.toml --out"
    there = f"train one there with {train} {directory}`"
    if not directory.is_dir():
        what = "no such directory"
    else:  # train refuses a directory that is not empty without --overwrite
        what = f"{' and '.join(lacking)} missing"
        try:
            empty = not any(directory.iterdir())
        except OSError:  # a folder that may be entered, not listed: what it holds unknown
            empty = False
        if len(lacking) < 2:  # a model's files, one of them lost: replaced whole
            there = f"train one there with {train} {directory} --overwrite`"
        elif not empty:  # other files, which --overwrite would delete: not suggested
            there = f"train one in a folder of its own with {train} NEW_FOLDER` ({directory} "
            there += "holds other files)"
    return (
        f"no model at {directory} ({what}; a model holds {CARD} and {WEIGHTS}): check the "
        f"path (the shipped model is {shipped_model_path()}), or {there}"
    )


def read_card(directory: str | Path) -> dict[str, Any]:
    """The card of a model directory (FileNotFoundError, saying how to make one, where the
    directory lacks its card or weights: :func:`model_missing`)."""
    if why := model_missing(directory):
        raise FileNotFoundError(why)
    path = Path(directory) / CARD
    try:  # UTF-8, a BOM as editors write it left out (as the other TOML files read)
        return tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:  # TOML is UTF-8
        raise ModelCardError(f"{path}: not valid TOML ({exc})") from exc


def load_model(directory: str | Path) -> tuple[InteractionNetwork, dict[str, Any]]:
    """The network and card of a model directory. ModelCardError, naming the file, for a
    card that is not valid or does not match the weights, and for weights that cannot be
    read or are not all finite (NaN scores would reject every edge)."""
    directory = Path(directory)
    card = read_card(directory)
    try:
        arch, _, _ = check_card(card)
    except (TypeError, ValueError) as exc:  # ValueError: ModelCardError among them
        raise ModelCardError(f"{directory / CARD}: {exc}") from exc
    try:
        state = torch.load(directory / WEIGHTS, map_location="cpu", weights_only=True)
    except Exception as exc:  # a cut or foreign file: torch raises many kinds
        raise ModelCardError(
            f"{directory / WEIGHTS}: cannot be read as a torch state dict "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    # The network is built only once the weights hold its sizes: a card cannot make the
    # loader allocate more than its weights file holds (hidden = 10**6, a million steps).
    held = _weights_architecture(state)
    named = (arch.hidden, arch.edge_hidden, arch.steps)
    if held != named:
        raise ModelCardError(
            f"{directory / WEIGHTS} does not match the architecture of its card: the card "
            f"names hidden, edge_hidden, steps {named}, the weights hold "
            + ("other keys" if held is None else str(held))
        )
    model = InteractionNetwork(arch)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[:3]
        raise ModelCardError(
            f"{directory / WEIGHTS} does not match the architecture of its card: " + " ".join(first)
        ) from exc
    bad = [name for name, t in model.state_dict().items() if not torch.isfinite(t).all()]
    if bad:
        raise ModelCardError(f"{directory / WEIGHTS}: not finite in {', '.join(bad[:3])}")
    return model, card


def _weights_architecture(state: Any) -> tuple[int, int, int] | None:
    """(hidden, edge_hidden, steps) of an InteractionNetwork state dict, read from its
    encoders' shapes and its step keys; None for anything else."""
    if not isinstance(state, dict):
        return None
    node, edge = state.get("node_encoder.0.weight"), state.get("edge_encoder.0.weight")
    if not isinstance(node, torch.Tensor) or not isinstance(edge, torch.Tensor):
        return None
    if node.dim() != 2 or edge.dim() != 2:
        return None
    steps = {k.split(".")[1] for k in state if isinstance(k, str) and k.startswith("steps.")}
    return int(node.shape[0]), int(edge.shape[0]), len(steps)
