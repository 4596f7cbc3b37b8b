"""Every Python example in README.md and docs/ runs as written.

Each ```python block runs in a fresh interpreter, in a folder holding ``run3.stk`` (three
small simulated events, the recording the examples name). Examples that talk to a daemon on
the documented default endpoints get one, on ports of its own choosing that replace the
documented ones in the code run (a port in use on the test machine does not fail them).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from streamtrk.cli import main

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.M | re.S)
DEFAULT_INPUT, DEFAULT_OUTPUT = "tcp://127.0.0.1:5555", "tcp://127.0.0.1:5556"


def _examples() -> list[tuple[str, str]]:
    return [
        (f"{doc.relative_to(REPO)}:{doc.read_text()[: m.start()].count(chr(10)) + 1}", m[1])
        for doc in DOCS
        for m in BLOCK.finditer(doc.read_text())
    ]


EXAMPLES = _examples()


def test_the_docs_have_python_examples() -> None:
    assert len(EXAMPLES) >= 2


@pytest.mark.slow
@pytest.mark.parametrize(("where", "code"), EXAMPLES, ids=[w for w, _ in EXAMPLES])
def test_python_example_runs(where: str, code: str, tmp_path: Path, daemon_factory) -> None:
    assert (
        main(["simulate", "--events", "3", "--mu", "5", "-q", "-o", str(tmp_path / "run3.stk")])
        == 0
    )
    if DEFAULT_INPUT in code:
        daemon = daemon_factory()
        code = code.replace(DEFAULT_INPUT, daemon.input).replace(DEFAULT_OUTPUT, daemon.output)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, f"{where}:\n{out.stdout}\n{out.stderr}"
