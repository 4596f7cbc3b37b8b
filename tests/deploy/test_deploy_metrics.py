"""Every metric the rules, the dashboard and the autoscaler name is one the daemon exports:
offline against the daemon's metric registry and docs/metrics.md, and live against the
``/metrics`` of a running ``streamtrk serve``."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from deploy_helpers import (
    DEPLOY,
    PROMETHEUS_SERIES,
    REPO,
    base_metric,
    dashboard_exprs,
    exported_series,
    k8s_objects,
    promql_metric_names,
    rules,
)
from prometheus_client.parser import text_string_to_metric_families

from streamtrk.client import DIRECT

READY_TIMEOUT_S = 300
REPLY_TIMEOUT_MS = 120_000
#: Exported only when the daemon runs on CUDA (``Metrics.watch_device_memory``).
GPU_ONLY = frozenset({"streamtrk_device_memory_bytes"})


def _recording_rules() -> set[str]:
    return {r["record"] for r in rules() if "record" in r}


def _used_names() -> dict[str, set[str]]:
    """Metric names per consumer: rules, dashboard, autoscaler (recording rules left out)."""
    queries = [
        t["metadata"]["query"]
        for t in k8s_objects()["ScaledObject"]["spec"]["triggers"]
        if t["type"] == "prometheus"
    ]
    used = {
        "rules": [r["expr"] for r in rules()],
        "dashboard": dashboard_exprs(),
        "autoscaler": queries,
    }
    return {
        where: {n for e in exprs for n in promql_metric_names(e)} - _recording_rules()
        for where, exprs in used.items()
    }


def _daemon_names() -> set[str]:
    return {n for names in _used_names().values() for n in names} - PROMETHEUS_SERIES


def test_recording_rules_used_are_defined() -> None:
    defined = _recording_rules()
    exprs = [r["expr"] for r in rules()] + dashboard_exprs()
    exprs += [t["metadata"]["query"] for t in k8s_objects()["ScaledObject"]["spec"]["triggers"]]
    used = {n for e in exprs for n in promql_metric_names(e) if ":" in n}
    assert used - defined == set()


@pytest.mark.parametrize("where", ["rules", "dashboard", "autoscaler"])
def test_names_are_exported_by_the_daemon_or_a_forwarder(where: str) -> None:
    exported, _ = exported_series()
    names = _used_names()[where] - PROMETHEUS_SERIES
    assert names, where
    assert names - exported == set(), (
        f"{where} names metrics that neither streamtrk.service.telemetry.Metrics nor "
        "streamtrk.farm.ForwarderMetrics exports"
    )


def test_names_are_documented() -> None:
    _, histograms = exported_series()
    doc = (REPO / "docs" / "metrics.md").read_text()
    missing = {base_metric(n, histograms) for n in _daemon_names()}
    missing = {n for n in missing if n not in doc and n.removesuffix("_total") not in doc}
    assert missing == set(), "not documented in docs/metrics.md"


# ---------------------------------------------------------------- live daemon


def _get(url: str) -> tuple[int, str]:
    try:
        with DIRECT.open(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read().decode()


@pytest.mark.slow
def test_live_daemon_exports_every_metric_named(tmp_path: Path) -> None:
    """Start ``streamtrk serve`` (shipped model, CPU here), push one good event, one past
    its deadline and one unidentifiable message, then check every metric the rules, the
    dashboard and the autoscaler name against ``/metrics``; also run the image's health
    probe against it and stop it with SIGTERM."""
    from streamtrk.client import Consumer, Producer, terminate, wait_listening, wait_ready
    from streamtrk.detector import load_detector
    from streamtrk.sim.generator import GeneratorConfig
    from streamtrk.sim.simulate import SimConfig, simulate

    any_port = "tcp://127.0.0.1:*"
    cmd = [sys.executable, "-m", "streamtrk", "serve", "--input", any_port, "--output", any_port]
    cmd += ["--http", "127.0.0.1:0", "--dead-letter", str(tmp_path / "dead.stk")]
    cmd += ["--log-format", "json"]
    log_path = tmp_path / "daemon.log"
    with log_path.open("wb") as log:
        daemon = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        bound = wait_listening(log_path, READY_TIMEOUT_S, daemon)
        assert bound is not None, log_path.read_text()
        inp, out, http = bound["input"], bound["output"], bound["http"]
        assert wait_ready(http, READY_TIMEOUT_S, daemon), log_path.read_text()
        events = list(simulate(load_detector(), SimConfig(generator=GeneratorConfig(mu=1)), 11, 2))
        with Consumer(out) as consumer, Producer(inp) as producer:
            assert producer.send_event(events[0], timeout_ms=REPLY_TIMEOUT_MS)
            assert producer.send_event(events[1], deadline_ms=1e-3, timeout_ms=REPLY_TIMEOUT_MS)
            assert producer.send_frames([b"not a streamtrk message"], timeout_ms=10_000)
            replies = [consumer.recv(timeout_ms=REPLY_TIMEOUT_MS) for _ in events]
        assert all(r is not None for r in replies), log_path.read_text()

        status, text = _get(f"http://{http}/metrics")
        assert status == 200
        samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
        (build,) = [s.labels for s in samples if s.name == "streamtrk_build_info"]
        forwarder_only = exported_series(daemon=False)[0] - exported_series(forwarder=False)[0]
        expected = _daemon_names() - forwarder_only
        expected -= GPU_ONLY if build["device"] != "cuda" else set()
        missing = expected - {s.name for s in samples}
        assert missing == set(), f"missing from /metrics (device {build['device']})"

        # the label values the rules and the dashboard select on
        def values(name: str, label: str) -> set[str]:
            return {s.labels[label] for s in samples if s.name == name and label in s.labels}

        assert values("streamtrk_events_completed_total", "status") == {"ok", "error"}
        assert "deadline" in values("streamtrk_events_rejected_total", "reason")
        assert values("streamtrk_model_reloads_total", "result") == {"success", "failure"}
        assert values("streamtrk_queue_depth", "queue") == {"batch", "reply"}
        assert values("streamtrk_stage_seconds_count", "stage") == {
            "decode",
            "queue",
            "upload",
            "graph",
            "prune",
            "gnn",
            "tracks",
            "fit",
            "physics",
            "encode",
        }

        # the container's HEALTHCHECK command and the readiness probe, against this daemon
        env = {**os.environ, "STREAMTRK_HTTP": http}
        for path in ("/healthz", "/readyz"):
            probe = [sys.executable, str(DEPLOY / "healthcheck.py"), path]
            assert subprocess.run(probe, env=env, timeout=30).returncode == 0, path
    finally:
        code = terminate(daemon, 120)
    assert code == 0, log_path.read_text()
