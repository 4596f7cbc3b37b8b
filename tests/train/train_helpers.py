"""The training tests' recipe: a tiny model trained in seconds."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

TINY = """
name = "tiny"
seed = 3
thresholds = [0.4, 0.6]

[model]
hidden = 8
edge_hidden = 4
steps = 2

[optim]
epochs = 2
sectors = 2
warmup_steps = 2

[train]
mu = 10
seed = 11
events = 2

[val]
mu = 10
seed = 12
events = 1
"""
