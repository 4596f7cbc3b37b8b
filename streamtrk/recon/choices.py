"""Names of the edge classifier's engines and precisions, and of the devices it runs on.

Kept free of torch so that the command line and the daemon's configuration can check them
without importing it; ``streamtrk.recon.engine`` implements the engines and precisions.
"""

from __future__ import annotations

DEVICES: tuple[str, ...] = ("cpu", "cuda")
ENGINES: tuple[str, ...] = ("auto", "eager", "compile", "tensorrt")
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
#: Where built TensorRT programs are cached (default ``~/.cache/streamtrk/engines``).
ENGINE_CACHE_ENV = "STREAMTRK_ENGINE_CACHE"
