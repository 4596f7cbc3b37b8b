"""Helpers of the service tests: a live ``streamtrk serve`` subprocess on loopback ports it
chooses itself (bound to port 0, read back from its log), a real Prometheus server scraping
it, metric samples, track partitions."""

from __future__ import annotations

import itertools
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from streamtrk.client import DIRECT, terminate, wait_listening, wait_ready
from streamtrk.stop import handlers_kept

# Acceptance runs use MU=2 pileup (about 900 hits per event) so that 200 events are
# reconstructed twice (daemon and offline) in well under a minute on two shared CPU cores.
ACCEPT_EVENTS = 200
ACCEPT_MU = 2
READY_TIMEOUT_S = 180


# Runs `streamtrk ARGS...` (argv[3:]) with a signal (argv[1]) sent to itself as module argv[2]
# starts to import: what `systemctl reload` (ExecReload=kill -HUP), `pkill -HUP streamtrk` or a
# stop does to a process started a second earlier.
SIGNAL_ON_IMPORT = """
import os, signal, sys
from streamtrk.cli import main

class SignalOnImport:
    def find_spec(self, name, path=None, target=None):
        if name == sys.argv[2]:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), getattr(signal, sys.argv[1]))

sys.meta_path.insert(0, SignalOnImport())
sys.exit(main(sys.argv[3:]))
"""


# A command line run with no stdout, as ``COMMAND >&-`` runs it (Python's sys.stdout None).
WITHOUT_STDOUT = ("sh", "-c", 'exec "$@" >&-', "sh")


@contextmanager
def shell_signals(hangup: Any = signal.SIG_DFL) -> Iterator[None]:
    """Processes started in the block get SIGHUP and SIGINT as a shell gives them to a
    command, whatever this test run inherited (``nohup make test`` ignores SIGHUP, a
    background job SIGINT: ignored signals stay ignored across exec); ``hangup=SIG_IGN``:
    as under ``nohup``. Start them in the block and wait for them outside it: the test run
    itself has those dispositions while it lasts."""
    with handlers_kept(signal.SIGHUP, signal.SIGINT):
        signal.signal(signal.SIGHUP, hangup)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        yield


def free_port() -> int:
    """A port free just now, for programs that cannot bind port 0 and report the port they
    got (Prometheus); another process can take it before it is used."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(keep: tuple[str, ...] = ("STREAMTRK_MODEL",)) -> dict[str, str]:
    """This process's environment without ``STREAMTRK_*`` settings (other than ``keep``;
    ``STREAMTRK_MODEL`` names the model that stands for the shipped one)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("STREAMTRK_") or k in keep}


class HttpEndpoints:
    """GET, HEAD and the parsed ``/metrics`` of a process serving them on ``self.http``."""

    http: str

    def get(self, path: str, method: str = "GET") -> tuple[int, str]:
        request = urllib.request.Request(f"http://{self.http}{path}", method=method)
        try:
            with DIRECT.open(request, timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            with e:
                return e.code, e.read().decode()

    def head(self, path: str) -> tuple[int, str]:
        return self.get(path, "HEAD")

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of ``/metrics``: (name, sorted labels) -> value."""
        status, text = self.get("/metrics")
        assert status == 200
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }


class Forwarder(HttpEndpoints):
    """``streamtrk farm ROLE`` on ports it picks (HTTP too); ``front``/``back``/``http`` as
    bound."""

    def __init__(
        self, tmp: Path, role: str, *extra: str, env: dict[str, str] | None = None
    ) -> None:
        self.log = tmp / f"{role}.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "streamtrk", "farm", role, "--from", "tcp://127.0.0.1:*",
                 "--to", "tcp://127.0.0.1:*", "--http", "127.0.0.1:0", *extra],
                stdout=out, stderr=subprocess.STDOUT, env=None if env is None else os.environ | env,
            )  # fmt: skip
        bound = wait_listening(self.log, READY_TIMEOUT_S, self.process)
        if bound is None:
            self.stop()
            pytest.fail(f"{role} not listening; log:\n{self.log.read_text()}")
        self.front, self.back, self.http = bound["front"], bound["back"], bound["http"]

    def stop(self) -> int:
        return terminate(self.process, 30)


class Daemon(HttpEndpoints):
    """``python -m streamtrk serve`` with JSON logs in ``log_path``; stop with :meth:`stop`."""

    numbers = itertools.count(1)  # daemons started by this process (log file names; threads)

    def __init__(
        self,
        tmp: Path,
        *args: str,
        env: dict[str, str] | None = None,
        keep_model: bool = True,
        wait: bool = True,
    ) -> None:
        """Start the daemon; return once it listens and, with ``wait``, once it is ready."""
        self.log_path = tmp / f"daemon-{next(Daemon.numbers)}.log"
        cmd = [sys.executable, "-m", "streamtrk", "serve", "--input", "tcp://127.0.0.1:*"]
        cmd += ["--output", "tcp://127.0.0.1:*", "--http", "127.0.0.1:0", "--log-format", "json"]
        base = clean_env() if keep_model else clean_env(keep=())
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [*cmd, *args], stdout=self._log, stderr=subprocess.STDOUT, env={**base, **(env or {})}
        )
        bound = wait_listening(self.log_path, READY_TIMEOUT_S, self.process)
        if bound is None:
            self.stop()
            pytest.fail(f"daemon not listening; log:\n{self.log_path.read_text()}")
        self.input, self.output, self.http = bound["input"], bound["output"], bound["http"]
        if wait and not wait_ready(self.http, READY_TIMEOUT_S, self.process):
            self.stop()
            pytest.fail(f"daemon not ready; log:\n{self.log_path.read_text()}")

    def settled(
        self, received: int | None = None, timeout: float = 60
    ) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """:meth:`metrics` once ``received`` messages (if given) have been taken off the socket
        and nothing is in flight (a reply counts just after its send); AssertionError, with
        the counts, if that is not so within ``timeout`` seconds."""
        t_end = time.monotonic() + timeout
        while True:
            m = self.metrics()
            got = sample(m, "streamtrk_events_received_total")
            done = sum(v for k, v in m.items() if k[0] == "streamtrk_events_rejected_total")
            done += sample(m, "streamtrk_events_completed_total", status="ok")
            inflight = sample(m, "streamtrk_inflight_events")
            if got == done and inflight == 0 and received in (None, got):
                return m
            assert time.monotonic() < t_end, (
                f"not settled in {timeout} s: received {got} (waiting for {received}), "
                f"answered {done}, in flight {inflight}"
            )
            time.sleep(0.1)

    def logs(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 120) -> int:
        code = terminate(self.process, timeout, sig)
        self._log.close()
        return code


def wait_for(condition: Callable[[], object], timeout: float = 180, poll_s: float = 0.05) -> None:
    """Wait until ``condition()`` holds (another thread or process makes it so); the test
    fails after ``timeout`` seconds."""
    t_end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < t_end, "timed out"
        time.sleep(poll_s)


def first_line(stream: IO[str], timeout: float = 60) -> str:
    """The first line a child process writes on ``stream`` (a pipe); the test fails when
    none has begun within ``timeout`` seconds."""
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, f"no line within {timeout:g} s"
    return stream.readline()


def sample(metrics: dict, name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


def partitions(submission: dict[int, tuple[Any, Any]]) -> dict[int, set[frozenset[int]]]:
    """Per event, the tracks as sets of hit ids (independent of track numbering). A hit in
    no track (0, or in a submission file a track of its own: ``write_submission``) is in
    none: the chain's tracks have 3 hits at least."""
    out = {}
    for event, (hit_ids, track_ids) in submission.items():
        tracks: dict[int, set[int]] = {}
        for h, t in zip(hit_ids.tolist(), track_ids.tolist(), strict=True):
            if t:
                tracks.setdefault(t, set()).add(h)
        out[event] = {frozenset(s) for s in tracks.values() if len(s) > 1}
    return out


class Prometheus:
    """A real ``prometheus`` process scraping ``target`` (job ``streamtrk``), or the jobs of
    ``scrape_configs`` (file paths in them relative to ``tmp``), every second, evaluating the
    rules of ``rules`` (a rules file) every second too."""

    def __init__(
        self,
        tmp: Path,
        target: str = "",
        rules: Path | None = None,
        scrape_configs: list[dict[str, Any]] | None = None,
    ) -> None:
        self.tmp = tmp
        config = tmp / "prometheus.yml"
        if scrape_configs is None:
            scrape_configs = [{"job_name": "streamtrk", "static_configs": [{"targets": [target]}]}]
        settings = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [] if rules is None else [str(rules)],
            "scrape_configs": scrape_configs,
        }
        config.write_text(json.dumps(settings))  # YAML is a superset of JSON
        self.log_path = tmp / "prometheus.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self._starts = 0
        self._start()

    def _start(self) -> None:
        """Start it on a port free just now (taken meanwhile: :meth:`_alive` starts again)."""
        self._starts += 1
        self.url = f"http://127.0.0.1:{free_port()}"
        self.process = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={self.tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.tmp / 'tsdb'}",
                f"--web.listen-address={self.url.removeprefix('http://')}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def _alive(self) -> None:
        """Raise, with its log, where the process has exited; started again on another port
        where another process took its port first (twice at most)."""
        if self.process.poll() is None:
            return
        log = self.log_path.read_text(errors="replace")
        if "address already in use" in log and self._starts < 3:
            self._start()
            return
        raise AssertionError(f"prometheus exited ({self.process.returncode}): {log[-2000:]}")

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": promql} | ({} if at is None else {"time": f"{at:.3f}"})
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}"
        with DIRECT.open(url, timeout=10) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def wait_scraping(self, job: str = "streamtrk", targets: int = 1, timeout: float = 120) -> None:
        """Until ``targets`` targets of ``job`` have been scraped successfully (so the
        replay's increase shows)."""
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end:
            self._alive()
            try:
                up = self.query(f'up{{job="{job}"}} == 1')
            except OSError:
                up = []
            if len(up) >= targets:
                return
            time.sleep(0.5)
        raise AssertionError(f"prometheus never scraped {targets} target(s) of job {job}")

    def stop(self) -> None:
        terminate(self.process, 60)
        self._log.close()
