"""Helpers of the deployment tests: the files under ``deploy/``, PromQL metric names, the
Dockerfile's instructions and the metric names the daemon exports."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
RULES = DEPLOY / "prometheus" / "rules" / "streamtrk.rules.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "streamtrk.json"
K8S = DEPLOY / "k8s"
UNIT = DEPLOY / "systemd" / "streamtrk.service"
DOCKERFILE = DEPLOY / "Dockerfile"
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
#: Series that Prometheus itself makes, not the daemon.
PROMETHEUS_SERIES = frozenset({"up"})


def load_yaml_documents(path: Path) -> list[Any]:
    with path.open() as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def k8s_objects() -> dict[str, dict[str, Any]]:
    """Every object of ``deploy/k8s/*.yaml`` (the kustomization aside) by kind."""
    objects: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in load_yaml_documents(path):
            if doc.get("kind") != "Kustomization":
                assert doc["kind"] not in objects, f"two {doc['kind']} objects"
                objects[doc["kind"]] = doc
    return objects


# ---------------------------------------------------------------- PromQL

_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless"}
    | {"bool", "offset", "inf", "nan"}
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"' + r"|'(?:[^'\\]|\\.)*'")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def promql_metric_names(expr: str) -> set[str]:
    """Metric names (and recording-rule names) an expression selects; functions,
    keywords, label names, durations and Grafana variables are left out."""
    s = _STRING.sub('""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # ranges, subqueries, $__rate_interval
    s = _LABEL_LIST.sub(" ", s)
    s = re.sub(r"\$\w+", " ", s)
    names = set()
    for m in _IDENT.finditer(s):
        name = m.group()
        rest = s[m.end() :].lstrip()
        if rest.startswith("(") or name.lower() in _KEYWORDS:
            continue
        if m.start() > 0 and (s[m.start() - 1].isdigit() or s[m.start() - 1] == "."):
            continue  # the exponent of 1e-3 and the like
        names.add(name)
    return names


def rules() -> list[dict[str, Any]]:
    doc = load_yaml_documents(RULES)[0]
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs() -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and query variables."""
    exprs: list[str] = []

    def panels(items: list[dict[str, Any]]) -> None:
        for p in items:
            exprs.extend(t["expr"] for t in p.get("targets", []) if "expr" in t)
            panels(p.get("panels", []))

    d = dashboard()
    panels(d["panels"])
    for var in d["templating"]["list"]:
        if var["type"] == "query":
            q = var["query"]
            q = q["query"] if isinstance(q, dict) else q
            m = re.fullmatch(r"label_values\((.*),\s*\w+\)", q)
            exprs.append(m.group(1) if m else q)
    return exprs


def base_metric(name: str, histograms: set[str]) -> str:
    """``name`` without ``_bucket``, ``_sum`` or ``_count`` when that leaves a histogram."""
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name.removesuffix(suffix) in histograms:
            return name.removesuffix(suffix)
    return name


def exported_series(daemon: bool = True, forwarder: bool = True) -> tuple[set[str], set[str]]:
    """(sample names the daemon's and/or a farm forwarder's registries can export, their
    histogram family names), from ``streamtrk.service.telemetry.Metrics`` and
    ``streamtrk.farm.ForwarderMetrics`` (labelled families without children too)."""
    from streamtrk.farm import ForwarderMetrics
    from streamtrk.service.telemetry import Metrics

    names: set[str] = set()
    histograms: set[str] = set()
    registries = [Metrics().registry] if daemon else []
    registries += [ForwarderMetrics("distributor").registry] if forwarder else []
    for family in (f for registry in registries for f in registry.collect()):
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            histograms.add(family.name)
            names.update(family.name + s for s in HISTOGRAM_SUFFIXES)
        else:
            names.add(family.name)
    return names, histograms


# ---------------------------------------------------------------- Dockerfile


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        word, _, args = full.partition(" ")
        out.append((word.upper(), args.strip()))
    return out


def dockerfile_args(path: Path = DOCKERFILE) -> dict[str, str]:
    """Default values of the Dockerfile's ``ARG NAME=value`` lines."""
    found: dict[str, str] = {}
    for word, args in dockerfile_instructions(path):
        if word == "ARG" and "=" in args:
            name, _, value = args.partition("=")
            found.setdefault(name, value)
    return found


def dockerfile_env(path: Path = DOCKERFILE) -> dict[str, str]:
    """``ENV`` of the final stage (``KEY=value`` pairs), ARG defaults substituted."""
    instructions = dockerfile_instructions(path)
    last_from = max(i for i, (w, _) in enumerate(instructions) if w == "FROM")
    args = dockerfile_args(path)
    env: dict[str, str] = {}
    for word, rest in instructions[last_from:]:
        if word == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), value)
    return env


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value
