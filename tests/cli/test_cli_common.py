"""What the commands share: the stop on signals."""

import signal
import sys
import threading

from streamtrk.cli.common import stop_on_signals


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
