"""Output paths checked before the work that fills them."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamtrk.io.paths import check_writable


def test_a_file_path_gets_its_folder_and_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "report.json"
    check_writable(path)
    assert path.parent.is_dir() and not path.exists()


def test_a_folder_where_a_file_goes_is_refused(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError, match=f"{tmp_path} is a folder, not a file"):
        check_writable(tmp_path)


def test_a_file_where_a_folder_goes_is_refused(tmp_path: Path) -> None:
    (tmp_path / "plots").write_text("")
    with pytest.raises(FileExistsError):
        check_writable(tmp_path / "plots", folder=True)
    check_writable(tmp_path / "new-plots", folder=True)
    assert (tmp_path / "new-plots").is_dir()
