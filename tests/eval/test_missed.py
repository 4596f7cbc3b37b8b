"""The stage that lost each missed particle: its largest group of hits joined by its own edges."""

from __future__ import annotations

import numpy as np
import pytest

from streamtrk.eval.missed import STAGES, largest_groups, lost_at

# Hits 0-5 of particle 7, 6-10 of particle 8, 11 noise (0), 12-13 of particle 9.
PID = np.array([7, 7, 7, 7, 7, 7, 8, 8, 8, 8, 8, 0, 9, 9])


def _edges(*pairs: tuple[int, int]) -> np.ndarray:
    return np.array(pairs, dtype=np.int64).reshape(-1, 2).T


def test_largest_groups_join_a_particle_s_hits_through_its_own_edges_only() -> None:
    edges = _edges((0, 1), (1, 2), (4, 3), (2, 6), (6, 3), (5, 11), (11, 4), (7, 8), (9, 10))
    # 7: {0, 1, 2} and {3, 4} (not through 8's hit 6, nor noise 11); 8: {7, 8}, {9, 10};
    # 9: hits but no edge; 5: no hits
    groups = largest_groups(PID, edges, np.array([9, 7, 8, 5]))
    assert groups.tolist() == [1, 3, 2, 0]


def test_a_particle_is_lost_at_the_first_stage_that_joins_at_most_half_of_its_hits() -> None:
    chain7 = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]  # particle 7: 6 hits
    chain8 = [(6, 7), (7, 8), (8, 9), (9, 10)]  # particle 8: 5 hits
    graph = _edges(*chain7, *chain8, (12, 13))
    pruning = _edges(*chain7[:3], *chain7[4:], *chain8[:2], *chain8[3:], (12, 13))  # 4 of 6, 3 of 5
    gnn = _edges(*chain7[:2], *chain7[3:], *chain8[:2], (12, 13))  # 7: 3 of 6 (half): lost
    stages = lost_at(PID, np.array([7, 8, 9]), [graph, pruning, gnn])
    assert [STAGES[k] for k in stages] == ["gnn", "tracks", "tracks"]
    # 8 split 2 + 2 of 5 hits by the pruning; 9 (2 hits) whole until its edge goes
    pruning = _edges(*chain7, *chain8[:1], *chain8[3:], (12, 13))
    stages = lost_at(PID, np.array([8, 9, 7]), [graph, pruning, _edges(*chain7)])
    assert [STAGES[k] for k in stages] == ["pruning", "gnn", "tracks"]


@pytest.mark.parametrize(("joined", "stage"), [(3, "graph"), (4, "tracks")])
def test_half_of_the_hits_is_not_enough(joined: int, stage: str) -> None:
    """A good track holds more than half of its particle's hits: 3 of 6 joined is lost."""
    graph = _edges(*((k, k + 1) for k in range(joined - 1)))
    (k,) = lost_at(PID, np.array([7]), [graph, graph, graph])
    assert STAGES[k] == stage


def test_a_particle_without_hits_joins_none_wherever_it_is_listed() -> None:
    """Other particles' hits count for none of ``particles``: a particle without hits is 0
    first or last, and is lost at the graph."""
    edges = _edges((0, 1), (6, 7), (7, 8))
    assert largest_groups(PID, edges, np.array([5, 7])).tolist() == [0, 2]
    expect = {5: "graph", 7: "graph", 8: "tracks"}  # 8: 3 of its 5 hits joined
    for missed in ([5, 7, 8], [7, 8, 5]):
        stages = lost_at(PID, np.array(missed), [edges, edges, edges])
        assert [STAGES[k] for k in stages] == [expect[p] for p in missed]
