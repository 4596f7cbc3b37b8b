"""Output paths checked before the work that fills them."""

from __future__ import annotations

import os
from pathlib import Path


def check_writable(path: Path, *, folder: bool = False) -> None:
    """Raise now, not when the results are ready (and would be lost), where ``path`` cannot
    be written: a file (or, with ``folder``, a folder of files) there. Its folder is
    created."""
    target = path if folder else path.parent
    target.mkdir(parents=True, exist_ok=True)
    if not folder and path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not a file")
    if not os.access(target, os.W_OK | os.X_OK) or (
        not folder and path.exists() and not os.access(path, os.W_OK)
    ):
        raise PermissionError(f"cannot write {path}")
