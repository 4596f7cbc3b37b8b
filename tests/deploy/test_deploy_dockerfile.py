"""The container image without a Docker engine: the Dockerfile's instructions, every path
it copies, the configuration and entry point it sets, its package build and its health
probe are checked here; the image itself is not built (docs/deployment.md)."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import pytest
from deploy_helpers import (
    DEPLOY,
    DOCKERFILE,
    REPO,
    dockerfile_args,
    dockerfile_env,
    dockerfile_instructions,
    exec_form,
)

from streamtrk.cli import main


def _instructions(word: str) -> list[str]:
    return [args for w, args in dockerfile_instructions() if w == word]


def _copies() -> list[tuple[str, str]]:
    """(source relative to the context, destination) of the final stage's COPY lines, with
    the ARG defaults substituted."""
    args = dockerfile_args()
    out = []
    for line in _instructions("COPY"):
        assert not line.startswith("--from"), line
        *sources, dest = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], line).split()
        out.extend((src, dest) for src in sources)
    return out


def _dest_of(source: str) -> str:
    (dest,) = [d for s, d in _copies() if s.rstrip("/") == source.rstrip("/")]
    return dest


def test_stages_and_variants() -> None:
    froms = _instructions("FROM")
    assert dockerfile_args()["VARIANT"] == "gpu"
    stages = {f.split(" AS ")[1]: f.split(" AS ")[0] for f in froms if " AS " in f}
    assert re.fullmatch(r"nvidia/cuda:13\.\d+\.\d+-cudnn-runtime-ubuntu24\.04", stages["base-gpu"])
    assert re.fullmatch(r"python:3\.1[1-9]-slim", stages["base-cpu"])
    assert froms[-1] == "base-${VARIANT}"
    text = DOCKERFILE.read_text()
    assert "https://download.pytorch.org/whl/cpu" in text
    assert "https://download.pytorch.org/whl/cu130" in text
    assert re.search(r"PKG_EXTRAS=\[gpu\]", text)
    assert 'pip install ".${PKG_EXTRAS}"' in text


def test_torch_pin_matches_the_makefile() -> None:
    pin = re.search(r"^TORCH\s*\?=\s*(\S+)", (REPO / "Makefile").read_text(), re.M)
    assert pin and dockerfile_args()["TORCH"] == pin.group(1)


def test_runtime_instructions() -> None:
    (user,) = _instructions("USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000, "USER must be a non-root numeric uid"
    (stopsignal,) = _instructions("STOPSIGNAL")
    assert stopsignal == "SIGTERM"
    (healthcheck,) = _instructions("HEALTHCHECK")
    options, _, command = healthcheck.partition(" CMD ")
    assert "--start-period=" in options
    probe = exec_form(command)
    assert probe[1] == _dest_of("deploy/healthcheck.py") and probe[2] == "/healthz"
    exposed = {p for line in _instructions("EXPOSE") for p in line.split()}
    assert exposed == {"5555", "5556", "9100"}
    (entrypoint,) = _instructions("ENTRYPOINT")
    assert exec_form(entrypoint) == ["streamtrk", "serve"]
    (cmd,) = _instructions("CMD")
    assert exec_form(cmd) == ["--config", _dest_of("deploy/streamtrk.toml")]


def test_every_copied_path_exists() -> None:
    copies = _copies()
    assert {s for s, _ in copies} >= {"pyproject.toml", "README.md", "streamtrk/"}
    for source, _ in copies:
        assert (REPO / source).exists(), f"COPY {source}: not in the repository"


def test_dockerignore_lets_exactly_the_copied_paths_through() -> None:
    """deploy/Dockerfile.dockerignore (BuildKit's per-Dockerfile ignore file) excludes
    everything, then re-includes what the COPY lines need."""
    lines = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    patterns = [p.strip() for p in lines if p.strip() and not p.lstrip().startswith("#")]
    assert patterns[0] == "*"
    included = [p[1:].rstrip("/") for p in patterns if p.startswith("!")]
    for source, _ in _copies():
        parts = Path(source.rstrip("/")).parts
        assert any(Path(*parts[:n]).as_posix() in included for n in range(1, len(parts) + 1)), (
            source
        )


def test_the_shipped_model_is_copied_and_selected() -> None:
    from streamtrk.recon.model import CARD, DEFAULT_MODEL_NAME, WEIGHTS

    name = dockerfile_args()["MODEL_NAME"]
    assert name == DEFAULT_MODEL_NAME
    model_dir = REPO / "models" / name
    assert (model_dir / CARD).is_file() and (model_dir / WEIGHTS).is_file()
    assert dockerfile_env()["STREAMTRK_MODEL"].rstrip("/") == _dest_of(f"models/{name}/").rstrip(
        "/"
    )


def test_entrypoint_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--help"])
    assert exit_.value.code == 0
    assert "--drain-timeout-s" in capsys.readouterr().out


def test_image_configuration_is_valid(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``streamtrk serve --config /etc/streamtrk/streamtrk.toml`` with the image's ENV (the
    model path mapped back into the repository) prints its configuration."""
    model_dest = dockerfile_env()["STREAMTRK_MODEL"]
    for key, value in dockerfile_env().items():
        if key.startswith("STREAMTRK_"):
            monkeypatch.setenv(key, value)
    local_model = REPO / "models" / Path(model_dest).name
    monkeypatch.setenv("STREAMTRK_MODEL", str(local_model))
    assert main(["serve", "--config", str(DEPLOY / "streamtrk.toml"), "--print-config"]) == 0
    out = capsys.readouterr().out
    assert 'http = "0.0.0.0:9100"' in out
    assert 'input = "tcp://0.0.0.0:5555"' in out
    assert 'output = "tcp://0.0.0.0:5556"' in out
    assert f'model = "{local_model}"' in out


@pytest.mark.slow
def test_package_builds_and_runs_from_the_copied_paths(tmp_path: Path) -> None:
    """The Dockerfile's ``pip install .`` without an engine: build a wheel from exactly
    the paths it copies into /src, install it (no editable install, no repository on the
    path) and check that the package, its data files and the entry point work."""
    src = tmp_path / "src"
    src.mkdir()
    for source, dest in _copies():
        if not dest.startswith(("./", "streamtrk/")):
            continue  # copied outside /src, after the install
        target = src / (Path(source).name if dest == "./" else dest)
        if (REPO / source).is_dir():
            shutil.copytree(REPO / source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / source, target)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    dist, site = tmp_path / "dist", tmp_path / "site"
    build = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-index", "--no-build-isolation", "-w", dist, src],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = dist.glob("streamtrk-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "streamtrk = streamtrk.cli:main" in z.read(entry_points).decode()
    assert {"streamtrk/data/trackml_detector.toml", "streamtrk/service/serve.py"} <= names
    install = subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", "--target", site, wheel],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr
    check = (
        "import streamtrk, streamtrk.service.serve\n"
        "from streamtrk.detector import load_detector\n"
        "load_detector()\n"
        "print(streamtrk.__file__)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", check],
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert Path(run.stdout.strip()).is_relative_to(site)


# ---------------------------------------------------------------- the health probe


def _load_healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("healthcheck", DEPLOY / "healthcheck.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def http_server() -> Iterator[tuple[str, int]]:
    """A server answering 200 on /healthz and 503 elsewhere."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            code = 200 if self.path == "/healthz" else 503
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    try:
        yield "127.0.0.1", int(server.server_address[1])
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


def test_healthcheck_address(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hc = _load_healthcheck()
    config = tmp_path / "c.toml"
    config.write_text('http = "0.0.0.0:9200"\n')
    monkeypatch.delenv("STREAMTRK_HTTP", raising=False)
    assert hc.address(str(config)) == "127.0.0.1:9200"
    assert hc.address(str(tmp_path / "missing.toml")) == "127.0.0.1:9100"
    assert hc.address(str(DEPLOY / "streamtrk.toml")) == "127.0.0.1:9100"
    monkeypatch.setenv("STREAMTRK_HTTP", "10.1.2.3:9300")
    assert hc.address(str(config)) == "10.1.2.3:9300"


def test_healthcheck_exit_status(
    http_server: tuple[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    hc = _load_healthcheck()
    host, port = http_server
    monkeypatch.setenv("STREAMTRK_HTTP", f"{host}:{port}")
    assert hc.main(["/healthz"]) == 0
    assert hc.main(["/readyz"]) == 1  # 503
    monkeypatch.setenv("STREAMTRK_HTTP", f"{host}:1")
    assert hc.main(["/healthz"]) == 1  # nothing listening
