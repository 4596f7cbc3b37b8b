"""TOML in and out: typed dataclasses from tables (unknown keys refused), text from dicts.

Model cards, training recipes and the daemon's configuration all go through these two
functions, so that they refuse and write TOML the same way.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar

import tomli_w

T = TypeVar("T")


def dataclass_from(
    cls: type[T],
    table: Any,
    where: str,
    *,
    defaults: bool = True,
    error: type[ValueError] = ValueError,
) -> T:
    """``cls(**table)``, refusing (with ``error``) a non-table, keys ``cls`` lacks and, unless
    ``defaults``, keys it has that the table lacks, and values ``cls`` refuses with a
    ``ValueError``; ``where`` names the table in messages (such as ``"model card [graph]"``)."""
    if not isinstance(table, dict):
        raise error(f"{where} must be a table, got {type(table).__name__}")
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(table.keys() - names)
    missing = [] if defaults else sorted(names - table.keys())
    if unknown or missing:
        raise error(f"{where} does not match this code: missing {missing}, unknown {unknown}")
    try:
        return cls(**table)
    except ValueError as e:
        raise error(f"{where}: {e}") from None


def dumps(data: dict[str, Any]) -> str:
    """TOML text of nested dicts of scalars and lists; ``None`` values are left out."""
    return tomli_w.dumps(_without_none(data))


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_without_none(v) for v in value]
    return value
