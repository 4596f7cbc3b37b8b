"""systemd's notifications (streamtrk/service/notify.py): one test per rule of its
docstring, then a live daemon told to notify a socket bound here, as systemd binds it."""

from __future__ import annotations

import logging
import os
import signal
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from live_daemon import wait_for

from streamtrk.client import Consumer, Producer
from streamtrk.io.recording import iter_events
from streamtrk.service.notify import Notifier


@contextmanager
def listening(address: str | None = None) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket bound as systemd binds its notification socket, and the value of
    ``NOTIFY_SOCKET`` that names it (by default in the abstract namespace, ``@name``)."""
    name = address or f"@streamtrk-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name[1:] if name.startswith("@") else name)
        yield s, name


def received(s: socket.socket, seconds: float = 0.2) -> list[str]:
    """The notifications that arrive in the next ``seconds``."""
    messages = []
    t_end = time.monotonic() + seconds
    while (left := t_end - time.monotonic()) > 0:
        s.settimeout(left)
        try:
            messages.append(s.recv(4096).decode())
        except TimeoutError:
            break
    return messages


def not_a_ping(s: socket.socket, timeout: float = 60) -> str:
    """The next notification other than the watchdog's pings."""
    t_end = time.monotonic() + timeout
    while (left := t_end - time.monotonic()) > 0:
        s.settimeout(left)
        if (message := s.recv(4096).decode()) != "WATCHDOG=1":
            return message
    raise TimeoutError(f"no notification but pings in {timeout} s")


def test_a_notification_is_one_datagram_to_the_notify_socket() -> None:
    with tempfile.TemporaryDirectory() as folder:  # short: a socket path has 107 bytes
        with listening(os.path.join(folder, "notify")) as (s, name):
            Notifier({"NOTIFY_SOCKET": name}).send("READY=1", "STATUS=serving")
            assert received(s) == ["READY=1\nSTATUS=serving"]
        with listening() as (s, name):  # @name: the abstract namespace
            Notifier({"NOTIFY_SOCKET": name}).send("STATUS=loading the model")
            assert received(s) == ["STATUS=loading the model"]


def test_without_a_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier({"WATCHDOG_USEC": "1000000"})
    assert notifier.address is None
    notifier.send("READY=1")  # nowhere to send it: no error
    notifier.watchdog(lambda: True)


def test_readiness_reload_and_drain_as_systemd_reads_them() -> None:
    with listening() as (s, name):
        notifier = Notifier({"NOTIFY_SOCKET": name})
        notifier.state("loading")  # nothing: the daemon says it by STATUS= as it loads
        notifier.state("ready")
        notifier.reloading()
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        notifier.state("ready")
        notifier.state("draining")
        ready, reloading, ready_again, stopping = received(s)
    assert ready == ready_again == "READY=1\nSTATUS=serving"
    flag, stamp, status = reloading.split("\n")
    assert flag == "RELOADING=1" and status.startswith("STATUS=reloading")
    assert stamp.startswith("MONOTONIC_USEC=") and 0 <= after - int(stamp.split("=")[1]) < 10**6
    assert stopping == "STOPPING=1\nSTATUS=draining"


def test_nothing_is_sent_after_stopping() -> None:
    """A reload that ends after the drain began does not tell systemd the daemon is ready."""
    with listening() as (s, name):
        notifier = Notifier({"NOTIFY_SOCKET": name})
        notifier.state("draining")
        notifier.state("ready")
        notifier.send("WATCHDOG=1")
        assert received(s) == ["STOPPING=1\nSTATUS=draining"]


def test_the_watchdog_is_pinged_every_half_period_while_healthy() -> None:
    with listening() as (s, name):
        notifier = Notifier({"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "400000"})
        assert notifier.watchdog_s == 0.4
        asked = []

        def healthy(answer: bool) -> bool:
            asked.append(answer)
            return answer

        notifier.watchdog(lambda: healthy(True))
        notifier.watchdog(lambda: healthy(True))  # within half a period: not asked, not sent
        assert received(s, 0.05) == ["WATCHDOG=1"] and asked == [True]
        time.sleep(0.2)
        notifier.watchdog(lambda: healthy(False))  # due, but unhealthy: not sent
        assert received(s, 0.05) == [] and asked == [True, False]
        notifier.watchdog(lambda: healthy(True))  # still due
        assert received(s, 0.05) == ["WATCHDOG=1"]


@pytest.mark.parametrize(
    ("environ", "period_s"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),  # not ours
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "30s"}, None),
        ({}, None),
    ],
)
def test_the_watchdog_period_is_the_one_systemd_set_for_this_process(
    environ: dict[str, str], period_s: float | None
) -> None:
    assert Notifier(environ).watchdog_s == period_s


def test_a_notification_that_cannot_be_sent_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    with caplog.at_level(logging.WARNING, "streamtrk.service.notify"):
        notifier.send("READY=1")
        notifier.send("WATCHDOG=1")
    [record] = caplog.records
    assert record.getMessage().startswith("cannot notify systemd at NOTIFY_SOCKET: ")


def test_a_receiver_that_stopped_reading_holds_no_sender_for_long(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Its queue full, each notification gives up after ``SEND_TIMEOUT_S`` (a blocking send
    held the main loop: no drain on SIGTERM until systemd read again); said once."""
    with listening() as (_, name):
        notifier = Notifier({"NOTIFY_SOCKET": name})

        def fill() -> None:  # until a send gives up (the queue's length: a sysctl)
            for _ in range(100_000):
                notifier.send("WATCHDOG=1")
                if caplog.records:
                    notifier.send("WATCHDOG=1")  # not said again
                    return

        sends = threading.Thread(target=fill, daemon=True)
        with caplog.at_level(logging.WARNING, "streamtrk.service.notify"):
            sends.start()
            sends.join(10)  # a send or two gives up (a second each)
            assert not sends.is_alive(), "a send waits for the reader"
        [record] = caplog.records
        assert record.getMessage() == "cannot notify systemd at NOTIFY_SOCKET: timed out"


# ---------------------------------------------------------------- a live daemon


@pytest.mark.slow
def test_a_daemon_tells_systemd_it_serves_reloads_and_drains(daemon_factory) -> None:
    with listening() as (s, name):
        d = daemon_factory(env={"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "1000000"}, wait=False)
        s.settimeout(120)
        assert s.recv(4096) == b"STATUS=loading the model"
        assert s.recv(4096) == b"READY=1\nSTATUS=serving"
        assert d.get("/readyz")[0] == 200  # ready before systemd is told so
        assert received(s, 1.5).count("WATCHDOG=1") >= 2  # every 0.5 s
        d.process.send_signal(signal.SIGHUP)
        assert not_a_ping(s).startswith("RELOADING=1\n")
        assert not_a_ping(s) == "READY=1\nSTATUS=serving"
        assert d.stop(signal.SIGTERM) == 0
        assert received(s)[-1] == "STOPPING=1\nSTATUS=draining"
    [reloaded] = [line for line in d.logs() if line["message"] == "reloaded"]
    assert reloaded["level"] == "info"


@pytest.mark.slow
@pytest.mark.parametrize("mode", [(), ("--connect",)], ids=["bind", "connect"])
def test_a_daemon_stopped_while_loading_says_it_stops(daemon_factory, mode) -> None:
    """Bound, it answers what its input took; connected, it took nothing: STOPPING=1 both
    ways (systemd told of the stop, not left with a process that ended as it started)."""
    with listening() as (s, name):
        endpoints = ("--input", "tcp://127.0.0.1:1", "--output", "tcp://127.0.0.1:2")
        env = {"NOTIFY_SOCKET": name, "STREAMTRK_TEST_FAULTS": "load_delay_s=120"}
        d = daemon_factory(*mode, *(endpoints if mode else ()), wait=False, env=env)
        s.settimeout(60)
        assert s.recv(4096) == b"STATUS=loading the model"
        assert d.stop(signal.SIGTERM) == 0
        assert received(s) == ["STOPPING=1\nSTATUS=draining"]


@pytest.mark.slow
def test_a_stalled_daemon_stops_pinging_the_watchdog(daemon_factory, sim_run: Path) -> None:
    """The same condition as /healthz's: a worker with work and no progress past
    ``stall_timeout_s``; systemd then stops the daemon and restarts it."""
    with listening() as (s, name):
        d = daemon_factory("--stall-timeout-s", "1", "--drain-timeout-s", "2",
                           env={"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "1000000",
                                "STREAMTRK_TEST_FAULTS": "batch_delay_s=120"})  # fmt: skip
        assert "WATCHDOG=1" in received(s, 1.5)
        with Consumer(d.output, linger_ms=0), Producer(d.input, linger_ms=0) as producer:
            assert producer.send_event(next(iter_events(sim_run)), timeout_ms=30_000)
            wait_for(lambda: d.get("/healthz")[0] == 503, timeout=60)
            received(s, 0.6)  # a ping that was on its way
            assert received(s, 2.0) == []  # four periods of 0.5 s
            assert d.stop(signal.SIGTERM) == 0
