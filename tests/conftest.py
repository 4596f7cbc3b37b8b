"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared_candidates() -> list[Path]:
    """Where the project's shared folder may be: $STREAMTRK_SHARED, else the repo's sibling
    ``shared`` (or a ``shared`` folder inside the checkout)."""
    if env := os.environ.get("STREAMTRK_SHARED"):
        return [Path(env)]
    return [REPO_ROOT.parent / "shared", REPO_ROOT / "shared"]


@pytest.fixture(scope="session")
def shared_trackml() -> Path:
    """The shared TrackML data folder (``<shared>/data/trackml``); skips when absent."""
    paths = [base / "data" / "trackml" for base in _shared_candidates()]
    for path in paths:
        if path.is_dir():
            return path
    pytest.skip(f"shared TrackML data not found at {' or '.join(map(str, paths))}")
