"""The container image without a Docker engine: the Dockerfile's instructions, every path
it copies, the configuration and entry point it sets, its package build and its health
probe are checked here; the image itself is not built (docs/deployment.md)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import site
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
from needs import missing, need_program

from streamtrk.cli import main
from streamtrk.recon.model import CARD, DEFAULT_MODEL_NAME, WEIGHTS


def _instructions(word: str) -> list[str]:
    return [args for w, args in dockerfile_instructions() if w == word]


def _copies() -> list[tuple[str, str]]:
    """(source relative to the context, destination) of the final stage's COPY lines, with
    the ARG defaults substituted."""
    args = dockerfile_args()
    out: list[tuple[str, str]] = []
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
    # the package goes in with the pinned torch held (Torch-TensorRT's newest would swap it)
    assert 'echo "${TORCH}" > /opt/torch-constraint.txt' in text
    assert 'pip install -c /opt/torch-constraint.txt ".${PKG_EXTRAS}"' in text


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
    assert exposed == {"5555", "5556", "10062"}
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


@pytest.mark.parametrize(
    "secret", ["keys/server.key_secret", "client-keys/replay.key_secret", "streamtrk/x.key_secret"]
)
def test_the_secrets_the_docs_write_in_the_checkout_stay_out_of_git(secret: str) -> None:
    """docs/deployment.md has `streamtrk keys keys server` (and client-keys) run where the
    image is built, the repository root: their secret certificates must never be committed
    by a `git add`."""
    need_program("git", "install git to check what a commit would take")
    if not (REPO / ".git").exists():
        missing("not a git checkout")
    out = subprocess.run(
        ["git", "-C", str(REPO), "check-ignore", "--no-index", "-q", secret], check=False
    )
    assert out.returncode == 0, f"{secret} is not ignored by git"
    # nor sent to the image's build (COPY streamtrk/ would keep it in a layer): the last
    # matching line of a .dockerignore decides, so the exclusion follows every inclusion
    lines = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    patterns = [p.strip() for p in lines if p.strip() and not p.lstrip().startswith("#")]
    assert patterns[-1] == "**/*.key_secret"


def test_the_shipped_model_is_copied_beside_the_package() -> None:
    # The package data link streamtrk/data/models/NAME -> ../../../models/NAME must resolve
    # in /src when pip installs; the image then serves the package's own model.
    name = dockerfile_args()["MODEL_NAME"]
    assert name == DEFAULT_MODEL_NAME
    model_dir = REPO / "models" / name
    assert (model_dir / CARD).is_file() and (model_dir / WEIGHTS).is_file()
    assert _dest_of(f"models/{name}/") == f"models/{name}/"
    assert "STREAMTRK_MODEL" not in dockerfile_env()


def test_entrypoint_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--help"])
    assert exit_.value.code == 0
    assert "--drain-timeout-s" in capsys.readouterr().out


def test_image_configuration_is_valid(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``streamtrk serve --config /etc/streamtrk/streamtrk.toml`` with the image's ENV
    prints its configuration: the package's model (``model`` unset)."""
    for key, value in dockerfile_env().items():
        if key.startswith("STREAMTRK_"):
            monkeypatch.setenv(key, value)
    monkeypatch.delenv("STREAMTRK_MODEL", raising=False)
    assert main(["serve", "--config", str(DEPLOY / "streamtrk.toml"), "--print-config"]) == 0
    out = capsys.readouterr().out
    assert 'http = "0.0.0.0:10062"' in out
    assert 'input = "tcp://0.0.0.0:5555"' in out
    assert 'output = "tcp://0.0.0.0:5556"' in out
    assert "# model = (unset)" in out


@pytest.mark.slow
def test_package_builds_and_runs_from_the_copied_paths(tmp_path: Path) -> None:
    """The Dockerfile's ``pip install .`` without an engine: build a wheel from exactly
    the paths it copies into /src, install it into a fresh virtual environment outside the
    checkout and run ``streamtrk evaluate`` from another directory: the package finds its
    shipped model and detector as data files."""
    src = tmp_path / "src"
    src.mkdir()
    for source, dest in _copies():
        if not dest.startswith(("./", "streamtrk/", "models/")):
            continue  # copied outside /src, after the install
        target = src / (Path(source).name if dest == "./" else dest)
        if (REPO / source).is_dir():
            # Links stay links, as COPY leaves them: the model must be copied on its own.
            shutil.copytree(
                REPO / source,
                target,
                symlinks=True,
                ignore=shutil.ignore_patterns("__pycache__", "checkpoints"),
            )
        else:
            shutil.copy2(REPO / source, target)

    def run(*cmd: str | Path, cwd: Path = tmp_path) -> str:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMTRK_", "PYTHON"))}
        out = subprocess.run(
            [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
        )
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout

    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    dist = tmp_path / "dist"
    run(*pip, "wheel", "--no-deps", "--no-index", "--no-build-isolation", "-w", dist, src)
    (wheel,) = dist.glob("streamtrk-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "streamtrk = streamtrk.cli:main" in z.read(entry_points).decode()
    model = f"streamtrk/data/models/{DEFAULT_MODEL_NAME}"
    assert {"streamtrk/data/trackml_detector.toml", "streamtrk/service/serve.py"} <= names
    kernels = ("doublet_search.cu", "triplet_search.cu", "gls_filter.cu")
    assert {f"streamtrk/recon/{k}" for k in kernels} <= names
    assert {f"{model}/{CARD}", f"{model}/{WEIGHTS}"} <= names
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    run(*pip, "--python", python, "install", "--no-deps", "--no-index", wheel)
    # The dependencies (torch and the rest) come from this environment's site-packages, added
    # as a plain path: its .pth files, the checkout's editable install among them, do not run.
    # Written in ASCII: Python 3.11 reads a .pth file in the locale's encoding, and the path
    # of a checkout may hold other letters (an "import" line runs, spelling them in escapes).
    [venv_site] = (venv / "lib").glob("python3*/site-packages")
    deps = ascii(site.getsitepackages())
    (venv_site / "deps.pth").write_text(f"import sys; sys.path.extend({deps})\n")
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = run(python, "-c", "import streamtrk; print(streamtrk.__file__)", cwd=work)
    assert Path(where.strip()).is_relative_to(venv_site)
    streamtrk = venv / "bin" / "streamtrk"
    run(streamtrk, "simulate", "--events", "1", "--mu", "5", "-q", "-o", "ev.stk", cwd=work)
    report = json.loads(run(streamtrk, "evaluate", "ev.stk", "-q", cwd=work))
    assert report["scorer"] == str(venv_site / model) and report["events"] == 1
    assert report["tracking_efficiency"] >= 0.9


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
    assert hc.address(str(tmp_path / "missing.toml")) == "127.0.0.1:10062"
    assert hc.address(str(DEPLOY / "streamtrk.toml")) == "127.0.0.1:10062"
    config.write_bytes(
        b"\xef\xbb\xbfhttp = '0.0.0.0:9300'\n"
    )  # a byte-order mark, as the daemon allows
    assert hc.address(str(config)) == "127.0.0.1:9300"
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


def test_healthcheck_probes_directly_whatever_proxy_the_environment_names(
    http_server: tuple[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A container's environment may name a proxy (``http_proxy``): the probe of the
    daemon's own port goes to the daemon, not to the proxy (here nothing listens there)."""
    hc = _load_healthcheck()
    host, port = http_server
    monkeypatch.setenv("STREAMTRK_HTTP", f"{host}:{port}")
    for name in ("http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:1")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    assert hc.main(["/healthz"]) == 0
