"""The ``streamtrk`` command: one entry point, one subcommand per job.

Each module of this package holds a group of the commands: importing it registers them
(``common.subcommand``)."""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TextIO

from streamtrk import __version__
from streamtrk.cli.common import COMMANDS, SIGNED_OPTIONS, repair_hint
from streamtrk.errors import SettingError
from streamtrk.stop import StopFlag, handlers_kept
from streamtrk.threads import wait_passively

# Importing a command module registers its commands: the order of these imports is the
# order of the commands in `streamtrk --help`.
# isort: off
from streamtrk.cli import (  # noqa: F401
    files,
    evaluate,
    export,
    serve,
    replay,
    record,
    train,
    farm,
    keys,
    demo,
)
# isort: on

# -1,0,0 or -1e-3 (a value: no option starts with a minus and a digit or a dot)
_NEGATIVE = re.compile(r"-[0-9.].*")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="streamtrk",
        description="Streaming particle-track reconstruction: simulate, train, evaluate, serve, "
        "replay. Run `streamtrk COMMAND --help` for a command's options. Exit status: 0 done, "
        "1 the work failed, 2 the command line (or a configuration) refused, 130 interrupted "
        "(Ctrl-C), 143 terminated (SIGTERM; serve, record and replay stop on it as on "
        "Ctrl-C, farm stops on either with 0), 141 output's reader gone.",
        allow_abbrev=False,
    )
    p.add_argument("--version", action="version", version=f"streamtrk {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, arguments, handler, takes_hangup, parser in COMMANDS:
        # No abbreviations: a flag mistyped short of its name is refused, not taken for
        # another (``--dead-letter-max`` for ``--dead-letter-max-bytes``).
        s = sub.add_parser(name, allow_abbrev=False, **parser)
        arguments(s)
        s.set_defaults(func=handler, command_parser=s, takes_hangup=takes_hangup)
    return p


class Terminated(KeyboardInterrupt):
    """SIGTERM in a command without its own stop: unwinds as Ctrl-C does (partial files
    removed), the exit status 143."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


@contextmanager
def _terminated_as_interrupted() -> Iterator[None]:
    """SIGTERM (``timeout``, a batch scheduler, a container stop) raises :class:`Terminated`
    while the block runs, where it would end the process at once (leaving partial files);
    commands that stop on it themselves (serve, replay, record, farm) set their own handler
    inside.
    Only in the main thread, and where SIGTERM has its default action."""
    main_thread = threading.current_thread() is threading.main_thread()
    if not main_thread or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def main(argv: Sequence[str] | None = None) -> int:
    wait_passively()  # before any command imports torch
    with handlers_kept(signal.SIGHUP):  # a command's own undone (tests run main in-process)
        try:
            args = _parsed(sys.argv[1:] if argv is None else argv)
        except KeyboardInterrupt:  # Ctrl-C as the command line is read: no traceback
            print("streamtrk: interrupted", file=sys.stderr)
            return 130
        return _run(args)


def _parsed(argv: Sequence[str]) -> argparse.Namespace:
    """The command line read, a SIGHUP meanwhile held (the parser imports the daemon's
    modules: half a second in which its default action would end a daemon just started):
    ``args.hangup`` is set for a command that takes SIGHUP over (``subcommand``), and for
    any other it then ends the process as by default. Held only on the main thread, where
    SIGHUP has its default action."""
    hangup = StopFlag()
    held = (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGHUP) is signal.SIG_DFL
    )
    if held:
        signal.signal(signal.SIGHUP, lambda *_: hangup.set())
    taken = False
    try:
        parser = build_parser()  # SIGNED_OPTIONS filled
        args, unknown = parser.parse_known_args(_negative_values(argv))
        if unknown:  # said with the command's usage line, not the top level's
            args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        taken = args.takes_hangup
    finally:
        if held and not taken:
            signal.signal(signal.SIGHUP, signal.SIG_DFL)
            if hangup.is_set():
                os.kill(os.getpid(), signal.SIGHUP)
    args.hangup = hangup
    return args


def _run(args: argparse.Namespace) -> int:
    """The command's exit status; 141 where the reader of its output or of its messages
    went away (``streamtrk replay ... | head``), quietly, as command-line tools stop."""
    try:
        status = _outcome(args)
        if sys.stdout is not None:  # None: started with no stdout (``>&-``)
            sys.stdout.flush()  # output to a pipe is buffered: its reader's absence seen here
        return status
    except BrokenPipeError:
        _output_to_nothing()
        return 141  # 128 + SIGPIPE, what a shell reports for a killed writer
    except OSError as exc:  # that flush: a full disk (``> /dev/full``), an I/O error
        print(f"streamtrk {args.command}: error: {_said(exc)}", file=sys.stderr)
        _output_to_nothing(sys.stdout)
        return 1


def _output_to_nothing(*streams: TextIO | None) -> None:
    """``streams`` (stdout and stderr by default) pointed at nothing, for the interpreter's
    exit: its flush of what they hold then fails no more."""
    nothing = os.open(os.devnull, os.O_WRONLY)
    for stream in streams or (sys.stdout, sys.stderr):
        if stream is not None:
            os.dup2(nothing, stream.fileno())
    os.close(nothing)


def _outcome(args: argparse.Namespace) -> int:
    """The command run, its errors said on stderr: its exit status."""
    try:
        with _terminated_as_interrupted():
            return int(args.func(args))
    except SettingError as exc:  # the arguments, as argparse refuses its own: status 2
        print(f"streamtrk {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM in a command without its own stop
        if isinstance(e, Terminated):
            print(f"streamtrk {args.command}: terminated", file=sys.stderr)
            return 143  # 128 + SIGTERM
        print(f"streamtrk {args.command}: interrupted", file=sys.stderr)
        return 130  # 128 + SIGINT
    except BrokenPipeError:
        raise  # an OSError, but no error of the input: _run's
    except Exception as exc:
        if not _user_error(exc):
            raise
        print(f"streamtrk {args.command}: error: {_said(exc)}{_remedy(exc)}", file=sys.stderr)
        return 1


def _said(exc: Exception) -> str:
    """The error in words: an operating system's error as "PATH: what" (not Python's
    "[Errno 2] No such file or directory: 'PATH'")."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror}" + (
            f" -> {exc.filename2}" if exc.filename2 is not None else ""
        )
    if isinstance(exc, MemoryError):  # NumPy says what it could not allocate; Python nothing
        return "out of memory" + (f": {exc}" if str(exc) else " (fewer events, a smaller batch?)")
    return str(exc)


def _remedy(exc: Exception) -> str:
    """What mends the error ``exc`` names, after a "; " (a recording cut by a crash), or ""."""
    from streamtrk.io.recording import RecordingError

    if isinstance(exc, RecordingError) and exc.path is not None:
        return repair_hint(exc.path, exc.cut_at)
    return ""


def _negative_values(argv: Sequence[str]) -> list[str]:
    """``--beam-spot -1,0,0`` read as ``--beam-spot=-1,0,0``: argparse takes a value that
    starts with a minus, and is not a plain number (``-1e-3`` is none), for an option. Only
    the values of ``SIGNED_OPTIONS``, and none after ``--``."""
    out: list[str] = []
    for k, token in enumerate(argv):
        if token == "--":
            return out + list(argv[k:])
        if out and out[-1] in SIGNED_OPTIONS and _NEGATIVE.fullmatch(token):
            out[-1] += "=" + token
        else:
            out.append(token)
    return out


def _user_error(exc: Exception) -> bool:
    """Errors of the input, files or endpoints given, or of the memory they need: one line,
    not a traceback."""
    import zmq  # a bad endpoint or a port in use: ZMQError (neither OSError nor ValueError)

    return isinstance(exc, OSError | ValueError | MemoryError | zmq.ZMQError)
