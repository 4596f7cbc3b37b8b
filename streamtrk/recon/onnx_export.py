"""ONNX export of the edge classifier, for ONNX Runtime (and Triton's onnxruntime backend).

Not for TensorRT's ONNX parser: the sums at the hits export as ``ScatterND`` with
``reduction="add"``, which it does not import (docs/gpu.md).

The graph takes ``x`` (nodes, 3) float32, ``edge_index`` (2, edges) int64 and ``edge_attr``
(edges, 6) float32, with ``nodes`` and ``edges`` dynamic, and returns ``scores`` (edges,)
float32: the sigmoid of the logits, the number the model card's threshold applies to. The
card's identity (name, threshold, feature version) goes into the model's metadata.
"""

from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from streamtrk.io.paths import write_whole
from streamtrk.recon.gnn import InteractionNetwork

INPUTS = ("x", "edge_index", "edge_attr")
OUTPUT = "scores"
OPSET = 20  # ScatterND with reduction="add" (index_add) needs 16 or later
#: How ONNX Runtime's CPU provider must run the file (in its metadata, said on export).
ORT_CPU_NOTE = (
    "intra_op_num_threads = 1: the threaded ScatterND add races (onnxruntime issues 18048, "
    "23396; the shipped model's scores moved by up to 0.9 on two threads)"
)


class EdgeScores(nn.Module):
    """``sigmoid(model(x, edge_index, edge_attr))``: one score per edge."""

    def __init__(self, model: InteractionNetwork) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
        return torch.sigmoid(self.model(x, edge_index, edge_attr))


def export_onnx(
    model: InteractionNetwork, path: str | Path, metadata: dict[str, str] | None = None
) -> Path:
    """Write ``model`` as an ONNX file (weights inside) with dynamic node and edge axes."""
    path = Path(path)
    from streamtrk.recon.engine import synthetic_graph

    module = EdgeScores(copy.deepcopy(model).cpu()).eval()
    example = synthetic_graph(40, 120, torch.device("cpu"))
    nodes = torch.export.Dim("nodes", min=2)
    edges = torch.export.Dim("edges", min=2)
    dynamic = {"x": {0: nodes}, "edge_index": {1: edges}, "edge_attr": {0: edges}}
    # The exporter logs that torchvision's operators are skipped: this model uses none.
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        program = _export(module, example, dynamic)
    finally:
        registration.setLevel(level)
    program.model.metadata_props.update(metadata or {})
    # Whole or not at all: a full disk or Ctrl-C leaves no graph cut short.
    write_whole(path, lambda f: f.write(program.model_proto.SerializeToString()))
    return path


def _export(module: nn.Module, example: tuple[Tensor, ...], dynamic: dict[str, Any]) -> Any:
    with warnings.catch_warnings():
        # torch's own pytree code, inside the exporter (torch 2.13).
        warnings.filterwarnings(
            "ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning
        )
        # edge_index and edge_attr share the edge axis: its name is kept once, as meant.
        warnings.filterwarnings("ignore", r"(# )?The axis name: .* will not be used", UserWarning)
        return torch.onnx.export(
            module,
            example,
            input_names=list(INPUTS),
            output_names=[OUTPUT],
            opset_version=OPSET,
            dynamo=True,
            dynamic_shapes=dynamic,
            verbose=False,
        )


def export_model_dir(model_dir: str | Path, path: str | Path) -> Path:
    """Export a model directory (weights and card) to ``path``, the card's identity in the
    ONNX metadata."""
    from streamtrk.recon.model import load_model

    model_dir = Path(model_dir)
    model, card = load_model(model_dir)
    info = card["model"]
    metadata = {
        "streamtrk.model": str(info.get("name", model_dir.name)),
        "streamtrk.threshold": repr(float(info["threshold"])),
        "streamtrk.feature_version": str(info["feature_version"]),
        "streamtrk.inputs": "x: r/1000, phi/pi, z/1000; edge_attr: dr, dphi, dz, deta, "
        "phi slope, z0 (see streamtrk/recon/graph.py)",
        "streamtrk.onnxruntime_cpu": ORT_CPU_NOTE,
    }
    return export_onnx(model, path, metadata)
