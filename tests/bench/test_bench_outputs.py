"""Where the benchmark scripts write by default. A quick run (``--events 1``, one MU) must not
overwrite a committed figure: ``bench/recon_cpu.py --mu 200``, a command RESULTS.md gives,
replaced ``docs/recon-cost.png`` with a one-point plot. A default output inside the checkout
is allowed only for the script whose job it is, or under the git-ignored ``out/``."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import NoReturn

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The script whose output this is: the figure of docs/ it draws, the data it derives, the
# results folder it files device runs in.
OWN = {
    ("sim_validation", "output"): ROOT / "docs" / "sim-vs-real.png",
    ("gpu_report", "results_dir"): ROOT / "bench" / "results",
}


class _Parsed(Exception):
    pass


def _stop(parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> NoReturn:
    raise _Parsed(parser)


def defaults(name: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """The argument defaults of ``bench/NAME.py``: its ``main()`` run up to its parser."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # for its dataclasses
    spec.loader.exec_module(module)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", _stop)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", _stop)
    with pytest.raises(_Parsed) as parsed:
        module.main()
    parser = parsed.value.args[0]
    return {a.dest: a.default for a in parser._actions if a.dest != "help"}


def test_no_script_writes_into_the_checkout_by_default_but_its_own_output(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "bench"))  # its siblings, as when run
    monkeypatch.delenv("OUT", raising=False)  # the device run's output folder
    monkeypatch.chdir(ROOT)  # where RESULTS.md's commands run
    inside = {}
    for script in sorted((ROOT / "bench").glob("*.py")):
        for dest, value in defaults(script.stem, monkeypatch).items():
            if isinstance(value, Path):
                path = Path(value).resolve()
                if path.is_relative_to(ROOT) and not path.is_relative_to(ROOT / "out"):
                    inside[script.stem, dest] = path
    assert inside == OWN
