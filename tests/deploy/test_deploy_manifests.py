"""Compose, Grafana, Kubernetes and systemd files: they parse, and they hold what the
deployment needs (probes, drain budgets, GPU request, hardening, ...)."""

from __future__ import annotations

import configparser
import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_helpers import (
    DASHBOARD,
    DEPLOY,
    UNIT,
    dashboard,
    dockerfile_env,
    dockerfile_instructions,
    k8s_objects,
    load_yaml_documents,
    promql_metric_names,
    rules,
)
from needs import need_program

from streamtrk.cli import build_parser
from streamtrk.recon.choices import ENGINE_CACHE_ENV
from streamtrk.service.config import ServeConfig, load_config

COMPOSE = DEPLOY / "compose.yaml"
PRESTOP_SLEEP_S = 5


def _seconds(value: str | int) -> float:
    """``45s``, ``1m30s``, ``45`` -> seconds."""
    if isinstance(value, int):
        return float(value)
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s)?", value)
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "": 1}
    return sum(float(n) * scale[u] for n, u in parts)


def _env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


# ---------------------------------------------------------------- every file parses


@pytest.mark.parametrize(
    "path",
    sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")]),
    ids=lambda p: str(p.relative_to(DEPLOY)),
)
def test_yaml_parses(path: Path) -> None:
    assert load_yaml_documents(path)


@pytest.mark.parametrize(
    "path", sorted(DEPLOY.rglob("*.json")), ids=lambda p: str(p.relative_to(DEPLOY))
)
def test_json_parses(path: Path) -> None:
    assert json.loads(path.read_text())


@pytest.mark.parametrize(
    "path", sorted(DEPLOY.rglob("*.toml")), ids=lambda p: str(p.relative_to(DEPLOY))
)
def test_daemon_configs_are_valid(path: Path) -> None:
    cfg = load_config(path, env={})
    assert cfg.http.startswith("0.0.0.0:"), "the daemon must be reachable from Prometheus"


# ---------------------------------------------------------------- compose


def test_compose_stack() -> None:
    compose = load_yaml_documents(COMPOSE)[0]
    services = compose["services"]
    assert set(services) >= {"streamtrk", "prometheus", "grafana", "simulate", "replay"}

    daemon = services["streamtrk"]
    assert daemon["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (COMPOSE.parent / daemon["build"]["context"]).resolve() == DEPLOY.parent
    env = {k: str(v) for k, v in daemon.get("environment", {}).items()}
    cfg = load_config(DEPLOY / "streamtrk.toml", env=env)
    assert daemon["stop_signal"] == "SIGTERM"
    grace = _seconds(daemon["stop_grace_period"])
    assert grace > cfg.drain_timeout_s + cfg.linger_ms / 1000

    # the producer: simulate once into the volume, then replay in a loop against the daemon
    (script,) = services["simulate"]["command"]
    simulate = shlex.split(script.split("||", 1)[1])
    assert simulate[0] == "streamtrk"
    sim_args = build_parser().parse_args(simulate[1:])
    replay_args = build_parser().parse_args(
        [*services["replay"]["entrypoint"][1:], *services["replay"]["command"]]
    )
    assert replay_args.command == "replay"
    assert replay_args.recording == sim_args.output
    assert replay_args.to == "tcp://streamtrk:5555"
    assert replay_args.from_ == "tcp://streamtrk:5556"
    assert replay_args.loop > 1 and services["replay"]["restart"] == "unless-stopped"
    deps = services["replay"]["depends_on"]
    assert deps["simulate"]["condition"] == "service_completed_successfully"
    # the replay starts once the daemon is ready (its model loaded), not merely alive
    assert deps["streamtrk"]["condition"] == "service_healthy"
    assert daemon["healthcheck"]["test"][-1] == "/readyz"

    # Prometheus and Grafana get their configuration from deploy/
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).is_dir(), volume
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]


def test_compose_publishes_what_has_no_authentication_on_loopback_only() -> None:
    """Grafana (admin/admin, anonymous viewers), Prometheus (``--web.enable-lifecycle``:
    whoever reaches it may POST /-/quit) and the daemon's HTTP endpoints have no
    authentication of their own: published on the host's loopback only (the URLs the
    file's header gives), not on every interface of the host. The daemon's ZeroMQ ports
    have CURVE."""
    services = load_yaml_documents(COMPOSE)[0]["services"]
    curve = {("streamtrk", "5555"), ("streamtrk", "5556")}
    published = 0
    for name, service in services.items():
        for port in service.get("ports", []):
            *host, container = str(port).split(":")
            published += 1
            if (name, container) not in curve:
                assert len(host) == 2 and host[0] == "127.0.0.1", f"{name}: {port}"
    assert published >= 5


# ---------------------------------------------------------------- Grafana


def test_grafana_provisioning_matches_the_dashboard() -> None:
    prov = DEPLOY / "grafana" / "provisioning"
    (source,) = load_yaml_documents(prov / "datasources" / "prometheus.yaml")[0]["datasources"]
    (provider,) = load_yaml_documents(prov / "dashboards" / "streamtrk.yaml")[0]["providers"]
    compose = load_yaml_documents(COMPOSE)[0]["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in compose["volumes"])
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert (DEPLOY / "grafana" / "dashboards" / DASHBOARD.name).is_file()
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["datasource"]["current"]["value"] == source["uid"]
    assert source["url"] == "http://prometheus:9090"


def test_dashboard_panels() -> None:
    d = dashboard()
    panels = [p for p in d["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    titles = {p["title"] for p in panels}
    assert titles >= {
        "Event rate",
        "Error ratio by reason",
        "Latency p50 / p90 / p99",
        "Latency heatmap",
        "Mean time per stage",
        "Batch size",
        "Queue depth",
        "In-flight events",
        "Device memory",
        "Hits per event by layer",
        "Share of hits on tracks by layer",
        "Tracks per event",
        "Edges above threshold",
        "Beam spot",
    }
    rows = [p["title"] for p in d["panels"] if p["type"] == "row"]
    assert {"Detector and physics", "Farm"} <= set(rows)
    variables = {v["name"]: v for v in d["templating"]["list"]}
    for name in ("instance", "forwarder"):
        assert variables[name]["type"] == "query"
        assert variables[name]["multi"] and variables[name]["includeAll"]
    assert "streamtrk_farm_forwarded_total" in variables["forwarder"]["definition"]
    row = ""
    for p in d["panels"]:
        if p["type"] == "row":
            row = p["title"]
            continue
        pos = p["gridPos"]
        assert pos["x"] + pos["w"] <= 24, p["title"]
        assert p["targets"], p["title"]
        # the daemons' panels select $instance; the farm's, its forwarders ($forwarder)
        selector = 'instance=~"$forwarder"' if row == "Farm" else 'instance=~"$instance"'
        for t in p["targets"]:
            assert selector in t["expr"], f"{p['title']}: {t['expr']}"
            assert t["datasource"]["uid"] == "${datasource}"
    for heatmap in [p for p in panels if p["type"] == "heatmap"]:
        (target,) = heatmap["targets"]
        assert target["format"] == "heatmap" and "_bucket{" in target["expr"], heatmap["title"]
    latency = next(p for p in panels if p["title"] == "Latency heatmap")
    assert "streamtrk_event_latency_seconds_bucket" in latency["targets"][0]["expr"]
    quantiles = next(p for p in panels if p["title"] == "Latency p50 / p90 / p99")
    found = [re.search(r"histogram_quantile\((0\.\d+)", t["expr"]) for t in quantiles["targets"]]
    assert [m[1] if m else None for m in found] == [
        "0.50",
        "0.90",
        "0.99",
    ]


# ---------------------------------------------------------------- Kubernetes


@pytest.fixture(scope="module")
def k8s() -> dict[str, dict[str, Any]]:
    return k8s_objects()


def _container(k8s: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (container,) = k8s["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container


@pytest.fixture(scope="module")
def k8s_config(
    k8s: dict[str, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> ServeConfig:
    """The daemon's configuration in the pod: the ConfigMap's file plus the container env."""
    env = {e["name"]: e["value"] for e in _container(k8s).get("env", [])}
    ((name, text),) = k8s["ConfigMap"]["data"].items()
    path = tmp_path_factory.mktemp("k8s") / name
    path.write_text(text)
    return load_config(path, env=env)


def test_k8s_objects_present(k8s: dict[str, dict[str, Any]]) -> None:
    assert set(k8s) >= {
        "ConfigMap",
        "Deployment",
        "Service",
        "ServiceMonitor",
        "PodDisruptionBudget",
        "ScaledObject",
        "PrometheusRule",
    }


def test_k8s_deployment(k8s: dict[str, dict[str, Any]], k8s_config: ServeConfig) -> None:
    spec = k8s["Deployment"]["spec"]["template"]["spec"]
    c = _container(k8s)
    cfg = k8s_config
    port = {p["name"]: p["containerPort"] for p in c["ports"]}["metrics"]
    assert cfg.http_address == ("0.0.0.0", port)
    assert c["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    # no CPU limit, so no cgroup quota: torch's threads are set to the CPUs requested
    assert "cpu" not in c["resources"]["limits"]
    assert cfg.torch_threads == int(c["resources"]["requests"]["cpu"])
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["port"] in ("metrics", port)
    assert c["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(PRESTOP_SLEEP_S)]
    assert spec["enableServiceLinks"] is False  # no STREAMTRK_* variables from the Service
    grace = spec["terminationGracePeriodSeconds"]
    assert grace > PRESTOP_SLEEP_S + cfg.drain_timeout_s + cfg.linger_ms / 1000
    # the ConfigMap, mounted where --config points
    config_path = Path(c["args"][c["args"].index("--config") + 1])
    volumes = {v["name"]: v for v in spec["volumes"]}
    (mount,) = [m for m in c["volumeMounts"] if "configMap" in volumes[m["name"]]]
    assert volumes[mount["name"]]["configMap"]["name"] == k8s["ConfigMap"]["metadata"]["name"]
    assert config_path.parent == Path(mount["mountPath"])
    assert config_path.name in k8s["ConfigMap"]["data"]
    # non-root, as the image; read-only root with writable state and /tmp
    user = next(a for w, a in dockerfile_instructions() if w == "USER")
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert str(spec["securityContext"]["runAsUser"]) == user.split(":")[0]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    writable = {m["mountPath"] for m in c["volumeMounts"] if "emptyDir" in volumes[m["name"]]}
    assert {"/tmp", "/var/lib/streamtrk"} <= writable
    assert str(cfg.dead_letter).startswith("/var/lib/streamtrk/")
    strategy = k8s["Deployment"]["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0


def test_k8s_service_servicemonitor_pdb_select_the_pods(k8s: dict[str, dict[str, Any]]) -> None:
    pod_labels = k8s["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert k8s["Deployment"]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    svc = k8s["Service"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    (svc_port,) = svc["spec"]["ports"]
    assert svc_port["targetPort"] == "metrics"
    sm = k8s["ServiceMonitor"]["spec"]
    assert sm["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    (endpoint,) = sm["endpoints"]
    assert endpoint["port"] == svc_port["name"] and endpoint["path"] == "/metrics"
    # the autoscaler selects track="stable": the pods' label, copied onto their series
    assert sm["podTargetLabels"] == ["track"] and pod_labels["track"] == "stable"
    # the rules select job="streamtrk": the operator names the job after the Service
    assert svc["metadata"]["name"] == "streamtrk"
    pdb = k8s["PodDisruptionBudget"]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb.get("maxUnavailable") == 1 or pdb.get("minAvailable", 0) >= 1


def test_k8s_autoscaler(k8s: dict[str, dict[str, Any]]) -> None:
    so = k8s["ScaledObject"]["spec"]
    assert so["scaleTargetRef"]["name"] == k8s["Deployment"]["metadata"]["name"]
    assert so["minReplicaCount"] >= 2 and so["maxReplicaCount"] > so["minReplicaCount"]
    records = {r["record"] for r in rules() if "record" in r}
    queries = [t["metadata"]["query"] for t in so["triggers"] if t["type"] == "prometheus"]
    assert any("streamtrk_stage_seconds_sum" in q for q in queries)
    for q in queries:
        for name in promql_metric_names(q):
            assert name in records or name.startswith("streamtrk_"), q


def test_kustomize_builds_every_manifest() -> None:
    kubectl = need_program("kubectl", "install kubectl to build the Kubernetes manifests")
    r = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY / "k8s")], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(r.stdout)]
    assert sorted(kinds) == sorted(k8s_objects())


# ---------------------------------------------------------------- systemd


def _unit() -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(UNIT.read_text())
    return unit


def _unit_environment() -> list[str]:
    """The unit's ``Environment=`` assignments (configparser keeps only the last line)."""
    return [
        assignment
        for line in UNIT.read_text().splitlines()
        if line.startswith("Environment=")
        for assignment in shlex.split(line.removeprefix("Environment="))
    ]


def test_systemd_unit() -> None:
    service = _unit()["Service"]
    cfg = load_config(
        DEPLOY / "systemd" / "streamtrk.toml", env=_env_file(DEPLOY / "systemd" / "streamtrk.env")
    )
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"
    assert _seconds(service["TimeoutStopSec"]) > cfg.drain_timeout_s + cfg.linger_ms / 1000
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    # sd_notify (streamtrk/service/notify.py): pinged every half period by the main loop,
    # which turns every 0.2 s; a missed ping stops the daemon as a stop does (a drain)
    # (docs/deployment.md and docs/operations.md say 30 s); a GPU's first compilation
    # (engines) takes minutes, past systemd's default start timeout (90 s)
    assert service["Type"] == "notify" and service["WatchdogSignal"] == "SIGTERM"
    assert _seconds(service["WatchdogSec"]) == 30
    assert _seconds(service["TimeoutStartSec"]) >= 600
    argv = shlex.split(service["ExecStart"])
    assert argv[1:3] == ["serve", "--config"] and argv[3] == "/etc/streamtrk/streamtrk.toml"
    assert service["EnvironmentFile"].lstrip("-") == "/etc/streamtrk/streamtrk.env"
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "DynamicUser": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "CapabilityBoundingSet": "",
    }.items():
        assert service[key] == value, key
    assert service["StateDirectory"] == "streamtrk"
    environment = dict(a.split("=", 1) for a in _unit_environment())
    for cache in ("MPLCONFIGDIR", "CUPY_CACHE_DIR", ENGINE_CACHE_ENV):  # TensorRT programs too
        assert environment[cache].startswith(f"/var/cache/{service['CacheDirectory']}/"), cache
    assert "/var/lib/streamtrk" in {p.lstrip("-") for p in service["ReadWritePaths"].split()}
    assert str(cfg.dead_letter).startswith("/var/lib/streamtrk/")
    assert cfg.model is None  # the package's shipped model
    assert _unit()["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_unit_allows_the_gpu_under_the_drivers_old_and_new_names() -> None:
    """``DeviceAllow`` groups are /proc/devices names: the GPUs and the control device are
    ``nvidia`` and ``nvidiactl`` from driver 550.40 (any that runs CUDA 13), ``nvidia-frontend``
    before; a unit naming the old one alone hides the GPU (CUDA fails to start)."""
    allowed = {
        line.removeprefix("DeviceAllow=").split()[0]
        for line in UNIT.read_text().splitlines()
        if line.startswith("DeviceAllow=")
    }
    assert {"char-nvidia", "char-nvidiactl", "char-nvidia-uvm"} <= allowed
    assert "char-nvidia-frontend" in allowed  # older drivers


def test_image_and_unit_cap_malloc_arenas_alike() -> None:
    """Both deployments run the daemon with the same few glibc malloc arenas (its RSS
    crept for 25 minutes with the default of up to 8 a core; bench/RESULTS.md)."""
    image = dockerfile_env()["MALLOC_ARENA_MAX"]
    assert image.isdigit() and 1 <= int(image) <= 4
    assert f"MALLOC_ARENA_MAX={image}" in _unit_environment()
    assert "MALLOC_ARENA_MAX" not in _env_file(DEPLOY / "systemd" / "streamtrk.env")


def test_systemd_hands_the_curve_secret_to_the_dynamic_user() -> None:
    """``streamtrk keys`` leaves the secret readable by root only, which the unit's dynamic
    user cannot read: the unit loads it as a credential and points the daemon at the copy."""
    cfg = load_config(DEPLOY / "systemd" / "streamtrk.toml")
    name, _, source = _unit()["Service"]["LoadCredential"].partition(":")
    assert source == str(cfg.curve_secret_key)
    assert f"STREAMTRK_CURVE_SECRET_KEY=%d/{name}" in _unit_environment()
    env = _env_file(DEPLOY / "systemd" / "streamtrk.env")
    assert "STREAMTRK_CURVE_SECRET_KEY" not in env  # the file would override the credential
    overridden = load_config(
        DEPLOY / "systemd" / "streamtrk.toml",
        env={**env, "STREAMTRK_CURVE_SECRET_KEY": f"/run/credentials/streamtrk.service/{name}"},
    )
    assert overridden.curve_secret_key == Path(f"/run/credentials/streamtrk.service/{name}")
    assert overridden.log_format == "plain"  # the file's choice for journald stands


def test_environments_do_not_shadow_their_configuration_files() -> None:
    """An operator edits the TOML (SIGHUP re-reads it): a variable of the unit's environment
    file, or of the compose service, for a setting the file holds would keep its own value
    (drain_timeout_s stayed 30 s whatever the file said). But log_format: the same value in
    both, so that a file that does not load is reported in the format a log shipper reads."""
    compose = load_yaml_documents(COMPOSE)[0]["services"]["streamtrk"].get("environment", {})
    env_file = DEPLOY / "systemd" / "streamtrk.env"
    for where, env, toml in [
        ("streamtrk.env", _env_file(env_file), "systemd/streamtrk.toml"),
        ("compose.yaml", compose, "streamtrk.toml"),
    ]:
        settings = tomllib.loads((DEPLOY / toml).read_text())
        for var, value in env.items():
            name = var.removeprefix("STREAMTRK_").lower()
            if name == "log_format":
                assert settings.get(name, value) == value, f"{where}: {var} is not {toml}'s"
            else:
                assert name not in settings, f"{where}: {var} shadows {toml}"
    # The environment file sets nothing; the variables it suggests (commented out, for an
    # operator to uncomment) may differ from the file's log_format, but shadow nothing else,
    # and each line uncommented as it stands is a setting the daemon takes (systemd reads
    # only whole lines as comments: a comment after the value would be part of it).
    suggested = re.findall(r"^#\s*(STREAMTRK_\w+)=(.*)$", env_file.read_text(), re.MULTILINE)
    settings = tomllib.loads((DEPLOY / "systemd" / "streamtrk.toml").read_text())
    assert suggested
    for var, value in suggested:
        name = var.removeprefix("STREAMTRK_").lower()
        assert name == "log_format" or name not in settings, f"streamtrk.env suggests {var}"
        load_config(DEPLOY / "systemd" / "streamtrk.toml", env={var: value.strip()})


def test_systemd_analyze(tmp_path: Path) -> None:
    """No warnings from systemd's own parser (ExecStart pointed at this venv's script), and
    a low exposure score from its security analysis."""
    need_program("systemd-analyze", "install systemd to check the unit file")
    exe = str(Path(sys.executable).with_name("streamtrk"))
    quoted = '"' + exe.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + '"'
    unit = tmp_path / "streamtrk.service"  # a checkout's path may hold spaces: quoted
    unit.write_text(UNIT.read_text().replace("/opt/streamtrk/venv/bin/streamtrk", quoted))
    r = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    problems = [line for line in (r.stdout + r.stderr).splitlines() if str(unit) in line]
    assert r.returncode == 0 and not problems, problems
    # systemd's own exposure score: at most 2.5 of 10 ("OK")
    r = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=25", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout[-2000:]
