"""The CUDA kernel files compile for the device (nvcc, no GPU needed). Each stage's tests
run its kernels' host form against its NumPy path; on a GPU, ``test_gpu_parity.py`` compares
the CuPy results with NumPy's."""

import shutil
import subprocess
from importlib import resources

import numpy as np
import pytest

from streamtrk.recon.kernels import OPTIONS, source

FILES = sorted(
    p.name for p in resources.files("streamtrk.recon").iterdir() if p.name.endswith(".cu")
)
ENTRIES = {
    "doublet_search.cu": (
        "hit_cells",
        "doublet_queries",
        "doublet_candidates",
        "doublet_flags",
        "doublet_fill",
    ),
    "gls_filter.cu": (
        "gls_gram",
        "circle_distances",
        "circle_turns",
        "hit_projections",
        "hit_scattering",
        "karimaki_params",
        "karimaki_circle",
        "start_circle",
        "start_line",
        "fit_hits",
        "track_parameters",
        "circle_gls_hits",
        "line_gls_hits",
        "gls_solve",
    ),
    "track_building.cu": (
        "propagate_labels",
        "junction_codes",
        "junction_take",
        "piece_ends",
        "stitch_ends",
        "stitch_candidates",
        "stitch_take",
    ),
    "triplet_search.cu": ("triplet_flags", "quadruplet_ends", "edge_geometry"),
}


def test_every_kernel_file_is_known():
    assert sorted(ENTRIES) == FILES


@pytest.mark.parametrize("name", FILES)
def test_kernels_compile_for_the_device(tmp_path, name):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not found: cannot compile the CUDA kernels for the device")
    ptx, src = tmp_path / "k.ptx", tmp_path / "k.cu"
    src.write_text(source(name))
    # CuPy adds -ftz=true to the options it is given.
    cmd = [
        nvcc,
        "-ptx",
        "-arch=sm_90",
        *OPTIONS,
        "-ftz=true",
        "-Werror",
        "all-warnings",
        "-o",
        ptx,
        src,
    ]
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    text = ptx.read_text()
    assert all(f".entry {kernel}(" in text for kernel in ENTRIES[name])


@pytest.mark.parametrize("scalar", [5, 2.5, np.int32(5), np.float32(2.5)])
def test_the_host_build_refuses_scalars_a_device_would_misread(host_launcher, scalar):
    """The kernels take long long and double scalars; CuPy passes a Python int or a 32-bit
    NumPy scalar as something else, unchecked, and the GPU misreads every later parameter."""
    launch = host_launcher("gls_filter.cu")
    with pytest.raises(TypeError, match=r"kernel scalars are np\.int64 or np\.float64"):
        launch("gls_gram", 1, (scalar,))
