"""A Reconstructor from a trained model directory: the network through an engine, with the
graph settings and threshold of its card."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from streamtrk.recon.buckets import PRUNED_EDGES_PER_NODE, UNPRUNED_EDGES_PER_NODE, Buckets
from streamtrk.recon.budget import Budget
from streamtrk.recon.card import ModelCardError, card_prune, card_tracks, check_card
from streamtrk.recon.device import cuda_unavailable, resolve_device
from streamtrk.recon.engine import EngineScorer
from streamtrk.recon.graph import GraphConfig
from streamtrk.recon.model import CARD, default_model_path, load_model
from streamtrk.recon.prune import PruneConfig
from streamtrk.recon.reconstructor import EdgeScorer, Reconstructor
from streamtrk.recon.tracks import TrackConfig


@dataclass(frozen=True)
class ChainSettings:
    """The chain around the network as a model card sets it: edge-score threshold, graph,
    pruning and track-building settings (the defaults: the plain, unpruned chain)."""

    threshold: float = 0.5
    graph: GraphConfig = field(default_factory=GraphConfig)
    prune: PruneConfig | None = None
    tracks: TrackConfig = field(default_factory=TrackConfig)

    @classmethod
    def of_card(cls, card: dict[str, Any], model_dir: Path | None = None) -> ChainSettings:
        """The settings of a card; ``model_dir`` (the card's directory) is where a pruning
        windows file named by the card is looked for first, and named in its errors
        (ModelCardError)."""
        try:
            _, graph, threshold = check_card(card)
            return cls(threshold, graph, card_prune(card, model_dir), card_tracks(card))
        except ModelCardError as exc:
            if model_dir is None:
                raise
            raise ModelCardError(f"{model_dir / CARD}: {exc}") from exc

    def buckets(self) -> Buckets:
        """Shape buckets whose warm-up pairs match the graphs this chain scores (pruned
        graphs have far fewer edges a hit)."""
        ratio = UNPRUNED_EDGES_PER_NODE if self.prune is None else PRUNED_EDGES_PER_NODE
        return Buckets(edges_per_node=ratio)

    def reconstructor(
        self,
        scorer: EdgeScorer,
        device: str = "cpu",
        budget: Budget | None = None,
        beam_spot: tuple[float, float] = (0.0, 0.0),
    ) -> Reconstructor:
        """A Reconstructor scoring edges with ``scorer`` on ``device`` in this chain (work
        budget: ``budget``, else the default; centred on the beam line ``beam_spot``)."""
        return Reconstructor(
            scorer,
            device=device,
            graph_config=self.graph,
            threshold=self.threshold,
            prune=self.prune,
            tracks=self.tracks,
            budget=budget,
            beam_spot=beam_spot,
        )


def load_reconstructor(
    path: Path | str | None = None,
    *,
    device: str = "cpu",
    threshold: float | None = None,
    engine: str = "eager",
    precision: str = "fp32",
    cuda_graphs: bool = False,
    warm_up: bool = False,
    budget: Budget | None = None,
    beam_spot: tuple[float, float] = (0.0, 0.0),
) -> Reconstructor:
    """A Reconstructor scoring edges with a trained model (default: ``default_model_path()``)
    through ``EngineScorer`` (``engine``, ``precision``, ``cuda_graphs``: see
    ``streamtrk.recon.engine``); ``warm_up`` runs the engine on the graphs of
    ``EngineScorer.warm_shapes`` before returning (on CUDA, for the compile and tensorrt
    engines, every shape of ``Buckets.pairs``; one small graph for eager); ``threshold``: the
    edge-score threshold, else the card's; ``budget``:
    the work budget (``streamtrk.recon.budget``, default its own); ``beam_spot``: the beam
    line (x, y in mm) the chain is centred on (see ``Reconstructor``); ``device``: ``cpu``,
    ``cuda`` (ValueError saying why where this host cannot run it) or ``auto``."""
    device = resolve_device(device)
    if device == "cuda" and (why := cuda_unavailable()):
        raise ValueError(f"device cuda: {why}")
    directory = Path(path) if path is not None else default_model_path()
    model, card = load_model(directory)
    chain = ChainSettings.of_card(card, directory)
    if threshold is not None:
        chain = replace(chain, threshold=threshold)
    scorer = EngineScorer(
        model, device, engine, precision, buckets=chain.buckets(), cuda_graphs=cuda_graphs
    )
    if warm_up:
        scorer.warm_up()
    return chain.reconstructor(scorer, device, budget, beam_spot)
