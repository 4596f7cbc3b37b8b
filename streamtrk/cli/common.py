"""What the commands share: their registry, the types of their values, the options of
several, strict JSON, the check of output files and the stop on signals."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from streamtrk.errors import SettingError
from streamtrk.io.paths import check_writable, write_whole, written_in_place

Handler = Callable[[argparse.Namespace], int]
Arguments = Callable[[argparse.ArgumentParser], None]
COMMANDS: list[tuple[str, Arguments, Handler, bool, dict[str, Any]]] = []
#: Options whose value may start with a minus: list_argument's, and serve's numeric flags.
SIGNED_OPTIONS: set[str] = set()


def strict_json(obj: Any, **kw: Any) -> str:
    """Strict JSON (what jq and browsers parse): NaN and infinities, the rates of empty
    bins, are written as null."""

    def clean(x: Any) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [clean(v) for v in x]
        return x

    return json.dumps(clean(obj), allow_nan=False, **kw)


def subcommand(
    name: str, arguments: Arguments, takes_hangup: bool = False, **parser: Any
) -> Callable[[Handler], Handler]:
    """Register the decorated handler (parsed arguments -> exit status) as subcommand ``name``;
    ``arguments`` adds its options, ``parser`` goes to ``add_parser`` (help, description).
    ``takes_hangup``: the handler sets SIGHUP's handler first thing, and one that came while
    ``main`` read the command line is in ``args.hangup`` (a set flag); for the others such a
    SIGHUP acts as by default once the line is read (it ends the process)."""

    def register(handler: Handler) -> Handler:
        COMMANDS.append((name, arguments, handler, takes_hangup, parser))
        return handler

    return register


def _split(text: str, sep: str, kinds: tuple[type, ...], what: str) -> list[Any]:
    """``text`` split at ``sep`` into one value of each of ``kinds``, else a usage error."""
    parts = text.split(sep)
    if len(parts) == len(kinds):
        try:
            return [kind(part) for kind, part in zip(kinds, parts, strict=True)]
        except ValueError:
            pass
    raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")


def list_argument(s: argparse.ArgumentParser, name: str, **kw: Any) -> None:
    """Option ``name``, whose value is a comma list of numbers, added to ``s``: listed in
    ``SIGNED_OPTIONS``, so that its value may start with a minus (``--beam-spot -1,0,0``)."""
    SIGNED_OPTIONS.add(name)
    s.add_argument(name, **kw)


def vol_layer(text: str) -> tuple[int, int]:
    vol, layer = _split(text, ":", (int, int), "VOL:LAYER (integers)")
    return vol, layer


def noisy_layer(text: str) -> tuple[tuple[int, int], float]:
    vol, layer, hits = _split(text, ":", (int, int, float), "VOL:LAYER:HITS")
    return (vol, layer), hits


def beam_spot_xyz(text: str) -> tuple[float, float, float]:
    x, y, z = _split(text, ",", (float, float, float), "X,Y,Z in mm")
    return x, y, z


def beam_line_xy(text: str) -> tuple[float, float]:
    x, y = _split(text, ",", (float, float), "X,Y in mm")
    return x, y


def pt_range(text: str) -> tuple[float, float]:
    lo, hi = _split(text, ",", (float, float), "LO,HI in GeV")
    return lo, hi


def compact_argument(s: argparse.ArgumentParser, what: str = "write") -> None:
    s.add_argument(
        "--compact",
        action="store_true",
        help=f"{what} hits messages with their ids in the smallest unsigned types (wire "
        "version 5: about 20 bytes a hit instead of 32; daemons before version 5 refuse them)",
    )


def torch_threads_argument(s: argparse.ArgumentParser, default: int | None = 0) -> None:
    first = "the recipe's `threads`; 0:" if default is None else "0,"
    s.add_argument(
        "--torch-threads",
        type=int,
        default=default,
        metavar="N",
        help=f"torch CPU threads (default {first} the CPUs this process may use: CPU "
        "affinity, cgroup quota)",
    )


def curve_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--curve-key", type=Path, metavar="FILE", help="CURVE: own secret certificate")
    s.add_argument(
        "--curve-server-key",
        type=Path,
        metavar="FILE",
        help="CURVE: the daemon's public certificate (with --curve-key)",
    )


def check_count(flag: str, value: int) -> None:
    """SettingError unless ``value`` is a count of 1 to ``sys.maxsize`` (what ``range`` and
    ``islice`` take): named by its ``flag``, before any work."""
    if not 1 <= value <= sys.maxsize:
        raise SettingError(f"{flag} must be 1 to {sys.maxsize}, got {value}")


def curve_files(args: argparse.Namespace) -> list[Path]:
    """The CURVE certificate files given (:func:`curve_arguments`): inputs no output may
    replace."""
    return [p for p in (args.curve_key, args.curve_server_key) if p is not None]


def directory_files(path: Path) -> list[Path]:
    """The files in directory ``path`` (a model's card and weights: inputs no output may
    replace); none where it is no directory."""
    return [f for f in path.iterdir() if f.is_file()] if path.is_dir() else []


def allow_insecure_argument(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--allow-insecure",
        action="store_true",
        help="bind beyond this host without CURVE (a trusted network only)",
    )


def check_bound_curve(args: argparse.Namespace, *endpoints: str) -> None:
    """ValueError when ``--bind`` without CURVE would open one of ``endpoints`` beyond this
    host (unless ``--allow-insecure``), as the daemon and the forwarders refuse to."""
    from streamtrk.wire.curve import exposed_without_curve

    if not args.bind or args.curve_key is not None or args.allow_insecure:
        return
    remedy = (
        "Give --curve-key and --curve-server-key (docs/operations.md, Keys), or "
        "--allow-insecure on a trusted network"
    )
    for endpoint in endpoints:
        if why := exposed_without_curve(endpoint, remedy):
            raise SettingError(why)


def check_curve_pair(args: argparse.Namespace) -> None:
    """SettingError where one of ``--curve-key`` and ``--curve-server-key`` is given without
    the other (a CURVE client needs its own secret and the server's public certificate)."""
    if (args.curve_key is None) != (args.curve_server_key is None):
        raise SettingError(
            "--curve-key (this client's secret certificate) and --curve-server-key (the "
            "server's public one) go together"
        )


def check_endpoints(*options: tuple[str, str], bind: bool) -> None:
    """SettingError naming the first ``(option, endpoint)`` whose endpoint the daemon would
    refuse too, to bind or (``bind`` false) to connect to (libzmq's own error says only
    "Invalid argument")."""
    from streamtrk.service.config import endpoint_problem

    for option, endpoint in options:
        if why := endpoint_problem(endpoint, bind):
            raise SettingError(f"{option} {why}, got {endpoint!r}")


def repair_hint(path: Path, cut_at: int | None) -> str:
    """How to keep the whole records of a recording whose tail is damaged from offset
    ``cut_at``, after "; " (to follow its error); "" where no tail is damaged (None)."""
    if cut_at is None:
        return ""
    from streamtrk.io.recording import being_written

    if being_written(path):
        return (
            "; another process is writing it (a `streamtrk record` tap?): its last record "
            "may be the one being written; read it again once that process has stopped"
        )
    return (
        f"; `streamtrk inspect --repair {path}` cuts it back to the whole records before "
        f"offset {cut_at}"
    )


@contextmanager
def results_printed(text: str) -> Iterator[None]:
    """Print a command's results, then let the body write its files (after the results: a
    file the disk refuses does not take them along). Where stdout's reader has gone (``|
    head``) the body writes them all the same, then BrokenPipeError is raised (exit 141)."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        yield
        raise BrokenPipeError("stdout's reader has gone") from None
    yield


def write_report(path: Path, text: str) -> None:
    """A report's ``text`` (a line) into ``path``, its folder made (check_outputs made
    none); whole or not at all (``write_whole``)."""
    write_whole(path, lambda f: f.write((text + "\n").encode()))


def check_outputs(
    *files: Path | None, folder: Path | None = None, inputs: Sequence[Path] = ()
) -> None:
    """The output files (and folder of plots) given, checked before the work that fills
    them: a path that cannot be written fails now, not with the results, as does one
    given for two outputs (the second would replace the first) or one of the ``inputs``
    (the files read: the output would replace them)."""
    seen: set[Path] = set()
    for given in (p for p in (*files, folder) if p is not None):
        if written_in_place(given):
            continue  # /dev/null, /dev/stdout: by any number of outputs
        if (whole := given.resolve()) in seen:
            raise SettingError(f"{given} is given for two outputs: each needs its own")
        if any(_same_file(given, read) for read in inputs):
            raise SettingError(f"{given} is an input too: the output would replace it")
        seen.add(whole)
    for path in files:
        if path is not None:
            check_writable(path)
    if folder is not None:
        check_writable(folder, folder=True)


def _same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file (a link, another spelling of its path)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one is not there
        return a.resolve() == b.resolve()
