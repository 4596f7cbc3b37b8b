"""``streamtrk export --onnx``: the ONNX graph runs in ONNX Runtime at two graph sizes and
agrees with torch."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from streamtrk.cli import main
from streamtrk.recon.card import model_card
from streamtrk.recon.gnn import GNNConfig, InteractionNetwork
from streamtrk.recon.graph import GraphConfig, batch_graph
from streamtrk.recon.model import save_model
from streamtrk.recon.onnx_export import INPUTS, OUTPUT, export_onnx


def test_onnx_export_runs_in_onnxruntime(tmp_path: Path, small_events, det) -> None:
    torch.manual_seed(4)
    arch = GNNConfig(hidden=16, edge_hidden=8, steps=3)
    model = InteractionNetwork(arch).eval()
    save_model(tmp_path / "m", model, model_card("tiny", arch, GraphConfig(), 0.6))
    out = tmp_path / "tiny.onnx"
    assert main(["export", "--onnx", str(tmp_path / "m"), "-o", str(out)]) == 0
    proto = onnx.load(str(out))
    assert [i.name for i in proto.graph.input] == list(INPUTS)
    assert [o.name for o in proto.graph.output] == [OUTPUT]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["streamtrk.model"] == "tiny" and float(meta["streamtrk.threshold"]) == 0.6
    assert meta["streamtrk.onnxruntime_cpu"].startswith("intra_op_num_threads = 1")
    # One intra-op thread: ORT's CPU ScatterND with reduction="add" (our index_add) races
    # when threaded, giving run-to-run differences up to 1e-2 here (microsoft/onnxruntime
    # issues 18048 and 23396); with one thread it agrees with torch to 1e-7.
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])
    sizes = set()
    for events in (small_events[:1], small_events):  # one event, then a batch of two
        g = batch_graph(events, det)
        feeds = dict(zip(INPUTS, (g.node_features, g.edge_index, g.edge_features), strict=True))
        (scores,) = session.run([OUTPUT], feeds)
        with torch.no_grad():
            ref = torch.sigmoid(model(*(torch.from_numpy(a) for a in feeds.values())))
        np.testing.assert_allclose(scores, ref.numpy(), rtol=0, atol=1e-5)
        sizes.add((g.num_nodes, g.num_edges))
    assert len(sizes) == 2


def test_shipped_model_exports_and_agrees(tmp_path: Path, small_events, det) -> None:
    from streamtrk.recon.load import load_reconstructor
    from streamtrk.recon.model import default_model_path

    out = tmp_path / "shipped.onnx"
    assert main(["export", "--onnx", str(default_model_path()), "-o", str(out)]) == 0
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # see test_onnx_export_runs_in_onnxruntime
    session = ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])
    rec = load_reconstructor(default_model_path())
    g = batch_graph(small_events, det)
    feeds = dict(zip(INPUTS, (g.node_features, g.edge_index, g.edge_features), strict=True))
    (scores,) = session.run([OUTPUT], feeds)
    ref = rec.scorer(g, small_events)
    np.testing.assert_allclose(scores, ref, rtol=0, atol=1e-4)
    flipped = np.count_nonzero((scores > rec.threshold) != (ref > rec.threshold))
    assert flipped <= 1e-4 * len(ref)


def test_export_leaves_the_exporters_logging_as_it_was(tmp_path: Path) -> None:
    """The exporter's registration log is quieted for the export only: its level after is
    the caller's."""
    torch.manual_seed(4)
    model = InteractionNetwork(GNNConfig(hidden=16, edge_hidden=8, steps=3)).eval()
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    before = registration.level
    registration.setLevel(logging.INFO)
    try:
        export_onnx(model, tmp_path / "tiny.onnx")
        assert registration.level == logging.INFO
    finally:
        registration.setLevel(before)
