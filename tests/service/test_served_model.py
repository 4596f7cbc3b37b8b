"""Loading the served model: the device ``auto`` resolves to."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from streamtrk.service.served_model import resolve_device


def test_auto_is_cuda_only_with_a_gpu_and_cupy() -> None:
    usable = torch.cuda.is_available() and importlib.util.find_spec("cupy") is not None
    assert resolve_device("auto") == ("cuda" if usable else "cpu")


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_explicit_devices_are_kept(device: str) -> None:
    assert resolve_device(device) == device
