"""Output paths checked before the work that fills them, and files written whole."""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

_WRITE_IN = os.W_OK | os.X_OK  # create and write files in a folder
_partials = itertools.count()  # this process's partial files, numbered
NAME_MAX = 255  # bytes of a file name (Linux's file systems)


def check_writable(path: Path, *, folder: bool = False) -> None:
    """Raise now, not when the results are ready (and would be lost), where ``path`` cannot
    be written: a file (or, with ``folder``, a folder of files) there. Nothing is created:
    a file there is checked for writing, and its folder, where its replacement is written
    first (:func:`replaced_whole`); a new one by the folder it goes in (or the first folder
    that exists above it, where it would be made)."""
    if path.is_symlink() and not path.exists():  # open() would follow it, mkdir not
        raise FileNotFoundError(f"{path} links to {path.resolve()}, which is not there")
    if path.exists():
        if folder != path.is_dir():
            what = ("a file", "a folder") if folder else ("a folder", "a file")
            raise (NotADirectoryError if folder else IsADirectoryError)(
                f"{path} is {what[0]}, not {what[1]}"
            )
        if not os.access(path, _WRITE_IN if folder else os.W_OK):
            raise PermissionError(f"cannot write {path}")
        beside = Path(os.path.realpath(path)).parent  # a file is written beside it, renamed
        if not folder and not written_in_place(path) and not os.access(beside, _WRITE_IN):
            raise PermissionError(
                f"cannot write {path}: no permission to write in {beside}, where the new file "
                "is written whole before it takes the place of the old one"
            )
        return
    above = path.parent
    while not above.exists():
        above = above.parent
    if not above.is_dir():
        raise NotADirectoryError(f"cannot write {path}: {above} is a file, not a folder")
    if not os.access(above, _WRITE_IN):
        raise PermissionError(f"cannot write {path}: no permission to write in {above}")


#: Paths naming a descriptor of the process (not the rest of /proc: /proc/x is refused as
#: a file, checked before the work as any other).
_DESCRIPTOR = re.compile(r"/dev/std|/dev/fd/|/proc/(self|thread-self|\d+)/fd/")


def written_in_place(path: Path) -> bool:
    """Whether :func:`write_whole` writes ``path`` in place: it exists and is no regular file
    or folder (``/dev/null``, a FIFO), or names a descriptor of the process (``/dev/stdout``,
    ``/dev/fd/N``, ``/proc/self/fd/N``) whatever it points to: a file renamed over the one
    behind a redirected stdout would not reach the caller's descriptor."""
    if _DESCRIPTOR.match(os.path.abspath(path)):
        return True
    return path.exists() and not path.is_file() and not path.is_dir()


def write_whole(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """The file ``path`` written by ``write(file)`` whole or not at all: into a partial file
    beside it (:func:`replaced_whole`), renamed over ``path`` once complete. A write that
    fails (a full disk) leaves no file cut short: the partial one is removed, a file already
    at ``path`` is left as it was, and the OSError names ``path``. As ``open`` would (and
    :func:`check_writable` checks), a link is written through to its file, kept; a ``path``
    that is no regular file (``/dev/stdout``, ``/dev/null``, a FIFO) is written in place:
    renaming a file over it would replace it (as root, ``/dev/null`` too)."""
    out = path
    try:
        with file_to_write(path) as out, out.open("wb") as f:
            write(f)
    except OSError as e:
        unmade = out != path and e.filename2 is None and e.filename == str(out)  # (name too long)
        where = f"{e.filename}: " if unmade else ""
        raise OSError(f"cannot write {path}: {where}{e.strerror or e}") from e


def file_to_write(path: Path) -> contextlib.AbstractContextManager[Path]:
    """Where to write the file ``path`` whole: :func:`replaced_whole` of the file it names
    (a link's, which keeps the link), or ``path`` itself where it is written in place
    (:func:`written_in_place`)."""
    if written_in_place(path):
        return contextlib.nullcontext(path)
    return replaced_whole(Path(os.path.realpath(path)))


@contextmanager
def replaced_whole(path: Path) -> Iterator[Path]:
    """``PATH.PID-N.partial``, for the block to write: renamed over ``path`` once the block
    ends (with the permissions of a file it replaces, as an editor keeps them), removed when
    it raises (or Ctrl-C), so that a failed write neither leaves a file cut short nor
    destroys the one there. Its folder is made. The name is this writer's own (process id,
    then a count): two writers of one path each write a whole file, the last one stays; for
    a name too long to take the suffix, ``.PID-N.partial`` beside it. A writer killed
    outright (SIGKILL, the OOM killer) leaves its partial file, named so."""
    suffix = f".{os.getpid()}-{next(_partials)}.partial"
    fits = len(os.fsencode(path.name + suffix)) <= NAME_MAX
    partial = path.with_name(path.name + suffix if fits else suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield partial
        with contextlib.suppress(FileNotFoundError):  # a new file: the umask's permissions
            os.chmod(partial, stat.S_IMODE(os.stat(path).st_mode))
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):  # a folder there: the error raised names it
            partial.unlink(missing_ok=True)
        raise


def save_png(fig: Any, path: Path) -> None:
    """The matplotlib figure ``fig`` as a PNG (100 dpi) at ``path``, whole or not at all
    (:func:`write_whole`); the figure is closed."""
    import matplotlib.pyplot as plt

    try:
        write_whole(Path(path), lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)
