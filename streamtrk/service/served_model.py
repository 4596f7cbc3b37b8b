"""Loading the served model: device choice, ``load_reconstructor``, warm-up, identity."""

from __future__ import annotations

import contextlib
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streamtrk.errors import SettingError
from streamtrk.event import Event
from streamtrk.recon.device import resolve_device
from streamtrk.recon.engine import EngineScorer
from streamtrk.recon.reconstructor import Reconstructor
from streamtrk.service import faults
from streamtrk.service.config import ServeConfig
from streamtrk.wire import ModelId

WARMUP_MU = 5.0
WARMUP_SEED = 20261128


def model_digest(path: Path) -> str:
    """SHA-256 (first 16 hex digits) of a model file, or of a directory's files in order and
    of the pruning windows its card takes from outside it (the package's, or a path): they
    decide which edges the network scores, so a change of them changes the model served."""
    from streamtrk.recon.card import card_prune
    from streamtrk.recon.model import read_card
    from streamtrk.recon.prune import windows_bytes

    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        h.update(f.read_bytes())
    if path.is_dir() and (prune := card_prune(read_card(path), path)) is not None:
        windows = Path(prune.windows)
        if not windows.is_relative_to(path.resolve()):  # else among the files above
            h.update(f"windows {prune.windows}".encode())
            h.update(windows_bytes(prune.windows))
    return h.hexdigest()[:16]


def warmup_event() -> Event:
    """A small simulated event that exercises every stage once."""
    from streamtrk.detector import load_detector
    from streamtrk.sim.generator import GeneratorConfig
    from streamtrk.sim.simulate import SimConfig, simulate_event

    cfg = SimConfig(generator=GeneratorConfig(mu=WARMUP_MU))
    return simulate_event(load_detector(), cfg, np.random.default_rng(WARMUP_SEED))


@dataclass(frozen=True)
class ServedModel:
    """A warmed-up reconstructor and what identifies it."""

    reconstructor: Reconstructor
    device: str
    engine: str  # in use; see ``engine_note`` when it is not the one asked for
    engine_requested: str
    engine_note: str | None
    precision: str
    name: str
    path: str
    digest: str
    threshold: float
    warmup_s: float
    warmup_batch: tuple[int, float]  # the warm-up reconstruct's hits and seconds
    card: dict[str, Any]

    @property
    def serving(self) -> tuple[Reconstructor, ModelId]:
        """The reconstructor, and what names it in the replies."""
        return self.reconstructor, ModelId(self.name, self.digest, self.threshold)

    def close(self) -> None:
        """Free what the model holds outside Python's reach (its engine's CUDA graphs and
        their thread), once a reload has replaced it and no batch uses it."""
        _close_engine(self.reconstructor)


def _close_engine(rec: Reconstructor) -> None:
    if isinstance(scorer := rec.scorer, EngineScorer):
        scorer.close()


def load_served_model(cfg: ServeConfig) -> ServedModel:
    """Load ``cfg.model`` (None: the shipped model) on ``cfg.device`` with ``cfg.engine``
    and ``cfg.precision``, warm up the engine (see ``load_reconstructor``), then run one
    ``reconstruct`` call; raises whatever loading or the warm-up raises (a warm-up event too
    dense for ``budget_scale``: SettingError; a directory changed while loading:
    RuntimeError), the engine closed first, where there is one. The directory's card and
    digest are read before the weights; a directory whose files changed while loading is
    refused (the name, card and hash reported would not be those of the weights in use)."""
    from streamtrk.recon.budget import Budget, EventTooDense
    from streamtrk.recon.load import load_reconstructor
    from streamtrk.recon.model import read_card, shipped_model_path

    device = resolve_device(cfg.device)
    # None is the shipped model: $STREAMTRK_MODEL is the configuration's (a flag's empty
    # --model, which unsets it, would otherwise lose to it here).
    path = (cfg.model or shipped_model_path()).resolve()
    t0 = time.perf_counter()
    card, digest = read_card(path), model_digest(path)
    faults.delay("load")
    rec = load_reconstructor(
        path,
        device=device,
        threshold=cfg.threshold,
        engine=cfg.engine,
        precision=cfg.precision,
        cuda_graphs=cfg.cuda_graphs,
        warm_up=True,
        budget=Budget().scaled(cfg.budget_scale),
        beam_spot=(cfg.beam_spot_x_mm, cfg.beam_spot_y_mm),
    )
    try:
        event = warmup_event()
        t_batch = time.perf_counter()
        try:
            rec.reconstruct([event])
        except EventTooDense as e:
            raise SettingError(
                f"budget_scale {cfg.budget_scale:g} leaves no room for the warm-up event (MU "
                f"{WARMUP_MU:g}, {len(event.hits)} hits: {e}): every event of that pile-up or "
                "more would be answered too_dense; raise budget_scale (1 by default)"
            ) from None
        warmup_batch = (len(event.hits), time.perf_counter() - t_batch)
        if model_digest(path) != digest:
            raise RuntimeError(
                f"the model directory {path} changed while it was loaded: load it again"
            )
    except BaseException:
        with contextlib.suppress(Exception):  # the error raised is the load's
            _close_engine(rec)  # its CUDA graphs now, not when the collector finds them
        raise
    scorer = rec.scorer
    assert isinstance(scorer, EngineScorer)
    warmup_s = time.perf_counter() - t0
    return ServedModel(
        reconstructor=rec,
        device=device,
        engine=scorer.engine,
        engine_requested=cfg.engine,
        engine_note=scorer.fallback_reason,
        precision=cfg.precision,
        name=str(card["model"].get("name", path.name)),
        path=str(path),
        digest=digest,
        threshold=float(rec.threshold),
        warmup_s=warmup_s,
        warmup_batch=warmup_batch,
        card=card,
    )
