"""Training configuration: the recipe file (``models/configs/default.toml``), parsed and typed.

Unknown keys anywhere are errors, so that a misspelt setting never silently trains with a
default.
"""

from __future__ import annotations

import difflib
import math
import sys
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from itertools import islice
from pathlib import Path
from typing import Any

from tqdm import tqdm

from streamtrk.detector import Detector
from streamtrk.errors import SettingError
from streamtrk.event import Event
from streamtrk.recon.choices import threshold_ok
from streamtrk.recon.gnn import GNNConfig
from streamtrk.recon.graph import GraphConfig
from streamtrk.recon.prune import PruneConfig, read_windows, windows_is_path
from streamtrk.recon.tracks import TrackConfig
from streamtrk.sim.generator import MAX_MU
from streamtrk.sim.simulate import MAX_NOISE_FRACTION as MAX_NOISE
from streamtrk.threads import MAX_TORCH_THREADS
from streamtrk.tomlio import NOT_TOML, dataclass_from, read_config_text, require


@dataclass(frozen=True)
class EventSource:
    """Simulated events (``mu``, ``seed``, ``events``, ``noise``) or the first ``events`` of a
    ``recording`` (one that holds fewer is refused)."""

    mu: float = 200.0
    seed: int = 0
    events: int = 1
    noise: float = 0.19
    recording: str | None = None

    def __post_init__(self) -> None:
        require(
            self,
            [
                ("mu", 0 < self.mu <= MAX_MU, f"> 0 and at most {MAX_MU}"),  # the generator's
                ("noise", 0 <= self.noise <= MAX_NOISE, f"in [0, {MAX_NOISE}]"),  # the sim's
                ("seed", self.seed >= 0, ">= 0"),
                ("events", 1 <= self.events <= sys.maxsize, f"1 to {sys.maxsize}"),
            ],
        )

    def load(self, det: Detector, progress: str | None = None) -> list[Event]:
        """The events; with ``progress``, a bar of that name over those simulated."""
        if self.recording:
            from streamtrk.io.recording import iter_events

            events = list(islice(iter_events(Path(self.recording)), self.events))
            if len(events) < self.events:
                raise ValueError(
                    f"{self.recording} holds {len(events)} events, fewer than the "
                    f"{self.events} asked for"
                )
            return events
        from streamtrk.sim.generator import GeneratorConfig
        from streamtrk.sim.simulate import SimConfig, simulate

        gen = replace(GeneratorConfig(), mu=self.mu)
        cfg = SimConfig(generator=gen, noise_fraction=self.noise)
        made = simulate(det, cfg, self.seed, self.events)
        return list(tqdm(made, progress, self.events, unit="event", disable=progress is None))

    def card(self) -> dict[str, Any]:
        """What a model card records of these events: the recording and the count, or the
        simulation's settings."""
        if self.recording:
            return {"recording": self.recording, "events": self.events}
        return {k: v for k, v in asdict(self).items() if k != "recording"}


@dataclass(frozen=True)
class OptimConfig:
    epochs: int = 10
    lr: float = 2e-3
    lr_min: float = 1e-4
    warmup_steps: int = 50
    pos_weight: float = 4.0
    grad_clip: float = 1.0
    patience: int = 3
    sectors: int = 8
    sector_margin: float = 0.1  # rad of hits kept around a sector

    def __post_init__(self) -> None:
        require(
            self,
            [
                ("epochs", self.epochs >= 1, ">= 1"),
                ("lr", 0 < self.lr < math.inf, "a finite number > 0"),
                ("lr_min", 0 <= self.lr_min <= self.lr, "in [0, lr]"),
                ("warmup_steps", self.warmup_steps >= 0, ">= 0"),
                ("pos_weight", 0 < self.pos_weight < math.inf, "a finite number > 0"),
                ("grad_clip", 0 < self.grad_clip < math.inf, "a finite number > 0"),
                ("patience", self.patience >= 1, ">= 1"),
                ("sectors", self.sectors >= 1, ">= 1"),
                ("sector_margin", 0 <= self.sector_margin < math.pi, "in [0, pi) rad"),
            ],
        )


# The card's metrics of the validation and test events: no report may take their label.
CARD_OWN_METRICS = ("validation", "test")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on (the config file, parsed)."""

    name: str
    seed: int = 0
    threads: int = 1  # torch threads while training (see models/configs/default.toml)
    pt_min: float = 1.0
    model: GNNConfig = field(default_factory=GNNConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: EventSource = field(default_factory=EventSource)
    val: EventSource = field(default_factory=EventSource)
    test: EventSource | None = None
    prune: PruneConfig | None = None  # [prune]: train on pruned graphs, ship the setting
    tracks: TrackConfig = field(default_factory=TrackConfig)  # [tracks], into the card
    thresholds: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    # label -> TrackML prefix or recording (paths from the working directory, as
    # ``recording``), evaluated for the card only (never for a choice)
    report: dict[str, str] = field(default_factory=dict)

    def inputs(self) -> list[Path]:
        """The files the recipe reads besides itself: its recordings, report inputs and
        pruning windows (a path)."""
        sources = (self.train, self.val, self.test)
        paths = [s.recording for s in sources if s is not None and s.recording]
        paths += list(self.report.values())
        if self.prune is not None and windows_is_path(self.prune.windows):
            paths.append(self.prune.windows)
        return [Path(p) for p in paths]

    def __post_init__(self) -> None:
        plain_name = self.name not in ("", ".", "..") and not set("/\\") & set(self.name)
        require(
            self,
            [
                ("name", plain_name, "a directory name (not empty, no / or \\)"),
                ("seed", self.seed >= 0, ">= 0"),
                ("threads", 1 <= self.threads <= MAX_TORCH_THREADS, f"1 to {MAX_TORCH_THREADS}"),
                ("pt_min", 0 <= self.pt_min < math.inf, "a finite number >= 0 (GeV)"),
                (
                    "thresholds",
                    bool(self.thresholds)
                    and all(map(threshold_ok, self.thresholds))
                    and len(set(self.thresholds)) == len(self.thresholds),
                    "one or more distinct numbers in [0, 1) (1 passes no edge)",
                ),
                (
                    "report",
                    not self.report.keys() & set(CARD_OWN_METRICS),
                    f"labels other than {' and '.join(CARD_OWN_METRICS)} (the card's own metrics)",
                ),
            ],
        )


def load_config(path: str | Path) -> TrainConfig:
    """Parse a training config (see models/configs/default.toml); SettingError for a file
    that is not one (unknown keys, values out of range, splits sharing events), or that
    cannot be read (as the daemon's configuration file: exit status 2)."""
    try:
        raw = tomllib.loads(read_config_text(path, SettingError))
    except NOT_TOML as e:  # UnicodeDecodeError too: a ValueError
        raise SettingError(f"{path}: not valid TOML ({e})") from None
    sub = {
        "model": GNNConfig,
        "graph": GraphConfig,
        "optim": OptimConfig,
        "train": EventSource,
        "val": EventSource,
        "test": EventSource,
        "prune": PruneConfig,
        "tracks": TrackConfig,
    }
    top = {f.name for f in fields(TrainConfig)}
    unknown = sorted(raw.keys() - top)
    if unknown:
        close = sorted({m for k in unknown for m in difflib.get_close_matches(k, top, n=1)})
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise SettingError(f"{path}: unknown keys {', '.join(unknown)}{hint}")
    if "name" not in raw:
        raise SettingError(f"{path}: a config needs a name")
    kw: dict[str, Any] = {
        k: dataclass_from(cls, raw[k], f"{path} [{k}]", error=SettingError)
        for k, cls in sub.items()
        if k in raw
    }
    if "report" in raw:
        if not isinstance(raw["report"], dict):
            raise SettingError(f"{path}: report must be a table of label = path")
        for label, value in raw["report"].items():
            if not isinstance(value, str):
                raise SettingError(
                    f"{path}: report {label} must be a path (a string), got {value!r}"
                )
        kw["report"] = dict(raw["report"])
    scalars = ("name", "seed", "threads", "pt_min", "thresholds")
    given = {**{k: raw[k] for k in scalars if k in raw}, **kw}
    cfg = dataclass_from(TrainConfig, given, str(path), error=SettingError)
    _check_disjoint(cfg, path)
    if cfg.prune is not None:  # read now, not once every split's events are made
        try:
            read_windows(cfg.prune.windows)
        except ValueError as e:
            raise SettingError(f"{path} [prune]: {e}") from None
    return cfg


def _check_disjoint(cfg: TrainConfig, path: str | Path) -> None:
    """SettingError when two of train, val and test could hold the same events: simulated
    ones from the same seed, or the same recording (each takes its first events)."""
    splits = {"train": cfg.train, "val": cfg.val, "test": cfg.test}
    seen: dict[tuple[str, object], str] = {}
    for name, src in splits.items():
        if src is None:
            continue
        key = ("recording", src.recording) if src.recording else ("seed", src.seed)
        if key in seen:
            raise SettingError(
                f"{path}: [{seen[key]}] and [{name}] would share events (the same {key[0]} "
                f"{key[1]!r}): give each its own"
            )
        seen[key] = name
