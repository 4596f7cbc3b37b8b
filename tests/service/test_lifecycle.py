"""Health endpoints, start-up banner, SIGHUP reload (failing, then working), and a drain
that runs out of time."""

from __future__ import annotations

import json
import logging
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq
from live_daemon import (
    READY_TIMEOUT_S,
    SIGNAL_ON_IMPORT,
    WITHOUT_STDOUT,
    clean_env,
    sample,
    shell_signals,
    wait_for,
)
from live_daemon import Daemon as LiveDaemon
from needs import no_ipv6_loopback

from streamtrk.client import Consumer, Producer, terminate, wait_listening, wait_ready
from streamtrk.detector import load_detector
from streamtrk.io.recording import RecordingWriter, iter_events, iter_records
from streamtrk.recon.model import default_model_path
from streamtrk.service.config import ServeConfig
from streamtrk.service.serve import CPU_BATCH_HITS, Daemon, _curve_said
from streamtrk.sim.generator import GeneratorConfig
from streamtrk.sim.simulate import SimConfig, simulate
from streamtrk.wire import ModelId

pytestmark = pytest.mark.slow


SLOW_LOAD = {"STREAMTRK_TEST_FAULTS": "load_delay_s=5"}  # every model load takes 5 s more


def model_labels(d) -> dict[str, str]:
    [labels] = [dict(k[1]) for k in d.metrics() if k[0] == "streamtrk_model_info"]
    return labels


def reload_counted(d: LiveDaemon, result: str, count: int) -> None:
    """SIGHUP, then wait until the daemon has counted ``count`` reloads ending in ``result``."""
    d.process.send_signal(signal.SIGHUP)
    wait_for(lambda: sample(d.metrics(), "streamtrk_model_reloads_total", result=result) == count)


def hup_until_said(d: LiveDaemon, message: str) -> None:
    """SIGHUP, then wait for the daemon's log line ``message``."""
    d.process.send_signal(signal.SIGHUP)
    wait_for(lambda: any(line["message"] == message for line in d.logs()))


def test_health_banner_reload_and_exit(daemon_factory, sim_run: Path, tmp_path: Path) -> None:
    # The model comes from the configuration file (which SIGHUP re-reads), not the environment.
    model = f'model = "{default_model_path()}"\n'
    config = tmp_path / "serve.toml"
    config.write_text("")  # the shipped model, its card's threshold (0.5)
    d = daemon_factory("--config", str(config), keep_model=False)
    assert d.get("/healthz") == (200, "ok\n")
    assert d.get("/readyz") == (200, "ready\n")
    assert d.get("/nowhere")[0] == 404
    for path in ("/healthz", "/readyz", "/metrics", "/status"):  # load balancers use HEAD
        assert d.head(path) == (200, ""), path
    status = json.loads(d.get("/status")[1])
    assert status["state"] == "ready" and status["endpoints"]["http"] == d.http
    assert status["settings"]["threshold"] is None and status["model"]["threshold"] == 0.5
    assert status["model"]["engine"] == "eager" and status["model"]["device"] == "cpu"
    assert status["model"]["card"]["metrics"]["test"]["tracking_efficiency"] > 0.9
    [banner] = [line for line in d.logs() if line["message"] == "streamtrk serve ready"]
    for key in ("version", "torch", "device", "engine", "model", "model_hash", "input", "http"):
        assert banner[key] not in (None, ""), key
    assert banner["device"] == "cpu" and d.input in banner["input"]
    assert banner["curve"].startswith("off:")
    assert banner["max_batch_hits"] == CPU_BATCH_HITS  # max_batch_hits = 0: the CPU's
    m = d.metrics()
    assert sample(m, "streamtrk_ready") == 1
    assert sample(m, "streamtrk_queue_capacity", queue="batch") == 16
    [build] = [dict(k[1]) for k in m if k[0] == "streamtrk_build_info"]
    assert build["device"] == "cpu" and build["engine"] == banner["engine"] == "eager"
    assert (build["engine_requested"], build["precision"]) == ("auto", "fp32")
    before = model_labels(d)
    assert before["threshold"] == "0.5" and before["hash"] == banner["model_hash"]
    # The heap frozen once the model is installed: the imports and the model, out of the
    # collector's scans; that full collection's pause counted.
    [frozen] = [line for line in d.logs() if line["message"] == "heap frozen"]
    assert frozen["after"] == "installed" and frozen["objects"] > 50_000
    assert sample(m, "streamtrk_gc_frozen_objects") > 50_000  # less those freed since
    full = sample(m, "streamtrk_gc_pause_seconds_count", generation="2")
    assert full >= 1
    assert (
        sample(m, "streamtrk_beam_line_x_meters") == sample(m, "streamtrk_beam_line_y_meters") == 0
    )

    # A configuration naming a missing model: the reload fails, the old model keeps serving.
    config.write_text(f'model = "{tmp_path / "no-such-model"}"\n')
    reload_counted(d, "failure", 1)
    assert d.get("/readyz")[0] == 200 and model_labels(d) == before
    [failed] = [line["message"] for line in d.logs() if line["message"].startswith("reload failed")]
    assert "no model at" in failed and "--oracle" not in failed  # serve has no --oracle
    # One that needs a queue longer than the one kept until a restart: refused, and said why.
    config.write_text(model + "max_batch_events = 24\nqueue_capacity = 32\n")
    reload_counted(d, "failure", 2)
    failed = [line["message"] for line in d.logs() if line["message"].startswith("reload failed")]
    assert failed[-1].endswith("with queue_capacity kept until a restart")

    # A good one (and settings that need a restart, which are kept: the CURVE certificate
    # and allowed-keys directory are read by the authenticator started with the sockets).
    keys = tmp_path / "keys"
    config.write_text(
        model + f'threshold = 0.7\nrcvhwm = 5\ncurve_allowed_keys = "{keys}"\ndrain_timeout_s = 2\n'
        f'curve_secret_key = "{keys / "server.key_secret"}"\n'
        "linger_ms = 7\n"  # the sockets' LINGER, set when they open
        "beam_spot_x_mm = 1.5\nbeam_spot_y_mm = -1.0\n"
    )
    reload_counted(d, "success", 1)
    assert model_labels(d)["threshold"] == "0.7"
    # Frozen again by the worker between batches (the old model freed first), not after
    # the failed reloads.
    wait_for(lambda: [line.get("after") for line in d.logs()].count("reload") == 1)
    assert sample(d.metrics(), "streamtrk_gc_pause_seconds_count", generation="2") > full
    m = d.metrics()
    assert sample(m, "streamtrk_beam_line_x_meters") == pytest.approx(1.5e-3)
    assert sample(m, "streamtrk_beam_line_y_meters") == pytest.approx(-1.0e-3)
    beam = json.loads(d.get("/status")[1])["beam_spot"]
    assert beam == {"beam_line_mm": [1.5, -1.0], "measured_mm": None, "tracks": 0}
    kept = [line["message"] for line in d.logs() if "need a restart" in line["message"]]
    assert kept[-1].endswith("curve_allowed_keys, curve_secret_key, linger_ms, rcvhwm")
    [reloaded] = [line for line in d.logs() if line["message"] == "reloaded"]
    assert reloaded["settings_changed"] == (
        "threshold 0.5 -> 0.7, drain_timeout_s 30.0 -> 2.0, beam_spot_x_mm 0.0 -> 1.5, "
        "beam_spot_y_mm 0.0 -> -1.0"
    )  # in the order of serve --help; those kept until a restart are not among them; the
    # threshold and model as used (the settings were None: the card's, the shipped model)

    # A reply nobody takes: the drain gives up after drain_timeout_s and says so.
    with Producer(d.input, linger_ms=0) as producer:
        assert producer.send_event(next(iter_events(sim_run)), timeout_ms=30_000)
        wait_for(lambda: sample(d.metrics(), "streamtrk_stage_seconds_count", stage="fit") > 0)
        assert sample(d.metrics(), "streamtrk_hits_total") == 0  # counted once it is sent
    assert d.stop(signal.SIGINT) == 1
    last = d.logs()[-1]
    assert last["message"].startswith("drain incomplete") and last["dropped"] == 1


def test_a_reload_to_a_device_this_host_lacks_fails_as_start_up_would(daemon_factory, tmp_path):
    """SIGHUP with ``device = "cuda"`` on a host without CUDA: refused with start-up's
    reason (not torch's bare error), the old model kept."""
    from streamtrk.recon.device import cuda_unavailable

    if (why := cuda_unavailable()) is None:
        pytest.skip("this machine can run device=cuda")
    config = tmp_path / "serve.toml"
    config.write_text("")
    d = daemon_factory("--config", str(config))
    config.write_text('device = "cuda"\n')
    reload_counted(d, "failure", 1)
    [failed] = [line["message"] for line in d.logs() if line["message"].startswith("reload failed")]
    assert failed == (
        f"reload failed, still serving the previous model: device cuda: {why} "
        f"(from config file {config}, line 1)"
    )
    assert d.get("/readyz")[0] == 200


def test_readyz_is_503_while_loading_and_while_draining(daemon_factory) -> None:
    # Returned once the daemon listens, before the model is loaded (made to take 5 s).
    d = daemon_factory("--drain-timeout-s", "120", wait=False, env=SLOW_LOAD)
    assert d.get("/readyz") == (503, "loading\n")
    assert d.get("/healthz") == (200, "ok\n")
    wait_for(lambda: d.get("/readyz")[0] == 200)
    served = json.loads(d.get("/status")[1])["model"]
    event = simulate(load_detector(), SimConfig(generator=GeneratorConfig(mu=100)), 3, 1)
    with Consumer(d.output, linger_ms=0) as consumer, Producer(d.input, linger_ms=0) as producer:
        assert producer.send_event(next(event), timeout_ms=30_000)
        wait_for(lambda: sample(d.metrics(), "streamtrk_batch_events_count") == 1)
        d.process.send_signal(signal.SIGTERM)  # the batch takes seconds: the drain waits
        wait_for(lambda: d.get("/readyz") == (503, "draining\n"), timeout=30)
        reply = consumer.recv(timeout_ms=120_000)
    assert reply is not None and reply.to_reply().ok
    # A reply states the beam line of its perigee parameters and their standard errors, and
    # the model that made them, as /status names it.
    tracks = reply.to_reply()
    assert tracks.beam_line == (0.0, 0.0) and len(tracks) > 500  # MU=100: 992
    assert tracks.model == ModelId(served["name"], served["hash"], served["threshold"])
    for name in ("q_over_pt", "eta", "phi", "d0", "z0"):
        sigma = tracks.params[f"sigma_{name}"]
        assert np.all((sigma > 0) & np.isfinite(sigma)), name
    assert d.stop() == 0


def test_sighups_during_a_reload_start_one_more_after_it(daemon_factory) -> None:
    """The reload in progress may have read the files before the operator's last edit: the
    SIGHUPs that came during it start one more reload (one for all of them) once it ends."""
    d = daemon_factory(env={"STREAMTRK_TEST_FAULTS": "reload_delay_s=5, slow, fail_after=x"})
    hup_until_said(d, "reloading")
    following = "reload already in progress; another follows it"

    def followed(n: int) -> bool:
        return [line["message"] for line in d.logs()].count(following) == n

    for n in (1, 2):  # the reload takes 5 s more, then loads the model
        d.process.send_signal(signal.SIGHUP)
        wait_for(partial(followed, n))
    reloads = "streamtrk_model_reloads_total"
    wait_for(lambda: sample(d.metrics(), reloads, result="success") == 2, timeout=60)
    messages = [line["message"] for line in d.logs()]
    # the test hook is said at start: set on a farm node by mistake, it would not go unseen
    hook = "STREAMTRK_TEST_FAULTS is set: faults injected on purpose (tests only): "
    assert messages.count(hook + "reload_delay_s=5") == 1
    ignored = "STREAMTRK_TEST_FAULTS: ignored 'slow', 'fail_after=x' (not name=number)"
    assert messages.count(ignored) == 1  # a mistyped hook is said, not a traceback
    assert messages.count(following) == 2
    assert messages.count("reloading") == 2 and messages.count("reloaded") == 2
    assert messages.index("reloaded") < messages.index("reloading", messages.index("reloading") + 1)
    assert d.get("/readyz") == (200, "ready\n")
    assert sample(d.metrics(), reloads, result="failure") == 0
    assert d.stop() == 0


def test_the_file_s_settings_a_variable_overrides_are_said_at_start_and_at_each_reload(
    daemon_factory, tmp_path: Path
) -> None:
    """The operator edits the file and sends SIGHUP; the variable still wins (as at start),
    and the log says so: the reload alone would say that nothing changed. A reload that
    fails says only why (here its model's install fails): not what it would have kept."""
    config = tmp_path / "serve.toml"
    config.write_text("max_batch_events = 4\n")
    d = daemon_factory(
        "--config", str(config),
        env={"STREAMTRK_MAX_BATCH_EVENTS": "6", "STREAMTRK_TEST_FAULTS": "install_fail_after=3"},
    )  # fmt: skip
    said = f"config file {config}, line 1: max_batch_events = {{}} is overridden by " + (
        "environment variable STREAMTRK_MAX_BATCH_EVENTS: max_batch_events = 6"
    )
    assert [m["message"] for m in d.logs()].count(said.format(4)) == 1
    config.write_text("max_batch_events = 8\nlinger_ms = 999\n")
    hup_until_said(d, "reloaded")
    messages = [line["message"] for line in d.logs()]
    assert messages.count(said.format(8)) == 1
    assert messages.count("settings that need a restart kept: linger_ms") == 1
    assert messages.index("reloading") < messages.index(said.format(8))
    reloaded = next(line for line in d.logs() if line["message"] == "reloaded")
    assert reloaded["settings_changed"] == "none"
    config.write_text("max_batch_events = 9\nhttp = '127.0.0.1:1'\n")
    d.process.send_signal(signal.SIGHUP)
    failed = "reload failed, still serving the previous model: fault injected"
    wait_for(lambda: any(line["message"].startswith(failed) for line in d.logs()))
    messages = [line["message"] for line in d.logs()]
    assert said.format(9) not in messages
    assert [m.startswith("settings that need a restart kept") for m in messages].count(True) == 1
    assert d.stop() == 0


def test_a_reload_whose_thread_cannot_start_fails_and_the_next_one_works(daemon_factory):
    """Out of threads at a SIGHUP: the reload fails as any other (logged, counted), the
    daemon goes on serving and drains, and the next SIGHUP reloads."""
    d = daemon_factory(env={"STREAMTRK_TEST_FAULTS": "reload_thread_fail_after=1"})
    reload_counted(d, "failure", 1)
    assert any(
        line["message"].startswith("reload failed, still serving the previous model: no thread")
        for line in d.logs()
    )
    reload_counted(d, "success", 1)
    assert d.get("/readyz") == (200, "ready\n")
    assert d.stop() == 0


def test_sigterm_during_a_reload_exits_without_waiting_for_it(daemon_factory) -> None:
    """A reload that takes long (a model on a stuck file system) is seen: ``/status`` gives
    its time so far, and once past ``stall_timeout_s`` a warning says so (the daemon is
    ready meanwhile, serving the previous model)."""
    d = daemon_factory(
        "--stall-timeout-s", "1", env={"STREAMTRK_TEST_FAULTS": "reload_delay_s=120"}
    )  # fmt: skip
    assert json.loads(d.get("/status")[1])["reload_s"] is None
    hup_until_said(d, "reloading")
    slow = re.compile(r"a reload has run \d+ s, past stall_timeout_s; the previous model still")
    wait_for(lambda: any(slow.match(line["message"]) for line in d.logs()))
    assert json.loads(d.get("/status")[1])["reload_s"] > 1
    assert d.get("/readyz") == (200, "ready\n")
    t0 = time.monotonic()
    d.process.send_signal(signal.SIGTERM)
    assert d.process.wait(timeout=60) == 0
    assert time.monotonic() - t0 < 30  # the reload takes 120 s more than its model load
    messages = [line["message"] for line in d.logs()]
    assert "exiting during a model reload; the reload is abandoned" in messages
    assert "reloaded" not in messages


def test_a_reload_failing_as_its_model_is_installed_keeps_the_previous_one(
    daemon_factory, sim_run, tmp_path
) -> None:
    """A reload that fails once its model is half installed (here the last step of the
    install) says it keeps the previous model, and does: model, settings and metrics."""
    config = tmp_path / "serve.toml"
    config.write_text("")
    d = daemon_factory(
        "--config", str(config), env={"STREAMTRK_TEST_FAULTS": "install_fail_after=2"}
    )  # fmt: skip
    config.write_text("threshold = 0.9\n")
    reload_counted(d, "failure", 1)
    [failed] = [line["message"] for line in d.logs() if line["message"].startswith("reload failed")]
    assert failed.startswith("reload failed, still serving the previous model: fault injected")
    status = json.loads(d.get("/status")[1])
    assert status["model"]["threshold"] == 0.5 and status["settings"]["threshold"] is None
    assert model_labels(d)["threshold"] == "0.5"
    # A batch may have begun on the failed model: the worker closes it between batches.
    with Consumer(d.output, linger_ms=0) as consumer, Producer(d.input, linger_ms=0) as producer:
        assert producer.send_event(next(iter_events(sim_run)), timeout_ms=30_000)
        reply = consumer.recv(timeout_ms=60_000)
    assert reply is not None and reply.to_reply().ok
    wait_for(lambda: any(x.get("after") == "reload" for x in d.logs()))
    assert d.stop() == 0


def installing(daemon_factory, tmp_path: Path, delay_s: float) -> LiveDaemon:
    """A daemon in a reload (to threshold 0.9) whose install is held ``delay_s`` seconds
    once the model metrics name the new model."""
    config = tmp_path / "serve.toml"
    config.write_text("")
    faults = {"STREAMTRK_TEST_FAULTS": f"install_delay_s={delay_s}"}
    d = daemon_factory("--config", str(config), env=faults)
    config.write_text("threshold = 0.9\n")
    hup_until_said(d, "reloading")
    wait_for(lambda: model_labels(d)["threshold"] == "0.9")
    return d


def test_status_names_one_configuration_while_a_reload_installs(daemon_factory, tmp_path):
    """While a reload's model is installed (here held there 4 s once its metrics are set),
    ``/status`` gives the previous model with the previous settings, then both new: it gave
    the new model beside the old settings (the model was put in force first, the settings
    last, and replies named it before the metrics did)."""
    d = installing(daemon_factory, tmp_path, 4)
    status = json.loads(d.get("/status")[1])
    assert (status["model"]["threshold"], status["settings"]["threshold"]) == (0.5, None)
    wait_for(lambda: any(line["message"] == "reloaded" for line in d.logs()))
    status = json.loads(d.get("/status")[1])
    assert (status["model"]["threshold"], status["settings"]["threshold"]) == (0.9, 0.9)
    assert d.stop() == 0


def test_sigterm_while_a_reload_installs_stops_intake_at_once(daemon_factory, tmp_path):
    """SIGTERM while a reload's model is installed (held there 6 s): ``/readyz`` says
    draining at once; it said ready until the install ended (the drain waited for it before
    stopping intake)."""
    d = installing(daemon_factory, tmp_path, 6)
    d.process.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    wait_for(lambda: d.get("/readyz")[0] == 503)
    assert time.monotonic() - t0 < 3
    assert d.process.wait(timeout=60) == 0


def test_a_reload_ending_during_the_drain_is_abandoned(daemon_factory, sim_run, tmp_path):
    """SIGTERM while a reload loads: a reload that ends before the drain does installs
    nothing (the drain answers with the model it began with). A SIGHUP during the drain
    starts no reload, and is said."""
    config = tmp_path / "serve.toml"
    config.write_text("")
    d = daemon_factory(
        "--config", str(config), "--max-batch-events", "1",
        env={"STREAMTRK_TEST_FAULTS": "reload_delay_s=2,batch_delay_s=3"},
    )  # fmt: skip
    with Consumer(d.output, linger_ms=0) as consumer, Producer(d.input, linger_ms=0) as producer:
        for event, _ in zip(iter_events(sim_run), range(4), strict=False):
            assert producer.send_event(event, timeout_ms=30_000)
        wait_for(lambda: sample(d.metrics(), "streamtrk_batch_events_count") >= 1)
        config.write_text("threshold = 0.9\n")
        hup_until_said(d, "reloading")
        d.process.send_signal(signal.SIGTERM)  # three batches of 3 s left: the reload ends first
        d.process.send_signal(signal.SIGHUP)  # in the drain: said, not dropped without a word
        assert d.process.wait(timeout=120) == 0
        replies = [consumer.recv(timeout_ms=10_000) for _ in range(4)]
    assert all(r is not None and r.to_reply().ok for r in replies)
    # every batch of the drain made by the model it began with, none by the reload's
    models = [r.to_reply().model for r in replies if r is not None]
    assert {m.threshold if m else None for m in models} == {0.5}
    messages = [line["message"] for line in d.logs()]
    assert "reload abandoned: the daemon is draining" in messages
    assert "reloaded" not in messages
    assert messages.count("SIGHUP not acted on: the daemon was stopping") == 1


def test_a_model_directory_changed_while_loading_is_refused(daemon_factory, tmp_path) -> None:
    """The name, card and hash the daemon reports must be those of the weights it runs: a
    directory whose files change during the (here 5 s) load is refused, not half-reported."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(default_model_path(), model)
    d = daemon_factory("--model", str(model), wait=False, env=SLOW_LOAD)
    assert d.get("/readyz") == (503, "loading\n")
    # the card is read and the directory hashed first, then the load waits
    wait_for(lambda: any(x["message"] == "injected fault: load delayed 5 s" for x in d.logs()))
    card = model / "card.toml"
    card.write_text(card.read_text() + "\n# edited while the daemon loads it\n")
    assert d.process.wait(timeout=120) == 1
    [line] = [x for x in d.logs() if x["message"].startswith("cannot load the model")]
    assert "changed while it was loaded: load it again" in line["message"]


def test_a_model_that_cannot_load_is_one_line_without_a_traceback(
    daemon_factory, tmp_path: Path
) -> None:
    """A card that is not TOML (a missing model is refused before the sockets bind:
    tests/cli/test_cli_serve.py)."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(default_model_path(), model)
    (model / "card.toml").write_text("[model\n")
    d = daemon_factory("--model", str(model), wait=False)
    assert d.process.wait(timeout=120) == 1
    [line] = [x for x in d.logs() if x["level"] == "error"]
    assert line["message"].startswith("cannot load the model: ") and str(model) in line["message"]
    assert "exception" not in line  # no traceback


@pytest.mark.skipif(no_ipv6_loopback() is not None, reason=str(no_ipv6_loopback()))
def test_a_daemon_serves_on_ipv6_endpoints(daemon_factory, sim_run: Path) -> None:
    from streamtrk.cli import main

    d = daemon_factory("--input", "tcp://[::1]:*", "--output", "tcp://[::1]:*", "--http", "[::1]:0")
    assert d.input.startswith("tcp://[::1]:") and d.http.startswith("[::1]:")
    assert d.get("/healthz")[0] == 200  # http://[::1]:PORT/healthz
    argv = ["replay", str(sim_run), "--to", d.input, "--from", d.output, "--events", "3", "-q"]
    assert main([*argv, "--timeout", "60"]) == 0


def test_a_taken_http_port_is_named() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        http = f"127.0.0.1:{taken.getsockname()[1]}"
        out = subprocess.run(
            [sys.executable, "-m", "streamtrk", "serve", "--input", "tcp://127.0.0.1:*",
             "--output", "tcp://127.0.0.1:*", "--http", http],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert out.returncode == 1
    assert f"start-up failed: cannot serve HTTP on {http}: Address already in use" in out.stderr


def test_the_input_is_bound_after_what_can_fail_at_start_up(tmp_path: Path) -> None:
    """A failed start (here the dead-letter file, then the HTTP port) never had its input
    bound: events it would have taken were lost unanswered with its context. The input's
    port is held elsewhere too, so a daemon that bound it first says "cannot bind"."""
    notes = tmp_path / "notes.txt"
    notes.write_text("not a recording\n")
    ctx = zmq.Context()
    held = ctx.socket(zmq.PULL)
    try:
        port = held.bind_to_random_port("tcp://127.0.0.1")
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            http = f"127.0.0.1:{taken.getsockname()[1]}"
            base = ["serve", "--input", f"tcp://127.0.0.1:{port}", "--output", "tcp://127.0.0.1:*"]
            for extra, said in (
                (
                    ["--http", "127.0.0.1:0", "--dead-letter", str(notes)],
                    "cannot open the dead-letter file",
                ),
                (["--http", http], f"cannot serve HTTP on {http}"),
            ):
                out = subprocess.run(
                    [sys.executable, "-m", "streamtrk", *base, *extra],
                    capture_output=True, text=True, timeout=120,
                )  # fmt: skip
                assert out.returncode == 1
                assert f"start-up failed: {said}" in out.stderr, out.stderr
    finally:
        held.close(linger=0)
        ctx.term()


def test_binding_another_host_s_name_says_to_connect() -> None:
    """Forgetting connect = true with a distributor's address: libzmq says "No such device"."""
    out = subprocess.run(
        [sys.executable, "-m", "streamtrk", "serve", "--input", "tcp://dist-host.invalid:5555",
         "--output", "tcp://127.0.0.1:*", "--http", "127.0.0.1:0", "--allow-insecure"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 1
    assert "cannot bind tcp://dist-host.invalid:5555: No such device (" in out.stderr
    assert "another host's: connect = true)" in out.stderr


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full here")
def test_a_dead_letter_file_that_cannot_be_written_is_named() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "streamtrk", "serve", "--input", "tcp://127.0.0.1:*",
         "--output", "tcp://127.0.0.1:*", "--http", "127.0.0.1:0", "--dead-letter", "/dev/full"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 1
    expected = "start-up failed: cannot open the dead-letter file /dev/full: No space left"
    assert expected in out.stderr, out.stderr


def test_a_dead_letter_file_that_is_no_recording_is_named_as_the_dead_letter_file(
    tmp_path: Path,
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not a recording\n")
    out = subprocess.run(
        [sys.executable, "-m", "streamtrk", "serve", "--input", "tcp://127.0.0.1:*",
         "--output", "tcp://127.0.0.1:*", "--http", "127.0.0.1:0", "--dead-letter", str(notes)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 1
    assert f"start-up failed: cannot open the dead-letter file {notes}: " in out.stderr
    assert "not a streamtrk recording" in out.stderr and notes.read_text() == "not a recording\n"


def test_sigterm_while_loading_stops_without_waiting_for_the_load(daemon_factory) -> None:
    d = daemon_factory(wait=False, env={"STREAMTRK_TEST_FAULTS": "load_delay_s=120"})
    assert d.get("/readyz") == (503, "loading\n")
    t0 = time.monotonic()
    d.process.send_signal(signal.SIGTERM)
    code = d.process.wait(timeout=60)
    assert time.monotonic() - t0 < 30 and code == 0  # the load takes 120 s
    messages = [line["message"] for line in d.logs()]
    assert "stopped while loading the model; answering what the input took" in messages
    assert messages[-1] == "answered the events taken while loading"


def test_a_daemon_started_without_stdout_stops_as_it_would(tmp_path: Path) -> None:
    """``streamtrk serve ... >&-`` (Python's sys.stdout None), stopped while loading: the
    loader thread is left, and the process leaves by ``os._exit`` after flushing its
    streams (the flush of None was a traceback, status 1, or with a compiling engine an
    abort, 134)."""
    log = tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "streamtrk", "serve", "--input", "tcp://127.0.0.1:*",
           "--output", "tcp://127.0.0.1:*", "--http", "127.0.0.1:0", "--log-format",
           "json"]  # fmt: skip
    env = clean_env() | {"STREAMTRK_TEST_FAULTS": "load_delay_s=120"}
    with log.open("wb") as err:
        process = subprocess.Popen([*WITHOUT_STDOUT, *cmd], stderr=err, env=env)
    try:
        assert wait_listening(log, READY_TIMEOUT_S, process) is not None, log.read_text()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log.read_text()
    finally:
        terminate(process, 30)
    assert "Traceback" not in log.read_text()


def test_a_sighup_then_a_stop_while_loading_in_connect_mode_is_said(daemon_factory) -> None:
    """Connected, a daemon stopped while loading has nothing to answer: the SIGHUP that
    came first is said all the same (not acted on), as in bind mode."""
    d = daemon_factory(
        "--connect", "--input", "tcp://127.0.0.1:1", "--output", "tcp://127.0.0.1:2",
        wait=False, env={"STREAMTRK_TEST_FAULTS": "load_delay_s=120"},
    )  # fmt: skip
    d.process.send_signal(signal.SIGHUP)
    d.process.send_signal(signal.SIGTERM)
    assert d.process.wait(timeout=60) == 0
    messages = [line["message"] for line in d.logs()]
    # after the stop's own line (the loading thread may still log its fault after both)
    stopped = messages.index("stopped while loading the model; no event was received")
    assert "SIGHUP not acted on: the daemon was stopping" in messages[stopped + 1 :]


def test_a_socket_monitor_dying_while_loading_exits_1_and_says_why(daemon_factory) -> None:
    """Not a signal: the monitor's death (here at its first connection event) while the
    model loads stops the daemon with exit status 1 and an error naming the thread."""
    d = daemon_factory(
        wait=False, env={"STREAMTRK_TEST_FAULTS": "load_delay_s=120,monitor_fail_after=1"}
    )  # fmt: skip
    with Producer(d.input, linger_ms=0):  # its connection: the monitor's first event
        assert d.process.wait(timeout=60) == 1
    messages = [line["message"] for line in d.logs()]
    said = "stopped while loading the model, the monitor thread dead; answering what the input took"
    assert said in messages
    assert "stopped while loading the model; answering what the input took" not in messages


def test_a_socket_monitor_dying_after_a_stop_while_loading_exits_1(daemon_factory) -> None:
    """Stopped while loading by a signal, the monitor dying as the daemon answers what its
    input took (at its second event: the producer leaving then) still makes the exit
    status 1."""
    faults = "load_delay_s=120,monitor_fail_after=2,leave_delay_s=2"
    d = daemon_factory(wait=False, env={"STREAMTRK_TEST_FAULTS": faults})
    with Producer(d.input, linger_ms=0):  # its connection: the monitor's first event
        wait_for(lambda: sample(d.metrics(), "streamtrk_connections", socket="input") == 1)
        d.process.send_signal(signal.SIGTERM)
        wait_for(lambda: any(x["message"] == "injected fault: leave delayed 2 s" for x in d.logs()))
    assert d.process.wait(timeout=60) == 1
    messages = [line["message"] for line in d.logs()]
    assert "stopped while loading the model; answering what the input took" in messages
    assert any(m.startswith("the socket monitor died") for m in messages)


@pytest.mark.parametrize("faults", ["load_delay_s=120", "load_delay_s=120, leave_delay_s=1"])
def test_events_sent_to_a_bound_input_while_loading_are_answered_at_a_stop(
    daemon_factory, faults: str
) -> None:
    """Bound, the input takes events as soon as it listens, before the model is loaded: a
    SIGTERM then answers each ``shutdown`` (none lost), and the daemon exits 0. The emitter
    answering them waits for intake to finish, however late it takes what its socket queued
    (``leave_delay_s``: a loader thread holding the GIL), not for an empty queue a moment."""
    events = list(simulate(load_detector(), SimConfig(generator=GeneratorConfig(mu=2)), 3, 3))
    d = daemon_factory(wait=False, env={"STREAMTRK_TEST_FAULTS": faults})
    with Consumer(d.output, linger_ms=0) as consumer, Producer(d.input, linger_ms=0) as producer:
        for ev in events:
            assert producer.send_event(ev, timeout_ms=30_000)
        time.sleep(1)  # over loopback, in the daemon's socket long before this
        d.process.send_signal(signal.SIGTERM)
        replies = [consumer.recv(timeout_ms=10_000) for _ in events]
        code = d.process.wait(timeout=60)
    assert code == 0 and all(r is not None for r in replies)
    got = sorted((r.event, r.to_reply().reason) for r in replies if r is not None)
    assert got == [(ev.event, "shutdown") for ev in events]
    answered = next(
        x for x in d.logs() if x["message"] == "answered the events taken while loading"
    )
    assert answered["shutdown"] == len(events) and answered["dropped"] == 0


def test_a_daemon_stopped_while_loading_is_draining_as_it_answers(daemon_factory) -> None:
    """Stopped while loading, it answers what its input took (here until drain_timeout_s:
    no collector takes the reply): meanwhile ``/readyz`` says ``draining``, not
    ``loading``."""
    event = next(iter(simulate(load_detector(), SimConfig(generator=GeneratorConfig(mu=2)), 1, 1)))
    d = daemon_factory(
        "--drain-timeout-s", "10", wait=False, env={"STREAMTRK_TEST_FAULTS": "load_delay_s=120"}
    )  # fmt: skip
    with Producer(d.input, linger_ms=0) as producer:
        assert producer.send_event(event, timeout_ms=30_000)
        time.sleep(1)  # over loopback, in the daemon's socket long before this
    assert d.get("/readyz") == (503, "loading\n")
    d.process.send_signal(signal.SIGTERM)
    wait_for(lambda: d.get("/readyz") == (503, "draining\n"), timeout=8)
    assert d.process.wait(timeout=60) == 1  # its reply dropped, said
    said = "the events taken while loading could not all be answered"
    assert [x["dropped"] for x in d.logs() if x["message"] == said] == [1]


def _serve_signalled_during_imports(
    sig: str, log_path: Path, module: str = "torch"
) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as out, shell_signals():
        return subprocess.Popen(
            [sys.executable, "-c", SIGNAL_ON_IMPORT, sig, module, "serve", "--input",
             "tcp://127.0.0.1:*", "--output", "tcp://127.0.0.1:*", "--http", "127.0.0.1:0",
             "--log-format", "json"],
            stdout=out, stderr=subprocess.STDOUT, env=clean_env(),
        )  # fmt: skip


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_stop_during_the_start_up_imports_ends_the_daemon_as_it_starts(
    sig: str, tmp_path: Path
) -> None:
    """Not killed by the signal (status -15, unlogged) or a KeyboardInterrupt traceback."""
    log_path = tmp_path / "daemon.log"
    process = _serve_signalled_during_imports(sig, log_path)
    try:
        code = process.wait(timeout=120)
    finally:
        terminate(process, 10)
    assert code == 0, log_path.read_text()
    messages = [json.loads(line)["message"] for line in log_path.read_text().splitlines()]
    assert "stopped while loading the model; answering what the input took" in messages
    assert messages[-1] == "answered the events taken while loading"


@pytest.mark.parametrize("module", ["zmq", "torch"])  # as the command line is read; serve's
def test_a_sighup_during_the_start_up_imports_is_a_reload_once_ready(
    module: str, tmp_path: Path
) -> None:
    log_path = tmp_path / "daemon.log"
    process = _serve_signalled_during_imports("SIGHUP", log_path, module)
    try:
        bound = wait_listening(log_path, READY_TIMEOUT_S, process)
        assert bound is not None, f"exit {process.poll()}; log:\n{log_path.read_text()}"
        assert wait_ready(bound["http"], READY_TIMEOUT_S, process)
        wait_for(lambda: '"message": "reloaded"' in log_path.read_text())
    finally:
        code = terminate(process, 120)
    assert code == 0


def test_a_dead_letter_file_cut_short_is_repaired_at_start(daemon_factory, tmp_path) -> None:
    dead = tmp_path / "dead.stk"
    with RecordingWriter(dead) as w:
        w.write([b"first"])
        w.write([b"second, cut short by a crash"])
    dead.write_bytes(dead.read_bytes()[:-5])
    d = daemon_factory("--dead-letter", str(dead))  # starts (a crash loop before)
    [line] = [line for line in d.logs() if line["message"].startswith("dead-letter file")]
    assert line["bytes_cut"] == 8 + 8 + 28 - 5 and line["level"] == "warning"
    with Producer(d.input, linger_ms=30_000) as producer:  # sent before it closes
        assert producer.send_frames([b"no header at all"], timeout_ms=30_000)
    wait_for(lambda: sample(d.metrics(), "streamtrk_dead_letters_total", result="written") == 1)
    assert d.stop() == 0
    records = [frames for _, frames in iter_records(dead)]
    assert records[0] == [b"first"] and records[1][1:] == [b"no header at all"]


def test_a_dead_letter_counts_the_frames_received(daemon_factory, tmp_path) -> None:
    """A message refused for its frame count keeps its first frames; its record says how
    many it had."""
    dead = tmp_path / "dead.stk"
    d = daemon_factory("--dead-letter", str(dead), "--max-frames", "8")
    frames = [b"no header at all", *(bytes([k]) * 3 for k in range(20))]
    with Producer(d.input, linger_ms=30_000) as producer:
        assert producer.send_frames(frames, timeout_ms=30_000)
    wait_for(lambda: sample(d.metrics(), "streamtrk_dead_letters_total", result="written") == 1)
    assert d.stop() == 0
    [(_, record)] = iter_records(dead)
    head = msgpack.unpackb(record[0])
    assert head["reason"] == "frame_count" and head["frames"] == 21
    assert record[1:] == frames[:8]


def test_a_stop_signal_never_takes_a_lock_the_main_thread_may_hold() -> None:
    """Signal handlers run on the main thread between two of its bytecodes, maybe inside
    its own wait on the stop event: a handler taking that event's lock would deadlock."""
    d = Daemon(ServeConfig(), ServeConfig)
    answered = threading.Event()

    def main_thread_inside_its_wait() -> None:
        # (the ignore: CPython's Event keeps its Condition in _cond; typeshed has no private names)
        with d.stop_requested._cond:  # type: ignore[attr-defined]  # as Event.wait() holds it between its steps
            d._on_stop(signal.SIGTERM, None)
            d._on_hup(signal.SIGHUP, None)
        answered.set()

    threading.Thread(target=main_thread_inside_its_wait, daemon=True).start()
    assert answered.wait(5), "the signal handler blocked on the stop event's lock"
    assert d._stopping(0) and d._hup_signalled


def test_a_socket_monitor_that_does_not_stop_is_left_not_destroyed_under(daemon_factory):
    """A monitor thread still busy past its 5 s stop (here 30 s over a connection's event)
    keeps its sockets: the context is not destroyed under it (terminated, for the replies
    ZeroMQ holds, until the drain's end at most), and the daemon exits 0."""
    d = daemon_factory(
        "--drain-timeout-s", "5", env={"STREAMTRK_TEST_FAULTS": "monitor_delay_s=30"}
    )  # fmt: skip
    with Consumer(d.output, linger_ms=0):
        wait_for(
            lambda: any(x["message"] == "injected fault: monitor delayed 30 s" for x in d.logs())
        )
    t0 = time.monotonic()
    assert d.stop(signal.SIGTERM) == 0
    assert time.monotonic() - t0 < 25  # not the 30 s the monitor waits
    assert "the socket monitor did not stop; leaving it" in [x["message"] for x in d.logs()]


def test_once_a_reload_ended_none_is_said_to_run(daemon_factory) -> None:
    """``reload_s`` is null again once a reload ended, whether its thread could not start or
    it reloaded, and no "a reload has run N s" warning follows past ``stall_timeout_s``."""
    d = daemon_factory(
        "--stall-timeout-s", "1", env={"STREAMTRK_TEST_FAULTS": "reload_thread_fail_after=1"}
    )  # fmt: skip
    reload_counted(d, "failure", 1)
    assert json.loads(d.get("/status")[1])["reload_s"] is None
    reload_counted(d, "success", 1)
    assert json.loads(d.get("/status")[1])["reload_s"] is None
    time.sleep(1.5)  # past stall_timeout_s
    assert not [line for line in d.logs() if line["message"].startswith("a reload has run")]
    assert d.stop() == 0


def test_a_sighup_waiting_for_the_reload_in_progress_at_a_stop_is_said(daemon_factory) -> None:
    """A SIGHUP during a reload waits for it; a stop then comes first: that SIGHUP reloads
    nothing, and the log says so."""
    d = daemon_factory(env={"STREAMTRK_TEST_FAULTS": "reload_delay_s=120"})
    hup_until_said(d, "reloading")
    d.process.send_signal(signal.SIGHUP)
    following = "reload already in progress; another follows it"
    wait_for(lambda: any(line["message"] == following for line in d.logs()))
    assert d.stop() == 0
    messages = [line["message"] for line in d.logs()]
    assert "SIGHUP not acted on: the daemon was stopping" in messages


def test_the_reload_following_one_in_progress_is_the_last(daemon_factory) -> None:
    """A SIGHUP during a reload starts one more once it ends, and only one: the daemon
    does not go on reloading its model for ever."""
    d = daemon_factory(env={"STREAMTRK_TEST_FAULTS": "reload_delay_s=1"})
    hup_until_said(d, "reloading")
    d.process.send_signal(signal.SIGHUP)
    reloads = "streamtrk_model_reloads_total"
    wait_for(lambda: sample(d.metrics(), reloads, result="success") == 2, timeout=60)
    time.sleep(2)  # ten turns of the main loop, and a reload's 1 s more
    messages = [line["message"] for line in d.logs()]
    assert messages.count("reloading") == 2
    assert sample(d.metrics(), reloads, result="success") == 2
    assert d.stop() == 0


def test_a_reload_puts_the_file_s_new_settings_in_force(daemon_factory, tmp_path) -> None:
    """The settings a reload changes are those the daemon then uses (here the drain's
    timeout) and ``/status`` gives."""
    config = tmp_path / "serve.toml"
    config.write_text("")
    d = daemon_factory("--config", str(config))
    config.write_text("drain_timeout_s = 7.0\n")
    hup_until_said(d, "reloaded")
    assert json.loads(d.get("/status")[1])["settings"]["drain_timeout_s"] == 7.0
    assert d.stop() == 0
    [draining] = [line for line in d.logs() if line["message"] == "draining"]
    assert draining["drain_timeout_s"] == 7.0


def test_a_slow_reload_is_warned_of_once_and_only_past_stall_timeout_s(caplog) -> None:
    """``stall_timeout_s`` is the line: a reload within it is not said to be slow; past it,
    one warning per reload, however many turns of the main loop follow."""
    d = Daemon(ServeConfig(stall_timeout_s=2), ServeConfig)
    slow = "a reload has run"
    with caplog.at_level(logging.INFO, logger="streamtrk"):
        d._reload_began = time.monotonic() - 1.5
        d._say_slow_reload()
        assert not [r for r in caplog.records if r.getMessage().startswith(slow)]
        d._reload_began = time.monotonic() - 3
        for _ in range(3):
            d._say_slow_reload()
    assert [r.getMessage().startswith(slow) for r in caplog.records].count(True) == 1


def test_a_thread_s_death_makes_the_daemon_not_ready_at_once() -> None:
    """A dead thread stops the daemon: ``/readyz`` fails from that moment (a load balancer
    sends no more), not only once the main thread begins the drain."""
    d = Daemon(ServeConfig(), ServeConfig)
    d.readiness.set("ready")
    d._on_thread_failure(threading.current_thread())  # type: ignore[arg-type]
    assert d.readiness.state == "draining"
    assert d.metrics.registry.get_sample_value("streamtrk_ready") == 0
    assert d._stopping(0)


class _Dead:
    """A socket monitor or CURVE authenticator whose thread has ended."""

    died = True


def test_healthz_names_a_dead_monitor_and_a_dead_authenticator() -> None:
    d = Daemon(ServeConfig(), ServeConfig)
    assert d.health_problems() == []
    d.monitor, d.authenticator = _Dead(), _Dead()  # type: ignore[assignment]
    assert d.health_problems() == [
        "monitor died: the sockets' traffic stops once it is behind",
        "CURVE authenticator (ZAP) died: no client can connect",
    ]


def test_the_banner_says_no_client_is_allowed_without_allowed_keys(tmp_path: Path) -> None:
    """CURVE on and no ``curve_allowed_keys``: the banner must not read as open."""
    secret = tmp_path / "server.key_secret"
    on = ServeConfig(curve_secret_key=secret)
    assert _curve_said(on) == "on: clients whose certificates are in none (no client allowed)"
    allowed = ServeConfig(curve_secret_key=secret, curve_allowed_keys=tmp_path)
    assert _curve_said(allowed) == f"on: clients whose certificates are in {tmp_path}"
    assert _curve_said(ServeConfig()).startswith("off: ")


def test_status_before_the_model_is_loaded_has_no_beam_spot_measured() -> None:
    """``/status`` while loading: no model, no beam line, and no beam spot measured (null,
    not a position of NaNs) until tracks of two events are in the window."""
    d = Daemon(ServeConfig(), ServeConfig)
    status = d.status()
    assert (status["state"], status["model"], status["reload_s"]) == ("loading", None, None)
    assert status["beam_spot"] == {"beam_line_mm": None, "measured_mm": None, "tracks": 0}


class _MonitorThatWillNotStop:
    """A socket monitor still busy (in libzmq) after its stop's wait."""

    def stop(self) -> None:
        pass

    def is_alive(self) -> bool:
        return True


def test_a_socket_monitor_left_running_makes_the_process_leave_by_os_exit() -> None:
    """Its sockets may be in use: the context is terminated, not destroyed, and the
    interpreter is not torn down under it (``os._exit``)."""
    d = Daemon(ServeConfig(), ServeConfig)
    d._stop_monitor(_MonitorThatWillNotStop())  # type: ignore[arg-type]
    assert d.monitor_left and d.abandoned_thread


def test_a_reload_puts_the_file_s_new_log_level_in_force(daemon_factory, tmp_path) -> None:
    """``log_level`` is no restart-only setting: after a SIGHUP the file's new level is the
    one the daemon logs at (here ``warning``: the reload's and the drain's info lines are
    no longer written)."""
    config = tmp_path / "serve.toml"
    config.write_text("")
    d = daemon_factory("--config", str(config))
    config.write_text('log_level = "warning"\n')
    reload_counted(d, "success", 1)
    assert d.stop() == 0
    messages = [line["message"] for line in d.logs()]
    assert "reloading" in messages  # at info, before the new level
    assert not {"reloaded", "draining", "drained, exiting"} & set(messages)


def test_a_connected_daemon_takes_no_event_while_its_model_loads(
    daemon_factory, sim_run: Path
) -> None:
    """Connect mode: the input connects once the model is ready, so that a distributor
    routes no event to a daemon still loading. While it loads, a send to it alone finds no
    peer; once ready, the same send is taken and answered."""
    [event] = list(iter_events(sim_run))[:1]
    with (
        Producer("tcp://127.0.0.1:*", bind=True, linger_ms=0) as producer,
        Consumer("tcp://127.0.0.1:*", bind=True, linger_ms=0) as consumer,
    ):
        d = daemon_factory(
            "--connect", "--input", producer.endpoint, "--output", consumer.endpoint,
            wait=False, env={"STREAMTRK_TEST_FAULTS": "load_delay_s=4"},
        )  # fmt: skip
        wait_for(lambda: any(x["message"].startswith("injected fault: load") for x in d.logs()))
        assert not producer.send_event(event, timeout_ms=1000)  # no peer: nobody took it
        assert wait_ready(d.http, READY_TIMEOUT_S, d.process)
        assert producer.send_event(event, timeout_ms=30_000)
        frames = consumer.recv_frames(timeout_ms=60_000)
        assert frames is not None
        assert sample(d.settled(received=1), "streamtrk_events_completed_total", status="ok") == 1
