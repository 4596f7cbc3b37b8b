"""Training the edge classifier on simulated events, and the model card that comes with it.

Recipe: events are simulated from the config's seeds (or read from a recording), their
graphs built once and kept in memory. Training graphs are cut into overlapping phi sectors
(small graphs train faster per edge on the CPU and give more optimiser steps); each edge
counts in the loss of exactly one sector, the one holding its inner hit, and a margin of
hits around the sector gives it its neighbourhood. Targets are true segments of particles
with pT >= ``pt_min``; true segments of softer particles are left out of the loss (the
network cannot tell 0.9 from 1.1 GeV) rather than counted as negatives. The loss is binary
cross-entropy with ``pos_weight`` on the positives; Adam with a linear warm-up and a cosine
decay; validation on full held-out events after every epoch; early stopping on the
validation loss, keeping the best epoch.

After training, the default edge-score threshold is chosen on the validation events: the
full reconstruction is scored at each candidate threshold and, of those that build a
track, the one maximising ``tracking_efficiency - fake_rate - duplicate_rate`` is kept.
The model is then evaluated on held-out test events and on the ``report`` inputs (reported
in the card, never used for a choice). Before anything is trained, no event may be in two
of train, validation, test and the report inputs (compared by hit positions and by the
truth's particle momenta, half the particles of either shared, whatever file or seed each
came from).

The recipe's parts: ``config`` (the recipe file), ``samples`` (graphs, targets, sectors),
``loop`` (optimisation), ``threshold`` (the default threshold), and ``train`` here.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import math
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, replace
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from streamtrk.detector import load_detector
from streamtrk.errors import SettingError
from streamtrk.event import Event
from streamtrk.io.events import read_events
from streamtrk.io.paths import check_writable
from streamtrk.io.recording import exclusive_lock
from streamtrk.recon.card import model_card
from streamtrk.recon.gnn import GNNScorer, InteractionNetwork
from streamtrk.recon.load import ChainSettings
from streamtrk.recon.model import save_model
from streamtrk.recon.prune import MODEL_WINDOWS_FILE, PruneConfig, windows_is_path
from streamtrk.stop import stop_on_signals
from streamtrk.train.config import EventSource, OptimConfig, TrainConfig, load_config
from streamtrk.train.loop import fit, plot_history
from streamtrk.train.samples import Sample, make_samples
from streamtrk.train.threshold import CachedScorer, scan_thresholds
from streamtrk.xp import to_host

__all__ = [
    "CachedScorer",
    "EventSource",
    "OptimConfig",
    "Sample",
    "TrainConfig",
    "check_no_shared_events",
    "hits_fingerprint",
    "load_config",
    "make_samples",
    "scan_thresholds",
    "train",
]

CARD_METRICS = (
    "tracking_efficiency",
    "tracking_efficiency_all",
    "fake_rate",
    "duplicate_rate",
    "trackml_score",
    "gnn_edge_efficiency",
    "gnn_edge_efficiency_all",
    "gnn_edge_purity",
    "graph_edge_efficiency",
    "graph_edge_purity",
    "events",
    "events_with_truth",  # the physics keys are of these (0: none, and they are absent)
    "hits_per_event",
    "edges_per_hit",
    "seconds_per_event",
)


def evaluate_model(
    model: InteractionNetwork,
    events: Iterable[Event],
    cfg: TrainConfig,
    threshold: float,
    progress: bool = False,
) -> dict[str, float]:
    """The ``streamtrk evaluate`` figures of the card (see CARD_METRICS)."""
    from streamtrk.eval.evaluate import evaluate

    rec = ChainSettings(threshold, cfg.graph, cfg.prune, cfg.tracks).reconstructor(GNNScorer(model))
    report = evaluate(rec, events, progress=progress).report()
    out = {k: report[k] for k in CARD_METRICS if k in report}
    out["gnn_seconds_per_event"] = report["stage_seconds"]["gnn"]
    return out


def _reconstructable(event: Event) -> bool:
    """Whether ``event`` holds a particle the tracking efficiency counts."""
    from streamtrk.eval.score import classify

    return bool(classify(event, np.zeros(len(event.hits), dtype=np.int64)).reconstructable.any())


def train(
    cfg: TrainConfig,
    out: Path,
    *,
    config_text: str = "",
    command: str = "",
    progress: bool = True,
    overwrite: bool = False,
    recipe: Path | None = None,
) -> dict[str, Any]:
    """The whole recipe: data, fit, threshold, evaluation; the model is built in
    ``OUT.partial`` and takes the place of ``out`` when it is complete. ``out`` holding
    anything is refused before any work unless ``overwrite``; a run that fails or is
    interrupted leaves ``out`` as it was (its checkpoints stay in ``OUT.partial``). With
    ``progress``, each stage is named on stderr as it starts; a report input that is not
    found is said there in any case (the card records it as skipped). Runs with the
    recipe's ``threads`` torch threads (the card records them; the count is restored
    after). The ``recipe`` file and the files it reads inside ``out`` are refused before
    any work: the new model replaces ``out`` whole."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        reads = [*([] if recipe is None else [recipe]), *cfg.inputs()]
        with _work_directory(out, overwrite, reads) as work:
            return _train(cfg, out, work, config_text, command, progress)
    finally:
        torch.set_num_threads(before)


def _train(
    cfg: TrainConfig, out: Path, work: Path, config_text: str, command: str, progress: bool
) -> dict[str, Any]:
    t_start = time.perf_counter()

    def stage(what: str) -> None:
        if progress:
            print(f"train: {what}", file=sys.stderr, flush=True)

    det = load_detector()
    o = cfg.optim
    _check_allocatable(cfg)  # before the events, which can take hours
    stage("the events: training, validation, test and report")

    def bar(split: str) -> str | None:
        return f"simulate {split}" if progress else None

    train_events = cfg.train.load(det, bar("train"))
    val_events = cfg.val.load(det, bar("validation"))
    for split, source, events in (("train", cfg.train, train_events), ("val", cfg.val, val_events)):
        if bare := next((e for e in events if e.truth is None), None):  # [test]: unscored
            raise ValueError(
                f"[{split}] {source.recording}: run {bare.run} event {bare.event} has no "
                "truth, which training and validation need (a recording from simulate has "
                "it; import-trackml keeps a -truth.csv with its -particles.csv)"
            )
    if not any(_reconstructable(e) for e in val_events):  # before hours of fitting
        raise ValueError(
            f"[val] {cfg.val.recording or f'simulated (mu {cfg.val.mu:g}, seed {cfg.val.seed})'}"
            f": none of its {len(val_events)} events "
            "holds a reconstructable particle (pT >= 1 GeV, >= 5 hits, a vertex within 10 mm "
            "of the axis; particles read without their momenta have none): the threshold, "
            "chosen by the efficiency on them, could not be"
        )
    test_events = cfg.test.load(det, bar("test")) if cfg.test is not None else None
    reports = {}
    for label, path in cfg.report.items():
        try:
            reports[label] = list(read_events(path))
        except FileNotFoundError as e:  # a recording, folder or event's hits file
            print(f"train: report {label!r}: {path} not found ({e}), skipped", file=sys.stderr)
    check_no_shared_events(
        {"train": train_events, "val": val_events, "test": test_events or []}
        | {f"report {label}": events for label, events in reports.items()}
    )
    stage(f"graphs of {len(train_events)} training and {len(val_events)} validation events")
    graphs = tqdm(train_events, "graphs train", unit="event", disable=not progress)
    train_samples = make_samples(
        graphs, det, cfg.graph, cfg.pt_min, o.sectors, o.sector_margin, cfg.prune
    )
    del train_events, graphs
    graphs = tqdm(val_events, "graphs validation", unit="event", disable=not progress)
    val_samples = make_samples(graphs, det, cfg.graph, cfg.pt_min, prune=cfg.prune)
    t_data = time.perf_counter() - t_start
    model, history = fit(cfg, train_samples, val_samples, work / "checkpoints", progress=progress)
    t_fit = time.perf_counter() - t_start - t_data
    plot_history(history, work / "training.png")
    stage(f"thresholds {list(cfg.thresholds)} on the validation events")
    scan = scan_thresholds(
        GNNScorer(model),
        val_events,
        cfg.graph,
        cfg.thresholds,
        prune=cfg.prune,
        tracks=cfg.tracks,
    )
    _check_useful(scan, work)
    best = min((h for h in history if math.isfinite(h["val_loss"])), key=lambda h: h["val_loss"])
    metrics: dict[str, Any] = {"validation": {k: v for k, v in best.items() if k != "seconds"}}
    if cfg.test is not None and test_events is not None:
        stage(f"evaluation on {len(test_events)} test events")
        test = evaluate_model(model, test_events, cfg, scan["chosen"], progress)
        metrics["test"] = {**cfg.test.card(), **test}
    for label, path in cfg.report.items():
        if label in reports:
            stage(f"evaluation on report {label!r}")
            found = evaluate_model(model, reports[label], cfg, scan["chosen"], progress)
            metrics[label] = {"input": path, **found}
        else:
            metrics[label] = {"input": path, "skipped": "not found"}
    card = model_card(
        cfg.name,
        cfg.model,
        cfg.graph,
        scan["chosen"],
        prune=_carry_windows(cfg.prune, work),
        tracks=cfg.tracks,
        training={
            "simulator_version": _simulator_version(),
            "pt_min": cfg.pt_min,
            "seed": cfg.seed,
            "threads": cfg.threads,
            "train": cfg.train.card(),
            "validation": cfg.val.card(),
            "optim": asdict(o),
            "epochs_run": len(history),
            "best_epoch": int(best["epoch"]),
            # The training graphs' edges (a sector's margin edges are in its neighbours'
            # samples too, and counted once), and those in the loss (no softer segments).
            "train_edges": sum(s.home_edges for s in train_samples),
            "train_edges_in_loss": sum(int(s.counted.sum()) for s in train_samples),
            "parameters": sum(p.numel() for p in model.parameters()),
            "seconds_data": round(t_data, 1),
            "seconds_fit": round(t_fit, 1),
            "seconds_total": round(time.perf_counter() - t_start, 1),
            "history": {k: [h[k] for h in history] for k in history[0]},
        },
        threshold_scan=scan,
        metrics=metrics,
        reproduce={"command": command, "config": config_text},
    )
    save_model(work, model, card)
    # Ctrl-C or SIGTERM during this last step, milliseconds long (between its renames, OUT
    # was gone, the model hidden), are ignored: the run ends complete, as it would have a
    # moment later.
    with stop_on_signals():
        _replace_directory(out, work)
        (out / _BUILDING).unlink()  # after: a failed replacement leaves OUT.partial a run's
    return card


def _check_allocatable(cfg: TrainConfig) -> None:
    """MemoryError, before any work, where the recipe's network cannot be allocated (torch
    raised a bare RuntimeError once the events were simulated and their graphs built)."""
    import torch

    try:
        with torch.random.fork_rng(devices=[]):  # the seeded initial weights unchanged
            InteractionNetwork(cfg.model)
    except RuntimeError as e:
        raise MemoryError(f"the [model] network cannot be allocated: {e}") from None


def _check_useful(scan: dict[str, Any], work: Path) -> None:
    """ValueError where the trained network builds no track of a reconstructable particle
    on the validation events at any scanned threshold: such a model was written, exit 0,
    and with --overwrite took the place of a working one."""
    if any(e > 0 for e in scan["tracking_efficiency"]):  # NaN compares false
        return
    raise ValueError(
        f"the trained network finds no reconstructable particle of the validation events at "
        f"any threshold of {scan['thresholds']} (efficiency {scan['tracking_efficiency']}): "
        f"not written (--out is left as it was; the checkpoints are in {work}); a lower "
        "[optim] lr, more epochs or more training events?"
    )


def _carry_windows(prune: PruneConfig | None, work: Path) -> PruneConfig | None:
    """``prune`` as the card names it: windows of the recipe's own (a path) are copied into
    the model directory as ``MODEL_WINDOWS_FILE``, which a model's loading looks for there
    first, so that the model serves on another host or from another folder."""
    if prune is None or not windows_is_path(prune.windows):  # the package's own, by name
        return prune
    shutil.copyfile(prune.windows, work / MODEL_WINDOWS_FILE)
    return replace(prune, windows=MODEL_WINDOWS_FILE)


#: In ``OUT.partial`` while a run builds it, under the run's ``flock``.
_BUILDING = ".building"


@contextlib.contextmanager
def _work_directory(out: Path, overwrite: bool, reads: Sequence[Path] = ()) -> Iterator[Path]:
    """``OUT.partial`` beside ``out``, made for the run and held while it lasts (the
    ``flock`` of its :data:`_BUILDING` file): another run of the same ``out`` is refused,
    not mixed into it; what an earlier run left there is removed, a folder of that name that
    no run made is refused. Removed when the block raises before anything is written in it.
    SettingError when ``out`` is not a directory (or is a symbolic link), holds one of the
    files the run ``reads``, or holds anything and not ``overwrite``; OSError when
    ``OUT.partial`` cannot be made there. All of it before any work."""
    if out.name in ("", ".", ".."):  # Path(".").with_name() would raise, unclearly
        raise SettingError(
            f"--out {out} names no directory of its own: give the model directory's name "
            "(models/NAME)"
        )
    if Path.cwd().is_relative_to(out.resolve()):  # "." is refused above, its path was not
        raise SettingError(
            f"--out {out} is the working directory or holds it, which the new model would "
            "replace whole: give the model directory's name (models/NAME)"
        )
    if out.is_symlink():  # replaced, the link would become a directory, its target kept
        raise SettingError(
            f"{out} is a symbolic link (to {out.readlink()}): give the model a directory of its "
            "own, then point the link at it"
        )
    if out.exists() and not out.is_dir():
        raise SettingError(f"{out} exists and is not a directory")
    for read in reads:  # the recipe's own inputs: replaced with the directory
        if read.resolve().is_relative_to(out.resolve()):
            raise SettingError(
                f"{read} is inside --out {out}, which the new model replaces whole: move it "
                "out of there"
            )
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise SettingError(
            f"{out} exists and is not empty: give another --out, or --overwrite to replace it "
            "once the new model is complete"
        )
    work = out.with_name(out.name + ".partial")
    check_writable(work, folder=True)
    mark = work / _BUILDING
    if work.exists():
        if work.is_symlink() or not mark.is_file():
            raise SettingError(
                f"{work} is no folder a train run left (it holds no {_BUILDING}): move it "
                "away, or give another --out"
            )
        held = _claim(mark, out)
        try:
            shutil.rmtree(work)  # an error now, not stale checkpoints mixed into the new model
        finally:
            os.close(held)
    try:
        work.mkdir(parents=True)  # models/ made too where there is none
    except FileExistsError:  # another run made it since
        raise _building(out, work) from None
    held = _claim(mark, out)
    try:
        yield work
    except BaseException:
        with contextlib.suppress(OSError):
            if [p.name for p in work.iterdir()] == [_BUILDING]:  # nothing trained
                shutil.rmtree(work)
        raise
    finally:
        os.close(held)


def _claim(mark: Path, out: Path) -> int:
    """A descriptor holding ``mark``'s exclusive ``flock``; SettingError where another run
    holds it, or got there first: removed the folder, or made another ``mark`` there (a
    lock taken on the file removed is no claim on its name)."""
    try:
        fd = exclusive_lock(mark)
    except FileNotFoundError:  # its folder removed since
        raise _building(out, mark.parent) from None
    except OSError as e:
        if e.errno == errno.EAGAIN:
            raise _building(out, mark.parent) from None
        raise
    try:
        if os.path.samestat(os.fstat(fd), os.stat(mark)):
            return fd
    except FileNotFoundError:
        pass
    os.close(fd)
    raise _building(out, mark.parent)


def _building(out: Path, work: Path) -> SettingError:
    return SettingError(
        f"another train run is building {out} (in {work}): wait for it to end, or give "
        "another --out"
    )


def _replace_directory(out: Path, work: Path) -> None:
    """Rename ``work`` to ``out``, the old ``out`` (if any) moved aside first, into a new
    directory of its own beside it (no other is touched), then removed: ``out`` is always
    one whole model, old or new (or briefly absent)."""
    if not out.exists():
        work.rename(out)
        return
    aside = Path(tempfile.mkdtemp(dir=out.parent, prefix=f"{out.name}.old-"))
    old = aside / out.name
    out.rename(old)
    work.rename(out)
    shutil.rmtree(aside, ignore_errors=True)


def check_no_shared_events(splits: dict[str, list[Event]]) -> None:
    """ValueError when one event is in two of ``splits`` (the same hit positions in any
    order, or half the particles of either the same): a recording of the test seed given as
    training data, the same seed simulated with other noise, detector faults or a hard
    scatter added, or the report's real event recorded and trained on. The recipe file's
    check sees only seeds and paths."""
    seen: dict[bytes, tuple[str, Event]] = {}
    for name, events in splits.items():
        for event in events:
            other = seen.setdefault(hits_fingerprint(event), (name, event))
            if other[0] != name:
                raise _shared(other, (name, event), "have the same hits")
    _check_no_shared_particles(splits)


def hits_fingerprint(event: Event) -> bytes:
    """A digest of an event's hit positions that neither the rows' order nor the hits' ids
    change: the same crossing read from TrackML files or from a recording gives one."""
    h = event.hits
    return _rows_digest(b"hits", to_host(h.x), to_host(h.y), to_host(h.z))


def _check_no_shared_particles(splits: dict[str, list[Event]]) -> None:
    """ValueError when events of two splits share half the particles of either (by their
    momenta, where the truth knows them: unchanged by noise, dead or noisy layers, overlaps,
    the beam spot, or particles added)."""
    owners: list[tuple[str, Event]] = []
    momenta: list[np.ndarray] = []
    for name, events in splits.items():
        for event in events:
            if event.truth is None:
                continue
            p = event.truth.particles
            rows = np.stack([to_host(p.px), to_host(p.py), to_host(p.pz)], axis=1)
            rows = rows[np.isfinite(rows).all(axis=1)]  # the particles whose momenta are known
            if len(rows):
                owners.append((name, event))
                momenta.append(rows.astype(np.float64))
    if len(momenta) < 2:
        return
    which = np.repeat(np.arange(len(momenta)), [len(m) for m in momenta])
    _, group = np.unique(np.concatenate(momenta), axis=0, return_inverse=True)
    order = np.lexsort((which, group.ravel()))
    group, which = group.ravel()[order], which[order]
    shared: Counter[tuple[int, int]] = Counter()
    bounds = np.flatnonzero(np.diff(group)) + 1
    starts, ends = np.r_[0, bounds], np.r_[bounds, len(group)]
    for first, end in zip(starts[ends - starts > 1], ends[ends - starts > 1], strict=True):
        shared.update(combinations(sorted(set(which[first:end].tolist())), 2))
    for (a, b), n in shared.most_common():
        if owners[a][0] != owners[b][0] and 2 * n >= min(len(momenta[a]), len(momenta[b])):
            particles = f"share {n} of their {len(momenta[a])} and {len(momenta[b])} particles"
            raise _shared(owners[a], owners[b], f"{particles} (by momentum)")


def _shared(first: tuple[str, Event], second: tuple[str, Event], what: str) -> ValueError:
    (a, x), (b, y) = first, second
    return ValueError(
        f"[{a}] event ({x.run}, {x.event}) and [{b}] event ({y.run}, {y.event}) {what}: "
        "the model would be judged on what it was trained or tuned on"
    )


def _rows_digest(kind: bytes, *columns: np.ndarray) -> bytes:
    rows = np.stack(columns, axis=1)
    rows = np.ascontiguousarray(rows[np.lexsort(rows.T[::-1])])
    return hashlib.blake2b(kind + rows.tobytes(), digest_size=16).digest()


def _simulator_version() -> int:
    from streamtrk.sim.simulate import SIMULATOR_VERSION

    return SIMULATOR_VERSION
