"""The Interaction Network and its edge scorer."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from streamtrk.recon.gnn import GNNConfig, GNNScorer, InteractionNetwork, edge_scores
from streamtrk.recon.graph import Graph
from streamtrk.recon.model import read_card, shipped_model_path


def _graph(n: int, e: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    edge_index = torch.randint(0, n, (2, e), generator=g)
    return x, edge_index, torch.randn(e, 6, generator=g)


@pytest.fixture(scope="module")
def model() -> InteractionNetwork:
    torch.manual_seed(0)
    return InteractionNetwork(GNNConfig(hidden=16, edge_hidden=8, steps=3)).eval()


def test_shapes_and_score_range(model: InteractionNetwork) -> None:
    x, ei, ea = _graph(50, 200, 1)
    assert model(x, ei, ea).shape == (200,)
    graph = Graph(
        node_features=x.numpy(),
        edge_index=ei.numpy(),
        edge_features=ea.numpy(),
        node_offsets=np.array([0, 50]),
        layer=np.zeros(50, dtype=np.int64),
    )
    scores = GNNScorer(model)(graph, [])
    assert isinstance(scores, np.ndarray)
    assert scores.shape == (200,) and scores.dtype == np.float32
    assert ((scores >= 0) & (scores <= 1)).all()
    with torch.no_grad():
        expected = torch.sigmoid(model(x, ei, ea)).numpy()
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-6)
    empty = Graph(
        node_features=x.numpy(),
        edge_index=np.zeros((2, 0), dtype=np.int64),
        edge_features=np.zeros((0, 6), dtype=np.float32),
        node_offsets=np.array([0, 50]),
        layer=np.zeros(50, dtype=np.int64),
    )
    none = GNNScorer(model)(empty, [])
    assert none.shape == (0,) and none.dtype == np.float32


def test_scores_are_the_sigmoid_of_the_logits_with_hits_left_out(model: InteractionNetwork):
    """Hits without an edge (most, after pruning) are dropped before the network runs: the
    scores are still those of the whole graph, edge for edge."""
    x, _, ea = _graph(300, 120, 6)
    g = torch.Generator().manual_seed(7)
    ei = torch.randint(0, 300, (2, 120), generator=g) // 3 * 3  # edges on every third hit alone
    assert len(torch.unique(ei)) < 100
    graph = Graph(
        node_features=x.numpy(),
        edge_index=ei.numpy(),
        edge_features=ea.numpy(),
        node_offsets=np.array([0, 150, 300]),
        layer=np.zeros(300, dtype=np.int64),
    )
    with torch.no_grad():
        expected = torch.sigmoid(model(x, ei, ea)).numpy()
    assert expected.std() > 0.01  # scores that differ edge by edge
    np.testing.assert_allclose(GNNScorer(model)(graph, []), expected, rtol=0, atol=1e-6)


def test_blocked_inference_equals_forward(model: InteractionNetwork) -> None:
    x, ei, ea = _graph(80, 1000, 2)
    with torch.no_grad():
        full = model(x, ei, ea)
    torch.testing.assert_close(model.infer(x, ei, ea, block=64), full)
    assert model.infer(x, ei[:, :0], ea[:0]).shape == (0,)


def test_batching_and_permutation_invariance(model: InteractionNetwork) -> None:
    a, b = _graph(40, 150, 3), _graph(60, 250, 4)
    with torch.no_grad():
        alone = [model(*g) for g in (a, b)]
        batched = model(
            torch.cat([a[0], b[0]]),
            torch.cat([a[1], b[1] + 40], dim=1),
            torch.cat([a[2], b[2]]),
        )
        torch.testing.assert_close(batched, torch.cat(alone), rtol=1e-5, atol=1e-5)
        x, ei, ea = b
        node_perm, edge_perm = torch.randperm(60), torch.randperm(250)
        inverse = torch.argsort(node_perm)
        permuted = model(x[node_perm], inverse[ei[:, edge_perm]], ea[edge_perm])
        torch.testing.assert_close(permuted, alone[1][edge_perm], rtol=1e-5, atol=1e-5)


def test_bf16_autocast_close_to_fp32(model: InteractionNetwork) -> None:
    x, ei, ea = _graph(100, 400, 5)
    with torch.no_grad():
        ref = torch.sigmoid(model(x, ei, ea))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = torch.sigmoid(model(x, ei, ea).float())
            blocked = torch.sigmoid(model.infer(x, ei, ea, block=128).float())
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, ref, atol=0.03, rtol=0)
    torch.testing.assert_close(blocked, ref, atol=0.03, rtol=0)


def test_torch_export_with_dynamic_graph_size(model: InteractionNetwork) -> None:
    nodes, edges = torch.export.Dim("nodes", min=2), torch.export.Dim("edges", min=2)
    exported = torch.export.export(
        model,
        _graph(30, 90, 6),
        dynamic_shapes={"x": {0: nodes}, "edge_index": {1: edges}, "edge_attr": {0: edges}},
    )
    other = _graph(70, 333, 7)
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(*other), model(*other))


def test_the_last_hit_update_is_not_computed() -> None:
    # The head reads edges, so the last step's hit update would go unread: neither forward
    # nor infer calls its layers (or its gate); the step before calls them.
    torch.manual_seed(0)
    model = InteractionNetwork(GNNConfig(hidden=16, edge_hidden=8, steps=3)).eval()
    calls = {"last": 0, "before": 0}

    def count(name: str) -> Callable[..., None]:
        return lambda *_: calls.__setitem__(name, calls[name] + 1)

    for name, step in (("last", model.steps[-1]), ("before", model.steps[-2])):
        for layer in (*step.node.children(), step.gate):
            layer.register_forward_hook(count(name))
    x, ei, ea = _graph(90, 600, 6)
    with torch.no_grad():
        model(x, ei, ea)
        model.infer(x, ei, ea, block=128)
    # forward: the 5 layers of the hit update (a, b, c, norm, out) and the gate; infer: the
    # same with the gate once per block of 128 edges (5 blocks)
    assert calls == {"last": 0, "before": (5 + 1) + (5 + 5)}


@pytest.mark.parametrize("cfg", [GNNConfig(), GNNConfig(hidden=48, edge_hidden=16, steps=3)])
def test_matmul_flops_are_what_torch_counts(cfg: GNNConfig) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    n, e = 300, 2000
    x = torch.randn(n, cfg.node_in)
    ei = torch.randint(0, n, (2, e))
    ea = torch.randn(e, cfg.edge_in)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        InteractionNetwork(cfg)(x, ei, ea)
    per_edge, per_hit = cfg.matmul_flops()
    assert counter.get_total_flops() == e * per_edge + n * per_hit


@pytest.mark.parametrize(
    "bad",
    [{"hidden": 0}, {"edge_hidden": 0}, {"steps": 0}, {"node_in": 4}, {"edge_in": 7}],
)
def test_an_architecture_that_cannot_run_is_refused(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=f"{next(iter(bad))} must be"):
        GNNConfig(**bad)


def test_the_default_architecture_is_the_shipped_models() -> None:
    """GNNConfig() is the shipped model's network, whose cost the module states: 29k
    matmul FLOPs per edge and 68k per hit."""
    assert GNNConfig() == GNNConfig(**read_card(shipped_model_path())["architecture"])
    assert GNNConfig().matmul_flops() == (29_440, 67_776)


def test_the_smallest_architecture_is_accepted_and_runs() -> None:
    """Widths and steps of 1 are the least allowed (0 is refused): such a network runs."""
    cfg = GNNConfig(hidden=1, edge_hidden=1, steps=1)
    x, ei, ea = torch.randn(4, 3), torch.tensor([[0, 1], [2, 3]]), torch.randn(2, 6)
    with torch.no_grad():
        assert InteractionNetwork(cfg)(x, ei, ea).shape == (2,)


def test_scores_of_low_precision_logits_are_float32() -> None:
    """Logits in bfloat16 (a network run under autocast) give float32 scores, as NumPy has
    no bfloat16."""
    import numpy as np

    graph = Graph(
        node_features=np.zeros((4, 3), np.float32),
        edge_index=np.array([[0, 1], [2, 3]]),
        edge_features=np.zeros((2, 6), np.float32),
        node_offsets=np.array([0, 4]),
        layer=np.zeros(4, dtype=np.int64),
    )

    def logits(x: torch.Tensor, ei: torch.Tensor, ea: torch.Tensor) -> torch.Tensor:
        return torch.zeros(ei.shape[1], dtype=torch.bfloat16)

    scores = edge_scores(graph, torch.device("cpu"), logits)
    assert scores.dtype == np.float32 and scores.tolist() == [0.5, 0.5]
