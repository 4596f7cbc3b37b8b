"""Trained models on disk: ``weights.pt`` (a torch state dict) plus ``card.toml`` (model card).

The card records what the weights need from the code (card format, feature version,
architecture, graph-construction settings, default threshold) and what they are (training
recipe, metrics, the command that reproduces them). A model whose card does not match the
code is refused with :class:`ModelCardError` rather than run with the wrong inputs.

Bump ``FEATURE_VERSION`` whenever the graph's node or edge features change meaning (their
columns, scaling or order in ``streamtrk.recon.graph``): models trained before then are
refused until retrained.
"""

from __future__ import annotations

import json
import math
import os
import re
import tomllib
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch

from streamtrk.recon.engine import EngineScorer
from streamtrk.recon.gnn import (
    EDGE_FEATURES,
    NODE_FEATURES,
    GNNConfig,
    InteractionNetwork,
)
from streamtrk.recon.graph import GraphConfig
from streamtrk.recon.reconstructor import Reconstructor

CARD_FORMAT = 1
FEATURE_VERSION = 1
DEFAULT_MODEL_NAME = "in-h32-s6-v1"
MODELS_DIR = Path(__file__).resolve().parents[2] / "models"
WEIGHTS, CARD = "weights.pt", "card.toml"


class ModelCardError(ValueError):
    """A model directory whose card or weights do not match this code."""


def default_model_path() -> Path:
    """``$STREAMTRK_MODEL`` if set, else the shipped model in the repository's ``models/``."""
    env = os.environ.get("STREAMTRK_MODEL")
    return Path(env) if env else MODELS_DIR / DEFAULT_MODEL_NAME


# --- TOML writing: the subset cards need (tables, scalars, arrays of scalars) ---

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(k: str) -> str:
    return k if _BARE_KEY.match(k) else json.dumps(k)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def dumps_toml(data: dict[str, Any]) -> str:
    """TOML text of nested dicts of scalars and lists (``None`` values are left out)."""
    out: list[str] = []

    def table(d: dict[str, Any], path: list[str]) -> None:
        scalars = [(k, v) for k, v in d.items() if v is not None and not isinstance(v, dict)]
        if path and (scalars or not any(isinstance(v, dict) for v in d.values())):
            out.append(("\n" if out else "") + "[" + ".".join(map(_key, path)) + "]")
        out.extend(f"{_key(k)} = {_value(v)}" for k, v in scalars)
        for k, v in d.items():
            if isinstance(v, dict):
                table(v, [*path, k])

    table(data, [])
    return "\n".join(out) + "\n"


# --- cards and weights ---


def _section(card: dict[str, Any], name: str) -> dict[str, Any]:
    sec = card.get(name)
    if not isinstance(sec, dict):
        raise ModelCardError(f"model card has no [{name}] table")
    return sec


def _dataclass_from(cls: type, table: dict[str, Any], where: str, defaults: bool = False) -> Any:
    """``cls(**table)``; keys this code lacks are refused, and so are missing ones unless
    ``defaults`` (then this code's defaults apply)."""
    names = {f.name for f in fields(cls)}
    missing, unknown = sorted(names - table.keys()), sorted(table.keys() - names)
    if (missing and not defaults) or unknown:
        raise ModelCardError(
            f"model card [{where}] does not match this code: missing {missing}, unknown {unknown}"
        )
    return cls(**table)


def check_card(card: dict[str, Any]) -> tuple[GNNConfig, GraphConfig, float]:
    """Architecture, graph settings and threshold of a card that matches this code."""
    model = _section(card, "model")
    if model.get("card_format") != CARD_FORMAT:
        raise ModelCardError(
            f"model card format {model.get('card_format')!r}, this code reads {CARD_FORMAT}"
        )
    if model.get("feature_version") != FEATURE_VERSION:
        raise ModelCardError(
            f"model trained on graph features version {model.get('feature_version')!r}, this "
            f"code builds version {FEATURE_VERSION}: retrain it"
        )
    arch = _dataclass_from(GNNConfig, _section(card, "architecture"), "architecture")
    if (arch.node_in, arch.edge_in) != (NODE_FEATURES, EDGE_FEATURES):
        raise ModelCardError(
            f"model expects {arch.node_in} node and {arch.edge_in} edge features, the graph has "
            f"{NODE_FEATURES} and {EDGE_FEATURES}"
        )
    # A graph setting added after the model was made takes its default: new settings must
    # default to the old behaviour, or bump FEATURE_VERSION.
    graph = _dataclass_from(GraphConfig, _section(card, "graph"), "graph", defaults=True)
    threshold = model.get("threshold")
    if not isinstance(threshold, float) or not 0 < threshold < 1:
        raise ModelCardError(f"model card threshold must be a number in (0, 1), got {threshold!r}")
    return arch, graph, threshold


def model_card(
    name: str, arch: GNNConfig, graph: GraphConfig, threshold: float, **sections: Any
) -> dict[str, Any]:
    """A card: the [model] identity, architecture, graph settings, then free ``sections``."""
    from streamtrk import __version__

    return {
        "model": {
            "name": name,
            "card_format": CARD_FORMAT,
            "feature_version": FEATURE_VERSION,
            "streamtrk_version": __version__,
            "threshold": float(threshold),
        },
        "architecture": asdict(arch),
        "graph": asdict(graph),
        **sections,
    }


def save_model(directory: Path, model: InteractionNetwork, card: dict[str, Any]) -> None:
    """Write ``weights.pt`` and ``card.toml`` (the card is checked first)."""
    check_card(card)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), directory / WEIGHTS)
    (directory / CARD).write_text(dumps_toml(card))


def read_card(directory: Path) -> dict[str, Any]:
    with open(directory / CARD, "rb") as f:
        return tomllib.load(f)


def load_model(directory: Path) -> tuple[InteractionNetwork, dict[str, Any]]:
    """The network and card of a model directory; refuses mismatches with ModelCardError."""
    if not (directory / CARD).is_file() or not (directory / WEIGHTS).is_file():
        raise FileNotFoundError(
            f"no model at {directory} ({CARD} and {WEIGHTS} expected): train one with "
            f"`streamtrk train --config models/configs/default.toml --out {directory}`, "
            "or pass --oracle"
        )
    card = read_card(directory)
    arch, _, _ = check_card(card)
    model = InteractionNetwork(arch)
    state = torch.load(directory / WEIGHTS, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelCardError(
            f"weights in {directory} do not match the architecture of its card: {exc}"
        ) from exc
    return model, card


def load_reconstructor(
    path: Path | None = None,
    *,
    device: str = "cpu",
    threshold: float | None = None,
    engine: str = "eager",
    precision: str = "fp32",
    cuda_graphs: bool = False,
    warm_up: bool = False,
) -> Reconstructor:
    """A Reconstructor scoring edges with a trained model (default: the shipped one)
    through ``EngineScorer`` (``engine``, ``precision``, ``cuda_graphs``: see
    ``streamtrk.recon.engine``); ``warm_up`` compiles and runs every shape bucket before
    returning."""
    directory = path or default_model_path()
    model, card = load_model(directory)
    _, graph, default_threshold = check_card(card)
    scorer = EngineScorer(model, device, engine, precision, cuda_graphs=cuda_graphs)
    if warm_up:
        scorer.warm_up()
    return Reconstructor(
        scorer,
        device=device,
        graph_config=graph,
        threshold=default_threshold if threshold is None else threshold,
    )
