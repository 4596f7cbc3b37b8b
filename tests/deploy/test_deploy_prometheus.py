"""Prometheus configuration, recording rules and alerts: promtool checks and conventions."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from deploy_helpers import (
    DEPLOY,
    K8S,
    REPO,
    RULES,
    dashboard,
    dashboard_exprs,
    exported_series,
    k8s_objects,
    load_yaml_documents,
    rules,
)
from needs import need_program

from streamtrk.service.telemetry import BATCH_EVENT_BUCKETS

PROMETHEUS = DEPLOY / "prometheus"
RULE_TESTS = PROMETHEUS / "tests" / "streamtrk.rules.test.yml"
RUNBOOK = REPO / "docs" / "operations.md"
needs_promtool = pytest.mark.usefixtures("promtool_path")
RECORD_NAME = re.compile(
    r"^(?P<level>[a-z_]+):(?P<metric>streamtrk_[a-z0-9_]+):(?P<ops>[a-z0-9_]+)$"
)


@pytest.fixture(scope="module")
def promtool_path() -> str:
    return need_program("promtool")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=120
    )


#: Two daemons' labels, as Prometheus scrapes them.
DAEMONS = ('job="streamtrk", instance="a:10062"', 'job="streamtrk", instance="b:10062"')


def panel_query(title: str, legend: str | None = None) -> str:
    """The query of the dashboard's panel ``title`` (its only one, or the one drawn as
    ``legend``)."""
    (panel,) = [p for p in dashboard()["panels"] if p.get("title") == title]
    (target,) = [t for t in panel["targets"] if legend is None or t["legendFormat"] == legend]
    return str(target["expr"])


def panel_check(expr: str, samples: list[tuple[str, float]]) -> dict:
    """A promtool check of a dashboard query at 10 minutes (its variables: every instance,
    5-minute rates): it gives exactly ``samples``, (labels, value) pairs."""
    for variable in ("$instance", "$forwarder"):
        expr = expr.replace(variable, ".*")
    return {
        "expr": expr.replace("$__rate_interval", "5m"),
        "eval_time": "10m",
        "exp_samples": [{"labels": k, "value": v} for k, v in samples],
    }


def passes_promtool_tests(tmp_path: Path, tests: list[tuple[dict[str, str], list[dict]]]) -> None:
    """promtool's unit tests pass: each of ``tests`` its input series (name: values, in
    1-minute steps) and its checks."""
    doc = {
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": k, "values": v} for k, v in series.items()],
                "promql_expr_test": checks,
            }
            for series, checks in tests
        ],
    }
    path = tmp_path / "panels.test.yml"
    path.write_text(yaml.safe_dump(doc))
    r = promtool("test", "rules", str(path))
    assert r.returncode == 0, r.stdout + r.stderr


@needs_promtool
def test_promtool_check_config() -> None:
    r = promtool("check", "config", "prometheus.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 rule files found" in r.stdout


@needs_promtool
def test_promtool_check_rules() -> None:
    r = promtool("check", "rules", str(RULES.relative_to(PROMETHEUS)))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(rules())} rules found" in r.stdout


@needs_promtool
def test_promtool_test_rules() -> None:
    r = promtool("test", "rules", str(RULE_TESTS.relative_to(PROMETHEUS)))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in load_yaml_documents(RULE_TESTS)[0]["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert alerts - firing == set(), "alerts without a firing test"
    assert alerts - quiet == set(), "alerts without a not-firing test"
    assert (firing | quiet) <= alerts


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for line in markdown.splitlines():
        if m := re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line):
            text = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


def test_alerts_have_for_severity_annotations_and_a_runbook_section() -> None:
    anchors = _anchors(RUNBOOK.read_text())
    alerts = [rule for rule in rules() if "alert" in rule]
    assert {a["alert"] for a in alerts} >= {
        "StreamtrkLatencyP99High",
        "StreamtrkErrorRatioHigh",
        "StreamtrkQueueSaturated",
        "StreamtrkNoOutput",
        "StreamtrkDown",
        "StreamtrkReadinessFlapping",
    }
    for alert in alerts:
        name = alert["alert"]
        assert re.fullmatch(r"\d+[smh]", alert.get("for", "")), name
        assert alert["labels"]["severity"] in ("warning", "critical"), name
        notes = alert["annotations"]
        assert notes["summary"] and notes["description"], name
        assert notes["runbook_url"] == f"docs/operations.md#{name.lower()}", name
        assert name.lower() in anchors, f"docs/operations.md has no section {name}"


def test_recording_rules_follow_level_metric_operations() -> None:
    names, _ = exported_series()
    families = {n.removesuffix("_total") for n in names} | {
        n.removesuffix(s) for n in names for s in ("_bucket", "_sum", "_count")
    }
    records = [rule["record"] for rule in rules() if "record" in rule]
    assert len(records) == len(set(records))
    for record in records:
        m = RECORD_NAME.match(record)
        assert m, record
        assert m["metric"] in families, f"{record}: {m['metric']} is not a daemon metric"
        # the level names the labels kept: job always, plus the others it lists
        assert m["level"].split("_")[0] in ("job", "instance"), record
    assert {
        "job:streamtrk_event_latency_seconds:p50_5m",
        "job:streamtrk_event_latency_seconds:p90_5m",
        "job:streamtrk_event_latency_seconds:p99_5m",
        "job:streamtrk_events_received:rate5m",
        "job:streamtrk_events_completed:error_ratio_rate5m",
        "job_reason:streamtrk_events_rejected:ratio_rate5m",
    } <= set(records)


def test_prometheus_config_scrapes_the_daemon_and_loads_the_rules() -> None:
    config = load_yaml_documents(PROMETHEUS / "prometheus.yml")[0]
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "streamtrk"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["streamtrk:10062"]
    rule_files = [p for pattern in config["rule_files"] for p in PROMETHEUS.glob(pattern)]
    assert RULES in rule_files


@needs_promtool
def test_prometheus_config_scrapes_the_farm_forwarders_its_file_lists(tmp_path: Path) -> None:
    """The streamtrk-farm job reads farm/forwarders.yml: shipped with no target, its commented
    example is a target list promtool accepts once filled in (and a bad one it refuses)."""
    config = load_yaml_documents(PROMETHEUS / "prometheus.yml")[0]
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "streamtrk-farm"]
    ((pattern,),) = [sd["files"] for sd in job["file_sd_configs"]]
    forwarders = PROMETHEUS / "farm" / "forwarders.yml"
    assert sorted(PROMETHEUS.glob(pattern)) == [forwarders]
    text = forwarders.read_text()
    assert yaml.safe_load(text) == []
    example = "\n".join(
        line.removeprefix("# ") for line in text.splitlines() if line.startswith(("# -", "#   "))
    )
    assert yaml.safe_load(example)[0]["targets"]

    copy = tmp_path / "prometheus"
    shutil.copytree(PROMETHEUS, copy)
    for sd_file, valid in ((example, True), ("- targets: dist-host:10063", False)):
        (copy / "farm" / "forwarders.yml").write_text(sd_file)
        r = subprocess.run(
            ["promtool", "check", "config", "prometheus.yml"],
            cwd=copy, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert (r.returncode == 0) == valid, r.stdout + r.stderr


@needs_promtool
def test_the_farm_panels_count_each_forwarders_messages_daemons_and_clients(
    tmp_path: Path,
) -> None:
    """The dashboard's Farm row on a distributor (3 daemons, 2 producers) and a collector
    (3 daemons, 1 consumer), each forwarding 1 message/s, beside a daemon."""
    targets = {
        p["title"]: [t["expr"] for t in p["targets"]]
        for p in dashboard()["panels"]
        if p["type"] != "row"
    }
    farm = 'job="streamtrk-farm"'
    d, c = f'{farm}, instance="d:10063"', f'{farm}, instance="c:10064"'
    series = {
        f'streamtrk_connections{{{d}, socket="back"}}': "3x10",
        f'streamtrk_connections{{{d}, socket="front"}}': "2x10",
        f'streamtrk_farm_forwarded_total{{{d}, role="distributor"}}': "0+60x10",
        f'streamtrk_connections{{{c}, socket="front"}}': "3x10",
        f'streamtrk_connections{{{c}, socket="back"}}': "1x10",
        f'streamtrk_farm_forwarded_total{{{c}, role="collector"}}': "0+60x10",
        'streamtrk_connections{job="streamtrk", instance="a:10062", socket="input"}': "1x10",
    }
    expected: dict[str, list[list[tuple[str, float]]]] = {
        "Messages forwarded": [
            [
                ('{instance="c:10064", role="collector"}', 1.0),
                ('{instance="d:10063", role="distributor"}', 1.0),
            ]
        ],
        "Daemons on the farm": [
            [(f'streamtrk_connections{{{d}, socket="back"}}', 3)],
            [(f'streamtrk_connections{{{c}, socket="front"}}', 3)],
        ],
        "Producers and consumers on the farm": [
            [(f'streamtrk_connections{{{d}, socket="front"}}', 2)],
            [(f'streamtrk_connections{{{c}, socket="back"}}', 1)],
        ],
    }
    checks = [  # the samples each of its queries gives
        panel_check(expr, samples)
        for title, per_target in expected.items()
        for expr, samples in zip(targets[title], per_target, strict=True)
    ]
    passes_promtool_tests(tmp_path, [(series, checks)])


@needs_promtool
def test_the_connections_ended_panel_rates_each_socket_and_cause(tmp_path: Path) -> None:
    """Two daemons' inputs refusing a key once a second each, one's output closed twice a
    second: one series per (socket, cause), the daemons added up."""
    expr = panel_query("Connections ended")
    a, b = DAEMONS
    series = {
        f'streamtrk_disconnects_total{{{a}, socket="input", cause="auth"}}': "0+60x10",
        f'streamtrk_disconnects_total{{{b}, socket="input", cause="auth"}}': "0+60x10",
        f'streamtrk_disconnects_total{{{a}, socket="output", cause="closed"}}': "0+120x10",
        f'streamtrk_disconnects_total{{{a}, socket="input", cause="closed"}}': "0x10",
    }
    expected = [
        ('{cause="auth", socket="input"}', 2.0),
        ('{cause="closed", socket="input"}', 0.0),
        ('{cause="closed", socket="output"}', 2.0),
    ]
    passes_promtool_tests(tmp_path, [(series, [panel_check(expr, expected)])])


@needs_promtool
def test_the_hits_on_no_layer_line_is_per_event_of_all_daemons(tmp_path: Path) -> None:
    """Two daemons, an event a second each, one of them with 32 hits a second on layers its
    detector file lacks: 16 hits an event on no layer over the farm."""
    expr = panel_query("Hits per event by layer", "no layer")
    a, b = DAEMONS
    series = {
        f"streamtrk_hits_on_no_layer_total{{{a}}}": "0+1920x10",
        f"streamtrk_hits_on_no_layer_total{{{b}}}": "0x10",
        f"streamtrk_event_tracks_count{{{a}}}": "0+60x10",
        f"streamtrk_event_tracks_count{{{b}}}": "0+60x10",
    }
    passes_promtool_tests(tmp_path, [(series, [panel_check(expr, [("{}", 16.0)])])])


@needs_promtool
def test_the_batch_size_panel_reads_whole_events(tmp_path: Path) -> None:
    """Batches all of one size (1, 3, 16 events; one a second): the panel's mean is that
    size, its p90 the size rounded up to a bucket's bound (Prometheus interpolates inside a
    bucket: batches of one event read 0.9)."""
    (mean, p90) = next(
        [t["expr"] for t in p["targets"] if "batch_events" in t["expr"]]
        for p in dashboard()["panels"]
        if p.get("title") == "Batch size"
    )
    tests = []
    for size, bucket_bound in ((1, 1), (3, 4), (16, 16)):
        daemon = 'job="streamtrk", instance="a:10062"'
        series = {
            f'streamtrk_batch_events_bucket{{{daemon}, le="{le}"}}': (
                "0x10" if le != "+Inf" and float(le) < size else "0+60x10"
            )
            for le in [*map(str, BATCH_EVENT_BUCKETS), "+Inf"]
        }
        series[f"streamtrk_batch_events_count{{{daemon}}}"] = "0+60x10"
        series[f"streamtrk_batch_events_sum{{{daemon}}}"] = f"0+{60 * size}x10"
        checks = [panel_check(mean, [("{}", size)]), panel_check(p90, [("{}", bucket_bound)])]
        tests.append((series, checks))
    passes_promtool_tests(tmp_path, tests)


def test_kubernetes_prometheusrule_equals_the_rules_file() -> None:
    (doc,) = load_yaml_documents(K8S / "prometheusrule.yaml")
    assert doc["kind"] == "PrometheusRule"
    assert doc["spec"]["groups"] == load_yaml_documents(RULES)[0]["groups"]


@needs_promtool
@pytest.mark.parametrize(
    ("stable_a", "stable_b", "busy"),
    [
        ("0x20", "0x20", 0.0),  # idle: 0, not NaN (KEDA reads NaN as a huge negative)
        ("0+15x20", "0+6x20", 0.7),  # half and a fifth of each minute in two stages
        (None, None, 0.0),  # no daemon has exported yet: 0, not nothing
    ],
)
def test_the_autoscalers_query_is_the_workers_busy_time(
    tmp_path: Path, stable_a: str | None, stable_b: str | None, busy: float
) -> None:
    """The total share of wall time the stable daemons' workers spend in a batch's stages
    (target 0.7 a daemon): not the queue stage (events wait side by side), not the physics
    thread's, not a canary pod's (track="canary": saturated, it is not what this
    scales)."""
    (trigger,) = k8s_objects()["ScaledObject"]["spec"]["triggers"]
    series = [
        {
            "series": f'streamtrk_stage_seconds_sum{{job="streamtrk", instance="{i}", '
            f'track="stable", stage="{stage}"}}',
            "values": counts,
        }
        for i, counts in (("a", stable_a), ("b", stable_b))
        if counts is not None
        for stage in ("graph", "gnn")
    ] + [
        {"series": 'streamtrk_stage_seconds_sum{job="streamtrk", instance="a", '
                   f'track="stable", stage="{stage}"}}', "values": "0+600x20"}
        for stage in ("queue", "physics")
    ] + [
        {"series": 'streamtrk_stage_seconds_sum{job="streamtrk", instance="c", '
                   'track="canary", stage="gnn"}', "values": "0+60x20"}
    ]  # fmt: skip
    test = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": [
                    {
                        "expr": trigger["metadata"]["query"],
                        "eval_time": "15m",
                        "exp_samples": [{"labels": "{}", "value": busy}],
                    },
                ],
            }
        ],
    }
    assert trigger["metricType"] == "AverageValue" and trigger["metadata"]["threshold"] == "0.7"
    path = tmp_path / "keda.test.yml"
    path.write_text(yaml.safe_dump(test))
    r = promtool("test", "rules", str(path))
    assert r.returncode == 0, r.stdout + r.stderr


def test_share_panels_do_not_add_up_the_daemons() -> None:
    """A panel in percent is a share: a ratio of sums, or a mean over the instances chosen,
    never a sum of the daemons' own shares (three daemons busy half the time read 150%)."""

    def panels(items: list[dict]) -> list[dict]:
        return [q for p in items for q in [p, *panels(p.get("panels", []))]]

    summed = [
        (p["title"], t["expr"])
        for p in panels(dashboard()["panels"])
        if p.get("fieldConfig", {}).get("defaults", {}).get("unit") == "percentunit"
        for t in p["targets"]
        if " / " not in t["expr"]
        and not re.match(r"\s*(avg|max|min)\b|\s*sum by \([^)]*\binstance\b", t["expr"])
    ]
    assert not summed


def test_the_physics_partial_panel_divides_as_its_alert_does() -> None:
    """Skipped batches over the reconstructions (one fit each), in the alert and the panel:
    over the batches taken, a failed batch's events retried one by one read past 100%."""
    (alert,) = [r for r in rules() if r.get("alert") == "StreamtrkPhysicsMetricsPartial"]
    panels = [e for e in dashboard_exprs() if "streamtrk_physics_batches_skipped_total" in e]
    assert panels
    for expr in [alert["expr"], *panels]:
        denominator = expr.split("/", 1)[1]
        assert "streamtrk_stage_seconds_count" in denominator, expr
        assert re.search(r'stage="fit"', denominator), expr
