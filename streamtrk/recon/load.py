"""A Reconstructor from a trained model directory: the network through an engine, with the
graph settings and threshold of its card."""

from __future__ import annotations

from pathlib import Path

from streamtrk.recon.card import card_prune, card_tracks, check_card
from streamtrk.recon.engine import EngineScorer
from streamtrk.recon.model import default_model_path, load_model
from streamtrk.recon.reconstructor import Reconstructor


def load_reconstructor(
    path: Path | str | None = None,
    *,
    device: str = "cpu",
    threshold: float | None = None,
    engine: str = "eager",
    precision: str = "fp32",
    cuda_graphs: bool = False,
    warm_up: bool = False,
) -> Reconstructor:
    """A Reconstructor scoring edges with a trained model (default: ``default_model_path()``)
    through ``EngineScorer`` (``engine``, ``precision``, ``cuda_graphs``: see
    ``streamtrk.recon.engine``); ``warm_up`` compiles and runs every shape bucket before
    returning."""
    model, card = load_model(Path(path) if path is not None else default_model_path())
    _, graph, default_threshold = check_card(card)
    prune, tracks = card_prune(card), card_tracks(card)
    scorer = EngineScorer(model, device, engine, precision, cuda_graphs=cuda_graphs)
    if warm_up:
        scorer.warm_up()
    return Reconstructor(
        scorer,
        device=device,
        graph_config=graph,
        threshold=default_threshold if threshold is None else threshold,
        prune=prune,
        tracks=tracks,
    )
