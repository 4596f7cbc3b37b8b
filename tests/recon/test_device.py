"""The device: what ``auto`` resolves to, and why CUDA cannot be used."""

from __future__ import annotations

import importlib.util

import pytest
import torch

import streamtrk.recon.device as device_module
from streamtrk.recon.device import cuda_unavailable, resolve_device


def test_auto_is_cuda_only_with_a_gpu_and_cupy() -> None:
    usable = torch.cuda.is_available() and importlib.util.find_spec("cupy") is not None
    assert resolve_device("auto") == ("cuda" if usable else "cpu")


@pytest.mark.parametrize(("why", "device"), [(None, "cuda"), ("no CUDA device", "cpu")])
def test_auto_follows_whether_cuda_can_be_used(monkeypatch, why: str | None, device: str) -> None:
    """Both answers, whichever this machine gives (CI has no GPU)."""
    monkeypatch.setattr(device_module, "cuda_unavailable", lambda: why)
    assert resolve_device("auto") == device


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_explicit_devices_are_kept(device: str) -> None:
    assert resolve_device(device) == device


def test_cuda_unavailable_says_why_in_one_line() -> None:
    why = cuda_unavailable()
    if why is None:
        pytest.skip("this machine can run device=cuda")
    assert "\n" not in why and ("CUDA" in why or "CuPy" in why)
