"""The reconstruction chain with oracle edge scores, and the evaluate command."""

import json
import time
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pytest
from test_truth import _event

from streamtrk.cli import main
from streamtrk.detector import MAX_BEAM_SPOT
from streamtrk.eval.evaluate import evaluate
from streamtrk.event import Event, Hits
from streamtrk.io.trackml import read_submission
from streamtrk.recon import reconstructor as reconstructor_module
from streamtrk.recon.budget import Budget, EventTooDense
from streamtrk.recon.graph import Graph, build_graph
from streamtrk.recon.load import load_reconstructor
from streamtrk.recon.prune import PruneConfig
from streamtrk.recon.reconstructor import STAGES, OracleScorer, Reconstructor
from streamtrk.recon.tracks import TrackConfig
from streamtrk.recon.truth import true_segments
from streamtrk.sim.generator import GeneratorConfig
from streamtrk.sim.simulate import SimConfig, simulate
from streamtrk.xp import index_of

REPORT_KEYS = {
    "tracking_efficiency",
    "tracking_efficiency_all",
    "fake_rate",
    "duplicate_rate",
    "trackml_score",
    "graph_edge_efficiency",
    "graph_edge_purity",
    "gnn_edge_efficiency",
    "gnn_edge_purity",
    "events",
    "seconds_per_event",
    "stage_seconds",
    "q_over_pt_pull_by_true_pt",
    "d0_pull_by_true_pt",
    "z0_pull_by_true_pt",
    "phi_resolution_by_true_pt",
    "phi_pull_by_true_pt",
}


def test_oracle_reaches_the_ceiling_on_mu200(mu200_events):
    report = evaluate(Reconstructor.oracle(), mu200_events, batch_size=3).report()
    assert report["events"] == 3
    assert report["tracking_efficiency"] >= 0.99
    assert report["fake_rate"] <= 0.01
    assert report["graph_edge_efficiency"] >= 0.99
    assert set(report["stage_seconds"]) == set(STAGES)


@pytest.mark.parametrize("field_sign", [1, -1])
def test_either_direction_of_the_field(det, field_sign):
    """With the field along -z tracks turn the other way: the chain builds their graph and
    tracks as with +z, and the fit gives the particles' charges."""
    d = replace(det, bfield=field_sign * det.bfield)
    events = list(simulate(d, SimConfig(generator=GeneratorConfig(mu=5)), seed=11, n_events=1))
    rec = Reconstructor.oracle(detector=d)
    assert evaluate(rec, events).report()["tracking_efficiency"] >= 0.97
    tracks, truth = rec.reconstruct(events).tracks[0], events[0].truth
    assert truth is not None
    pid = truth.hits.particle_id[tracks.hit_index[tracks.offsets[:-1]]]
    row, found = index_of(truth.particles.particle_id, pid)
    assert found.sum() > 50
    assert np.array_equal(tracks.params["charge"][found], truth.particles.q[row[found]])


def test_an_empty_batch_or_a_nan_coordinate_is_a_clear_error(small_events):
    rec = Reconstructor.oracle()
    with pytest.raises(ValueError, match="a batch needs at least one event"):
        rec.reconstruct([])
    ev = small_events[0]
    cols = {k: v.copy() for k, v in ev.hits.columns().items()}
    cols["z"][7] = np.nan
    bad = Event(ev.run, ev.event, Hits(**cols))
    with pytest.raises(ValueError, match=f"event {ev.run}/{ev.event}: a hit coordinate is NaN"):
        rec.reconstruct([small_events[1], bad])


def test_a_hit_at_the_end_of_float32s_range_is_on_no_track_and_warns_nothing(small_events):
    """3.4e38 mm is finite (the wire takes it) but past float32's range once scaled: the
    pruning's geometry reads it as infinitely far, without a RuntimeWarning (a daemon's JSON
    log would get its raw lines; the suite turns warnings into errors)."""
    ev = small_events[0]
    cols = {k: v.copy() for k, v in ev.hits.columns().items()}
    cols["x"][7] = cols["y"][7] = np.float32(3.4e38)
    far = Event(ev.run, ev.event, Hits(**cols), ev.truth)
    (tracks,) = Reconstructor.oracle(prune=PruneConfig()).reconstruct([far]).tracks
    assert len(tracks.offsets) > 100 and 7 not in tracks.hit_index


def test_batching_does_not_change_tracks(small_events):
    rec = Reconstructor.oracle()
    both = rec.reconstruct(small_events).tracks
    for ev, batched in zip(small_events, both, strict=True):
        alone = rec.reconstruct([ev]).tracks[0]
        assert np.array_equal(alone.offsets, batched.offsets)
        assert np.array_equal(alone.hit_index, batched.hit_index)
        assert np.array_equal(alone.params["pt"], batched.params["pt"])


def test_each_stage_is_timed_the_columns_upload_apart_from_the_graph(small_events):
    # On CUDA the copy up is asynchronous: untimed, it landed in the graph stage's time.
    timings = Reconstructor.oracle().reconstruct(small_events).timings
    assert list(timings) == ["upload", "graph", "prune", "gnn", "tracks", "fit"] == list(STAGES)
    assert all(t >= 0 for t in timings.values()) and timings["upload"] > 0


def test_the_chain_follows_a_displaced_beam_line(small_events):
    """An event moved by (1.5, -1) mm (collisions off the z axis): centred on that beam line,
    the shipped chain finds the tracks it finds in the event in place, with the same
    parameters (d0, phi and z0 now of the perigee to that beam line); not centred, it loses
    tracks to the graph's cuts, which expect the collisions on the axis."""
    ev, shift = small_events[0], (1.5, -1.0)
    cols = {k: v.copy() for k, v in ev.hits.columns().items()}
    for name, d in zip("xy", shift, strict=True):
        cols[name] = cols[name] + cols[name].dtype.type(d)
    moved = replace(ev, hits=Hits(**cols))

    def hit_lists(tracks):
        return {
            tuple(tracks.hit_index[a:b].tolist()): k
            for k, (a, b) in enumerate(zip(tracks.offsets[:-1], tracks.offsets[1:], strict=True))
        }

    here = load_reconstructor().reconstruct([ev]).tracks[0]
    followed = load_reconstructor(beam_spot=shift).reconstruct([moved]).tracks[0]
    lost = load_reconstructor().reconstruct([moved]).tracks[0]
    a, b = hit_lists(here), hit_lists(followed)
    same = a.keys() & b.keys()
    assert len(same) >= 0.995 * len(a) > 100 and len(b) <= 1.005 * len(a)
    i, j = [a[t] for t in same], [b[t] for t in same]
    for name in ("pt", "eta", "phi", "d0", "z0", "charge", "chi2"):
        assert np.allclose(here.params[name][i], followed.params[name][j], rtol=1e-3, atol=1e-3)
    assert len(a.keys() & hit_lists(lost).keys()) < 0.9 * len(a)
    with pytest.raises(ValueError, match="beam_spot must be finite and within 20 mm"):
        Reconstructor.oracle(beam_spot=(15.0, 15.0))


@pytest.mark.parametrize("threshold", [float("nan"), 1.0, 2.0, -0.1])
def test_a_threshold_outside_zero_to_one_is_refused(threshold: float) -> None:
    """An edge passes above the threshold: these would pass every edge or none, silently."""
    with pytest.raises(ValueError, match=r"threshold must lie in \[0, 1\)"):
        Reconstructor.oracle(threshold=threshold)
    with pytest.raises(ValueError, match=r"threshold must lie in \[0, 1\)"):
        load_reconstructor(threshold=threshold)


def test_tracks_are_disjoint_and_long_enough(small_events):
    tracks = Reconstructor.oracle().reconstruct(small_events[:1]).tracks[0]
    assert len(tracks) > 100
    assert np.all(tracks.sizes >= 3)
    assert len(np.unique(tracks.hit_index)) == len(tracks.hit_index)
    errors = {f"sigma_{k}" for k in ("q_over_pt", "eta", "phi", "d0", "z0")}
    pairs = ("q_over_pt_phi", "q_over_pt_d0", "phi_d0", "eta_z0")
    names = {"pt", "eta", "phi", "d0", "z0", "charge", "chi2", "ndf"} | errors
    assert set(tracks.params) == names | {f"corr_{pair}" for pair in pairs}
    corr = np.stack([tracks.params[f"corr_{pair}"] for pair in pairs])
    assert np.all(np.abs(corr) <= 1)


def test_track_settings_apply_in_the_chain(small_events):
    cfg = TrackConfig(stitch_threshold=0.1, min_hits=4, short_hits=6, max_chi2_ndf=2.0, max_d0=1.0)
    tracks = Reconstructor.oracle(tracks=cfg).reconstruct(small_events[:1]).tracks[0]
    plain = Reconstructor.oracle().reconstruct(small_events[:1]).tracks[0]
    assert 100 < len(tracks) < len(plain)
    assert np.all(tracks.sizes >= 4)
    p, short = tracks.params, tracks.sizes < 6
    assert np.all(p["chi2"][short] <= 2.0 * p["ndf"][short])
    assert np.all(np.abs(p["d0"][short]) <= 1.0)
    assert len(np.unique(tracks.hit_index)) == len(tracks.hit_index)


def test_evaluate_command_writes_report_plots_and_submission(tmp_path, small_events, capsys):
    rec = tmp_path / "run.stk"
    assert (
        main(["simulate", "--events", "2", "--mu", "20", "--seed", "3", "-q", "-o", str(rec)]) == 0
    )
    out = tmp_path / "out"
    rc = main(
        [
            "evaluate",
            str(rec),
            "--oracle",
            "-q",
            "--report",
            str(out / "r.json"),
            "--plots",
            str(out / "plots"),
            "--submission",
            str(out / "sub.csv"),
        ]
    )
    assert rc == 0
    report = json.loads((out / "r.json").read_text())
    assert set(report) >= REPORT_KEYS
    assert json.loads(capsys.readouterr().out) == report
    names: tuple[str, ...] = (
        "efficiency_vs_pt",
        "efficiency_vs_eta",
        "efficiency_vs_vertex_r",
        "fake_rate_vs_eta",
        "pt_resolution_vs_pt",
    )
    names += ("pulls",)
    for name in (f"{n}.png" for n in names):
        assert (out / "plots" / name).read_bytes()[:4] == b"\x89PNG"
    sub = read_submission(out / "sub.csv")
    assert sorted(sub) == [0, 1]
    assert all(tid.min() >= 0 and tid.max() >= 1 for _, tid in sub.values())


@pytest.mark.realdata
def test_oracle_on_the_real_event(shared_trackml, capsys):
    prefix = shared_trackml / "qallse_ez-0.5_hpt-1.0" / "event000001000"
    assert main(["evaluate", str(prefix), "--oracle", "-q"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tracking_efficiency"] >= 0.98
    assert report["graph_edge_efficiency"] >= 0.98


def test_a_beam_spot_at_the_limit_is_accepted() -> None:
    """A beam spot "within 20 mm" of the axis: 20 mm is."""
    assert Reconstructor.oracle(beam_spot=(MAX_BEAM_SPOT, 0.0)).beam_spot == (MAX_BEAM_SPOT, 0.0)


def test_either_fit_cut_applies_alone(small_events):
    """A card with only max_d0, or only max_chi2_ndf, cuts tracks (not both needed)."""
    plain = Reconstructor.oracle().reconstruct(small_events[:1]).tracks[0]
    for cfg in (TrackConfig(max_d0=0.05), TrackConfig(max_chi2_ndf=0.5)):
        cut = Reconstructor.oracle(tracks=cfg).reconstruct(small_events[:1]).tracks[0]
        assert len(cut) < len(plain), cfg


def test_the_graph_windows_reach_as_far_as_the_beam_spot(small_events, monkeypatch):
    """The chain widens the graph's windows by the beam spot's distance from the axis."""
    seen = []

    def spy(**kwargs):
        seen.append(kwargs["beam_offset"])
        return build_graph(**kwargs)

    monkeypatch.setattr(reconstructor_module, "build_graph", spy)
    Reconstructor.oracle(beam_spot=(3.0, -4.0)).reconstruct(small_events[:1])
    assert seen == [pytest.approx(5.0)]


def test_the_oracle_labels_the_edges_of_each_events_first_hit():
    """In a batch, an edge from an event's first hit is that event's (not the one before)."""
    hits = [(1, 0, 8, 2), (1, 1, 8, 4), (1, 2, 8, 6), (2, 0, 8, 2), (2, 1, 8, 4)]
    ev = _event(hits, {1: 2.0, 2: 3.0})
    seg = true_segments(ev, 0.0)
    n = len(ev.hits)
    ei = np.concatenate([seg, seg + n], axis=1)  # the event twice, batched
    assert (ei[0] == n).any()  # an edge from the second event's first hit
    g = Graph(
        np.zeros((2 * n, 3), np.float32),
        ei,
        np.zeros((ei.shape[1], 6), np.float32),
        np.array([0, n, 2 * n]),
        np.zeros(2 * n, np.int64),
    )
    assert (OracleScorer()(g, [ev, ev]) == 1).all()


class _Constant:
    """An EdgeScorer giving every edge the same score."""

    def __init__(self, score: float) -> None:
        self.score = score

    def __call__(self, graph: Graph, events: Sequence[Event]) -> np.ndarray:
        return np.full(graph.num_edges, self.score, dtype=np.float32)


def test_edges_pass_above_the_threshold_given(small_events: list[Event]) -> None:
    """Every edge scored 0.3: the chain builds tracks at threshold 0.2 and none at the
    default, 0.5."""
    events = small_events[:1]
    assert len(Reconstructor(_Constant(0.3), threshold=0.2).reconstruct(events).tracks[0]) > 100
    assert len(Reconstructor(_Constant(0.3)).reconstruct(events).tracks[0]) == 0


def test_a_device_of_neither_kind_is_refused() -> None:
    with pytest.raises(ValueError, match=r"device must be 'cpu' or 'cuda', got 'gpu'"):
        Reconstructor.oracle(device="gpu")


def test_the_result_holds_the_graph_as_built_and_the_pruned_graph_scored(
    small_events: list[Event],
) -> None:
    """With pruning, ``built`` is the graph before it and ``graph`` the one scored (fewer
    edges, one score each); without, they are one graph."""
    result = Reconstructor.oracle(prune=PruneConfig()).reconstruct(small_events)
    assert 0 < result.graph.num_edges < result.built.num_edges
    assert result.scores.shape == (result.graph.num_edges,)
    assert np.array_equal(result.node_offsets, result.built.node_offsets)
    assert result.node_offsets[-1] == sum(len(ev.hits) for ev in small_events)
    plain = Reconstructor.oracle().reconstruct(small_events[:1])
    assert plain.graph is plain.built


def test_layer_hits_count_the_batchs_hits_and_those_on_its_tracks(
    small_events: list[Event],
) -> None:
    """Row 0: every hit of the batch in its layer's cell; row 1: the hits on tracks."""
    rec = Reconstructor.oracle()
    result = rec.reconstruct(small_events)
    assert result.layer_hits.shape == (2, rec.detector.layer_lut.size)
    assert result.layer_hits[0].sum() == sum(len(ev.hits) for ev in small_events)
    on_tracks = sum(len(t.hit_index) for t in result.tracks)
    assert 0 < result.layer_hits[1].sum() == on_tracks < result.layer_hits[0].sum()
    assert (result.layer_hits[1] <= result.layer_hits[0]).all()


def test_a_stage_is_timed_with_its_work(small_events: list[Event]) -> None:
    """The time of a stage is that of its work: a scorer taking 50 ms shows in ``gnn``."""

    def slow(graph: Graph, events: Sequence[Event]) -> np.ndarray:
        time.sleep(0.05)
        return OracleScorer()(graph, events)

    timings = Reconstructor(slow).reconstruct(small_events[:1]).timings
    assert timings["gnn"] >= 0.05


def test_the_chain_keeps_to_the_budget_it_is_given(small_events: list[Event]) -> None:
    """A budget given to the reconstructor is the one its graph is built within: a budget
    of no doublets refuses an ordinary event, which the default budget admits."""
    tight = Budget(edges_per_hit=0.0, allowance=0)
    with pytest.raises(EventTooDense, match="too many doublets"):
        Reconstructor.oracle(budget=tight).reconstruct(small_events[:1])
    assert len(Reconstructor.oracle().reconstruct(small_events[:1]).tracks[0]) > 100


def test_the_prune_stage_is_timed_apart_from_the_graph(small_events: list[Event]) -> None:
    """In a chain that prunes, pruning has its own time, not added to or over the graph's."""
    timings = Reconstructor.oracle(prune=PruneConfig()).reconstruct(small_events[:1]).timings
    assert list(timings) == list(STAGES)
    assert timings["prune"] > 0 and timings["graph"] > 0
