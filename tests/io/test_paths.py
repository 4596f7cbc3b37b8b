"""Output paths checked before the work that fills them, with nothing created."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamtrk.io.paths import (
    check_writable,
    replaced_whole,
    save_png,
    write_whole,
    written_in_place,
)

NOBODY = 65534


def test_a_new_file_is_checked_by_the_first_folder_that_exists_and_nothing_is_made(
    tmp_path: Path,
) -> None:
    check_writable(tmp_path / "a" / "b" / "report.json")
    assert not (tmp_path / "a").exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError, match="file is a file, not a folder"):
        check_writable(tmp_path / "file" / "b" / "report.json")


def test_descriptors_of_the_process_are_written_in_place_not_the_rest_of_proc() -> None:
    """All of /proc was taken for descriptors, written in place: ``--report /proc/x.json``
    was not checked before the work (for a user; root may write any folder)."""
    own = ("/dev/stdout", "/dev/fd/1", "/proc/self/fd/1", "/proc/thread-self/fd/1")
    for path in (*own, f"/proc/{os.getpid()}/fd/2"):
        assert written_in_place(Path(path)), path
    assert not written_in_place(Path("/proc/nonexistent.json"))


def test_a_folder_where_a_file_goes_is_refused(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError, match=f"{tmp_path} is a folder, not a file"):
        check_writable(tmp_path)


def test_a_file_where_a_folder_goes_is_refused(tmp_path: Path) -> None:
    (tmp_path / "plots").write_text("")
    with pytest.raises(NotADirectoryError, match="plots is a file, not a folder"):
        check_writable(tmp_path / "plots", folder=True)
    check_writable(tmp_path / "new-plots", folder=True)
    assert not (tmp_path / "new-plots").exists()


def test_a_link_to_nowhere_is_refused(tmp_path: Path) -> None:
    (tmp_path / "report.json").symlink_to(tmp_path / "gone" / "report.json")
    with pytest.raises(FileNotFoundError, match=r"links to .*gone/report\.json, which is not"):
        check_writable(tmp_path / "report.json")


@pytest.fixture
def shared() -> Iterator[Path]:
    """A folder anyone may enter (pytest's own are its owner's alone)."""
    path = Path(tempfile.mkdtemp(prefix="streamtrk-paths-"))
    path.chmod(0o755)
    yield path
    for folder, _, _ in os.walk(path):  # the test's closed ones, for a user other than root
        Path(folder).chmod(0o755)
    shutil.rmtree(path)


def _as_unprivileged(path: Path, folder: bool = False) -> str:
    """``check_writable(path)`` as a user without root's rights (a forked child that drops
    them, when the tests run as root): ``ok`` or the exception's name."""
    pid = os.fork()
    if pid == 0:  # the child: no pytest machinery from here on
        code = 0
        try:
            if os.geteuid() == 0:
                os.setgid(NOBODY)
                os.setuid(NOBODY)
            check_writable(path, folder=folder)
        except PermissionError:
            code = 1
        except BaseException:
            code = 2
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return ("ok", "PermissionError", "other")[os.waitstatus_to_exitcode(status)]


def test_permissions_are_those_the_writers_need(shared: Path) -> None:
    """An existing file needs its own write permission and its folder's (writers write its
    replacement beside it, then rename it: a report in a closed folder failed once the
    results were ready); a new one needs its folder's; a file that is read-only is
    refused."""
    # Its files made before it is closed: its modes bind its owner too, where the tests run
    # as a user other than root.
    closed = shared / "closed"
    closed.mkdir()
    (closed / "report.json").write_text("")
    (closed / "report.json").chmod(0o666)
    (closed / "read-only.json").write_text("")
    (closed / "read-only.json").chmod(0o444)
    closed.chmod(0o555)
    assert _as_unprivileged(closed / "report.json") == "PermissionError"
    opened = shared / "open"
    opened.mkdir()
    opened.chmod(0o777)
    (opened / "report.json").write_text("")
    (opened / "report.json").chmod(0o666)
    assert _as_unprivileged(opened / "report.json") == "ok"
    assert _as_unprivileged(closed / "new.json") == "PermissionError"
    assert _as_unprivileged(closed / "new" / "deeper.json") == "PermissionError"
    assert _as_unprivileged(closed / "read-only.json") == "PermissionError"
    assert _as_unprivileged(closed, folder=True) == "PermissionError"
    # A linked file's replacement is written beside the file, not the link.
    (opened / "link.json").symlink_to(closed / "report.json")
    assert _as_unprivileged(opened / "link.json") == "PermissionError"
    # Files are made in a folder through its search (x) permission as well as its write one.
    unsearchable = shared / "no-x"
    unsearchable.mkdir()
    unsearchable.chmod(0o666)  # rw- for all
    assert _as_unprivileged(unsearchable, folder=True) == "PermissionError"
    assert _as_unprivileged(unsearchable / "new.json") == "PermissionError"
    # A device is written in place: its folder's permissions (/dev's) do not matter.
    assert _as_unprivileged(Path("/dev/null")) == "ok"


def test_a_file_is_written_whole_into_a_folder_made_for_it(tmp_path: Path) -> None:
    path = tmp_path / "new" / "report.json"
    write_whole(path, lambda f: f.write(b"{}\n"))
    assert path.read_bytes() == b"{}\n" and os.listdir(path.parent) == ["report.json"]


def test_a_file_replaced_keeps_its_permissions_and_a_new_one_takes_the_umask_s(
    tmp_path: Path,
) -> None:
    kept, new = tmp_path / "kept.csv", tmp_path / "new.csv"
    kept.write_bytes(b"old")
    kept.chmod(0o600)
    umask = os.umask(0o027)
    try:
        for path in (kept, new):
            write_whole(path, lambda f: f.write(b"new"))
    finally:
        os.umask(umask)
    assert kept.read_bytes() == b"new" and kept.stat().st_mode & 0o777 == 0o600
    assert new.stat().st_mode & 0o777 == 0o666 & ~0o027


def test_a_write_that_fails_leaves_the_file_there_as_it_was_and_names_it(tmp_path: Path) -> None:
    path = tmp_path / "sub.csv"
    path.write_bytes(b"old")

    def full_disk(f) -> None:
        f.write(b"half a row")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OSError, match=f"cannot write {path}: No space left on device"):
        write_whole(path, full_disk)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["sub.csv"]
    with pytest.raises(KeyboardInterrupt), replaced_whole(path) as partial:  # Ctrl-C too
        partial.write_bytes(b"half")
        raise KeyboardInterrupt
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["sub.csv"]


def test_a_figure_is_saved_as_a_png_and_closed(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(6.4, 4.8))
    save_png(fig, tmp_path / "plots" / "a.png")
    png = (tmp_path / "plots" / "a.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert (int.from_bytes(png[16:20]), int.from_bytes(png[20:24])) == (640, 480)  # 100 dpi
    assert not plt.fignum_exists(fig.number)


def test_a_link_is_written_through_and_a_device_or_pipe_in_place(tmp_path: Path) -> None:
    """As ``open`` (and check_writable) would: a ``--report`` that links to a file writes that
    file and keeps the link; one that is no regular file (/dev/stdout, /dev/null, a FIFO)
    cannot be replaced, and renaming a file over it (as root, /dev/null) would destroy it."""
    real = tmp_path / "real.json"
    real.write_bytes(b"old")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    write_whole(link, lambda f: f.write(b"new"))
    assert link.is_symlink() and real.read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path)) == ["link.json", "real.json"]
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a writer's open does not wait
    try:
        write_whole(fifo, lambda f: f.write(b"through the pipe"))
        assert fifo.is_fifo() and os.read(reader, 100) == b"through the pipe"
    finally:
        os.close(reader)
    assert sorted(os.listdir(tmp_path)) == ["fifo", "link.json", "real.json"]


def test_a_name_too_long_for_the_partial_suffix_is_written_all_the_same(tmp_path: Path) -> None:
    """A name that fits but leaves no room for the partial file's suffix (found only once
    the work is done): its partial file takes a short name of its own."""
    path = tmp_path / ("r" * 250)
    write_whole(path, lambda f: f.write(b"{}"))
    assert os.listdir(tmp_path) == [path.name] and path.read_bytes() == b"{}"


def test_two_writers_of_one_path_each_write_a_whole_file(tmp_path: Path) -> None:
    """Each writer has its own partial file: the one that ends last takes the path, whole."""
    path = tmp_path / "r.json"
    with replaced_whole(path) as first, first.open("wb") as f:
        f.write(b"first ")
        with replaced_whole(path) as second:
            second.write_bytes(b"second")
        assert path.read_bytes() == b"second"
        f.write(b"whole")
    assert path.read_bytes() == b"first whole" and os.listdir(tmp_path) == ["r.json"]


def test_a_folder_at_the_path_is_named_not_the_partial_file(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.mkdir()
    with pytest.raises(OSError, match=f"cannot write {path}: Is a directory$"):
        write_whole(path, lambda f: f.write(b"{}"))
    assert sorted(os.listdir(tmp_path)) == ["r.json"]


def test_stdout_redirected_to_a_file_is_written_through_its_descriptor(tmp_path: Path) -> None:
    """``--report /dev/stdout > out.json``: /dev/stdout links to out.json, a regular file,
    and a new file renamed over it left the caller's descriptor on the old, empty one."""
    out = tmp_path / "out.json"
    script = (
        "import sys; from pathlib import Path; from streamtrk.io.paths import write_whole; "
        "write_whole(Path('/dev/stdout'), lambda f: f.write(b'{}\\n'))"
    )
    with out.open("w+b") as f:  # the caller's descriptor, as a shell's redirection holds it
        subprocess.run([sys.executable, "-c", script], stdout=f, check=True, timeout=60)
        f.seek(0)
        assert f.read() == b"{}\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_a_folder_is_not_written_in_place() -> None:
    with tempfile.TemporaryDirectory() as folder:
        assert not written_in_place(Path(folder))


def test_a_relative_path_to_a_descriptor_is_written_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--report fd/N`` from /dev names the descriptor as ``/dev/fd/N`` does, even one open
    on a regular file (a file renamed over it would not reach the descriptor)."""
    fd = os.open(tmp_path / "out.json", os.O_WRONLY | os.O_CREAT)
    try:
        monkeypatch.chdir("/dev")
        assert written_in_place(Path("fd") / str(fd))
    finally:
        os.close(fd)
