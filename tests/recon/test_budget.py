"""Work budgets: an event whose graph would pass its budget is refused, by name, before the
graph is made; simulated events are far within it."""

from __future__ import annotations

import numpy as np
import pytest
from piles import pile

from streamtrk.detector import BARREL
from streamtrk.event import Event, Hits
from streamtrk.recon.budget import Budget, EventTooDense, enforce, event_by_event, per_event
from streamtrk.recon.graph import (
    KERNELS,
    GraphConfig,
    batch_columns,
    batch_graph,
    prepare_search,
    search_arrays,
    search_kernels,
)
from streamtrk.recon.graph import _build as build_whole
from streamtrk.recon.prune import PruneConfig, prune_edges
from streamtrk.recon.reconstructor import Reconstructor


@pytest.mark.parametrize(
    ("k", "what"),
    [(2000, "doublet candidates"), (400, "doublets")],
)
def test_a_pile_of_hits_is_refused_before_its_graph_is_made(det, k, what) -> None:
    with pytest.raises(
        EventTooDense, match=f"too many {what} \\(event 0 of the batch: "
    ) as refused:
        batch_graph([pile(det, k)], det)
    assert refused.value.events == [0] and refused.value.reason == "too_dense"
    assert refused.value.counts[0] > refused.value.limits[0]


def test_triplet_candidates_are_checked_before_pruning_expands_them(det) -> None:
    g = batch_graph([pile(det, 60)], det)  # within the doublet budget
    with pytest.raises(
        EventTooDense, match=r"too many triplet candidates \(event 0 of the batch: 864,000 >"
    ):
        prune_edges(g, PruneConfig(), det)


def test_every_dense_event_of_a_batch_is_named(det, small_events) -> None:
    """Event by event (the CPU), and built whole (the GPU's way: arrays, and the kernels
    built for the host): the same events, by their place in the batch."""
    a, b = small_events
    batch = [a, pile(det, 2000, 2), b, pile(det, 2000, 4)]
    with pytest.raises(EventTooDense) as one_by_one:
        batch_graph(batch, det)
    assert one_by_one.value.events == [1, 3]
    cols, offsets = batch_columns(batch)
    with pytest.raises(EventTooDense) as whole:
        build_whole(list(cols.values()), offsets, det, GraphConfig())
    assert whole.value.events == [1, 3] and whole.value.counts == one_by_one.value.counts


def test_the_reconstructor_names_the_refused_events_by_number(det, small_events) -> None:
    rec = Reconstructor.oracle(detector=det, prune=PruneConfig())
    with pytest.raises(EventTooDense, match=r"\(run 1 event 8: 20,000,000 > ") as refused:
        rec.reconstruct([small_events[0], pile(det, 2000, 8)])
    assert refused.value.events == [1]


def test_each_event_is_named_with_what_it_passed(det) -> None:
    with pytest.raises(EventTooDense) as refused:
        batch_graph([pile(det, 2000, 1), pile(det, 400, 2)], det)
    assert refused.value.events == [0, 1]
    assert refused.value.whats == ["doublet candidates", "doublets"]
    assert "too many doublets (event 1 of the batch: " in str(refused.value)


def test_an_event_past_its_doublet_budget_is_refused_before_all_are_built(det) -> None:
    """The CPU search counts the doublets as it finds them: the pile's 800,000 (all of
    them, as the kernels count: ``test_the_kernels_check_the_same_budget``) are not all
    built to learn that 602,400 were too many; a pile of a MU=200 event's size made 30
    million, 2.6 GiB, to be refused."""
    with pytest.raises(EventTooDense) as refused:
        batch_graph([pile(det, 400)], det)
    [count], [limit] = refused.value.counts, refused.value.limits
    assert limit == 602_400 and limit < count < 800_000


@pytest.mark.parametrize(
    ("x", "volume_id"),
    [(500.0, 99), (0.0, None), (1e6, None)],
    ids=["no such volume", "on the beam line", "far off its layer"],
)
def test_hits_that_can_make_no_edge_do_not_raise_the_limit(det, x, volume_id) -> None:
    """Hits on no layer of the detector, or labelled with one but placed where it is not
    (the beam line, a kilometre off), cost nothing and must buy no budget: 70,000 of them
    made room for any pile (those on the beam line for 4.5 million doublets)."""
    dense = pile(det, 400)
    n = 70_000
    barrel = np.nonzero(det.kind == BARREL)[0][0]  # the pile's first layer
    nowhere = {
        "hit_id": 10**6 + np.arange(n),
        "x": np.full(n, x),
        **{c: np.zeros(n) for c in ("y", "z", "module_id")},
        "volume_id": np.full(n, det.volume_id[barrel] if volume_id is None else volume_id),
        "layer_id": np.full(n, det.layer_id[barrel]),
    }
    columns = {c: np.concatenate([getattr(dense.hits, c), v]) for c, v in nowhere.items()}
    padded = Event(1, 1, Hits.from_columns(columns))
    with pytest.raises(
        EventTooDense, match=r"too many doublets \(event 0 of the batch: [\d,]+ > 602,400\)"
    ):
        batch_graph([padded], det)


def test_the_kernels_check_the_same_budget(det, small_events, host_launcher) -> None:
    batch = [small_events[0], pile(det, 400, 2)]
    cols, offsets = batch_columns(batch)
    ctx, _, _ = prepare_search(**cols, node_offsets=offsets, det=det, cfg=GraphConfig())
    with pytest.raises(EventTooDense, match=r"too many doublets \(event 1 of the batch: 800,000 >"):
        search_kernels(ctx, host_launcher(KERNELS))
    ctx, _, _ = prepare_search(
        **cols, node_offsets=offsets, det=det, cfg=GraphConfig(), budget=Budget(edges_per_hit=200)
    )
    i, _, _ = search_kernels(ctx, host_launcher(KERNELS))
    assert len(i) > 800_000


@pytest.mark.parametrize("what", ["doublet candidates", "doublets"])
def test_the_kernels_count_each_event_as_the_arrays_do(det, small_events, host_launcher, what):
    """The kernels number the batch's candidates, then its edges, in one sequence: each
    event's share is a range of it, the same counts as the arrays' per event."""
    batch = [small_events[0], pile(det, 300, 2), small_events[1]]
    cols, offsets = batch_columns(batch)
    tight = {"candidates_per_hit": 30} if what == "doublet candidates" else {}
    budget = Budget(**tight, edges_per_hit=30, allowance=0)
    cfg = GraphConfig()
    ctx, _, _ = prepare_search(**cols, node_offsets=offsets, det=det, cfg=cfg, budget=budget)
    refusals = []
    for search in (search_arrays, lambda c: search_kernels(c, host_launcher(KERNELS))):
        with pytest.raises(EventTooDense, match=f"too many {what} ") as refused:
            search(ctx)
        refusals.append(refused.value)
    arrays, kernels = refusals
    assert arrays.events == kernels.events == [1]
    assert arrays.counts == kernels.counts and arrays.limits == kernels.limits


def test_the_allowance_lets_a_small_pile_through(det) -> None:
    g = batch_graph([pile(det, 20)], det)
    assert g.num_edges == 5 * 20 * 20  # three neighbouring pairs and two skip-one pairs
    assert prune_edges(g, PruneConfig(), det).shape == (g.num_edges,)


def test_a_collimated_jet_in_a_quiet_event_is_within_the_default_budget(det) -> None:
    """30 stiff tracks within 0.02 of one another in eta and phi, alone in their event (a
    low-pileup crossing): about 350,000 triplet candidates from 300 hits, refused with the
    allowance of 50,000 this budget had (the same jet in pileup passed)."""
    rng = np.random.default_rng(3)
    layers = np.nonzero(det.kind == BARREL)[0][:10]
    n = 30
    phi, eta = 0.5 + rng.uniform(-0.02, 0.02, n), 0.3 + rng.uniform(-0.02, 0.02, n)
    z0 = rng.normal(0, 0.05, n)
    r = np.tile(det.r[layers], n)
    columns = {
        "hit_id": np.arange(1, 10 * n + 1),
        "x": r * np.cos(np.repeat(phi, 10)),
        "y": r * np.sin(np.repeat(phi, 10)),
        "z": np.repeat(z0, 10) + r * np.sinh(np.repeat(eta, 10)),
        "volume_id": np.tile(det.volume_id[layers], n),
        "layer_id": np.tile(det.layer_id[layers], n),
        "module_id": np.ones(10 * n),
    }
    jet = Event(1, 1, Hits.from_columns(columns))
    g = batch_graph([jet], det)
    with pytest.raises(EventTooDense, match="too many triplet candidates"):
        prune_edges(g, PruneConfig(), det, Budget(allowance=50_000))
    assert prune_edges(g, PruneConfig(), det).shape == (g.num_edges,)
    # budget_scale 4 admits it under the old allowance too: 4 * (200 * 300 + 50,000) (its
    # per-hit budgets alone make 4 * 200 * 300 + 50,000 = 290,000)
    assert prune_edges(g, PruneConfig(), det, Budget(allowance=50_000).scaled(4)).shape == (
        g.num_edges,
    )


def test_mu200_events_are_reconstructed_within_the_default_budget(det, mu200_events) -> None:
    tight = Budget(candidates_per_hit=133, edges_per_hit=21, triplets_per_hit=67, allowance=0)
    g = batch_graph(mu200_events, det, budget=tight)  # a third of the defaults
    prune_edges(g, PruneConfig(), det, tight)
    rec = Reconstructor.oracle(detector=det, prune=PruneConfig())
    assert all(len(t) > 500 for t in rec.reconstruct(mu200_events).tracks)


@pytest.mark.parametrize(
    "field", ["candidates_per_hit", "edges_per_hit", "triplets_per_hit", "allowance"]
)
@pytest.mark.parametrize("value", [-1, float("nan"), "5", None])
def test_a_budget_that_is_not_a_number_from_zero_up_is_refused(field, value) -> None:
    with pytest.raises(ValueError, match=f"Budget.{field} must be a number >= 0"):
        Budget(**{field: value})


def test_scaling_a_budget_scales_the_per_hit_limits_and_the_allowance() -> None:
    assert Budget().scaled(2) == Budget(800, 128, 400, 1_000_000)


def test_a_budget_scaled_past_the_floats_limits_nothing() -> None:
    """``--budget-scale 1e308`` (finite, as the option asks): the allowance overflowed to
    infinity and ``round`` raised OverflowError, a traceback from evaluate and serve."""
    budget = Budget().scaled(1e308)
    assert budget.allowance == 2**63 - 1  # more than any count
    assert enforce("doublets", np.array([2**62]), np.array([10]), 2.0, budget).tolist() == [2**62]


def test_a_count_at_the_limit_passes_and_one_more_is_refused() -> None:
    budget = Budget(edges_per_hit=2.0, allowance=10)  # 10 hits: limit 2 * 10 + 10 = 30
    assert enforce("doublets", np.array([30]), np.array([10]), 2.0, budget).tolist() == [30]
    with pytest.raises(EventTooDense) as e:
        enforce("doublets", np.array([31]), np.array([10]), 2.0, budget)
    assert (e.value.counts, e.value.limits) == ([31], [30])
    # an unlimited per-hit budget with no hits leaves the allowance
    with pytest.raises(EventTooDense):
        enforce("doublets", np.array([11]), np.array([0]), float("inf"), budget)


def test_a_refusal_of_many_events_names_three_and_counts_the_rest() -> None:
    e = EventTooDense([0, 1, 2, 3], ["doublets"] * 4, [9] * 4, [1] * 4)
    assert str(e).count("too many doublets") == 3 and str(e).endswith("; 1 more")
    assert "; " not in str(EventTooDense([0], ["doublets"], [9], [1]))
    three = str(EventTooDense([0, 1, 2], ["doublets"] * 3, [9] * 3, [1] * 3))
    assert three.count("too many doublets") == 3 and "more" not in three  # all, no more


def test_per_event_counts_one_entry_per_event_of_the_batch() -> None:
    """Items by their hit's event (offsets 0, 3, 6, 9): the last event has none and still has
    its count, and there is no count past it."""
    offsets = np.array([0, 3, 6, 9])
    hit = np.array([0, 2, 5, 2])
    assert per_event(hit, offsets).tolist() == [3, 1, 0]
    assert per_event(hit, offsets, np.array([1, 2, 4, 8])).tolist() == [11, 4, 0]
    assert per_event(hit[:2], offsets[:2]).tolist() == [2]  # one event: every item is its
    assert per_event(hit[:2], offsets[:2], np.array([1, 2])).tolist() == [3]
    # Items whose hit is ``hit[of]``: the same counts.
    of = np.array([3, 0, 2, 1, 3])
    assert per_event(hit, offsets, of=of).tolist() == per_event(hit[of], offsets).tolist()
    assert per_event(hit, offsets[:2], of=of).tolist() == [5]


def test_each_event_of_a_batch_is_checked_against_the_budget_given(det, small_events) -> None:
    """The CPU builds and prunes a batch event by event: each against the caller's budget,
    not the default one."""
    batch = [small_events[0], pile(det, 400)]
    with pytest.raises(EventTooDense, match=r"too many doublets \(event 1 of the batch"):
        batch_graph(batch, det)
    assert batch_graph(batch, det, budget=Budget(edges_per_hit=200)).num_edges > 800_000
    dense = batch_graph([small_events[0], pile(det, 60)], det)
    with pytest.raises(EventTooDense, match=r"too many triplet candidates \(event 1 of the"):
        prune_edges(dense, PruneConfig(), det)
    assert prune_edges(dense, PruneConfig(), det, Budget(triplets_per_hit=4_000)).any()


def test_a_batch_refused_event_by_event_keeps_each_events_count_and_limit() -> None:
    """``event_by_event`` names every refused event by its place in the batch, with what it
    passed, its own count and its own limit (not the first event's, not swapped)."""

    def make(k: int) -> int:
        if k % 2:
            raise EventTooDense([0], [f"what {k}"], [100 + k], [10 + k])
        return k

    assert event_by_event([0, 2], make) == [0, 2]
    with pytest.raises(EventTooDense) as refused:
        event_by_event([0, 1, 2, 3], make)
    e = refused.value
    assert (e.events, e.whats, e.counts, e.limits) == (
        [1, 3],
        ["what 1", "what 3"],
        [101, 103],
        [11, 13],
    )
    assert "too many what 3 (event 3 of the batch: 103 > 13)" in str(e)
