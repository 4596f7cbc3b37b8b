"""``streamtrk export``: a model directory's edge classifier as an ONNX graph."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from streamtrk.cli.common import check_outputs, directory_files, subcommand
from streamtrk.errors import SettingError


def _export_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--onnx", type=Path, required=True, metavar="MODEL_DIR", help="model directory")
    s.add_argument("-o", "--output", type=Path, required=True, help="output .onnx file")


@subcommand(
    "export",
    _export_arguments,
    help="export the edge classifier of a model directory (ONNX)",
    description="Write the edge classifier as an ONNX graph: inputs x (nodes, 3) float32, "
    "edge_index (2, edges) int64, edge_attr (edges, 6) float32, nodes and edges dynamic; "
    "output scores (edges,) float32, the sigmoid the model's threshold applies to. The "
    "model card's name, threshold and feature version go into the ONNX metadata.",
)
def _export(args: argparse.Namespace) -> int:
    from streamtrk.recon.model import model_missing
    from streamtrk.recon.onnx_export import ORT_CPU_NOTE, export_model_dir

    if why := model_missing(args.onnx):
        raise SettingError(f"--onnx: {why}")
    try:  # torch's ONNX exporter needs both, not installed with streamtrk alone
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        print(
            f"streamtrk export: error: the ONNX export needs {e.name}: "
            "pip install 'streamtrk[onnx]'",
            file=sys.stderr,
        )
        return 1
    # Before the export's seconds of work; not over a file of the model (its weights, card).
    check_outputs(args.output, inputs=directory_files(args.onnx))
    path = export_model_dir(args.onnx, args.output)
    print(
        f"wrote {path} ({path.stat().st_size} bytes): ONNX edge classifier of {args.onnx}; "
        f"for ONNX Runtime's CPU provider, {ORT_CPU_NOTE}"
    )
    return 0
