"""The ``streamtrk`` command: its help, its reading of arguments, its errors and signals."""

import argparse
import errno
import re
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import zmq
from cli_helpers import _buffering, _run, _run_unread, _simulate
from live_daemon import SIGNAL_ON_IMPORT, WITHOUT_STDOUT, shell_signals

from streamtrk.cli import _negative_values, _said, build_parser, main


def test_a_list_value_may_start_with_a_minus(tmp_path):
    sim = ["simulate", "--events", "1", "--mu", "5", "--seed", "3", "-q"]
    joined, spaced = tmp_path / "joined.stk", tmp_path / "spaced.stk"
    assert main([*sim, "-o", str(joined), "--beam-spot=-0.5,0.25,3"]) == 0
    assert main([*sim, "-o", str(spaced), "--beam-spot", "-0.5,0.25,3"]) == 0
    assert spaced.read_bytes() == joined.read_bytes()
    assert main([*sim, "-o", str(spaced), "--beam-spot", "-.5,-1,0", "--hard-scatter", "1"]) == 0


def test_only_a_signed_option_takes_a_value_with_a_leading_minus_and_none_after_the_end():
    build_parser()
    assert _negative_values(["evaluate", "r.stk", "--beam-spot", "-1,0"]) == [
        "evaluate",
        "r.stk",
        "--beam-spot=-1,0",
    ]
    # a number argparse would take for an option (it reads -1.5, not -1e-3, as a number)
    exponent = ["serve", "--beam-spot-x-mm", "-1e-3", "--max-frames", "-.5e1"]
    assert _negative_values(exponent) == ["serve", "--beam-spot-x-mm=-1e-3", "--max-frames=-.5e1"]
    abbreviated = ["serve", "--beam-spot-x", "-1e-3"]  # no abbreviations: refused as typed
    assert _negative_values(abbreviated) == abbreviated
    flag = ["evaluate", "r.stk", "--oracle", "-1,0"]  # a flag takes no value
    assert _negative_values(flag) == flag
    ended = ["keys", "--", "--beam-spot", "-1,2"]  # positionals after --, as argparse reads them
    assert _negative_values(ended) == ended


def test_a_setting_s_negative_number_is_the_setting_s_to_refuse(capsys) -> None:
    assert main(["serve", "--beam-spot-x-mm", "-1e-3", "--print-config"]) == 0
    assert "beam_spot_x_mm = -0.001" in capsys.readouterr().out
    assert main(["serve", "--deadline-ms", "-1e3", "--print-config"]) == 2
    assert "deadline_ms must be a finite number > 0, got -1000.0" in capsys.readouterr().err


def test_a_flag_short_of_its_name_is_refused_not_taken_for_another(capsys) -> None:
    for args in (["--dead-letter-max", "100"], ["--thresh", "0.3"]):
        with pytest.raises(SystemExit) as e:
            main(["serve", *args, "--print-config"])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert f"streamtrk serve: error: unrecognized arguments: {' '.join(args)}" in err
        assert err.startswith("usage: streamtrk serve [-h]"), err  # the command's options


def _sigint_default() -> None:
    # A job started in the background of a script inherits SIGINT ignored (and Python then
    # installs no handler): the child gets the default, as a command typed at a terminal.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize(
    ("sig", "status", "said"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
)
def test_a_stop_in_a_long_command_is_one_line_and_leaves_nothing(tmp_path, sig, status, said):
    """Ctrl-C, or SIGTERM (``timeout``, a batch scheduler, a container stop; it killed the
    process, its partial recording and CSV folder left behind): one line, the exit status
    of the signal, nothing left."""
    cmd = [sys.executable, "-m", "streamtrk", "simulate", "--events", "100000", "-o"]
    csv = tmp_path / "csv"
    proc = subprocess.Popen(
        [*cmd, str(tmp_path / "s.stk"), "--trackml-dir", str(csv)],
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_sigint_default,  # a signal disposition, set before exec
    )
    try:
        assert proc.stderr is not None
        ready, _, _ = select.select([proc.stderr], [], [], 120)  # its progress bar: simulating
        assert ready, "no progress bar in 120 s"
        t_end = time.monotonic() + 120  # and events written, whose CSV files are not kept
        while not any(csv.rglob("*-hits.csv")) and time.monotonic() < t_end:
            time.sleep(0.05)
        assert any(csv.rglob("*-hits.csv")), "no CSV file written in 120 s"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == status
    assert f"streamtrk simulate: {said}" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # nothing left, nor the folder made for the CSV


def _with_files(tmp_path, args: list[str]) -> list[str]:
    """``args`` with RUN a one-event recording and OUT an output file in ``tmp_path``."""
    run = tmp_path / "e.stk"
    main(["simulate", "--events", "1", "--mu", "1", "-q", "-o", str(run)])
    return [str(run) if a == "RUN" else str(tmp_path / "o.stk") if a == "OUT" else a for a in args]


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (["replay", "RUN", "--to", "notanendpoint"], "--to must be a ZeroMQ endpoint such as"),
        (["replay", "RUN", "--to", "127.0.0.1:5555"], "--to must be a ZeroMQ endpoint such as"),
        (["replay", "RUN", "--from", "tcp://127.0.0.1"], "--from must be tcp://HOST:PORT"),
        (["record", "--from", "bogus://x", "-o", "OUT"], "--from must be a ZeroMQ endpoint"),
        (["record", "--from", "tcp://127.0.0.1:*", "-o", "OUT"], "--from must name the host"),
        (["replay", "RUN", "--to", "tcp://*:5555"], "--to must name the host and port"),
        (["replay", "RUN", "--to", "tcp://::1:5555"], "--to must put an IPv6 address in"),
        (["replay", "RUN", "--to", "inproc://x"], "--to must be tcp:// or ipc:// (inproc:// r"),
        (
            ["farm", "distributor", "--from", "tcp://127.0.0.1:*", "--to", "nope"],
            "--to must be a ZeroMQ endpoint",
        ),
    ],
)
def test_a_bad_endpoint_is_one_line_that_names_the_option(tmp_path, args, why):
    """As the daemon's settings: libzmq's own error says only "Invalid argument"."""
    out = _run(*_with_files(tmp_path, args))
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith(f"streamtrk {args[0]}: error: {why}"), out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.splitlines()) == 1


@pytest.mark.parametrize(
    "args",
    [
        ["replay", "RUN", "--bind", "--to", "tcp://*:0", "--from", "tcp://127.0.0.1:*"],
        ["replay", "RUN", "--bind", "--to", "tcp://127.0.0.1:*", "--from", "tcp://0.0.0.0:0"],
        ["record", "--bind", "--from", "tcp://*:0", "-o", "OUT"],
    ],
)
def test_a_bind_beyond_this_host_without_curve_is_refused_unless_allowed(tmp_path, args):
    """As the daemon and the forwarders: anyone who reached a bound replay could take its
    events or send it replies, and a bound record records whatever is pushed to it."""
    argv = _with_files(tmp_path, args)
    out = _run(*argv)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith(f"streamtrk {args[0]}: error: tcp://"), out.stderr
    assert "is not a loopback address and CURVE is off on it" in out.stderr
    assert "--allow-insecure on a trusted network" in out.stderr
    limit = ["--timeout", "1"] if args[0] == "replay" else ["--duration", "0.5"]
    allowed = _run(*argv, "--allow-insecure", *limit)  # binds, waits, finds nobody
    assert "CURVE is off" not in allowed.stderr, allowed.stderr
    assert "Traceback" not in allowed.stderr, allowed.stderr


COMMANDS = (
    "simulate", "import-trackml", "inspect", "export-trackml", "evaluate", "export", "serve",
    "replay", "record", "train", "farm", "keys", "demo",
)  # fmt: skip


def test_help_lists_every_command_with_its_summary():
    out = subprocess.run(
        [sys.executable, "-m", "streamtrk", "--help"], capture_output=True, text=True, check=True
    ).stdout
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("    ")]
    assert [c for c in listed if c in COMMANDS] == list(COMMANDS), out
    words = " ".join(out.split())  # help text is wrapped to the terminal's width
    assert "serve run the daemon: hits in, tracks out, metrics and health over HTTP" in words
    assert "demo the `make demo` job" in words


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_documents_its_options(command, capsys):
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: streamtrk {command}")
    assert "-h, --help" in out
    expected = {"simulate": "--mu", "evaluate": "--report", "serve": "--max-batch-events",
                "replay": "--rate", "train": "--config", "demo": "--ready-timeout"}  # fmt: skip
    if command in expected:
        assert expected[command] in out
    # every option and argument of the command (and of its own subcommands) says what it is
    undocumented = [
        f"{name} {action.option_strings or action.dest}"
        for name, parser in _parsers(_subcommands(build_parser())[command], command)
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction) and not (action.help or "").strip()
    ]
    assert undocumented == []
    assert _subcommands(build_parser())[command].description, "--help says what it does"


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(
        (a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {}
    )


def _parsers(parser: argparse.ArgumentParser, name: str) -> list:
    """``parser`` and its subcommands' parsers, depth first, with their names."""
    nested = [_parsers(p, f"{name} {sub}") for sub, p in _subcommands(parser).items()]
    return [(name, parser), *(pair for pairs in nested for pair in pairs)]


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["record", "--from", "tcp://127.0.0.1:1", "-o", "X", "--events", "0"], "--events must"),
        (["record", "--from", "tcp://127.0.0.1:1", "-o", "X", "--duration", "-1"], "--duration"),
        (["simulate", "--events", "1", "--seed", "-1", "-o", "X"], "seed must be >= 0"),
        (["simulate", "--events", "1", "--mu", "0", "-o", "X"], "mu must be > 0"),
        (
            ["farm", "collector", "--from", "tcp://0.0.0.0:*", "--to", "tcp://127.0.0.1:*"],
            "is not a loopback",
        ),
        (
            [
                "farm",
                "collector",
                "--from",
                "tcp://127.0.0.1:*",
                "--to",
                "ipc://X",
                "--allowed-keys",
                "X",
            ],
            "--allowed-keys needs --server-key",
        ),
        (["evaluate", "X", "--oracle", "--torch-threads", "100000"], "torch threads must be"),
        (
            ["farm", "distributor", "--from", "tcp://127.0.0.1:7000", "--to", "tcp://*:7000"],
            "--from and --to must be two endpoints",
        ),
    ],
)
def test_a_command_line_out_of_range_is_exit_status_2(tmp_path, capsys, args, said):
    """As argparse's own refusals, whichever part of the package checks the setting; 1 is
    kept for a failure of the work."""
    args = [str(tmp_path / "x") if a == "X" else a for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"streamtrk {args[0]}: error: ") and said in err, err


def test_a_file_the_system_refuses_is_named_in_words(tmp_path, capsys):
    """Not Python's "[Errno 2] No such file or directory: '...'"."""
    absent = tmp_path / "absent.stk"
    assert main(["inspect", str(absent)]) == 1
    assert capsys.readouterr().err == (
        f"streamtrk inspect: error: {absent}: No such file or directory\n"
    )


@pytest.mark.parametrize("unbuffered", [False, True])
def test_output_cut_short_by_its_reader_is_no_error(tmp_path, unbuffered):
    """Written as the command runs (unbuffered) or as it ends (a pipe's default buffer: the
    interpreter's own flush at exit said "Exception ignored ... BrokenPipeError", 120)."""
    _simulate(tmp_path)
    status, err = _run_unread("inspect", str(tmp_path / "a.stk"), unbuffered=unbuffered)
    assert status == 141 and "BrokenPipeError" not in err and "Traceback" not in err


@pytest.mark.parametrize(
    "command",
    [
        ["simulate", "--events", "3", "--mu", "0", "-o", "a.stk"],  # its progress bar's
        ["inspect", "absent.stk"],  # its error's
    ],
)
def test_messages_cut_short_by_their_reader_are_no_error(tmp_path, command):
    """stderr's reader gone (``2>&1 | head``, a log pipe that died): stopped quietly as for
    stdout's, 141 (was 120: the write's BrokenPipeError, then the interpreter's own flush
    at exit said "Exception ignored")."""
    argv = [str(tmp_path / a) if a.endswith(".stk") else a for a in command]
    assert _run_unread(*argv, cut="stderr") == (141, "")


def test_messages_cut_short_with_no_stdout_are_no_error(tmp_path):
    """``streamtrk ... >&- 2>&1 | head``-like: no stdout to point at nothing, only stderr."""
    argv = [sys.executable, "-m", "streamtrk", "inspect", str(tmp_path / "absent.stk")]
    with subprocess.Popen([*WITHOUT_STDOUT, *argv], stderr=subprocess.PIPE) as proc:
        assert proc.stderr is not None
        proc.stderr.close()
        assert proc.wait(timeout=300) == 141


@pytest.mark.parametrize("unbuffered", [False, True])
def test_output_to_a_full_disk_is_an_error_in_one_line(tmp_path, unbuffered):
    """Written as the command runs (unbuffered: the command's own error) or as it ends (the
    last flush: was a traceback, then "Exception ignored", status 120)."""
    _simulate(tmp_path)
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "streamtrk", "inspect", str(tmp_path / "a.stk")],
            stdout=full, stderr=subprocess.PIPE, text=True, timeout=300,
            env=_buffering(unbuffered),
        )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr == "streamtrk inspect: error: [Errno 28] No space left on device\n"


def test_a_command_started_without_stdout_ends_as_it_would(tmp_path):
    """``streamtrk ... >&-``: Python's sys.stdout is None (a flush of it was a traceback,
    status 1, after the work was done)."""
    done = subprocess.run(
        [*WITHOUT_STDOUT, sys.executable, "-m", "streamtrk", "keys", str(tmp_path), "a"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert (done.returncode, done.stderr) == (0, "")
    assert (tmp_path / "a.key").is_file()


def test_the_readme_tours_every_command() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    toured = set(re.findall(r"^\| `streamtrk ([a-z-]+)", readme, flags=re.MULTILINE))
    assert toured == set(COMMANDS)


def _signalled_on_import(
    signame: str, *argv: str, hangup: Any = signal.SIG_DFL
) -> subprocess.CompletedProcess[str]:
    """``streamtrk ARGV`` sent ``signame`` as it imports ZeroMQ (while the command line is
    read), started with a shell's signals (``shell_signals``), and waited for outside that
    block: this test run keeps the dispositions it inherited meanwhile."""
    run = [sys.executable, "-c", SIGNAL_ON_IMPORT, signame, "zmq", *argv]
    with shell_signals(hangup):
        proc = subprocess.Popen(run, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with proc:
        try:
            out, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    return subprocess.CompletedProcess(run, proc.returncode, out, err)


def test_a_command_in_process_gives_sigterm_its_default_action_back(tmp_path, capsys) -> None:
    """Run in process (a script, the demo's own simulate and replay), main() leaves no
    handler behind: a later SIGTERM ends the process, not raises Terminated in other code
    (nor SIGHUP, held while the command line is read, sets a flag nothing reads)."""
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    hangup = signal.getsignal(signal.SIGHUP)  # ignored under nohup
    assert main(["inspect", str(tmp_path / "absent.stk")]) == 1
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGHUP) is hangup
    assert main(["serve", "--print-config"]) == 0  # takes SIGHUP over from the parse
    assert signal.getsignal(signal.SIGHUP) is hangup


def test_a_sighup_while_the_line_is_read_ends_a_command_that_does_not_take_it(tmp_path):
    """SIGHUP is held while the command line is read (the daemon's and the forwarder's
    modules import meanwhile); for any other command it then acts as by default, as a
    terminal's hangup ends a command."""
    absent = str(tmp_path / "absent.stk")
    done = _signalled_on_import("SIGHUP", "inspect", absent)
    assert done.returncode == -signal.SIGHUP, done.stderr
    assert done.stderr == ""


def test_ctrl_c_while_the_line_is_read_is_one_line_and_status_130(tmp_path) -> None:
    """Not a KeyboardInterrupt traceback out of the parser's imports."""
    absent = str(tmp_path / "absent.stk")
    done = _signalled_on_import("SIGINT", "inspect", absent)
    assert (done.returncode, done.stderr) == (130, "streamtrk: interrupted\n")


def test_a_command_run_in_another_thread_returns_its_exit_status(tmp_path, capsys) -> None:
    """In-process off the main thread, where no signal handler can be set: its status, not
    a ValueError from putting one back."""
    status: list[int] = []
    absent = str(tmp_path / "absent.stk")
    thread = threading.Thread(target=lambda: status.append(main(["inspect", absent])))
    thread.start()
    thread.join(60)
    assert status == [1]


def test_an_os_error_without_a_file_is_said_as_the_system_says_it() -> None:
    """A full disk's write (no file named): no "None: " in front of the words."""
    said = _said(OSError(errno.ENOSPC, "No space left on device"))
    assert "None" not in said and "No space left on device" in said


def test_out_of_memory_says_what_numpy_could_not_allocate_or_what_to_try() -> None:
    assert _said(MemoryError()) == "out of memory (fewer events, a smaller batch?)"
    assert _said(MemoryError("Unable to allocate 8.00 GiB")) == (
        "out of memory: Unable to allocate 8.00 GiB"
    )


def test_a_bound_tap_s_port_in_use_is_one_line_and_exit_1(tmp_path, capsys) -> None:
    """libzmq's bind error (a ZMQError: neither OSError nor ValueError) is the command's
    error line, not a traceback."""
    ctx = zmq.Context()
    taken = ctx.socket(zmq.PULL)
    try:
        port = taken.bind_to_random_port("tcp://127.0.0.1")
        args = ["record", "--bind", "--from", f"tcp://127.0.0.1:{port}"]
        assert main([*args, "-o", str(tmp_path / "r.stk"), "--duration", "0.5"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("streamtrk record: error: ") and "Address already in use" in err
    finally:
        taken.close(linger=0)
        ctx.term()


def test_an_os_error_of_two_files_names_both() -> None:
    """A rename or link that fails names its source and its target, as the system's words
    after them: "SRC: what -> DST"."""
    said = _said(OSError(errno.EXDEV, "Invalid cross-device link", "/a/x.stk", None, "/b/x.stk"))
    assert said == "/a/x.stk: Invalid cross-device link -> /b/x.stk"


def test_a_sighup_while_the_line_is_read_is_ignored_where_it_was_ignored(tmp_path) -> None:
    """Only a default SIGHUP is held while the command line is read: under ``nohup`` (SIGHUP
    ignored) a hangup meanwhile neither ends the command nor makes a later one end it."""
    absent = str(tmp_path / "absent.stk")
    done = _signalled_on_import("SIGHUP", "inspect", absent, hangup=signal.SIG_IGN)
    assert done.returncode == 1, done.stderr  # inspect's own error: the file is absent
    assert "absent.stk" in done.stderr
