"""Model cards: what a trained model needs from the code, and what it is.

A card (``card.toml`` beside the weights) records the card format, the graph-feature
version, the architecture, the graph-construction settings and the default threshold, the
pruning (``[prune]``, optional) and track-building (``[tracks]``) settings, then records of
free content: the training recipe (``[training]``), the threshold scan, the metrics, the
command that reproduces them. A card that does not match the code is refused with
:class:`ModelCardError` rather than run with the wrong inputs, as is a table or a
``[model]`` key of another name (``[track]`` for ``[tracks]`` would leave the chain's
settings at their defaults without a word).

Bump ``FEATURE_VERSION`` whenever the graph's node or edge features change meaning (their
columns, scaling or order in ``streamtrk.recon.graph``): models trained before then are
refused until retrained.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from streamtrk.recon.choices import threshold_ok
from streamtrk.recon.gnn import GNNConfig
from streamtrk.recon.graph import GraphConfig
from streamtrk.recon.prune import MODEL_WINDOWS_FILE, PruneConfig, read_windows, windows_is_path
from streamtrk.recon.tracks import TrackConfig
from streamtrk.tomlio import dataclass_from

CARD_FORMAT = 1
FEATURE_VERSION = 1
#: The tables a card may hold: the chain's settings, then the records.
CARD_TABLES = ("model", "architecture", "graph", "prune", "tracks")
RECORD_TABLES = ("training", "threshold_scan", "metrics", "reproduce")
#: The keys of its [model] table.
MODEL_KEYS = ("name", "card_format", "feature_version", "streamtrk_version", "threshold")


class ModelCardError(ValueError):
    """A model directory whose card or weights do not match this code."""


def _section(card: dict[str, Any], name: str) -> dict[str, Any]:
    sec = card.get(name)
    if not isinstance(sec, dict):
        raise ModelCardError(f"model card has no [{name}] table")
    return sec


def _known(given: Iterable[str], names: tuple[str, ...], what: str) -> None:
    """ModelCardError naming the first of ``given`` not among ``names`` (and the name it is
    closest to)."""
    for name in given:
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ModelCardError(
                f"model card has an unknown {what} {name!r}{hint}: it holds {', '.join(names)}"
            )


def card_prune(card: dict[str, Any], model_dir: Path | None = None) -> PruneConfig | None:
    """The pruning settings of a card (its ``[prune]`` table), or None: the model was trained
    on unpruned graphs and scores them unpruned.

    Its ``windows`` file is looked for first in ``model_dir`` (a model shipped with its own
    windows), then among the package's data files or as a path; one that cannot be read is a
    ModelCardError now rather than an error at the first event."""
    table = card.get("prune")
    if table is None:
        return None
    cfg = dataclass_from(PruneConfig, table, "model card [prune]", error=ModelCardError)
    if model_dir is not None and (model_dir / cfg.windows).is_file():
        cfg = replace(cfg, windows=str((model_dir / cfg.windows).resolve()))
    elif cfg.windows == MODEL_WINDOWS_FILE:  # the model's own, not the package's
        where = "given" if model_dir is None else f"directory {model_dir}"
        raise ModelCardError(
            f"model card [prune]: windows {cfg.windows} is not in the model {where}: a model "
            "trained with windows of its own carries them beside its card and weights (copy "
            "the whole directory)"
        )
    path = Path(cfg.windows)
    if windows_is_path(cfg.windows) and path.exists() and not path.is_file():  # a FIFO
        raise ModelCardError(f"model card [prune]: windows {cfg.windows} is not a regular file")
    try:
        read_windows(cfg.windows)
    except ValueError as exc:
        raise ModelCardError(f"model card [prune]: {exc}") from None
    return cfg


def card_tracks(card: dict[str, Any]) -> TrackConfig:
    """The track-building settings of a card (its ``[tracks]`` table; absent: the plain
    chain, as models made before stitching and track cuts were built)."""
    return dataclass_from(
        TrackConfig, card.get("tracks", {}), "model card [tracks]", error=ModelCardError
    )


def check_card(card: dict[str, Any]) -> tuple[GNNConfig, GraphConfig, float]:
    """Architecture, graph settings and threshold of a card that matches this code."""
    _known(card.keys(), (*CARD_TABLES, *RECORD_TABLES), "table")
    model = _section(card, "model")
    _known(model.keys(), MODEL_KEYS, "[model] key")
    if type(model.get("card_format")) is not int or model.get("card_format") != CARD_FORMAT:
        raise ModelCardError(
            f"model card format {model.get('card_format')!r}, this code reads {CARD_FORMAT}"
        )
    if type(model.get("feature_version")) is not int or model["feature_version"] != FEATURE_VERSION:
        raise ModelCardError(
            f"model trained on graph features version {model.get('feature_version')!r}, this "
            f"code builds version {FEATURE_VERSION}: retrain it"
        )
    arch = dataclass_from(
        GNNConfig,
        _section(card, "architecture"),
        "model card [architecture]",
        defaults=False,
        error=ModelCardError,
    )
    # GNNConfig itself refuses feature counts other than the graph's.
    # A graph setting added after the model was made takes its default: new settings must
    # default to the old behaviour, or bump FEATURE_VERSION.
    graph = dataclass_from(
        GraphConfig, _section(card, "graph"), "model card [graph]", error=ModelCardError
    )
    threshold = model.get("threshold")
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, int | float)
        or not threshold_ok(threshold)  # as the --threshold override allows
    ):
        raise ModelCardError(
            f"model card threshold must be a number in [0, 1) (1 passes no edge), got {threshold!r}"
        )
    return arch, graph, float(threshold)


def model_card(
    name: str,
    arch: GNNConfig,
    graph: GraphConfig,
    threshold: float,
    prune: PruneConfig | None = None,
    tracks: TrackConfig | None = None,
    **sections: Any,
) -> dict[str, Any]:
    """A card: the [model] identity, architecture, graph, pruning and track-building
    settings, then ``sections``, records of free content under the names of
    ``RECORD_TABLES`` (:func:`check_card` refuses others)."""
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
        **({} if prune is None else {"prune": asdict(prune)}),
        **({} if tracks is None else {"tracks": asdict(tracks)}),
        **sections,
    }
