"""``streamtrk serve``: wiring of sockets, threads, model, HTTP endpoints and signals.

Threads: ``ingest`` (PULL socket) -> bounded batch queue -> ``worker`` (reconstruct) ->
bounded reply queue -> ``emit`` (PUSH socket); ``http`` serves metrics and health; the main
thread waits for signals. Each socket is created here and then used and closed only by the
thread it is handed to.

SIGTERM/SIGINT: readiness goes false, ingest stops receiving and closes its socket, the
worker and the emitter finish everything already received, the emitter closes its socket
with a LINGER bounded by what is left of ``drain_timeout_s``. Work that cannot finish in
time is answered ``shutdown`` instead (see ``Worker``), so every received event still gets
its reply; exit status 0, or 1 when replies could not be sent (no downstream peer) or a
thread died.
SIGHUP: reload the configuration and the model, keep the old ones when that fails.
Under systemd (``Type=notify``) each of these changes is also told to it, and the main
thread pings its watchdog while healthy (``notify``).
"""

from __future__ import annotations

import logging
import os
import platform
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack, suppress
from dataclasses import fields, replace
from functools import partial
from types import FrameType
from typing import Any

import numpy as np
import torch
import zmq

from streamtrk import __version__
from streamtrk.errors import SettingError
from streamtrk.recon.card import ModelCardError
from streamtrk.service import faults, logs
from streamtrk.service.auth import Authenticator, start_authenticator
from streamtrk.service.batcher import Batcher, BatchPolicy
from streamtrk.service.config import RESTART_ONLY, ServeConfig, unknown_variables
from streamtrk.service.deadletter import DeadLetters
from streamtrk.service.emit import Emitter
from streamtrk.service.health import HealthServer, Readiness
from streamtrk.service.heap import Freeze, freeze_heap, refreeze_heap
from streamtrk.service.ingest import Ingest
from streamtrk.service.job import Reply
from streamtrk.service.monitor import Reconnects, SocketMonitor
from streamtrk.service.notify import Notifier
from streamtrk.service.observer import Observer
from streamtrk.service.served_model import ServedModel, load_served_model
from streamtrk.service.supervised import Supervised
from streamtrk.service.telemetry import Metrics
from streamtrk.service.worker import Worker
from streamtrk.stop import StopFlag
from streamtrk.threads import set_torch_threads
from streamtrk.wire import DEFAULT_LIMITS
from streamtrk.wire.curve import (
    CURVE_FRAME_OVERHEAD,
    ipv6_literal,
    make_server,
    names_another_host,
)
from streamtrk.wire.sockets import SEND_ONLY_OPTIONS

log = logging.getLogger("streamtrk.serve")
DRAIN_RESERVE_S = 1.0  # of drain_timeout_s, kept for answering and sending the last replies
DRAIN_RESERVE_SHARE = 0.25
JOIN_POLL_S = 0.1  # the drain checks this often whether the worker died


# max_batch_hits = 0 (the default) means these. On the CPU a batch past about 100k hits
# costs more per event than its events one by one (graph, pruning and GNN working sets
# leave the cache; bench/RESULTS.md, "Batch size on the CPU"); a GPU wants large batches:
# 2M hits hold 16 MU=200 events (about 106k hits each), the GPU issue's batch.
CPU_BATCH_HITS = 100_000
GPU_BATCH_HITS = 2_000_000


def batch_hits(cfg: ServeConfig, device: str) -> int:
    """The hits a batch may hold: ``max_batch_hits``, or the device's default when 0."""
    return cfg.max_batch_hits or (GPU_BATCH_HITS if device == "cuda" else CPU_BATCH_HITS)


def _policy(cfg: ServeConfig, device: str) -> BatchPolicy:
    return BatchPolicy(cfg.max_batch_events, batch_hits(cfg, device), cfg.max_queue_delay_ms)


def _drain_reserve_s(timeout: float) -> float:
    """Seconds of a drain of ``timeout`` kept for answering and sending the last replies."""
    return min(DRAIN_RESERVE_S, DRAIN_RESERVE_SHARE * timeout)


def _fields(**kv: Any) -> dict[str, Any]:
    return {"fields": kv}


def _close_quietly(model: ServedModel) -> None:
    """Close a model no batch uses any more; a failure is logged (the collector frees it)."""
    try:
        model.close()
    except Exception as e:
        log.warning("closing a model no longer served failed: %s", e)


def _build_labels(model: ServedModel) -> dict[str, str]:
    """What runs: the ``streamtrk_build_info`` labels, also in the start-up banner."""
    return {
        "version": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "device": model.device,
        "engine": model.engine,
        "engine_requested": model.engine_requested,
        "precision": model.precision,
    }


class Daemon:
    """One daemon process; :meth:`run` returns the exit status."""

    def __init__(
        self,
        cfg: ServeConfig,
        reload_config: Callable[[], ServeConfig],
        hup_before: StopFlag | None = None,
        stop_before: StopFlag | None = None,
        overridden: Callable[[], list[str]] = lambda: [],
    ) -> None:
        # The model and the settings in force, swapped as one (/status, the metrics and the
        # replies name one configuration); None until the first model is loaded.
        self.in_force: tuple[ServedModel | None, ServeConfig] = (None, cfg)
        self.reload_config = reload_config
        self.overridden = overridden  # the file's settings a variable or flag overrides
        # Set by a SIGHUP, or a SIGTERM/SIGINT, before run() took the signals over.
        self.hup_before, self.stop_before = hup_before, stop_before
        self.metrics = Metrics()
        self.readiness = Readiness()
        self.notifier = Notifier()  # systemd's, under Type=notify
        self.metrics.ready.set_function(lambda: float(self.readiness.ready))
        self.batcher = Batcher(cfg.queue_capacity, _policy(cfg, "cpu"))  # set at _install
        self.stop_requested = threading.Event()  # a stop signal, or a thread that died
        # Set by the signal handlers, read by the main thread: plain flags, as a handler that
        # took an Event's lock could interrupt the main thread holding it (a deadlock).
        self._stop_signalled = False
        self._hup_signalled = False
        self._reloading = threading.Lock()
        self._reload_again = False  # a SIGHUP came during a reload: one more follows it
        self._reload_began: float | None = None  # monotonic time of the reload in progress
        self._reload_said_slow = False  # that reload's run past stall_timeout_s was said
        # Models a reload replaced: the worker closes them and freezes the heap again.
        self._replaced: list[ServedModel] = []
        self._replacing = threading.Lock()
        self._draining = False  # set under _swapping: a reload ending after it installs nothing
        self._swapping = threading.Lock()
        # A thread is still inside torch or NumPy, or using its socket: leave by os._exit.
        self.abandoned_thread = False
        # Ingest or emit may still use its socket: the ZeroMQ context is left as it is (else
        # it is terminated first, so that the replies ZeroMQ holds go out within LINGER).
        self.sockets_in_use = False
        # The socket monitor did not stop: its sockets are not destroyed under it, but the
        # context is still terminated, in a thread of its own, for the emitter's LINGER.
        self.monitor_left = False
        self.drain_ends: float | None = None  # the drain's deadline, once draining
        self.endpoints: dict[str, str] = {}  # input, output, http as bound (ports resolved)
        self.threads: list[Supervised] = []  # ingest, worker, emit, physics once serving
        self.monitor: SocketMonitor | None = None
        self.authenticator: Authenticator | None = None  # with CURVE
        self.reconnects: Reconnects | None = None  # connect mode

    @property
    def model(self) -> ServedModel | None:
        return self.in_force[0]

    @property
    def config(self) -> ServeConfig:
        return self.in_force[1]

    # ------------------------------------------------------------------ signals

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self._stop_signalled = True

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self._hup_signalled = True

    def _stopping(self, timeout: float) -> bool:
        """Whether a stop was asked for (a signal, or a thread's failure), waiting up to
        ``timeout`` seconds; main thread only."""
        if not self._stop_signalled:
            self.stop_requested.wait(timeout)
        if self._stop_signalled:
            self.stop_requested.set()
        return self.stop_requested.is_set()

    # ------------------------------------------------------------------ run

    def run(self) -> int:
        cfg = self.config
        logs.configure(cfg.log_format, cfg.log_level)
        for warning in unknown_variables(os.environ) + self.overridden():
            log.warning(warning)
        if faults.FAULTS:  # a test hook left set on a farm node would fail batches unexplained
            log.warning("%s is set: faults injected on purpose (tests only): %s", faults.ENV,
                        ", ".join(f"{k}={v:g}" for k, v in faults.FAULTS.items()))  # fmt: skip
        if faults.IGNORED:
            log.warning("%s: ignored %s (not name=number)", faults.ENV,
                        ", ".join(map(repr, faults.IGNORED)))  # fmt: skip
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        if self.hup_before is not None and self.hup_before.is_set():
            self._hup_signalled = True  # reloaded once ready, as a SIGHUP while loading
        if self.stop_before is not None and self.stop_before.is_set():
            self._stop_signalled = True  # stopped as it loads: nothing received yet
        log.info(set_torch_threads(cfg.torch_threads))
        ctx = zmq.Context()
        self.metrics.gc_pauses.start()
        try:
            return self._run(ctx)
        finally:
            self.metrics.gc_pauses.stop()
            if self.monitor_left and not self.sockets_in_use:
                # Terminating (not destroying) leaves the monitor's sockets to it, and waits
                # for the replies ZeroMQ still holds within the emitter's LINGER (the drain's).
                left = 0.0 if self.drain_ends is None else self.drain_ends - time.perf_counter()
                term = threading.Thread(target=ctx.term, name="zmq-term", daemon=True)
                term.start()
                term.join(max(0.0, left) + 0.5)
            elif not self.sockets_in_use:
                # Closes only sockets no thread closed (after an error), then waits for the
                # replies ZeroMQ still holds within the emitter's LINGER.
                ctx.destroy(linger=0)

    def _sockets(self, ctx: zmq.Context[Any]) -> tuple[zmq.Socket[Any], zmq.Socket[Any]]:
        cfg = self.config
        pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
        pull.setsockopt(zmq.RCVHWM, cfg.rcvhwm)
        pull.setsockopt(zmq.LINGER, 0)
        # A frame over its limit makes libzmq drop the connection (counted by the monitor)
        # and the messages queued on it, unanswered: the largest column (8 bytes a hit) of
        # the largest event, a header, or a whole message's bytes, whichever is most. An
        # event over max_message_bytes is read and answered message_too_large, one over
        # max_hits too_many_hits, while its frames are within the limit.
        frame_limit = max(cfg.max_hits * 8, cfg.max_message_bytes, DEFAULT_LIMITS.max_header_bytes)
        if cfg.curve_secret_key is not None:  # checked against the frame as encrypted
            frame_limit += CURVE_FRAME_OVERHEAD
        pull.setsockopt(zmq.MAXMSGSIZE, frame_limit)
        push.setsockopt(zmq.SNDHWM, cfg.sndhwm)
        for option, value in SEND_ONLY_OPTIONS.items():  # a peer sending there: dropped
            push.setsockopt(option, value)
        push.setsockopt(zmq.LINGER, cfg.linger_ms)
        if cfg.curve_secret_key is not None:
            for sock in (pull, push):
                make_server(sock, cfg.curve_secret_key)
        self.reconnects = Reconnects() if cfg.connect else None
        self.monitor = SocketMonitor(
            {"input": pull, "output": push},
            self.metrics,
            self.reconnects,
            on_failure=self._on_thread_failure,  # its sockets' traffic may wait for it
        )
        # In connect mode the input connects only once the model is ready (see _serve), so
        # that a distributor never routes events to a daemon still loading.
        attach = [(push, cfg.output)] + ([] if cfg.connect else [(pull, cfg.input)])
        for sock, endpoint in attach:
            self._attach(sock, endpoint)
        return pull, push

    def _attach(self, sock: zmq.Socket[Any], endpoint: str) -> None:
        verb = "connect" if self.config.connect else "bind"
        sock.setsockopt(zmq.IPV6, ipv6_literal(endpoint))
        try:
            getattr(sock, verb)(endpoint)
        except zmq.ZMQError as e:
            hint = ""
            if verb == "bind" and names_another_host(e):
                hint = " (a bound address is this host's, or *; another host's: connect = true)"
            raise OSError(f"cannot {verb} {endpoint}: {e}{hint}") from None

    def _run(self, ctx: zmq.Context[Any]) -> int:
        cfg = self.config
        with ExitStack() as stack:
            try:
                if cfg.curve_secret_key is not None:
                    if cfg.curve_allowed_keys is None:
                        log.warning("CURVE is on and curve_allowed_keys is unset: no client "
                                    "can connect")  # fmt: skip
                    self.authenticator = start_authenticator(ctx, cfg.curve_allowed_keys)
                    stack.callback(self.authenticator.stop)
                # What can fail first, the input bound last: events a bound input took
                # before a failed start would be lost unanswered when the context goes.
                dead = None
                if cfg.dead_letter is not None:
                    try:
                        dead = DeadLetters(cfg.dead_letter, cfg.dead_letter_max_bytes)
                    except (OSError, ValueError) as e:  # ValueError: not a recording
                        why = (e.strerror if isinstance(e, OSError) else None) or e
                        raise OSError(
                            f"cannot open the dead-letter file {cfg.dead_letter}: {why}"
                        ) from None
                    stack.callback(dead.close)
                try:
                    http = HealthServer(
                        cfg.http_address,
                        self.metrics,
                        self.readiness,
                        self.status,
                        self.health_problems,
                    )
                except OSError as e:
                    raise OSError(f"cannot serve HTTP on {cfg.http}: {e.strerror or e}") from None
                stack.callback(http.close)
                pull, push = self._sockets(ctx)
                assert self.monitor is not None  # made by _sockets
                self.monitor.start()
                stack.callback(self._stop_monitor, self.monitor)
            except (OSError, ValueError) as e:
                log.error("start-up failed: %s", e)
                return 1
            self.endpoints = {
                "input": cfg.input if cfg.connect else pull.getsockopt_string(zmq.LAST_ENDPOINT),
                "output": push.getsockopt_string(zmq.LAST_ENDPOINT),
                "http": http.host_port,
            }
            log.info("listening", extra=_fields(**self.endpoints))
            http.start()
            return self._serve(pull, push, dead)

    def _serve(self, pull: zmq.Socket[Any], push: zmq.Socket[Any], dead: DeadLetters | None) -> int:
        cfg = self.config
        monitor = self.monitor
        assert monitor is not None  # made by _sockets, before _serve
        log.info("loading the model", extra=_fields(model=str(cfg.model or "shipped")))
        self.notifier.send("STATUS=loading the model")
        if (status := self._load()) is not None:
            if not cfg.connect:  # producers send to a bound input as soon as it listens
                status = max(status, self._answer_unloaded(pull, push, dead))
            else:
                self._set_readiness("draining")  # nothing to answer: said all the same
            self._say_hup_not_acted_on()
            return max(status, int(bool(self._died())))  # the monitor, dead since the stop
        self._freeze_heap(freeze_heap, "installed")
        if cfg.connect:
            try:
                self._attach(pull, cfg.input)
            except OSError as e:
                log.error("start-up failed: %s", e)
                return 1
        batcher = self.batcher
        replies: queue.Queue[Reply] = queue.Queue(cfg.reply_capacity)
        self.metrics.watch_queue("batch", batcher.depth, cfg.queue_capacity)
        self.metrics.watch_queue("reply", replies.qsize, cfg.reply_capacity)
        stop_intake = threading.Event()
        ingest = Ingest(
            pull,
            batcher,
            replies,
            self.metrics,
            lambda: self.config,
            stop_intake,
            dead,
            on_failure=self._on_thread_failure,
            reconnect=self._reconnect("input", pull, cfg.input),
        )
        observer = Observer(
            self.metrics, lambda: worker.done.is_set(), on_failure=self._on_thread_failure
        )
        worker = Worker(
            batcher,
            replies,
            self.metrics,
            lambda: self._model().serving,
            lambda: not ingest.is_alive(),
            observer.offer,
            on_failure=self._on_thread_failure,
            between_batches=lambda: self._refreeze_after_reload(worker),
        )
        emitter = Emitter(
            push,
            replies,
            self.metrics,
            # After abandon() the worker is done while intake may still answer an event.
            lambda: worker.done.is_set() and not ingest.is_alive(),
            cfg.linger_ms,
            on_failure=self._on_thread_failure,
            reconnect=self._reconnect("output", push, cfg.output),
            # Bound, PUSH takes a reply only into a connected consumer's queue.
            connected=partial(monitor.connected, "output") if cfg.connect else lambda: True,
        )
        self.threads = [ingest, worker, emitter, observer]
        for t in self.threads:
            t.start()
        if not self._stopping(0):
            self._set_readiness("ready")
        self._banner()
        while not self._stopping(0.2):
            if self._hup_signalled:
                self._hup_signalled = False
                self._start_reload()
            elif self._reload_again and not self._reloading.locked():
                self._reload_again = False
                self._start_reload()
            self._say_slow_reload()
            self.notifier.watchdog(lambda: not self.health_problems())
        return self._drain(stop_intake, ingest, worker, emitter, observer)

    def _set_readiness(self, state: str) -> None:
        self.readiness.set(state)
        self.notifier.state(state)

    def _stop_monitor(self, monitor: SocketMonitor) -> None:
        """Stop the socket monitor; one still busy after its wait is left (its sockets in
        use: the context is terminated, not destroyed under it, and the process leaves by
        os._exit)."""
        monitor.stop()
        if monitor.is_alive():
            log.warning("the socket monitor did not stop; leaving it")
            self.abandoned_thread = self.monitor_left = True

    def _freeze_heap(self, how: Callable[[], Freeze], after: str) -> None:
        """Freeze the Python heap (``streamtrk.service.heap``), the model ``after`` being
        installed or reloaded, and log it."""
        freeze = how()
        self.metrics.gc_frozen.set(freeze.objects)
        log.info(
            "heap frozen",
            extra=_fields(after=after, objects=freeze.objects, ms=round(freeze.seconds * 1e3, 1)),
        )

    def _refreeze_after_reload(self, worker: Worker) -> None:
        """The worker, between batches, after a reload: close the models the reload replaced
        (or failed to install) now that no batch uses them, and freeze the heap again, which
        frees them first. Not while draining: its pause would come out of the drain's
        time."""
        if not self._replaced or worker.drain_by is not None:
            return
        with self._replacing:
            replaced, self._replaced = self._replaced, []
        for model in replaced:
            _close_quietly(model)
        del model, replaced
        if worker.drain_by is None:  # a drain begun meanwhile: not out of its time
            self._freeze_heap(refreeze_heap, "reload")

    def _reconnect(self, name: str, sock: zmq.Socket[Any], endpoint: str) -> Callable[[], None]:
        """What the thread that owns ``sock`` calls as it polls (monitor.Reconnects)."""
        reconnects = self.reconnects
        if reconnects is None:
            return lambda: None
        return lambda: reconnects.apply(name, sock, endpoint)

    def _start_reload(self) -> None:
        """SIGHUP: :meth:`reload` in a thread of its own, one reload at a time; SIGHUPs during
        a reload start one more once it ends (it may have read the files before they
        changed). The lock is taken here, not in the thread: the drain's check of a reload
        in progress must not miss one whose thread has not started yet."""
        if not self._reloading.acquire(blocking=False):
            self._reload_again = True
            log.warning("reload already in progress; another follows it")
            return
        self._reload_began, self._reload_said_slow = time.monotonic(), False
        try:
            faults.fail("reload_thread")  # tests: the thread cannot start
            threading.Thread(target=self.reload, name="reload", daemon=True).start()
        except RuntimeError as e:  # "can't start new thread": out of threads or memory
            self._reload_began = None
            self._reloading.release()
            self.metrics.model_reloads.labels("failure").inc()
            log.error("reload failed, still serving the previous model: no thread for it: %s", e)

    def _reload_s(self) -> float | None:
        """Seconds the reload in progress has run; None when none runs."""
        began = self._reload_began
        return None if began is None else time.monotonic() - began

    def _say_slow_reload(self) -> None:
        """Warn, once per reload, of one that has run past ``stall_timeout_s`` (a model on a
        stuck file system): meanwhile the daemon serves the old model, ready, and SIGHUPs
        wait for it; ``/status`` gives ``reload_s``."""
        if (took := self._reload_s()) is None or self._reload_said_slow:
            return
        if took > self.config.stall_timeout_s:
            self._reload_said_slow = True
            log.warning(
                "a reload has run %.0f s, past stall_timeout_s; the previous model still "
                "serves, and SIGHUPs wait for it (its model files on a stuck file system?)",
                took,
            )

    def _drain(
        self,
        stop_intake: threading.Event,
        ingest: Ingest,
        worker: Worker,
        emitter: Emitter,
        observer: Observer,
    ) -> int:
        """Answer everything received, within ``drain_timeout_s``: processed when there is
        time for it, else ``shutdown``; 0 when every reply was sent and no thread died, else 1.
        The physics thread
        finishes the batches it holds within the same deadline (not counted in the exit
        status: its metrics are not replies)."""
        t0 = time.perf_counter()
        timeout = self.config.drain_timeout_s
        deadline = self.drain_ends = t0 + timeout
        self._set_readiness("draining")
        # a second SIGTERM or Ctrl-C changes nothing: the drain keeps its deadline
        log.info("draining", extra=_fields(drain_timeout_s=timeout, sooner="SIGKILL"))
        emitter.give_up_at = deadline
        worker.drain_by = deadline - _drain_reserve_s(timeout)
        ingest.leave_by = worker.drain_by  # what it takes after this is answered 'shutdown'
        ingest.give_up_at = deadline
        stop_intake.set()
        # Not ready and taking nothing more at once; then no reload installs a model (one
        # installing holds the lock: intake stopped first, it did not wait for it).
        with self._swapping:
            self._draining = True
        # Intake may be waiting for room with an event in hand: the worker makes room, or
        # abandon() closes the batcher and intake answers that event 'shutdown'. A worker
        # that died makes no room: then abandon() comes at once (below), not at drain_by.
        while ingest.is_alive() and worker.error is None:
            if (left := worker.drain_by - time.perf_counter()) <= 0:
                break
            ingest.join(min(left, JOIN_POLL_S))
        self.batcher.flush = True  # nothing more will arrive: no batch waits to fill
        worker.join(max(0.0, worker.drain_by - time.perf_counter()))
        if worker.is_alive():
            self.abandoned_thread = True
            what = (
                "the worker, waiting for room in the reply queue (replies not sent as fast as "
                "made),"
                if worker.replying
                else "the batch in progress"
                if worker.in_batch()
                else "intake"
            )
            n = worker.abandon(deadline)
            log.warning(
                "%s overran the drain; %d more events (its batch, the queue) answered 'shutdown'",
                what,
                n,
            )
        elif worker.error is not None:
            n = worker.abandon(deadline)
            log.warning("the worker died; %d waiting events answered 'shutdown'", n)
        ingest.join(max(0.0, deadline - time.perf_counter()))
        emitter.join(max(0.0, deadline - time.perf_counter()) + 0.5)
        observer.join(max(0.0, deadline - time.perf_counter()))
        if ingest.is_alive() or emitter.is_alive():
            # Its socket may be in use: the context is not destroyed under it (pyzmq: not
            # with sockets in use by other threads); the process leaves by os._exit.
            self.abandoned_thread = self.sockets_in_use = True
        if observer.is_alive():  # in NumPy or CuPy: no interpreter teardown under it
            self.abandoned_thread = True
            if observer.has_work():  # else it only waits for a worker that waited for room
                log.warning(
                    "the physics thread overran the drain; its last batches are not counted"
                )
        if self._reloading.locked():  # a SIGHUP reload is still loading a model
            self.abandoned_thread = True
            log.warning("exiting during a model reload; the reload is abandoned")
        self._say_hup_not_acted_on()
        value = self.metrics.registry.get_sample_value
        summary = _fields(
            received=int(value("streamtrk_events_received_total") or 0),
            replies_ok=int(value("streamtrk_events_completed_total", {"status": "ok"}) or 0),
            replies_error=int(value("streamtrk_events_completed_total", {"status": "error"}) or 0),
            shutdown=int(value("streamtrk_events_rejected_total", {"reason": "shutdown"}) or 0),
            unidentified=int(value("streamtrk_events_unidentified_total") or 0),
            dropped=emitter.dropped,
            # Replies never handed to ZeroMQ and not counted dropped: those an emitter still
            # busy at exit holds or has not taken yet, and those that found no room in the
            # reply queue by the drain's end (the worker's after abandon(), intake's).
            unsent=int(value("streamtrk_inflight_events") or 0),
            seconds=round(time.perf_counter() - t0, 3),
        )
        if emitter.is_alive() or emitter.dropped or summary["fields"]["unsent"]:
            log.error("drain incomplete: replies could not be sent", extra=summary)
            return 1
        if failed := self._died():
            log.error(
                "drained after a thread died, exiting 1 for a restart",
                extra=_fields(threads=", ".join(failed), **summary["fields"]),
            )
            return 1
        log.info("drained, exiting", extra=summary)
        return 0

    def _say_hup_not_acted_on(self) -> None:
        """At the end of a stop: a SIGHUP that came during it (or a reload waiting for the
        one in progress) reloads nothing, said rather than dropped without a word."""
        if self._hup_signalled or self._reload_again:
            log.warning("SIGHUP not acted on: the daemon was stopping")

    def _died(self) -> list[str]:
        """The names of the threads that died (each makes the exit status 1)."""
        threads: list[Supervised | SocketMonitor | None] = [*self.threads, self.monitor]
        return [t.name for t in threads if t is not None and t.error is not None]

    def _on_thread_failure(self, thread: Supervised | SocketMonitor) -> None:
        """A thread died from an unexpected exception: answer what can be, then exit 1."""
        self._set_readiness("draining")
        self.stop_requested.set()

    def health_problems(self) -> list[str]:
        """Why ``/healthz`` fails: threads that died or stalled with work (none: healthy)."""
        timeout = self.config.stall_timeout_s
        problems = [p for t in self.threads if (p := t.problem(timeout)) is not None]
        if self.monitor is not None and self.monitor.died:
            problems.append("monitor died: the sockets' traffic stops once it is behind")
        if self.authenticator is not None and self.authenticator.died:
            problems.append("CURVE authenticator (ZAP) died: no client can connect")
        return problems

    def status(self) -> dict[str, Any]:
        """``/status``: state, versions, endpoints, settings in force, how long the reload in
        progress has run (``reload_s``, null when none), the served model and the beam spot
        (the beam line the chain is centred on, and where the tracks put the beam: null
        until the window holds tracks of two events)."""
        model, cfg = self.in_force  # one configuration, whatever a reload swaps meanwhile
        out: dict[str, Any] = {
            "state": self.readiness.state,
            "version": __version__,
            "endpoints": self.endpoints,
            "settings": {f.name: getattr(cfg, f.name) for f in fields(cfg)},
            "reload_s": self._reload_s(),
            "model": None,
        }
        if model is not None:
            out["model"] = {
                "name": model.name,
                "path": model.path,
                "hash": model.digest,
                "threshold": model.threshold,
                "device": model.device,
                "engine": model.engine,
                "engine_requested": model.engine_requested,
                "engine_note": model.engine_note,
                "precision": model.precision,
                "warmup_s": model.warmup_s,
                "card": {k: model.card.get(k) for k in ("model", "graph", "metrics")},
            }
        spot = self.metrics.physics.beam_spot.estimate()
        fields_mm = ("x", "y", "z", "z_width", "z_error")
        out["beam_spot"] = {
            "beam_line_mm": list(model.reconstructor.beam_spot) if model is not None else None,
            "measured_mm": {k: getattr(spot, k) for k in fields_mm} if spot.tracks else None,
            "tracks": spot.tracks,
        }
        return out

    # ------------------------------------------------------------------ model

    def _load(self) -> int | None:
        """Load the model in a thread while this one watches for SIGTERM/SIGINT: None once
        it is installed; 1 when loading fails, or a thread (the socket monitor) died
        meanwhile; 0 when a stop signal comes first (the loading thread
        is left to the process exit; in connect mode nothing has been received yet, in bind
        mode :meth:`_answer_unloaded` answers what the input took)."""
        outcome: list[ServedModel | BaseException] = []

        def load() -> None:
            try:
                outcome.append(load_served_model(self.config))
            except BaseException as e:
                outcome.append(e)

        loader = threading.Thread(target=load, name="load", daemon=True)
        loader.start()
        while loader.is_alive():
            if self._stopping(0.05):
                what = (
                    "no event was received"
                    if self.config.connect
                    else "answering what the input took"
                )
                self.abandoned_thread = True
                if died := self._died():  # not a signal: exit 1, for a restart
                    log.error(
                        "stopped while loading the model, the %s thread dead; %s",
                        ", ".join(died),
                        what,
                    )
                    return 1
                log.info("stopped while loading the model; %s", what)
                return 0
        [result] = outcome
        if isinstance(result, BaseException):
            # A missing, unreadable or mismatched model directory, or a setting it cannot
            # serve with: its message says it all.
            expected = isinstance(result, (OSError, ModelCardError, SettingError))
            log.error("cannot load the model: %s", result, exc_info=None if expected else result)
            return 1
        self._install(result, self.config)
        # The first estimate of a batch's cost (the worker's first batch replaces it): with
        # none, a batch would wait for its earliest deadline, and miss it.
        self.batcher.batch_time.observe(*result.warmup_batch)
        return None

    def _answer_unloaded(
        self, pull: zmq.Socket[Any], push: zmq.Socket[Any], dead: DeadLetters | None
    ) -> int:
        """Bind mode, no model installed (a stop, or a failure, while loading): the events
        the input took meanwhile answered ``shutdown`` (the batcher closed, nothing is
        reconstructed), as a drain answers them, within ``drain_timeout_s``; 0 when every
        reply was sent and neither ingest nor the emitter failed."""
        cfg = self.config
        deadline = time.perf_counter() + cfg.drain_timeout_s
        self._set_readiness("draining")
        self.batcher.close()
        replies: queue.Queue[Reply] = queue.Queue(cfg.reply_capacity)
        leave = threading.Event()
        leave.set()  # ingest takes what the socket has queued, then stops
        ingest = Ingest(pull, self.batcher, replies, self.metrics, lambda: self.config, leave, dead)
        ingest.leave_by = deadline - _drain_reserve_s(cfg.drain_timeout_s)
        emitter = Emitter(push, replies, self.metrics, lambda: not ingest.is_alive(), cfg.linger_ms)
        emitter.give_up_at = deadline
        for thread in (ingest, emitter):
            thread.start()
        ingest.join(max(0.0, deadline - time.perf_counter()))
        emitter.join(max(0.0, deadline - time.perf_counter()) + 0.5)
        if ingest.is_alive() or emitter.is_alive():
            self.abandoned_thread = self.sockets_in_use = True
        value = self.metrics.registry.get_sample_value
        shutdown = int(value("streamtrk_events_rejected_total", {"reason": "shutdown"}) or 0)
        summary = _fields(shutdown=shutdown, dropped=emitter.dropped)
        if emitter.is_alive() or emitter.dropped or ingest.error or emitter.error:
            log.error("the events taken while loading could not all be answered", extra=summary)
            return 1
        log.info("answered the events taken while loading", extra=summary)
        return 0

    def _model(self) -> ServedModel:
        assert self.model is not None
        return self.model

    def _install(self, model: ServedModel, cfg: ServeConfig) -> None:
        """Put ``model`` and ``cfg`` in force, the metrics that name them first (the replies
        named a reload's model before /status and the model metrics did)."""
        m = self.metrics
        m.set_model(model.name, model.path, model.digest, model.threshold)
        faults.delay("install")  # tests: an install that takes long (its log write stalled)
        m.physics.set_beam_line(model.reconstructor.beam_spot)
        m.build_info.set(_build_labels(model))
        if model.engine_note:
            from streamtrk.recon.engine import EngineScorer  # torch: loaded with the model

            scorer = model.reconstructor.scorer
            failed = isinstance(scorer, EngineScorer) and scorer.degraded  # slower than asked
            log.log(
                logging.WARNING if failed else logging.INFO,
                "engine %s (asked for %s): %s",
                model.engine,
                model.engine_requested,
                model.engine_note,
            )
        m.watch_device_memory(model.device)
        self.batcher.policy = _policy(cfg, model.device)
        self.in_force = (model, cfg)
        faults.fail("install")  # tests: an install that fails once the model is in place

    def _swap(
        self, model: ServedModel, cfg: ServeConfig, replaced: ServedModel, old: ServeConfig
    ) -> None:
        """Install ``model`` and ``cfg`` in place of ``replaced`` and ``old``; when that fails
        half-way, ``replaced`` and ``old`` as they were (then ``model`` goes to the worker to
        close between batches: a batch may have begun on it), and the failure is raised."""
        try:
            self._install(model, cfg)
        except BaseException:
            try:
                self._install(replaced, old)
            finally:
                with self._replacing:
                    self._replaced.append(model)
            raise

    def reload(self) -> None:
        """Reload configuration and model (SIGHUP); on failure keep serving the old ones.
        Called holding ``_reloading``, which it releases."""
        log.info("reloading")
        self.notifier.reloading()
        in_use = _as_used(self._model())
        try:
            old = self.config
            new = self.reload_config()
            warnings = [*self.overridden()]  # the file changed, they did not: said once swapped
            kept = {f.name: getattr(old, f.name) for f in fields(old) if f.name in RESTART_ONLY}
            changed = sorted(k for k, v in kept.items() if getattr(new, k) != v)
            if changed:
                warnings.append(f"settings that need a restart kept: {', '.join(changed)}")
            try:
                new = replace(new, **kept)
            except ValueError as e:  # the new file with the kept values is not consistent
                raise ValueError(f"{e}, with {', '.join(changed)} kept until a restart") from e
            faults.delay("reload")  # tests: a reload that takes long, the start-up load not
            model = load_served_model(new)
            replaced = self._model()  # only a reload changes it, and one runs at a time
            with self._swapping:
                draining = self._draining  # the drain answers with the model it began with
                if not draining:
                    self._swap(model, new, replaced, old)
            if draining:  # closed out of the lock, which the drain's start takes
                _close_quietly(model)
                log.warning("reload abandoned: the daemon is draining")
                return
            with self._replacing:  # closed by the worker between batches (heap refrozen)
                self._replaced.append(replaced)
            del replaced
            logs.configure(new.log_format, new.log_level)
        except Exception as e:
            self.metrics.model_reloads.labels("failure").inc()
            log.error("reload failed, still serving the previous model: %s", e)
            return
        finally:
            self._reload_began = None
            self._reloading.release()
            self.notifier.state("ready")  # the reload over (nothing once draining)
        self.metrics.model_reloads.labels("success").inc()
        for warning in warnings:
            log.warning(warning)
        now = _as_used(model)
        changes = (
            (
                f.name,
                in_use.get(f.name, getattr(old, f.name)),
                now.get(f.name, getattr(new, f.name)),
            )
            for f in fields(new)
        )
        applied = [f"{name} {a} -> {b}" for name, a, b in changes if a != b]
        log.info(
            "reloaded",
            extra=_fields(
                model=model.path,
                hash=model.digest,
                threshold=model.threshold,
                settings_changed=", ".join(applied) or "none",
            ),
        )

    def _banner(self) -> None:
        cfg, model = self.config, self._model()
        mode = "connect" if cfg.connect else "bind"
        log.info(
            "streamtrk serve ready",
            extra=_fields(
                **_build_labels(model),
                engine_note=model.engine_note,
                torch_threads=torch.get_num_threads(),
                model=model.path,
                model_hash=model.digest,
                threshold=model.threshold,
                warmup_s=round(model.warmup_s, 3),
                input=f"{self.endpoints['input']} (PULL, {mode})",
                output=f"{self.endpoints['output']} (PUSH, {mode})",
                http=f"http://{self.endpoints['http']}",
                curve=_curve_said(cfg),
                max_batch_events=cfg.max_batch_events,
                max_batch_hits=batch_hits(cfg, model.device),
                max_queue_delay_ms=cfg.max_queue_delay_ms,
                overload=cfg.overload,
                deadline_ms=cfg.deadline_ms,
            ),
        )


def _curve_said(cfg: ServeConfig) -> str:
    """Whether the sockets admit only allowed clients, as the banner says it."""
    if cfg.curve_secret_key is None:
        return "off: any peer that reaches the sockets is served"
    allowed = cfg.curve_allowed_keys or "none (no client allowed)"
    return f"on: clients whose certificates are in {allowed}"


def _as_used(model: ServedModel) -> dict[str, Any]:
    """The settings a reload line gives as used, not as set (a threshold of None is the
    model card's, a model of None the shipped one); the others it gives as set."""
    return {"threshold": model.threshold, "model": model.path}


def serve(
    cfg: ServeConfig,
    reload_config: Callable[[], ServeConfig],
    hup_before: StopFlag | None = None,
    stop_before: StopFlag | None = None,
    overridden: Callable[[], list[str]] = lambda: [],
) -> int:
    """Run the daemon until SIGTERM/SIGINT; returns the exit status. ``hup_before``,
    ``stop_before``: set by a SIGHUP (it reloads once ready), or a SIGTERM/SIGINT (it stops
    as it loads the model), that came before the daemon's own handlers. ``overridden``:
    warnings about the file's settings that variables or flags override, logged at start
    and after each successful reload.

    When a thread is left running inside torch (a batch that overran the drain, a model
    still loading at SIGTERM, or a reload's), the process ends here with ``os._exit``: a
    normal interpreter exit would tear torch down under that thread (``terminate called
    without an active exception``, status -6)."""
    daemon = Daemon(cfg, reload_config, hup_before, stop_before, overridden)
    status = daemon.run()
    if daemon.abandoned_thread:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):  # None: started without it (``>&-``)
            if stream is not None:
                with suppress(OSError, ValueError):  # nothing more to say: os._exit regardless
                    stream.flush()
        os._exit(status)
    return status
