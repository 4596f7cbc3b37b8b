"""CurveZMQ: only clients whose keys the daemon allows get events in or replies out; every
refused handshake is counted; keys rotate by adding or removing certificate files."""

from __future__ import annotations

import json
import re
import shutil
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import TypedDict

import numpy as np
import pytest
from live_daemon import sample, wait_for

from streamtrk.cli import main
from streamtrk.client import Consumer, Producer
from streamtrk.io.recording import iter_events
from streamtrk.wire.curve import ipv6_literal

pytestmark = pytest.mark.slow


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    """server, alice (allowed), mallory (not allowed); allowed/ holds alice's public key."""
    for name in ("server", "alice", "mallory"):
        assert main(["keys", str(tmp_path / "keys"), name]) == 0
    (tmp_path / "keys" / "allowed").mkdir()
    shutil.copy(tmp_path / "keys" / "alice.key", tmp_path / "keys" / "allowed")
    return tmp_path / "keys"


class ClientKeys(TypedDict, total=False):
    """A Producer's or Consumer's CURVE keyword arguments."""

    curve_key: Path
    curve_server_key: Path


def client(keys: Path, name: str | None) -> ClientKeys:
    if name is None:
        return {}
    return {"curve_key": keys / f"{name}.key_secret", "curve_server_key": keys / "server.key"}


def server(keys: Path) -> list[str]:
    """The daemon's CURVE arguments: its certificate, alice allowed."""
    return [
        "--curve-secret-key", str(keys / "server.key_secret"),
        "--curve-allowed-keys", str(keys / "allowed"),
    ]  # fmt: skip


def client_args(keys: Path, name: str) -> list[str]:
    """:func:`client`'s keys as a command's arguments."""
    return [a for k, v in client(keys, name).items() for a in (f"--{k.replace('_', '-')}", str(v))]


def refused(d, socket: str, cause: str) -> float:
    return sample(d.metrics(), "streamtrk_auth_failures_total", socket=socket, cause=cause)


def test_only_allowed_clients_get_through(daemon_factory, keys: Path, sim_run: Path) -> None:
    d = daemon_factory(*server(keys))
    events = [ev for _, ev in zip(range(3), iter_events(sim_run), strict=False)]
    # A sender without CURVE, and one whose key is not allowed: nothing gets through.
    for name, cause in ((None, "handshake"), ("mallory", "auth")):
        with Producer(d.input, linger_ms=0, **client(keys, name)) as producer:
            producer.send_event(events[0], timeout_ms=500)  # queued; the handshake fails
            # (the ignore: mypy cannot infer a lambda with default arguments)
            wait_for(lambda c=cause: refused(d, "input", c) >= 1)  # type: ignore[misc]
    # A consumer whose key is not allowed never receives a reply; alice's do.
    with (
        Consumer(d.output, linger_ms=0, **client(keys, "mallory")) as thief,
        Consumer(d.output, linger_ms=0, **client(keys, "alice")) as consumer,
        Producer(d.input, linger_ms=0, **client(keys, "alice")) as producer,
    ):
        for ev in events:
            assert producer.send_event(ev, timeout_ms=30_000)
        replies = [consumer.recv(timeout_ms=60_000) for _ in events]
        assert thief.recv(timeout_ms=2_000) is None
    assert [r.to_reply().event for r in replies if r is not None] == [ev.event for ev in events]
    m = d.settled()
    assert sample(m, "streamtrk_events_received_total") == len(events)  # no stranger's event
    assert sample(m, "streamtrk_auth_failures_total", socket="output", cause="auth") >= 1
    logs = d.logs()
    [banner] = [line for line in logs if line["message"] == "streamtrk serve ready"]
    assert banner["curve"] == f"on: clients whose certificates are in {keys / 'allowed'}"
    denials = [line for line in logs if line["message"].startswith("refused a CURVE client")]
    mallory = (keys / "mallory.key").read_text()
    assert denials and all(line["client_key"] in mallory for line in denials)


def test_keys_rotate_without_a_restart(daemon_factory, keys: Path, sim_run: Path) -> None:
    d = daemon_factory(*server(keys))
    event = next(iter_events(sim_run))
    shutil.copy(keys / "mallory.key", keys / "allowed")  # mallory is allowed from now on
    (keys / "allowed" / "alice.key").unlink()  # and alice no longer
    with (
        Consumer(d.output, linger_ms=0, **client(keys, "mallory")) as consumer,
        Producer(d.input, linger_ms=0, **client(keys, "mallory")) as producer,
    ):
        assert producer.send_event(event, timeout_ms=30_000)
        assert consumer.recv(timeout_ms=60_000) is not None
    with Producer(d.input, linger_ms=0, **client(keys, "alice")) as producer:
        producer.send_event(event, timeout_ms=500)
        wait_for(lambda: refused(d, "input", "auth") >= 1)


def test_a_damaged_key_file_refuses_clients_only_while_it_is_there(
    daemon_factory, keys: Path, sim_run: Path
) -> None:
    """A certificate cut short in the allowed directory (a key line without its value):
    clients are refused while it is there and admitted again once it is gone (it ended the
    authenticator's thread: no client ever after, and the daemon hung at exit); the
    daemon stays healthy and drains and exits 0 at teardown."""
    d = daemon_factory(*server(keys))
    event = next(iter_events(sim_run))
    damaged = "#   ZeroMQ CURVE Public Certificate\n    public-key\n"  # cut short
    (keys / "allowed" / "bob.key").write_text(damaged)
    with Producer(d.input, linger_ms=0, **client(keys, "alice")) as producer:
        producer.send_event(event, timeout_ms=500)
        wait_for(lambda: refused(d, "input", "auth") >= 1, timeout=60)
    (keys / "allowed" / "bob.key").unlink()
    with (
        Consumer(d.output, linger_ms=0, **client(keys, "alice")) as consumer,
        Producer(d.input, linger_ms=0, **client(keys, "alice")) as producer,
    ):
        assert producer.send_event(event, timeout_ms=30_000)
        assert consumer.recv(timeout_ms=60_000) is not None
    assert d.get("/healthz")[0] == 200


def test_a_replay_whose_key_is_refused_stops_at_once_and_says_why(
    daemon_factory, keys: Path, sim_run: Path, capsys
) -> None:
    """libzmq gives up a connection whose handshake the daemon refused: the replay stops at
    the refusal, naming the socket and the cause, instead of waiting out its timeout to say
    "no reply at all"."""
    d = daemon_factory(*server(keys))
    mallory = client_args(keys, "mallory")
    t0 = time.monotonic()
    args = ["replay", str(sim_run), "--to", d.input, "--from", d.output, "--timeout", "60"]
    code = main([*args, *mallory, "-q"])
    took = time.monotonic() - t0
    err = capsys.readouterr().err
    refusals = re.findall(r"--(to|from) (\S+) refused the handshake \((\w+)\)", err)
    assert code == 1 and refusals, err
    assert all(cause == "auth" for _, _, cause in refusals), err
    assert {(s, a) for s, a, _ in refusals} <= {("to", d.input), ("from", d.output)}, err
    assert "no reply at all" not in err
    assert took < 60  # stopped at the refusal, not at the timeout


def test_a_replay_with_another_server_key_says_its_handshakes_were_hung_up_on(
    daemon_factory, keys: Path, sim_run: Path, tmp_path: Path, capsys
) -> None:
    """A daemon hangs up on a client that has another server key than its own (a rotated
    key), which libzmq tries again without end: no refusal, but the replay's report counts
    the hang-ups per socket, and stderr says what they may mean next to "no reply"."""
    d = daemon_factory(*server(keys))
    curve = ["--curve-key", str(keys / "alice.key_secret"), "--curve-server-key"]
    report = tmp_path / "r.json"
    args = ["replay", str(sim_run), "--to", d.input, "--from", d.output, "--timeout", "3"]
    code = main([*args, *curve, str(keys / "mallory.key"), "-q", "--report", str(report)])
    err = capsys.readouterr().err
    assert code == 1 and "no reply at all" in err, err
    hung_up = json.loads(report.read_text())["handshakes_hung_up"]
    assert set(hung_up) == {"to", "from"} and min(hung_up.values()) >= 2, hung_up
    assert f"--from {d.output}: its {hung_up['from']} CURVE handshakes were hung up on" in err
    assert "is --curve-server-key its current public key?" in err


def test_a_tap_with_another_server_key_says_its_handshakes_were_hung_up_on(
    daemon_factory, keys: Path, tmp_path: Path, capsys
) -> None:
    d = daemon_factory(*server(keys))
    curve = ["--curve-key", str(keys / "alice.key_secret")]
    curve += ["--curve-server-key", str(keys / "mallory.key")]
    code = main(["record", "--from", d.output, "-o", str(tmp_path / "t.stk"), *curve,
                 "--duration", "2"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "recorded nothing" in err, err
    assert re.search(f"--from {d.output}: its [1-9][0-9]* CURVE handshakes were hung up on", err)


def test_a_tap_whose_key_is_refused_stops_at_once_and_says_why(
    daemon_factory, keys: Path, tmp_path: Path, capsys
) -> None:
    """``record`` against a daemon that refuses its key ends with the refusal, instead of
    recording nothing until its ``--duration`` is out."""
    d = daemon_factory(*server(keys))
    mallory = client_args(keys, "mallory")
    tap = tmp_path / "tap.stk"
    tap.write_bytes(b"an earlier recording")
    t0 = time.monotonic()
    code = main(["record", "--from", d.output, "-o", str(tap), *mallory, "--duration", "60"])
    took = time.monotonic() - t0
    err = capsys.readouterr().err
    assert code == 1 and f"{d.output} refused the handshake (auth)" in err, err
    assert took < 60  # stopped at the refusal, not at the end of its duration
    assert tap.read_bytes() == b"an earlier recording"  # not replaced by an empty recording


def test_a_connecting_daemon_connects_again_after_a_refused_handshake(
    daemon_factory, keys: Path, sim_run: Path
) -> None:
    """libzmq gives up for good a connection whose handshake failed for its protocol (here:
    a peer without CURVE): a distributor or collector that came up once without CURVE would
    cut a connect-mode daemon off until its restart. The daemon connects again. (Which side
    sees the mismatch first is a race: when the peer hangs up first, libzmq retries by
    itself; the peers stay until the daemon has had to connect each socket again.)"""
    plain_in = Producer("tcp://127.0.0.1:*", bind=True, linger_ms=0)
    plain_out = Consumer("tcp://127.0.0.1:*", bind=True, linger_ms=0)
    endpoints = plain_in.endpoint, plain_out.endpoint
    d = daemon_factory(
        "--connect", "--input", endpoints[0], "--output", endpoints[1], *server(keys)
    )  # fmt: skip

    def again() -> set[str]:
        return {line["socket"] for line in d.logs() if line["message"].startswith("connecting")}

    wait_for(lambda: again() == {"input", "output"}, timeout=60)
    plain_in.close()
    plain_out.close()
    event = next(iter_events(sim_run))
    with (
        Consumer(endpoints[1], bind=True, linger_ms=0, **client(keys, "alice")) as consumer,
        Producer(endpoints[0], bind=True, linger_ms=0, **client(keys, "alice")) as producer,
    ):
        for _ in range(30):  # a reply queued to a refused connection is lost with it: resend
            assert producer.send_event(event, timeout_ms=30_000)
            if (reply := consumer.recv(timeout_ms=2_000)) is not None:
                break
        assert refused(d, "input", "handshake") >= 1 and refused(d, "output", "handshake") >= 1
        assert d.stop() == 0  # the replies to the other sends go out too
    # (the ignore: the loop above runs, thirty times at most)
    assert reply is not None and reply.to_reply().event == event.event  # type: ignore[possibly-undefined]


def test_binding_every_interface_without_curve_is_refused() -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "streamtrk", "serve", "--input", "tcp://0.0.0.0:0"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2
    assert "input tcp://0.0.0.0:0 is not a loopback address and CURVE is off" in out.stderr
    assert "allow_insecure" in out.stderr


def test_a_missing_allowed_keys_directory_stops_the_start(keys: Path, tmp_path: Path) -> None:
    """A mistyped curve_allowed_keys would refuse every client of a running daemon: the
    daemon exits 1 naming it instead."""
    import subprocess
    import sys

    missing = tmp_path / "no-such-dir"
    out = subprocess.run(
        [sys.executable, "-m", "streamtrk", "serve", "--input", "tcp://127.0.0.1:*",
         "--output", "tcp://127.0.0.1:*", "--http", "127.0.0.1:0",
         "--curve-secret-key", str(keys / "server.key_secret"),
         "--curve-allowed-keys", str(missing)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 1
    assert f"start-up failed: the allowed CURVE keys directory {missing} does not exist" in (
        out.stderr
    )


@pytest.mark.parametrize(
    ("endpoint", "ipv6"),
    [
        ("tcp://[::1]:5555", True),
        ("tcp://[::]:*", True),
        ("tcp://127.0.0.1:5555", False),
        ("tcp://localhost:5555", False),  # a name keeps its IPv4 socket, as it always had
        ("ipc:///tmp/x", False),
    ],
)
def test_only_ipv6_addresses_get_ipv6_sockets(endpoint: str, ipv6: bool) -> None:
    assert ipv6_literal(endpoint) is ipv6


def test_an_event_of_max_hits_is_answered_over_curve(daemon_factory, keys: Path, sim_run) -> None:
    """libzmq checks a frame against ZMQ_MAXMSGSIZE as encrypted (33 bytes more): an event
    of max_hits hits (its 8-byte columns at the limit) was dropped with its connection over
    CURVE, unanswered, where it is answered in plain TCP."""
    # frames of 80,000 bytes at most (the event, over max_message_bytes: message_too_large)
    d = daemon_factory(*server(keys), "--max-hits", "10000", "--max-message-bytes", "80000")
    event = next(iter_events(sim_run))
    tiled = np.resize(np.arange(len(event.hits)), 10_000)  # its hits again, to 10,000
    hits = event.hits.take(tiled)
    hits = replace(hits, hit_id=np.arange(1, 10_001, dtype=hits.hit_id.dtype))
    event = replace(event, hits=hits, truth=None)
    with (
        Consumer(d.output, linger_ms=0, **client(keys, "alice")) as consumer,
        Producer(d.input, linger_ms=0, **client(keys, "alice")) as producer,
    ):
        assert producer.send_event(event, timeout_ms=30_000)
        reply = consumer.recv(timeout_ms=60_000)
    assert reply is not None and reply.to_reply().event == event.event


def test_a_frame_over_the_limit_as_intake_stops_does_not_hold_up_the_drain(
    daemon_factory, keys: Path
) -> None:
    """A CURVE connection cut mid-message (a frame over the limit; the unbind, cutting one
    in flight) leaves the daemon's input a ZAP credential that a poll takes for a message:
    the intake's last takes, after the stop, blocked on it until the drain's deadline."""
    d = daemon_factory(
        *server(keys), "--max-hits", "100", "--max-message-bytes", "65536",
        "--drain-timeout-s", "60",
        env={"STREAMTRK_TEST_FAULTS": "leave_delay_s=2"},
    )  # fmt: skip
    d.process.send_signal(signal.SIGTERM)
    wait_for(lambda: any(x["message"] == "injected fault: leave delayed 2 s" for x in d.logs()))
    with Producer(d.input, linger_ms=2000, **client(keys, "alice")) as producer:
        producer.send_frames([b"header", bytes(200_000)], timeout_ms=5000)  # 65,569 at most
    t0 = time.monotonic()
    assert d.process.wait(timeout=30) == 0
    assert time.monotonic() - t0 < 15  # not the drain's 60 s
