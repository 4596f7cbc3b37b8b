"""TOML in and out: typed dataclasses from tables (unknown keys refused), text from dicts.

Model cards (read with ``dataclass_from``, written with ``dumps``), training recipes
(``read_config_text``, ``dataclass_from``) and the daemon's configuration file
(``read_config_text``; its settings shown as TOML with ``dumps``) share these functions, so
that they read, refuse and write TOML alike.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

import tomli_w

from streamtrk.errors import SettingError

T = TypeVar("T")

#: What ``tomllib.loads`` raises for text that is no TOML (``TOMLDecodeError``) or goes past
#: its own limits: an integer's digits (ValueError), nesting (RecursionError).
NOT_TOML = (ValueError, RecursionError)


def read_config_text(path: str | Path, error: Callable[[str], Exception]) -> str:
    """The text of the configuration file ``path`` (UTF-8, a BOM as editors write it left
    out); ``error(message)`` raised where it is no regular file (a FIFO's read would wait for
    a writer) or cannot be read. Text that is not UTF-8 raises UnicodeDecodeError."""
    if Path(path).exists() and not Path(path).is_file():
        raise error(f"config file {path} is not a regular file")
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except OSError as e:
        raise error(f"cannot read config file {path}: {e.strerror}") from None


def require(obj: object, checks: Iterable[tuple[str, bool, str]]) -> None:
    """SettingError naming the first ``(field, holds, rule)`` of ``obj`` that does not hold
    (a NaN fails every comparison: it is refused too)."""
    for name, ok, rule in checks:
        if not ok:
            raise SettingError(f"{name} must be {rule}, got {getattr(obj, name)}")


def dataclass_from(
    cls: type[T],
    table: Any,
    where: str,
    *,
    defaults: bool = True,
    error: type[ValueError] = ValueError,
) -> T:
    """``cls(**table)``, refusing (with ``error``) a non-table, keys ``cls`` lacks and, unless
    ``defaults``, keys it has that the table lacks, values not of their field's type (an
    int for a float is one; arrays become tuples for tuple fields) and values ``cls``
    refuses with a ``ValueError``; ``where`` names the table in messages (such as
    ``"model card [graph]"``)."""
    if not isinstance(table, dict):
        raise error(f"{where} must be a table, got {type(table).__name__}")
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(table.keys() - names)
    missing = [] if defaults else sorted(names - table.keys())
    if unknown or missing:
        found = ", ".join(f"{k} {v}" for k, v in (("missing", missing), ("unknown", unknown)) if v)
        close = sorted({m for key in unknown for m in difflib.get_close_matches(key, names, n=1)})
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise error(f"{where} does not match this code: {found}{hint}")
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in table.items():
        if not _is(value, hints[key]):
            raise error(f"{where}: {key} must be {_name(hints[key])}, got {value!r}")
        values[key] = tuple(value) if typing.get_origin(hints[key]) is tuple else value
    try:
        return cls(**values)
    except ValueError as e:
        raise error(f"{where}: {e}") from None


def _is(value: Any, hint: Any) -> bool:
    """Whether ``value`` (as TOML gives it) is of type ``hint``; unchecked where the hint is
    none of the kinds these files use."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_is(value, a) for a in args)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            return False
        items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        return len(items) == len(value) and all(map(_is, value, items))
    if origin is dict:
        return isinstance(value, dict)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is Any:  # a class to Python 3.11, which isinstance refuses
        return True
    if isinstance(hint, type):  # str, bool, a dataclass
        return isinstance(value, hint)
    return True


def _name(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def dumps(data: dict[str, Any]) -> str:
    """TOML text of nested dicts of scalars and lists; ``None`` values of tables are left out
    (a ``None`` in a list is refused: TypeError)."""
    return tomli_w.dumps(_without_none(data))


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_without_none(v) for v in value]
    return value
