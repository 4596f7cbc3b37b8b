"""Names of the edge classifier's engines and precisions, and of the devices it runs on;
the range of its threshold.

Kept free of torch so that the command line and the daemon's configuration can check them
without importing it; ``streamtrk.recon.engine`` implements the engines and precisions.
"""

from __future__ import annotations

DEVICES: tuple[str, ...] = ("cpu", "cuda")
ENGINES: tuple[str, ...] = ("auto", "eager", "compile", "tensorrt")
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
#: Where built TensorRT programs are cached (default ``~/.cache/streamtrk/engines``).
ENGINE_CACHE_ENV = "STREAMTRK_ENGINE_CACHE"


def threshold_ok(value: float) -> bool:
    """Whether an edge-score threshold is in [0, 1): an edge passes above it, so 1 passes
    none (NaN is refused too)."""
    return 0 <= value < 1
