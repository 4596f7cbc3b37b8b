"""Fixtures of the reconstruction tests."""

from functools import cache

import pytest
from needs import missing

from streamtrk.recon.kernels import host_launcher as build


@pytest.fixture(scope="session")
def host_launcher(tmp_path_factory):
    """``host_launcher(name)``: a ``Launch`` running the kernels of file ``name`` built as
    host functions, over NumPy arrays (without g++: ``needs.missing``)."""
    tmp = tmp_path_factory.mktemp("kernels")

    @cache
    def launcher(name):
        try:
            return build(name, tmp)
        except FileNotFoundError as e:
            missing(str(e))

    return launcher
