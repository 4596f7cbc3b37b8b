"""The socket monitor thread: a death is visible (``died``, and so ``/healthz``)."""

from __future__ import annotations

import time

import pytest
import zmq

from streamtrk.service.monitor import SocketMonitor
from streamtrk.service.telemetry import Metrics


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_monitor_that_dies_says_so_and_one_stopped_does_not() -> None:
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    push = ctx.socket(zmq.PUSH)
    try:
        pull.bind("tcp://127.0.0.1:*")
        monitor = SocketMonitor({"input": pull}, Metrics())
        assert not monitor.died  # not started yet

        def broken(socket: str, message: dict) -> None:
            raise RuntimeError("monitor bug")

        monitor.handle = broken  # type: ignore[method-assign]
        monitor.start()
        push.connect(pull.getsockopt_string(zmq.LAST_ENDPOINT))  # an event to handle
        t_end = time.monotonic() + 30
        while monitor.is_alive():
            assert time.monotonic() < t_end
            time.sleep(0.01)
        assert monitor.died

        stopped = SocketMonitor({"output": push}, Metrics())
        stopped.start()
        stopped.stop()
        assert not stopped.is_alive() and not stopped.died
    finally:
        push.close(linger=0)
        pull.close(linger=0)
        ctx.term()
