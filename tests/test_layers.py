"""Dependencies point down: each part of the package imports only the parts below it.

Every ``import streamtrk...`` in the package, at module level or inside a function, is
checked against the layers below (a part may import itself and anything in a lower layer).
"""

from __future__ import annotations

import ast
from pathlib import Path

import streamtrk

PACKAGE = Path(streamtrk.__file__).parent

# Lowest first. A part is a subpackage or a top-level module of streamtrk.
LAYERS: list[set[str]] = [
    {"errors"},
    {"xp", "tomlio", "threads", "stop"},
    {"event", "detector"},
    {"wire"},
    {"io"},
    {"sim"},
    {"recon"},
    {"eval"},
    {"client", "train"},
    {"replay", "record", "service"},
    {"farm"},
    {"cli"},
    {"__main__"},
]
RANK = {part: i for i, layer in enumerate(LAYERS) for part in layer}


def _part(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module == "streamtrk" and node.level == 0:
            # from streamtrk import tomlio: the part is the name imported (the package's own
            # __version__ is in the package's __init__, below every part)
            found.update(f"streamtrk.{a.name}" for a in node.names if a.name != "__version__")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m.startswith("streamtrk.")}


def test_every_part_has_a_layer() -> None:
    parts = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()}
    parts -= {"__init__", "__pycache__", "data"}
    assert parts == set(RANK), "add new parts of the package to LAYERS"


def test_imports_point_down() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.name == "__init__.py" and len(rel.parts) == 1:
            continue
        own = rel.parts[0].removesuffix(".py")
        for module in _imports(path):
            part = _part(module)
            if part and part != own and RANK[part] >= RANK[own]:
                wrong.append(f"{rel} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_no_recon_module_imports_eval_and_no_io_module_imports_sim() -> None:
    for package, banned in (("recon", "streamtrk.eval"), ("io", "streamtrk.sim")):
        for path in (PACKAGE / package).rglob("*.py"):
            assert not any(m.startswith(banned) for m in _imports(path)), path
