"""A farm: producers -> distributor -> daemons in connect mode -> collector -> consumers,
each a process of its own (streamtrk farm, streamtrk serve --connect, streamtrk replay)."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
import zmq
from live_daemon import (
    READY_TIMEOUT_S,
    SIGNAL_ON_IMPORT,
    Daemon,
    Forwarder,
    HttpEndpoints,
    Prometheus,
    sample,
    shell_signals,
    wait_for,
)
from needs import need_program

from streamtrk.client import Consumer, Producer, terminate, wait_listening
from streamtrk.farm import forward

pytestmark = pytest.mark.slow
DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


@contextmanager
def replay(
    tmp: Path, run: Path, dist: Forwarder, coll: Forwarder, *extra: str
) -> Iterator[tuple[subprocess.Popen, Path]]:
    """``streamtrk replay`` through the farm, stopped when the test leaves it running."""
    report = tmp / f"replay-{len(list(tmp.glob('replay-*')))}.json"
    cmd = [sys.executable, "-m", "streamtrk", "replay", str(run), "--to", dist.front,
           "--from", coll.back, "--events", "150", "--loop", "2", "-q", "--report",
           str(report), *extra]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    try:
        yield proc, report
    finally:
        terminate(proc, 10)


def answered(daemons) -> float:
    return sum(
        sample(d.metrics(), "streamtrk_events_completed_total", status="ok")
        for d in daemons
        if d.process.poll() is None
    )


@pytest.fixture
def farm(tmp_path: Path, daemon_factory):
    """Stopped in a farm's order: the daemons first (each drains and exits 0, its replies
    still reaching the collector: a resent event may still be in work when the replay has
    all its replies), then the forwarders."""
    forwarders: list[Forwarder] = []
    daemons: list[Daemon] = []
    try:
        for role in ("distributor", "collector"):  # each kept as it starts, to be stopped
            forwarders.append(Forwarder(tmp_path, role))
        dist, coll = forwarders
        args = ("--connect", "--input", dist.back, "--output", coll.front,
                "--max-batch-events", "2", "--queue-capacity", "4", "--rcvhwm", "2")  # fmt: skip
        # Started together (each loads its model in a process of its own), each kept as it
        # is ready; one that fails to start fails the test once the others are kept too.
        with ThreadPoolExecutor(3) as pool:
            starting = [pool.submit(daemon_factory, *args) for _ in range(3)]
        daemons.extend(s.result() for s in starting if s.exception() is None)
        for s in starting:
            s.result()
        yield dist, coll, daemons
    finally:
        drained = {d.log_path.name: d.stop() for d in daemons if d.process.poll() is None}
        codes = [f.stop() for f in forwarders]
    assert set(drained.values()) <= {0}, drained
    assert codes == [0, 0]


def test_every_event_is_answered_once_when_daemons_fail(farm, sim_run: Path, tmp_path) -> None:
    dist, coll, daemons = farm
    args = ("--retries", "5", "--retry-after", "3")
    with replay(tmp_path, sim_run, dist, coll, *args) as (proc, report):
        wait_for(lambda: answered(daemons) >= 60, timeout=300)
        daemons[0].process.kill()  # SIGKILL: what it held is lost, and resent
        wait_for(lambda: answered(daemons[1:]) >= 120, timeout=300)
        assert daemons[1].stop(signal.SIGTERM) == 0  # leaves the distributor, drains, exits 0
        assert proc.wait(timeout=600) == 0
    got = json.loads(report.read_text())
    assert got["sent"] == got["received"] == got["ok"] == 300, got
    assert got["missing"] == got["unsent"] == 0 and got["errors"] == {}
    # One reply per event in the report; any second reply to a resent event is counted.
    assert got["resent"] >= got["duplicates"]
    assert [line for line in daemons[1].logs() if line["message"].startswith("disconnected")]


def test_forwarders_export_what_they_forward_and_their_connections(
    farm, sim_run: Path, tmp_path
) -> None:
    dist, coll, _ = farm
    for f in (dist, coll):
        assert f.get("/healthz") == (200, "ok\n") and f.get("/readyz") == (200, "ready\n")
        assert json.loads(f.get("/status")[1])["back"] == f.back
    # Each daemon (ready) connects to both forwarders.
    for f, inside in ((dist, "back"), (coll, "front")):
        # (the ignore: mypy cannot infer a lambda with default arguments)
        wait_for(lambda f=f, s=inside: sample(f.metrics(), "streamtrk_connections", socket=s) == 3)  # type: ignore[misc]
    with replay(tmp_path, sim_run, dist, coll) as (proc, report):
        assert proc.wait(timeout=600) == 0
    assert json.loads(report.read_text())["received"] == 300
    # The replay's connections, counted at the sockets facing producers and consumers.
    for f, role, outside in ((dist, "distributor", "front"), (coll, "collector", "back")):
        assert sample(f.metrics(), "streamtrk_farm_forwarded_total", role=role) == 300

        def ended(f: Forwarder = f, side: str = outside) -> bool:
            m = f.metrics()
            return sample(m, "streamtrk_connections", socket=side) == 0 and (
                sample(m, "streamtrk_disconnects_total", socket=side, cause="closed") == 1
            )

        wait_for(ended)
        logged = [json.loads(line)["message"] for line in f.log.read_text().splitlines()]
        assert f"connection on {outside} ended (closed)" in logged


def test_the_shipped_scrape_job_finds_the_forwarders_its_file_lists(tmp_path: Path) -> None:
    """A real Prometheus with the shipped ``streamtrk-farm`` job and a ``farm/forwarders.yml``
    naming a distributor and a collector: both are scraped and the dashboard's forwarder
    selector finds them; one stopped, StreamtrkFarmForwarderDown's expression names it."""
    need_program("prometheus")
    shipped = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in shipped["scrape_configs"] if j["job_name"] == "streamtrk-farm"]
    groups = yaml.safe_load((DEPLOY / "prometheus" / "rules" / "streamtrk.rules.yml").read_text())
    (rule,) = [
        r
        for g in groups["groups"]
        for r in g["rules"]
        if r.get("alert") == "StreamtrkFarmForwarderDown"
    ]
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "streamtrk.json").read_text())
    (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == "forwarder"]
    definition = re.fullmatch(r"label_values\((\w+), instance\)", variable["definition"])
    assert definition is not None, variable["definition"]
    selector = definition[1]
    dist, coll = Forwarder(tmp_path, "distributor"), Forwarder(tmp_path, "collector")
    prometheus = None
    try:
        (tmp_path / "farm").mkdir()
        targets = [{"targets": [dist.http, coll.http], "labels": {"farm": "test"}}]
        (tmp_path / "farm" / "forwarders.yml").write_text(yaml.safe_dump(targets))
        prometheus = Prometheus(tmp_path, scrape_configs=[job])
        prometheus.wait_scraping(job="streamtrk-farm", targets=2)
        found = prometheus.query(f"group by (instance, role) ({selector})")
        assert {(r["metric"]["instance"], r["metric"]["role"]) for r in found} == {
            (dist.http, "distributor"),
            (coll.http, "collector"),
        }
        assert prometheus.query(rule["expr"]) == []
        assert dist.stop() == 0
        wait_for(lambda: [r["metric"]["instance"] for r in prometheus.query(rule["expr"])]
                 == [dist.http])  # fmt: skip
    finally:
        for p in (prometheus, dist, coll):
            if p is not None:
                p.stop()


def test_without_resends_losses_are_counted(farm, sim_run: Path, tmp_path) -> None:
    dist, coll, daemons = farm
    # What the killed daemon held never comes: the replay gives up 3 s after its last reply.
    with replay(tmp_path, sim_run, dist, coll, "--timeout", "3") as (proc, report):
        wait_for(lambda: answered(daemons) >= 60, timeout=300)
        daemons[0].process.kill()
        assert proc.wait(timeout=600) == 1  # events are missing
    got = json.loads(report.read_text())
    assert got["missing"] > 0 and got["received"] + got["missing"] == got["sent"] == 300


def test_a_daemon_stopped_mid_stream_takes_what_it_holds_not_the_stream(
    daemon_factory, sim_run: Path, tmp_path: Path
) -> None:
    """On SIGTERM a daemon in connect mode takes what its input holds (``rcvhwm`` messages,
    and one libzmq read past them), then leaves the distributor: it does not go on taking
    the events the distributor keeps sending, for other daemons to serve, until the drain
    runs out (then answering them ``shutdown``)."""
    dist, coll = Forwarder(tmp_path, "distributor"), Forwarder(tmp_path, "collector")
    try:
        d = daemon_factory("--connect", "--input", dist.back, "--output", coll.front,
                           "--rcvhwm", "2", "--queue-capacity", "2", "--max-batch-events", "1",
                           "--drain-timeout-s", "10")  # fmt: skip
        with replay(tmp_path, sim_run, dist, coll, "--loop", "100"):  # a stream for minutes
            wait_for(lambda: answered([d]) >= 50, timeout=300)
            assert d.stop(signal.SIGTERM) == 0
    finally:
        dist.stop(), coll.stop()
    [left] = [x["message"] for x in d.logs() if x["message"].startswith("disconnected")]
    found = re.search(r"; (\d+) queued messages taken", left)
    assert found is not None, left
    taken = int(found.group(1))
    assert taken <= 2 + 1, left
    [summary] = [x for x in d.logs() if x["message"] == "drained, exiting"]
    assert summary["shutdown"] == 0, summary


def test_a_forwarder_with_no_peer_left_stops_on_sigterm(tmp_path: Path) -> None:
    import zmq

    dist = Forwarder(tmp_path, "distributor")
    ctx: zmq.Context[Any] = zmq.Context.instance()
    try:
        with ctx.socket(zmq.PUSH) as producer:
            producer.setsockopt(zmq.LINGER, 0)
            producer.connect(dist.front)
            for k in range(3):  # no daemon to take them
                producer.send(b"event %d" % k)
            time.sleep(2)
            dist.process.send_signal(signal.SIGTERM)
            assert dist.process.wait(timeout=10) == 0
    finally:
        dist.stop()
    # Those its input queue held (about --hwm 2; the rest waited in the producer's) are
    # dropped with it: said, not silent.
    lines = [json.loads(line) for line in dist.log.read_text().splitlines()]
    said = lines[-1]
    assert said["message"] == "stopped" and said["role"] == "distributor"
    assert said["forwarded"] == 0 and 1 <= said["not_forwarded"] <= 3


def test_a_forwarder_outlives_a_sighup_and_still_stops_on_sigterm(tmp_path: Path) -> None:
    """SIGHUP, the daemons' reload (``pkill -HUP streamtrk`` reaches forwarders too), is
    ignored: by default it ended the forwarder at once, exit 129, what it held uncounted."""
    dist = Forwarder(tmp_path, "distributor")
    try:
        dist.process.send_signal(signal.SIGHUP)
        time.sleep(1)
        assert dist.process.poll() is None
        assert dist.get("/healthz")[0] == 200
        dist.process.send_signal(signal.SIGTERM)
        assert dist.process.wait(timeout=10) == 0
    finally:
        dist.stop()
    assert json.loads(dist.log.read_text().splitlines()[-1])["message"] == "stopped"


def test_a_sighup_during_a_forwarders_imports_is_ignored(tmp_path: Path) -> None:
    """Ignored from the start: one as the command line was read (the parser imports ZeroMQ
    and the daemon's settings, half a second) ended the forwarder, exit 129, unlogged."""
    log = tmp_path / "distributor.log"
    with log.open("wb") as out, shell_signals():
        process = subprocess.Popen(
            [sys.executable, "-c", SIGNAL_ON_IMPORT, "SIGHUP", "zmq", "farm", "distributor",
             "--from", "tcp://127.0.0.1:*", "--to", "tcp://127.0.0.1:*"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        assert wait_listening(log, READY_TIMEOUT_S, process), f"exit {process.poll()}"
    finally:
        code = terminate(process, 30)
    assert code == 0
    assert json.loads(log.read_text().splitlines()[-1])["message"] == "stopped"


def test_a_forwarder_whose_socket_monitor_dies_stops_and_exits_1(tmp_path: Path) -> None:
    """The monitor's death (here at its first connection event) would soon hold up the
    sockets' traffic (libzmq's I/O thread waits for it): the forwarder stops, says why and
    exits 1, for its supervisor to restart it."""
    import zmq

    dist = Forwarder(tmp_path, "distributor", env={"STREAMTRK_TEST_FAULTS": "monitor_fail_after=1"})
    ctx: zmq.Context[Any] = zmq.Context.instance()
    try:
        with ctx.socket(zmq.PUSH) as producer:
            producer.setsockopt(zmq.LINGER, 0)
            producer.connect(dist.front)  # its connection: the monitor's first event
            assert dist.process.wait(timeout=30) == 1
    finally:
        dist.stop()
    said = dist.log.read_text()
    assert "fault injected at pass 1 of monitor" in said
    assert '"message": "stopped", "role": "distributor"' in said
    assert "streamtrk farm: error: stopped: the socket monitor died (InjectedFault(" in said


def test_a_forwarder_given_half_a_curve_key_pair_refuses(tmp_path: Path) -> None:
    # One key alone would leave the daemon-facing socket unencrypted: refused, not ignored.
    with pytest.raises(ValueError, match="CURVE needs both"):
        forward("distributor", "tcp://127.0.0.1:*", "tcp://127.0.0.1:*", curve_key=tmp_path / "k")


@pytest.mark.parametrize(
    ("role", "keys", "match"),
    [
        ("balancer", {}, "role must be one of distributor, collector, got 'balancer'$"),
        ("distributor", {"allowed_keys": Path("keys")}, "--allowed-keys needs --server-key"),
    ],
)
def test_a_forwarder_with_an_unknown_role_or_keys_without_its_own_refuses(
    role: str, keys: dict, match: str
) -> None:
    stopped = threading.Event()
    stopped.set()  # were it accepted, it would return at once instead of forwarding
    with pytest.raises(ValueError, match=match):
        forward(role, "tcp://127.0.0.1:*", "tcp://127.0.0.1:*", stop=stopped, **keys)


def test_a_forwarder_given_one_endpoint_twice_refuses_naming_both() -> None:
    """--from and --to must be two endpoints (the second bind would fail): refused as a
    setting, both named, before anything binds (localhost is 127.0.0.1)."""
    stopped = threading.Event()
    stopped.set()  # were it accepted, it would return at once instead of forwarding
    with pytest.raises(
        ValueError,
        match=r"^--from and --to must be two endpoints, got 'tcp://127\.0\.0\.1:5555' and "
        r"'tcp://localhost:5555'$",
    ):
        forward("distributor", "tcp://127.0.0.1:5555", "tcp://localhost:5555", stop=stopped)


@pytest.mark.parametrize(
    ("front", "back", "named"),
    [
        ("tcp://0.0.0.0:*", "tcp://127.0.0.1:*", "--server-key and --allowed-keys"),
        ("tcp://127.0.0.1:*", "tcp://0.0.0.0:*", "--curve-key and --curve-server-key"),
        # libzmq binds what follows the last ';' (here every interface), not the loopback
        ("tcp://127.0.0.1:0;0.0.0.0:*", "tcp://127.0.0.1:*", "--server-key and --allowed-keys"),
        # transports that reach other hosts, whatever their address says
        ("tipc://{5560,0,0}", "tcp://127.0.0.1:*", "--server-key and --allowed-keys"),
    ],
)
def test_a_forwarder_refuses_to_bind_beyond_the_host_without_curve(front, back, named) -> None:
    stopped = threading.Event()
    stopped.set()  # were it accepted, it would return at once instead of forwarding
    with pytest.raises(ValueError, match=f"not a loopback address and CURVE is off.*{named}") as e:
        forward("distributor", front, back, stop=stopped)
    assert str(e.value).endswith("or --allow-insecure on a trusted network")  # the way out


def test_a_distributor_admits_only_producers_with_allowed_keys(tmp_path: Path) -> None:
    import zmq

    from streamtrk.wire.curve import create_certificates, make_client

    keys, allowed = tmp_path / "keys", tmp_path / "keys" / "producers"
    server_public, server_secret = create_certificates(keys, "distributor")
    good_public, good_secret = create_certificates(keys, "good")
    _, bad_secret = create_certificates(keys, "stranger")
    allowed.mkdir()
    (allowed / good_public.name).write_bytes(good_public.read_bytes())
    dist = Forwarder(tmp_path, "distributor", "--server-key", str(server_secret),
                     "--allowed-keys", str(allowed))  # fmt: skip
    ctx: zmq.Context[Any] = zmq.Context.instance()
    try:
        with ctx.socket(zmq.PULL) as daemon:
            daemon.setsockopt(zmq.LINGER, 0)
            daemon.connect(dist.back)
            for secret, payload in ((bad_secret, b"from a stranger"), (good_secret, b"ok")):
                with ctx.socket(zmq.PUSH) as producer:
                    producer.setsockopt(zmq.LINGER, 2000)
                    make_client(producer, secret, server_public)
                    producer.connect(dist.front)
                    producer.send(payload)
            assert daemon.poll(30_000) and daemon.recv() == b"ok"
            assert not daemon.poll(1000)  # the stranger's never came through
    finally:
        assert dist.stop() == 0


def test_a_curve_distributor_stops_after_a_producer_s_frame_over_the_limit(
    tmp_path: Path,
) -> None:
    """A CURVE server whose peer's connection is dropped mid-message (a frame over the
    limit, or the producer killed) is left a ZAP credential without its message: a poll
    reports it, and a blocking receive waited for the next message, through SIGTERM (no
    daemon connected: only the stop's drain receives). Not now."""
    import zmq

    from streamtrk.wire.curve import create_certificates, make_client

    keys, allowed = tmp_path / "keys", tmp_path / "keys" / "producers"
    server_public, server_secret = create_certificates(keys, "distributor")
    good_public, good_secret = create_certificates(keys, "good")
    allowed.mkdir()
    (allowed / good_public.name).write_bytes(good_public.read_bytes())
    dist = Forwarder(tmp_path, "distributor", "--server-key", str(server_secret),
                     "--allowed-keys", str(allowed), "--max-hits", "100")  # fmt: skip
    ctx: zmq.Context[Any] = zmq.Context.instance()
    try:
        with ctx.socket(zmq.PUSH) as producer:
            producer.setsockopt(zmq.LINGER, 2000)
            make_client(producer, good_secret, server_public)
            producer.connect(dist.front)
            producer.send_multipart([b"header", bytes(100_000)])  # 800 bytes at most
            time.sleep(1)  # over loopback, dropped long before this
        dist.process.send_signal(signal.SIGTERM)
        assert dist.process.wait(timeout=10) == 0
    finally:
        dist.stop()


@pytest.mark.parametrize("role", ["distributor", "collector"])
def test_a_curve_server_without_allowed_keys_says_that_no_client_can_connect(
    tmp_path: Path, role: str
) -> None:
    """As the daemon warns when it serves CURVE with no curve_allowed_keys."""
    from streamtrk.wire.curve import create_certificates

    _, server_secret = create_certificates(tmp_path / "keys", role)
    forwarder = Forwarder(tmp_path, role, "--server-key", str(server_secret))
    assert forwarder.stop() == 0
    lines = [json.loads(line) for line in forwarder.log.read_text().splitlines()]
    clients = "producer" if role == "distributor" else "consumer"
    assert {"level": "warning", "message": f"--server-key without --allowed-keys: no {clients} "
            "can connect"}.items() <= lines[0].items()  # fmt: skip


@pytest.mark.parametrize(
    ("max_hits", "size", "through"),
    [
        (None, 9_000_000, False),
        ("2000000", 9_000_000, True),
        ("10000", 100_000, False),  # smaller events: smaller frames (not the 8 MB of truth)
        ("10000", 80_000, True),
    ],
)
def test_a_forwarder_takes_frames_as_long_as_its_max_hits_allows(
    tmp_path: Path, max_hits: str | None, size: int, through: bool
) -> None:
    """A 9 MB frame is past what a 1M-hit event has (8 MB): dropped unless --max-hits says
    events are larger (as the daemons' own max_hits must); 100 kB is past a 10k-hit one.
    A frame over the limit is dropped with its sender's connection (libzmq's MAXMSGSIZE):
    once the forwarder has counted that disconnection, the frame can no longer come."""
    import zmq

    dist = Forwarder(tmp_path, "distributor", *(["--max-hits", max_hits] if max_hits else []))
    ctx: zmq.Context[Any] = zmq.Context.instance()

    def dropped() -> float:
        return sample(dist.metrics(), "streamtrk_disconnects_total", socket="front", cause="closed")

    try:
        with ctx.socket(zmq.PULL) as daemon, ctx.socket(zmq.PUSH) as producer:
            daemon.setsockopt(zmq.LINGER, 0)
            daemon.connect(dist.back)
            producer.setsockopt(zmq.LINGER, 2000)
            producer.connect(dist.front)
            producer.send_multipart([b"header", bytes(size)])
            if through:
                assert daemon.poll(30_000)
                assert len(daemon.recv_multipart()[1]) == size
                assert dropped() == 0
            else:
                wait_for(lambda: dropped() == 1, timeout=30)
                assert not daemon.poll(500)
    finally:
        assert dist.stop() == 0


def _stopped_as_a_daemon_reads_slowly(dist: Forwarder, after_s: float, every_s: float):
    """Fill ``dist``'s queues with 1 MB messages from a producer, a daemon connected but not
    reading (its kernel buffer kept small); SIGTERM, then the daemon reads one message
    every ``every_s`` from ``after_s`` after it. The messages it received, the forwarded
    count before the stop, and the forwarder's last line."""
    import zmq

    ctx: zmq.Context[Any] = zmq.Context.instance()
    received = 0
    try:
        with ctx.socket(zmq.PULL) as daemon, ctx.socket(zmq.PUSH) as producer:
            daemon.setsockopt(zmq.LINGER, 0)
            daemon.setsockopt(zmq.RCVHWM, 1)
            daemon.setsockopt(zmq.RCVBUF, 4096)
            daemon.connect(dist.back)
            producer.setsockopt(zmq.LINGER, 0)
            producer.setsockopt(zmq.SNDTIMEO, 100)
            producer.connect(dist.front)
            for _ in range(100):
                with contextlib.suppress(zmq.Again):  # queues full: the rest stay here
                    producer.send(bytes(1_000_000))
            time.sleep(1)
            before = sample(dist.metrics(), "streamtrk_farm_forwarded_total", role="distributor")
            dist.process.send_signal(signal.SIGTERM)
            time.sleep(after_s)
            while daemon.poll(2000):
                daemon.recv()
                received += 1
                time.sleep(every_s)
            assert dist.process.wait(timeout=10) == 0
    finally:
        dist.stop()
    said = json.loads(dist.log.read_text().splitlines()[-1])
    assert said["message"] == "stopped", said
    return received, before, said


def test_what_a_stopping_distributor_counts_forwarded_reaches_a_daemon_still_reading(
    tmp_path: Path,
) -> None:
    """At SIGTERM the messages queued for a daemon (up to --hwm) are counted forwarded: they
    go out while the daemon reads, not with the socket (here a daemon that reads slowly, and
    only once the stop has come; 1 MB messages, its kernel buffer kept small)."""
    dist = Forwarder(tmp_path, "distributor")
    received, _, said = _stopped_as_a_daemon_reads_slowly(dist, 0.0, 0.05)
    assert said["forwarded"] >= 3 and received == said["forwarded"], (received, said)


def test_a_stopping_distributor_passes_on_what_it_had_taken_as_a_daemon_makes_room(
    tmp_path: Path,
) -> None:
    """At SIGTERM the messages on the distributor's input (taken after it unbinds it) wait
    for room at a daemon that reads, up to a second, rather than being dropped at once: a
    daemon that begins to read 0.2 s after the stop, a message every 20 ms, gets them all."""
    dist = Forwarder(tmp_path, "distributor", "--hwm", "1")
    received, before, said = _stopped_as_a_daemon_reads_slowly(dist, 0.2, 0.02)
    assert said["not_forwarded"] == 0, said
    assert said["forwarded"] > before and received == said["forwarded"], (before, said)


@contextlib.contextmanager
def _in_process(
    capsys, role: str, stop_within_s: float = 30, **kw: Any
) -> Iterator[tuple[dict[str, Any], threading.Event, list[dict[str, Any]]]]:
    """``forward`` in a thread; yields (listening record, stop event, lines said); the
    thread must end within ``stop_within_s`` of the block's end."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            forward(role, "tcp://127.0.0.1:*", "tcp://127.0.0.1:*", stop=stop, **kw)
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    said: list[dict[str, Any]] = []
    t_end = time.monotonic() + 20
    while not said and time.monotonic() < t_end and not errors:
        said += [json.loads(x) for x in capsys.readouterr().out.splitlines()]
        time.sleep(0.02)
    assert not errors and said and said[0]["message"] == "listening", (errors, said)
    try:
        yield said[0], stop, said
    finally:
        stop.set()
        thread.join(stop_within_s)
        said += [json.loads(x) for x in capsys.readouterr().out.splitlines()]
        assert not thread.is_alive(), f"{role} still forwarding {stop_within_s:g} s after its stop"
        assert not errors, errors


def test_a_stopping_forwarder_counts_every_message_it_held_and_could_not_pass_on(capsys) -> None:
    """With no daemon, the messages on the input at the stop are each counted in
    ``not_forwarded`` (said, not vanished with the socket)."""
    from streamtrk.client import Producer

    with (
        _in_process(capsys, "distributor", hwm=20) as (bound, stop, said),
        Producer(bound["front"], linger_ms=2000) as producer,
    ):
        for k in range(8):
            assert producer.send_frames([b"event %d" % k], timeout_ms=5000)
        time.sleep(1.0)  # on the forwarder's input (its high-water mark is 20)
        stop.set()
    assert said[-1]["message"] == "stopped"
    assert said[-1]["forwarded"] == 0 and said[-1]["not_forwarded"] == 8, said[-1]


@pytest.mark.parametrize(
    ("front", "back", "keys", "refused"),
    [
        # the collector's front faces the daemons: the daemons' CURVE makes it safe to expose
        ("tcp://0.0.0.0:*", "tcp://127.0.0.1:*", "daemons", False),
        ("tcp://127.0.0.1:*", "tcp://0.0.0.0:*", "daemons", True),
        ("tcp://127.0.0.1:*", "tcp://0.0.0.0:*", "server", False),
        ("tcp://0.0.0.0:*", "tcp://127.0.0.1:*", "server", True),
    ],
)
def test_a_collector_checks_each_side_against_its_own_keys(
    tmp_path: Path, front: str, back: str, keys: str, refused: bool
) -> None:
    """For a collector, the daemon-facing side is ``front`` (the daemons' CURVE client
    keys), the consumer-facing side ``back`` (``server_key``)."""
    from streamtrk.wire.curve import create_certificates

    create_certificates(tmp_path, "daemon")
    _, own_secret = create_certificates(tmp_path, "collector")
    kw: dict[str, Any] = (
        {"curve_key": own_secret, "curve_server_key": tmp_path / "daemon.key"}
        if keys == "daemons"
        else {"server_key": own_secret, "allowed_keys": tmp_path}
    )
    stopped = threading.Event()
    stopped.set()
    if refused:
        with pytest.raises(ValueError, match="not a loopback address and CURVE is off"):
            forward("collector", front, back, stop=stopped, **kw)
    else:
        forward("collector", front, back, stop=stopped, **kw)


def test_a_curve_collector_passes_a_curve_daemon_s_replies_to_an_allowed_consumer(
    tmp_path: Path, capsys
) -> None:
    """A collector is the daemons' CURVE client on its front and a CURVE server for
    consumers on its back."""
    import shutil

    import zmq

    from streamtrk.service.auth import start_authenticator
    from streamtrk.wire.curve import create_certificates, make_client, make_server

    for name in ("daemon", "collector", "consumer"):
        create_certificates(tmp_path, name)
    (tmp_path / "daemon-allows").mkdir()
    shutil.copy(tmp_path / "collector.key", tmp_path / "daemon-allows")
    (tmp_path / "collector-allows").mkdir()
    shutil.copy(tmp_path / "consumer.key", tmp_path / "collector-allows")
    ctx: zmq.Context[Any] = zmq.Context()
    auth = start_authenticator(ctx, tmp_path / "daemon-allows")
    try:
        with _in_process(
            capsys, "collector",
            curve_key=tmp_path / "collector.key_secret",
            curve_server_key=tmp_path / "daemon.key",
            server_key=tmp_path / "collector.key_secret",
            allowed_keys=tmp_path / "collector-allows",
        ) as (bound, _, _):  # fmt: skip
            daemon = ctx.socket(zmq.PUSH)
            daemon.setsockopt(zmq.LINGER, 0)
            make_server(daemon, tmp_path / "daemon.key_secret")
            daemon.connect(bound["front"])
            consumer = ctx.socket(zmq.PULL)
            consumer.setsockopt(zmq.LINGER, 0)
            make_client(consumer, tmp_path / "consumer.key_secret", tmp_path / "collector.key")
            consumer.connect(bound["back"])
            try:
                daemon.send(b"reply", flags=0)
                assert consumer.poll(10_000), "the reply did not come through"
                assert consumer.recv() == b"reply"
            finally:
                daemon.close()
                consumer.close()
    finally:
        auth.stop()
        ctx.term()


def test_a_curve_distributor_counts_a_probe_as_a_refused_handshake(
    tmp_path: Path,
) -> None:
    """A CURVE front monitors HANDSHAKE_FAILED_NO_DETAIL (a peer hanging up mid-handshake
    there: counted as a handshake refused, as the daemon counts it, not as closed)."""
    import socket

    from streamtrk.wire.curve import create_certificates

    _, server_secret = create_certificates(tmp_path / "keys", "distributor")
    (tmp_path / "keys" / "allowed").mkdir()
    dist = Forwarder(tmp_path, "distributor", "--server-key", str(server_secret),
                     "--allowed-keys", str(tmp_path / "keys" / "allowed"))  # fmt: skip
    try:
        for _ in range(3):  # a port probe: connects and hangs up before any handshake
            socket.create_connection(("127.0.0.1", int(dist.front.rsplit(":", 1)[1]))).close()
        ended = ("streamtrk_disconnects_total",)

        def counted(cause: str) -> float:
            return sample(dist.metrics(), *ended, socket="front", cause=cause)

        wait_for(lambda: counted("handshake") + counted("closed") >= 3, timeout=20)
        assert counted("handshake") == 3 and counted("closed") == 0
    finally:
        assert dist.stop() == 0


def test_a_forwarder_whose_daemon_leaves_as_it_takes_a_message_still_stops() -> None:
    """The daemon leaves between the forwarder's check for room and its send (here:
    as its input poll returns). The send must not block until another daemon comes: the
    stop is still seen, and the message held is counted dropped."""
    import zmq

    from streamtrk.farm import ForwarderMetrics, _proxy

    ctx: zmq.Context[Any] = zmq.Context()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    daemon, producer = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    for s in (pull, push, daemon, producer):
        s.setsockopt(zmq.LINGER, 0)
    pull.bind("tcp://127.0.0.1:*")
    push.bind("tcp://127.0.0.1:*")
    daemon.connect(push.getsockopt_string(zmq.LAST_ENDPOINT))
    producer.connect(pull.getsockopt_string(zmq.LAST_ENDPOINT))
    wait_for(lambda: push.poll(0, zmq.POLLOUT), timeout=3, poll_s=0.01)
    producer.send(b"event")

    class LeavingAsItPolls:
        """``pull``, whose first poll with a message in is as the daemon leaves."""

        left = False

        def __getattr__(self, name: str) -> Any:
            return getattr(pull, name)

        def poll(self, timeout: int, flags: int) -> int:
            ready = pull.poll(timeout, flags)
            if ready and not self.left:
                self.left = True
                daemon.close(linger=0)
                wait_for(lambda: not push.poll(0, zmq.POLLOUT), timeout=3, poll_s=0.01)  # gone
            return ready

    stop = threading.Event()
    result: list[tuple[int, int, int]] = []
    thread = threading.Thread(
        target=lambda: result.append(
            _proxy(LeavingAsItPolls(), push, stop, ForwarderMetrics("distributor"))  # type: ignore[arg-type]
        ),
        daemon=True,
    )
    thread.start()
    time.sleep(0.5)
    stop.set()
    thread.join(5)
    assert not thread.is_alive(), "the forwarder blocked in a send to a daemon that left"
    assert result[0][:2] == (0, 1), result
    for s in (pull, push, producer):
        s.close(linger=0)
    ctx.term()


def test_a_curve_distributor_with_a_daemon_stops_after_a_producer_s_frame_over_the_limit(
    tmp_path: Path, capsys
) -> None:
    """As the CURVE frame-over-the-limit test, but with a daemon connected, so
    the forwarding loop (not only the stop's drain) polls the input: the ZAP credential
    left without its message must not make it wait in a receive through the stop."""
    import zmq

    from streamtrk.wire.curve import create_certificates, make_client

    keys, allowed = tmp_path / "keys", tmp_path / "keys" / "producers"
    server_public, server_secret = create_certificates(keys, "distributor")
    good_public, good_secret = create_certificates(keys, "good")
    allowed.mkdir()
    (allowed / good_public.name).write_bytes(good_public.read_bytes())
    ctx: zmq.Context[Any] = zmq.Context()
    with (
        ctx.socket(zmq.PULL) as daemon,
        ctx.socket(zmq.PUSH) as producer,
        _in_process(capsys, "distributor", stop_within_s=4, server_key=server_secret,
                    allowed_keys=allowed, max_hits=100) as (bound, _, _),  # stopped first
    ):  # fmt: skip
        daemon.setsockopt(zmq.LINGER, 0)
        daemon.connect(bound["back"])
        producer.setsockopt(zmq.LINGER, 0)
        make_client(producer, good_secret, server_public)
        producer.connect(bound["front"])
        producer.send_multipart([b"header", bytes(100_000)])  # 800 bytes at most
        time.sleep(1)  # over loopback, dropped long before this: then the stop
    ctx.term()


@pytest.mark.parametrize(
    ("front", "back"),
    [("tcp://0.0.0.0:*", "tcp://127.0.0.1:*"), ("tcp://127.0.0.1:*", "tcp://0.0.0.0:*")],
)
def test_a_forwarder_allowed_insecure_binds_beyond_the_host_without_curve(capsys, front, back):
    """--allow-insecure, on a trusted network: each side binds every interface, no CURVE."""
    stopped = threading.Event()
    stopped.set()  # binds, says where, and returns at once
    forward("distributor", front, back, allow_insecure=True, stop=stopped)
    listening, stop_line = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert listening["message"] == "listening" and stop_line["message"] == "stopped"
    assert (
        "tcp://0.0.0.0:" in (listening["front"], listening["back"])[front.startswith("tcp://127")]
    )


def test_a_stopping_distributor_whose_daemon_reads_nothing_stops_within_its_second(capsys):
    """Its stop's second (STOP_LINGER_MS) spent on the messages it took off its input (no
    room at the daemon), what is still queued for the daemon goes with the socket (LINGER
    0, not a negative LINGER: libzmq's "wait for ever"): the whole stop in about a second
    (2.5 s allowed, for a loaded machine), not a second for each."""
    ctx: zmq.Context[Any] = zmq.Context.instance()
    with ctx.socket(zmq.PULL) as daemon:  # connected, never reading
        daemon.setsockopt(zmq.LINGER, 0)
        daemon.setsockopt(zmq.RCVHWM, 1)
        with (
            _in_process(capsys, "distributor", stop_within_s=2.5, hwm=1) as (bound, _, said),
            Producer(bound["front"], sndhwm=1, linger_ms=0) as producer,
        ):
            daemon.connect(bound["back"])
            sent = 0
            while sent < 100 and producer.send_frames([bytes(1_000_000)], timeout_ms=300):
                sent += 1
            assert 2 < sent < 100  # back-pressure: the daemon's and the forwarder's queues full
            time.sleep(0.5)
        assert said[-1]["message"] == "stopped" and said[-1]["not_forwarded"] >= 1, said[-1]


def test_a_forwarder_s_status_is_its_role_and_bound_addresses(capsys) -> None:
    """docs/metrics.md: /status is JSON of the role and bound addresses (not the
    ``listening`` line's message)."""
    with (
        _in_process(capsys, "collector", http="127.0.0.1:0") as (bound, _, _),
        urllib.request.urlopen(f"http://{bound['http']}/status", timeout=10) as r,
    ):
        status = json.loads(r.read())
    assert status == {"role": "collector", "front": bound["front"], "back": bound["back"]}


@pytest.mark.parametrize("role", ["distributor", "collector"])
def test_a_forwarder_is_ready_and_counts_what_it_forwards_under_its_role(capsys, role: str) -> None:
    """/readyz is ready from the start; each message passed on counts once in
    streamtrk_farm_forwarded_total, labelled with the forwarder's own role."""
    with (
        _in_process(capsys, role, http="127.0.0.1:0") as (bound, _, _),
        Consumer(bound["back"], linger_ms=0) as consumer,
        Producer(bound["front"], linger_ms=2000) as producer,
    ):
        served = HttpEndpoints()
        served.http = bound["http"]
        assert served.get("/readyz") == (200, "ready\n")
        for k in range(3):
            assert producer.send_frames([b"message %d" % k], timeout_ms=5000)
        for _ in range(3):
            assert consumer.socket.poll(10_000)
            consumer.socket.recv_multipart()
        m = served.metrics()
        assert sample(m, "streamtrk_farm_forwarded_total", role=role) == 3, m
        other = "collector" if role == "distributor" else "distributor"
        assert sample(m, "streamtrk_farm_forwarded_total", role=other) == 0


def test_a_forwarder_whose_http_port_is_taken_says_which_address() -> None:
    """An HTTP address in use is an OSError naming HOST:PORT (as the CLI prints it)."""
    taken = socket.socket()
    try:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        stopped = threading.Event()
        stopped.set()
        with pytest.raises(OSError, match=rf"^cannot serve HTTP on 127\.0\.0\.1:{port}: "):
            forward("collector", "tcp://127.0.0.1:*", "tcp://127.0.0.1:*",
                    http=f"127.0.0.1:{port}", stop=stopped)  # fmt: skip
    finally:
        taken.close()


def test_a_stopped_forwarder_no_longer_serves_http(capsys) -> None:
    """Once ``forward`` returns, its HTTP endpoints are closed (its port free again)."""
    with _in_process(capsys, "distributor", http="127.0.0.1:0") as (bound, _, _):
        address = bound["http"]
        with urllib.request.urlopen(f"http://{address}/healthz", timeout=10) as r:
            assert r.status == 200
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://{address}/healthz", timeout=5).close()


def test_a_stopping_distributor_takes_nothing_more_from_producers_still_sending(capsys) -> None:
    """At the stop the input is unbound first: a producer that keeps sending keeps what it
    has not sent (for a forwarder in its place), rather than the stop's second taking (and
    dropping, no daemon reading) all it sends meanwhile."""
    ctx: zmq.Context[Any] = zmq.Context.instance()
    sending = threading.Event()
    sending.set()

    def produce(endpoint: str) -> None:
        with Producer(endpoint, sndhwm=1000, linger_ms=0) as producer:
            while sending.is_set():
                producer.send_frames([b"event"], timeout_ms=10)

    with ctx.socket(zmq.PULL) as daemon:  # connected, never reading
        daemon.setsockopt(zmq.LINGER, 0)
        daemon.setsockopt(zmq.RCVHWM, 1)
        try:
            with _in_process(capsys, "distributor", hwm=1) as (bound, _, said):
                daemon.connect(bound["back"])
                producer = threading.Thread(target=produce, args=(bound["front"],), daemon=True)
                producer.start()
                time.sleep(0.5)
        finally:
            sending.clear()
    assert said[-1]["message"] == "stopped" and said[-1]["not_forwarded"] < 100, said[-1]


def test_a_collector_takes_replies_with_as_many_tracks_as_a_daemon_may_send(capsys) -> None:
    """A collector's front takes replies: its frame limit keeps room for max_tracks (200k
    tracks, 1.6 MB columns) whatever --max-hits says; only a distributor's front, taking
    hits messages, is bounded by max_hits alone."""
    with (
        _in_process(capsys, "collector", max_hits=100) as (bound, _, _),
        Consumer(bound["back"], linger_ms=0) as consumer,
        Producer(bound["front"], linger_ms=2000) as daemon,
    ):
        assert daemon.send_frames([b"header", bytes(1_000_000)], timeout_ms=5000)
        assert consumer.socket.poll(10_000), "the reply's 1 MB column was dropped"
        assert len(consumer.socket.recv_multipart()[1]) == 1_000_000
