"""TOML in and out: dataclasses from tables, and the writer's round trip."""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass

import pytest

from streamtrk.tomlio import dataclass_from, dumps


def test_toml_writer_round_trip() -> None:
    data = {
        "name": 'quote " and \\ and\nnewline',
        "n": 3,
        "x": 0.1,
        "tiny": 1e-7,
        "flag": True,
        "values": [0.3, 0.5],
        "empty": [],
        "skipped": None,
        "table": {"a": 1, "nested": {"b": "c", "odd key": -2.5}},
        "only_tables": {"inner": {"z": False}},
    }
    back = tomllib.loads(dumps(data))
    expected = {k: v for k, v in data.items() if v is not None}
    assert back == expected
    assert math.isnan(tomllib.loads(dumps({"v": math.nan}))["v"])


@dataclass(frozen=True)
class _Settings:
    a: int = 1
    b: str = "x"


class _Refused(ValueError):
    pass


@dataclass(frozen=True)
class _Checked:
    n: int = 1

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError(f"n must be >= 0, got {self.n}")


def test_dataclass_from_table() -> None:
    assert dataclass_from(_Settings, {"a": 2}, "[s]") == _Settings(a=2)


def test_dataclass_from_refuses_unknown_missing_and_non_tables() -> None:
    with pytest.raises(ValueError, match=r"\[s\] does not match this code: .*unknown \['c'\]"):
        dataclass_from(_Settings, {"c": 2}, "[s]")
    with pytest.raises(ValueError, match=r"missing \['b'\]"):
        dataclass_from(_Settings, {"a": 2}, "[s]", defaults=False)
    with pytest.raises(_Refused, match=r"\[s\] must be a table, got list"):
        dataclass_from(_Settings, [1], "[s]", error=_Refused)


def test_dataclass_from_names_the_table_of_a_refused_value() -> None:
    with pytest.raises(_Refused, match=r"^\[s\]: n must be >= 0, got -1$"):
        dataclass_from(_Checked, {"n": -1}, "[s]", error=_Refused)
