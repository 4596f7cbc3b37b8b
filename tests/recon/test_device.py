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


def test_a_gpu_auto_cannot_use_is_said(monkeypatch, caplog) -> None:
    """A host whose torch sees a GPU but whose CuPy is broken runs on the CPU: said, where
    the banner showed ``device cpu`` alone; a host without a GPU is not warned about."""
    why = "CuPy cannot be imported (no module named 'cupy'); install the [gpu] extra"
    monkeypatch.setattr(device_module, "cuda_unavailable", lambda: why)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cpu"
    assert [r.getMessage() for r in caplog.records] == [
        f"device auto: the GPU cannot be used, {why}; the chain runs on the CPU"
    ]
    caplog.clear()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and caplog.records == []


@pytest.mark.parametrize("device", ["gpu", "CPU", "cuda:0"])
def test_other_device_names_are_refused(device: str) -> None:
    """Library callers (the command line and the daemon check their own): not torch's
    error, nor a device index that skips the check of what CUDA needs."""
    with pytest.raises(ValueError, match=f"device '{device}': one of auto, cpu, cuda"):
        resolve_device(device)


def test_a_caller_may_resolve_auto_quietly(monkeypatch, caplog) -> None:
    """The command line checks its engine before logging is set up: quiet there (the
    model's load says it, once, in the log's format)."""
    monkeypatch.setattr(device_module, "cuda_unavailable", lambda: "CuPy cannot run")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto", warn=False) == "cpu" and caplog.records == []
