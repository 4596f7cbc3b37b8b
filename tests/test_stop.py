"""Stop requests: a flag a signal handler may set, set by SIGINT and SIGTERM in a block."""

from __future__ import annotations

import os
import signal
import sys
import threading

import pytest

from streamtrk.stop import StopFlag, stop_on_signals


def test_a_stop_flag_is_clear_until_set_and_stays_set() -> None:
    """A fresh flag stops nothing (a command would end before its work); set, it reads set,
    and setting it again (a second Ctrl-C) keeps it so."""
    stop = StopFlag()
    assert not stop.is_set()
    stop.set()
    assert stop.is_set()
    stop.set()
    assert stop.is_set()


def test_a_signal_inside_the_stop_handler_does_not_wait_for_itself() -> None:
    """A signal handler runs on the main thread between any two bytecodes, inside another
    handler too (Ctrl-C twice, or Ctrl-C then a supervisor's SIGTERM). Here the stop handler
    of replay, record and farm runs again at every Python call it makes (a profile hook), as
    a second signal could: one that took a lock there, as ``threading.Event.set`` takes its
    condition's, would wait for itself for ever."""
    with stop_on_signals() as stop:
        handler = signal.getsignal(signal.SIGINT)
    assert callable(handler)
    nested: list[str] = []  # where the handler ran again (not inside a nested run)

    def hook(frame, event, arg) -> None:
        if event == "call":
            nested.append(frame.f_code.co_qualname)
            sys.setprofile(None)
            handler(signal.SIGTERM, None)
            sys.setprofile(hook)

    def interrupted() -> None:
        sys.setprofile(hook)
        try:
            handler(signal.SIGINT, None)
        finally:
            sys.setprofile(None)

    thread = threading.Thread(target=interrupted, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), f"the handler waits for itself, nested at {nested}"
    assert stop.is_set() and nested


def test_the_handlers_from_before_are_back_after_the_block() -> None:
    """``main`` runs in-process (the demo's replay, tests): after a command, Ctrl-C is
    the caller's again, not a flag nobody reads."""
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with stop_on_signals():
        assert signal.getsignal(signal.SIGINT) is not before[signal.SIGINT]
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_outside_the_main_thread_the_block_sets_no_handler() -> None:
    """Handlers are the main thread's to set (signal.signal raises elsewhere): a train run
    in another thread would end, at its last step, in a ValueError."""
    before = signal.getsignal(signal.SIGINT)
    flags: list[bool] = []

    def block() -> None:
        with stop_on_signals() as stop:
            flags.append(stop.is_set())

    thread = threading.Thread(target=block)
    thread.start()
    thread.join(10)
    assert flags == [False] and signal.getsignal(signal.SIGINT) is before


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_each_set_the_flag(sig: signal.Signals) -> None:
    """A supervisor's SIGTERM (systemd, Kubernetes) stops a command cleanly, as Ctrl-C does:
    within the block either sets the flag, and reaches no handler from before."""
    reached: list[int] = []
    before = signal.signal(sig, lambda signum, _: reached.append(signum))
    try:
        with stop_on_signals() as stop:
            os.kill(os.getpid(), sig)  # its handler runs before kill returns
        assert stop.is_set() and not reached
    finally:
        signal.signal(sig, before)
