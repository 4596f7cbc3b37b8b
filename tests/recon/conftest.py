"""Fixtures of the reconstruction tests."""

import os
import resource
from collections.abc import Iterator
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


@pytest.fixture
def little_memory() -> Iterator[None]:
    """Address space for 1 GiB more than in use while the test runs: a test of a size
    refusal (2^31 edges as read-only views of nothing) whose refusal broke fails at once
    with a MemoryError, not by writing tens of GiB on a large host."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:
        in_use = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limit = in_use + 2**30
    if hard != resource.RLIM_INFINITY:  # -1: min() would take it
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
