"""TOML in and out: dataclasses from tables, and the writer's round trip."""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any, Optional

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
    # a misspelt key: no empty "missing []", and the key it was meant to be
    with pytest.raises(ValueError, match=r"code: unknown \['bb'\] \(did you mean b\?\)$"):
        dataclass_from(_Settings, {"bb": "y"}, "[s]")
    with pytest.raises(_Refused, match=r"\[s\] must be a table, got list"):
        dataclass_from(_Settings, [1], "[s]", error=_Refused)


def test_dataclass_from_names_the_table_of_a_refused_value() -> None:
    with pytest.raises(_Refused, match=r"^\[s\]: n must be >= 0, got -1$"):
        dataclass_from(_Checked, {"n": -1}, "[s]", error=_Refused)


@dataclass(frozen=True)
class _Typed:
    n: int = 1
    x: float = 0.5
    name: str = "a"
    on: bool = False
    maybe: float | None = None
    many: tuple[float, ...] = (0.5,)
    pair: tuple[int, str] = (1, "a")


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"n": "ten"}, "n must be int, got 'ten'"),
        ({"n": True}, "n must be int, got True"),  # a bool is no count
        ({"n": 2.0}, "n must be int, got 2.0"),
        ({"x": "1.5"}, "x must be float, got '1.5'"),
        ({"name": 5}, "name must be str, got 5"),
        ({"on": 1}, "on must be bool, got 1"),
        ({"maybe": "no"}, "maybe must be float | None, got 'no'"),
        ({"many": 0.5}, "many must be tuple[float, ...], got 0.5"),
        ({"many": [0.5, "x"]}, "many must be tuple[float, ...], got [0.5, 'x']"),
        ({"pair": [1, "a", 2]}, "pair must be tuple[int, str], got [1, 'a', 2]"),
    ],
)
def test_dataclass_from_refuses_values_not_of_their_field_s_type(table, message) -> None:
    with pytest.raises(_Refused, match=re.escape(f"[t]: {message}")):
        dataclass_from(_Typed, table, "[t]", error=_Refused)


def test_dataclass_from_takes_ints_for_floats_and_arrays_for_tuples() -> None:
    got = dataclass_from(_Typed, {"x": 2, "maybe": 3, "many": [1, 0.5], "pair": [2, "b"]}, "[t]")
    assert got == _Typed(x=2, maybe=3, many=(1, 0.5), pair=(2, "b"))


def test_dataclass_from_refuses_a_boolean_for_a_number() -> None:
    """``pt_min = true`` is no number (Python's bool is an int): refused for a float field as
    it is for an int one."""
    with pytest.raises(_Refused, match=re.escape("[t]: x must be float, got True")):
        dataclass_from(_Typed, {"x": True}, "[t]", error=_Refused)


@dataclass(frozen=True)
class _Labelled:
    labels: dict[str, str] = field(default_factory=dict)


def test_dataclass_from_refuses_a_non_table_for_a_dict_field() -> None:
    assert dataclass_from(_Labelled, {"labels": {"a": "b"}}, "[l]").labels == {"a": "b"}
    with pytest.raises(_Refused, match=re.escape("[l]: labels must be dict[str, str], got 'x'")):
        dataclass_from(_Labelled, {"labels": "x"}, "[l]", error=_Refused)


def test_toml_writer_leaves_none_out_of_tables_in_arrays() -> None:
    data = {"runs": [{"name": "a", "note": None}, {"name": "b"}]}
    assert tomllib.loads(dumps(data)) == {"runs": [{"name": "a"}, {"name": "b"}]}


def test_dataclass_from_names_missing_then_unknown_and_hints_only_close_keys() -> None:
    """Missing keys first, then unknown ones; "did you mean" only for a key close to a
    field's name (none for ``cat``, nothing like ``a`` or ``b``)."""
    with pytest.raises(ValueError, match=r"code: unknown \['cat'\]$"):
        dataclass_from(_Settings, {"cat": 1}, "[s]")
    with pytest.raises(ValueError, match=r"code: missing \['b'\], unknown \['c'\]$"):
        dataclass_from(_Settings, {"a": 1, "c": 2}, "[s]", defaults=False)


@dataclass(frozen=True)
class _Loose:
    maybe: Optional[int] = None  # noqa: UP045 (typing's spelling, checked as ``int | None`` is)
    items: list[int] = field(default_factory=list)
    anything: Any = None


def test_dataclass_from_checks_optional_and_leaves_other_hints_unchecked() -> None:
    """``Optional[int]`` is checked as ``int | None`` is (its name without ``typing.``);
    a hint of no kind these files use (``list[int]``, ``Any``) takes any value."""
    with pytest.raises(_Refused, match=re.escape("[o]: maybe must be Optional[int], got 'x'")):
        dataclass_from(_Loose, {"maybe": "x"}, "[o]", error=_Refused)
    got = dataclass_from(_Loose, {"maybe": 2, "items": ["a"], "anything": [1]}, "[o]")
    assert got == _Loose(maybe=2, items=["a"], anything=[1])  # type: ignore[list-item]


def test_toml_writer_leaves_none_out_of_tables_in_tuples() -> None:
    data = {"runs": ({"name": "a", "note": None}, {"name": "b"})}
    assert tomllib.loads(dumps(data)) == {"runs": [{"name": "a"}, {"name": "b"}]}
