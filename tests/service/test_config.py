"""Configuration: precedence (defaults < file < environment < flags) and invalid settings."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tomllib
from dataclasses import FrozenInstanceError, fields
from pathlib import Path

import pytest
import torch
from live_daemon import clean_env

from streamtrk.recon.choices import ENGINE_CACHE_ENV
from streamtrk.service import faults
from streamtrk.service.config import (
    MIN_SETTING_INT,
    RESTART_ONLY,
    ConfigError,
    ServeConfig,
    add_arguments,
    load_config,
    log_format_asked,
    number_flags,
    shadowed,
    source_of,
    unknown_variables,
)


def test_defaults_are_the_documented_endpoints() -> None:
    cfg = load_config(env={})
    assert cfg == ServeConfig()
    assert (cfg.input, cfg.output, cfg.http) == (
        "tcp://127.0.0.1:5555",
        "tcp://127.0.0.1:5556",
        "127.0.0.1:10062",
    )
    assert (cfg.device, cfg.model, cfg.connect, cfg.overload) == ("auto", None, False, "block")


SERVE_MD = Path(__file__).resolve().parents[2] / "docs" / "serve.md"


def _documented_defaults() -> dict[str, str]:
    """docs/serve.md's settings table: setting -> its default as written (backticks off)."""
    table = SERVE_MD.read_text().split("| setting | default | meaning |\n", 1)[1].split("\n\n")[0]
    rows = [line.split(" | ") for line in table.splitlines()[1:]]  # [1:]: the | --- | line
    return {
        name: row[1].strip("`")
        for row in rows
        for name in re.findall(r"`(\w+)`", row[0].lstrip("| "))
    }


def test_every_setting_and_its_default_are_the_documented_ones() -> None:
    """docs/serve.md's table names every setting, and each one's default as it is."""
    documented = _documented_defaults()
    cfg = ServeConfig()
    assert sorted(documented) == sorted(f.name for f in fields(cfg))
    for name, text in documented.items():
        value = getattr(cfg, name)
        if value is None:
            assert text.startswith("("), name  # (none), (shipped), (model card)
        else:
            assert text == (str(value).lower() if isinstance(value, bool) else str(value)), name


def test_the_settings_a_reload_cannot_change_are_the_documented_ones() -> None:
    """docs/serve.md's SIGHUP item names each setting that needs a restart, and no other."""
    text = SERVE_MD.read_text()
    said = re.search(r"need a restart \(a warning names them[^)]*\): (.*?)\.", text, re.S)
    assert said is not None
    assert sorted(re.findall(r"`(\w+)`", said[1])) == sorted(RESTART_ONLY)


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "serve.toml"
    path.write_text('max_batch_events = 3\nmax_queue_delay_ms = 7\nlog_format = "json"\n')
    env = {"STREAMTRK_MAX_QUEUE_DELAY_MS": "2.5", "STREAMTRK_CONNECT": "yes"}
    cfg = load_config(path, env, {"max_queue_delay_ms": "1", "deadline_ms": None})
    assert cfg.max_batch_events == 3  # file
    assert cfg.log_format == "json"  # file
    assert cfg.connect is True  # environment
    assert cfg.max_queue_delay_ms == 1.0  # flag over environment over file
    assert cfg.deadline_ms is None  # a flag not given changes nothing
    assert load_config(path, env).max_queue_delay_ms == 2.5


def test_a_file_s_keys_may_be_spelt_with_dashes(tmp_path: Path) -> None:
    path = tmp_path / "serve.toml"
    path.write_text('max-batch-events = 3\nlog-format = "json"\n')
    cfg = load_config(path, {})
    assert (cfg.max_batch_events, cfg.log_format) == (3, "json")
    assert log_format_asked(path, {}, {}) == "json"  # serve's start-up error reads it too
    path.write_text("max_batch_events = 3\nmax-batch-events = 4\n")
    with pytest.raises(ConfigError) as e:
        load_config(path, {})
    assert e.value.settings == ("max_batch_events",)


@pytest.mark.parametrize(
    ("toml", "env", "flags", "asked"),
    [
        ('log_format = "json"', {"STREAMTRK_LOG_FORMAT": "plain"}, {"log_format": "json"}, "json"),
        ('log_format = "json"', {"STREAMTRK_LOG_FORMAT": "plain"}, {"log_format": None}, "plain"),
        ('log_format = "plain"', {"STREAMTRK_LOG_FORMAT": "json"}, {}, "json"),
        ('log_format = "JSON"', {}, {}, "json"),  # read as the configuration reads it
        ('log_format = "json"\nmax_batch_events = 0', {}, {}, "json"),  # an invalid file
        ("max_batch_events = 3", {}, {}, "plain"),
        ('log_format = "json"\nlog_format = "json"', {}, {}, "plain"),  # no TOML
        (None, {}, {}, "plain"),
    ],
)
def test_the_log_format_asked_for_is_found_where_the_configuration_may_not_load(
    tmp_path: Path, toml: str | None, env: dict[str, str], flags: dict[str, str], asked: str
) -> None:
    """Flag, else variable, else the file's own setting, else plain."""
    path = None if toml is None else tmp_path / "serve.toml"
    if path is not None:
        path.write_text(f"{toml}\n")
    assert log_format_asked(path, env, flags) == asked


def test_the_process_environment_is_read_when_no_environment_is_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STREAMTRK_MAX_BATCH_EVENTS", "3")
    assert load_config().max_batch_events == 3


def test_cross_checks_see_the_final_values() -> None:
    env = {"STREAMTRK_MAX_BATCH_EVENTS": "100"}
    assert load_config(env=env, flags={"queue_capacity": "200"}).max_batch_events == 100
    with pytest.raises(ConfigError, match=r"queue_capacity .* environment variable"):
        load_config(env=env)


@pytest.mark.parametrize(
    ("toml", "env", "match"),
    [
        ("max_batch_events = 0", {}, r"max_batch_events must be a positive integer.*config file"),
        ('overload = "drop"', {}, r"overload must be one of block, reject"),
        ("batch_size = 4", {}, r"unknown setting 'batch_size'"),
        ("max_batch_events = [", {}, r"not valid TOML"),
        ("", {"STREAMTRK_DEVICE": "gpu"}, r"device .*STREAMTRK_DEVICE"),
        ("", {"STREAMTRK_CONNECT": "maybe"}, r"connect must be true or false"),
        ("", {"STREAMTRK_HTTP": "10062"}, r"http must be HOST:PORT"),
        ("", {"STREAMTRK_INPUT": "127.0.0.1:5555"}, r"input must be a ZeroMQ endpoint"),
        ("", {"STREAMTRK_INPUT": "tcp://127.0.0.1"}, r"input must be tcp://HOST:PORT"),
        # inproc binds, and no producer (another process) ever reaches it
        ('output = "inproc://out"', {}, r"output must be tcp:// or ipc:// \(inproc:// reaches"),
        ('output = "tcp://localhost:notaport"', {}, r"output must be tcp://HOST:PORT"),
        ('output = "tcp://127.0.0.1:70000"', {}, r"output must have a port of 0 to 65535"),
        # An IPv6 address without brackets: bound, "No such device"; connected, never there.
        ('input = "tcp://::1:5555"', {}, r"input must put an IPv6 address in brackets"),
        ("", {"STREAMTRK_OUTPUT": "tcp://fe80::1%eth0:5556"}, r"output must put an IPv6"),
        ("", {"STREAMTRK_THRESHOLD": "1.5"}, r"threshold must lie in \[0, 1\)"),
        ("", {"STREAMTRK_DEADLINE_MS": "-1"}, r"deadline_ms must be a finite number > 0"),
        ('engine = "trt"', {}, r"engine must be one of auto, eager, compile, tensorrt"),
        ('precision = "int8"', {}, r"precision must be one of fp32, bf16, fp16"),
        ('engine = "tensorrt"\ndevice = "cpu"', {}, r"engine tensorrt needs device cuda"),
        ("", {"STREAMTRK_TORCH_THREADS": "-1"}, r"torch_threads must be a non-negative"),
        ("budget_scale = 0.0", {}, r"budget_scale must be a finite number > 0"),
        # Found by fuzzing: each was a traceback, a wrong message or accepted.
        ("budget_scale = 1" + "0" * 400, {}, r"budget_scale must be a number, got 1000"),
        ("x = " + "[" * 2000 + "]" * 2000, {}, r"serve.toml is not valid TOML: maximum recursion"),
        ("max_hits = 1" + "0" * 5000, {}, r"serve.toml is not valid TOML: Exceeds the limit"),
        ('http = "127.0.0.1:\u00b2"', {}, r"http must be HOST:PORT"),
        ("torch_threads = 1000000", {}, r"torch_threads must be at most 4096"),
        ('http = "tcp://:1"', {}, r"http must be HOST:PORT"),
        ('http = "[]:10062"', {}, r"http must be HOST:PORT"),  # bound every address
        # taken as 3 and 10 by int(), where TOML and the ports refuse them
        ("", {"STREAMTRK_MAX_BATCH_EVENTS": "\u0663"}, r"max_batch_events must be an integer"),
        ("", {"STREAMTRK_MAX_BATCH_EVENTS": "1_0"}, r"max_batch_events must be an integer"),
        ("", {"STREAMTRK_BUDGET_SCALE": "1_0"}, r"budget_scale must be a number"),
        # accepted, then the HTTP server could not bind them (exit 1, not 2)
        ('http = "*:10062"', {}, r"http must name a host: every address is 0.0.0.0"),
        ('http = " 127.0.0.1:10062"', {}, r"http must be HOST:PORT"),
        ('http = "[::1:10062"', {}, r"http must be HOST:PORT"),
        # bytes the environment could not decode: --print-config could not write them back
        ("", {"STREAMTRK_DEAD_LETTER": "/tmp/\udcff.stk"}, r"dead_letter must be UTF-8 text"),
        ('model = ""', {}, r"model must be a path \(leave it out for the default\), got ''"),
        ("", {"STREAMTRK_SNDHWM": "4294967296"}, r"sndhwm must be at most 2147483647"),
        # A TOML value must have the setting's type: a string is no integer, and the
        # message says why '4' is not one.
        (
            'max_batch_events = "4"',
            {},
            r"max_batch_events must be an integer, unquoted in TOML, got '4' "
            r"\(from config file .*serve.toml, line 1\)",
        ),
        ("max_batch_events = 4.0", {}, r"max_batch_events must be an integer, got 4.0"),
        # a boolean is no number (Python's bool is an int): not 1.0 or 0.0
        ("budget_scale = true", {}, r"budget_scale must be a number, got True"),
        ("max_batch_events = true", {}, r"max_batch_events must be an integer, got True"),
        # (a string of two lines is no value unquoted, whatever its first line)
        (r'max_batch_events = "4\nx = 1"', {}, r"max_batch_events must be an integer, got '4"),
        # ... but only where the value unquoted is one: yes is no TOML, four no integer
        ('connect = "yes"', {}, r"connect must be true or false, got 'yes'"),
        ('max_batch_events = "four"', {}, r"max_batch_events must be an integer, got 'four'"),
        ('max_queue_delay_ms = "5 ms"', {}, r"max_queue_delay_ms must be a number, got '5 ms'"),
        ('connect = "true"', {}, r"connect must be true or false, unquoted in TOML, got 'true'"),
        ('max_queue_delay_ms = "5"', {}, r"max_queue_delay_ms must be a number, unquoted in TOML"),
        ("input = 5555", {}, r"input must be a string, got 5555"),
        (
            "",
            {"STREAMTRK_MAX_BATCH_EVENTS": "abc"},
            r"^max_batch_events must be an integer, got 'abc' "
            r"\(from environment variable STREAMTRK_MAX_BATCH_EVENTS\)$",
        ),
        (
            "max_batch_event = 4",
            {},
            r"unknown setting 'max_batch_event' .*did you mean max_batch_events",
        ),
        (  # a table, as other daemons' files have them: where, and why it is not read
            "# the daemon\n[serve]\nmax_batch_events = 4",
            {},
            r"^unknown setting 'serve' in config file .*serve.toml, line 2 \(a table: the "
            r"settings are top-level keys\)$",
        ),
        (  # one setting in both spellings: the later one no longer wins unseen
            "max_batch_events = 3\nmax-batch-events = 4",
            {},
            r"max_batch_events is given twice in config file .*serve.toml, line 1, "
            r"as 'max_batch_events', and, line 2, as 'max-batch-events'",
        ),
    ],
)
def test_invalid_settings_are_named(tmp_path: Path, toml: str, env: dict, match: str) -> None:
    path = tmp_path / "serve.toml"
    path.write_text(toml + "\n")
    with pytest.raises(ConfigError, match=match):
        load_config(path, env)


def test_a_file_s_invalid_value_is_named_with_its_line(tmp_path: Path) -> None:
    """Bare or quoted, after comments and multi-line strings (holding text like it): the line
    that sets it."""
    path = tmp_path / "serve.toml"
    for toml, line in [
        ('# the farm\n\nlog_level = "info"\n"max_batch_events" = 0\n', 4),
        ('model = """\nmax_queue_delay_ms = 5\n"""\n  max-batch-events = 0\n', 4),
        # the same key as text in a string before it: not its line
        ('dead_letter = """\nmax_batch_events = 9\n"""\nmax_batch_events = 0\n', 4),
        ("model = '''\n[max_batch_events]\n'''\nmax_batch_events = 0\n", 4),
    ]:
        path.write_text(toml)
        with pytest.raises(ConfigError, match=rf"\(from config file .*serve.toml, line {line}\)$"):
            load_config(path, {})


def test_unknown_streamtrk_variables_are_named_with_close_settings() -> None:
    env = {
        "STREAMTRK_MAX_BATCH_EVENT": "3",
        "STREAMTRK_QQQQQQQQQQQQQQQQQQQQ": "q",
        "STREAMTRK_MODEL": "m",  # a setting
        "STREAMTRK_SHARED": "s",  # read elsewhere, as these are:
        ENGINE_CACHE_ENV: "c",
        faults.ENV: "f",
        "MAX_BATCH_EVENT": "3",  # not ours
    }
    assert unknown_variables(env) == [
        "environment variable STREAMTRK_MAX_BATCH_EVENT is not a setting and is ignored; did "
        "you mean STREAMTRK_MAX_BATCH_EVENTS, STREAMTRK_MAX_BATCH_HITS, STREAMTRK_MAX_HITS?",
        "environment variable STREAMTRK_QQQQQQQQQQQQQQQQQQQQ is not a setting and is ignored",
    ]


def test_every_streamtrk_variable_the_project_reads_is_known() -> None:
    """A ``STREAMTRK_*`` name in the package's sources, the deployment files, CI's script or
    the tests' needs is a setting or one of the variables read elsewhere: none draws the
    warning that it is ignored."""
    root = Path(__file__).resolve().parents[2]
    package = root / "streamtrk"
    names = {
        name
        for path in package.rglob("*.py")
        for name in re.findall(r"[\"'](STREAMTRK_[A-Z0-9_]+)[\"']", path.read_text())
    }
    # not the .pyc the tests' import of deploy/healthcheck.py leaves (PYTHONDONTWRITEBYTECODE)
    deploy = [p for p in (root / "deploy").rglob("*.*") if "__pycache__" not in p.parts]
    others = [*deploy, root / ".ci" / "run", root / "tests" / "needs.py"]
    names |= {
        name
        for path in others
        for line in path.read_text().splitlines()
        if not line.lstrip().startswith("#")  # comments name variables that must not be set
        for name in re.findall(r"\b(STREAMTRK_[A-Z0-9_]+)\b", line)
    }
    assert {"STREAMTRK_HOST_SANITIZE", "STREAMTRK_STRICT_SKIPS", "STREAMTRK_VARIANT"} <= names
    assert unknown_variables(dict.fromkeys(names, "x")) == []


def test_serve_warns_of_unknown_streamtrk_variables() -> None:
    out = _serve("--print-config", env={"STREAMTRK_DEADLINE": "5"})
    assert out.returncode == 0
    assert "STREAMTRK_DEADLINE is not a setting and is ignored" in out.stderr
    assert "STREAMTRK_DEADLINE_MS" in out.stderr


def test_a_refused_configuration_names_the_variables_that_are_not_settings_first() -> None:
    """A mistyped variable is likeliest to matter when the configuration is refused: here
    the queue's length was meant to be set, and the default is too short."""
    env = {"STREAMTRK_QUEUE_CAPACTY": "64", "STREAMTRK_MAX_BATCH_EVENTS": "32"}
    out = _serve("--print-config", env=env)
    assert out.returncode == 2 and out.stdout == ""
    warning, error = out.stderr.splitlines()
    assert warning.startswith(
        "streamtrk serve: warning: environment variable STREAMTRK_QUEUE_CAPACTY is not a "
        "setting and is ignored; did you mean STREAMTRK_QUEUE_CAPACITY"
    )
    assert error.startswith("streamtrk serve: invalid configuration: queue_capacity (16) must")
    json_out = _serve(env={**env, "STREAMTRK_LOG_FORMAT": "json"})
    levels = [json.loads(line)["level"] for line in json_out.stderr.splitlines()]
    assert json_out.returncode == 2 and levels == ["warning", "error"]


def test_print_config_warns_of_the_file_s_settings_that_variables_or_flags_override(
    tmp_path: Path,
) -> None:
    """Not those given again with the same value (the deploy files' log_format)."""
    path = tmp_path / "serve.toml"
    path.write_text('log_format = "json"\nmax_batch_events = 4\ndeadline_ms = 50.0\n')
    env = {"STREAMTRK_LOG_FORMAT": "json", "STREAMTRK_MAX_BATCH_EVENTS": "6"}
    out = _serve("--config", str(path), "--deadline-ms", "", "--print-config", env=env)
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines() == [
        f"streamtrk serve: warning: config file {path}, line 2: max_batch_events = 4 is "
        "overridden by "
        "environment variable STREAMTRK_MAX_BATCH_EVENTS: max_batch_events = 6",
        f"streamtrk serve: warning: config file {path}, line 3: deadline_ms = 50.0 is "
        "overridden by "
        "flag --deadline-ms: deadline_ms unset",
    ]


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "streamtrk", "serve", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean_env(keep=()), **(env or {})},
    )


def test_print_config_shows_the_effective_configuration(tmp_path: Path) -> None:
    path = tmp_path / "serve.toml"
    path.write_text('max_batch_events = 3\nhttp = "127.0.0.1:9999"\n')
    out = _serve(
        "--config",
        str(path),
        "--http",
        "127.0.0.1:9123",
        "--print-config",
        env={"STREAMTRK_MAX_BATCH_EVENTS": "5", "STREAMTRK_DEADLINE_MS": "20"},
    )
    assert out.returncode == 0, out.stderr
    printed = tomllib.loads(out.stdout)
    assert printed["max_batch_events"] == 5 and printed["deadline_ms"] == 20.0
    assert printed["http"] == "127.0.0.1:9123"
    # The printed configuration loads back to the same configuration.
    (tmp_path / "printed.toml").write_text(out.stdout)
    cfg = load_config(tmp_path / "printed.toml", {})
    assert cfg.max_batch_events == 5 and cfg.http == "127.0.0.1:9123" and cfg.model is None


def test_printed_configuration_is_toml_for_any_string() -> None:
    odd = Path('dir "quoted"\\back\nline\ttab/letters.stk')
    printed = ServeConfig(dead_letter=odd).to_toml()
    assert tomllib.loads(printed)["dead_letter"] == str(odd)


def test_invalid_configuration_exits_2_before_serving() -> None:
    out = _serve("--max-queue-delay-ms", "soon", env={"STREAMTRK_LOG_FORMAT": "json"})
    assert out.returncode == 2
    assert "max_queue_delay_ms" in out.stderr and "--max-queue-delay-ms" in out.stderr
    assert out.stdout == ""


def test_tensorrt_without_a_gpu_or_torch_tensorrt_refuses_to_start() -> None:
    """A configuration error, found before the sockets bind: one line, exit status 2 (the
    daemon bound its sockets, then failed to load the model with a traceback, exit 1); and
    ``--print-config`` warns of it."""
    if torch_tensorrt_importable() and torch.cuda.is_available():
        pytest.skip("this machine could run engine=tensorrt")
    out = _serve(
        "--engine", "tensorrt", "--input", "tcp://127.0.0.1:*", "--output",
        "tcp://127.0.0.1:*", "--http", "127.0.0.1:0",
    )  # fmt: skip
    why = ("needs device=cuda", "torch_tensorrt cannot be imported")
    assert out.returncode == 2, out.stderr
    (line,) = out.stderr.splitlines()
    assert "invalid configuration: engine=tensorrt" in line and any(w in line for w in why)
    checked = _serve("--engine", "tensorrt", "--print-config")
    assert checked.returncode == 0 and 'engine = "tensorrt"' in checked.stdout
    assert "(serving would refuse it here)" in checked.stderr


def torch_tensorrt_importable() -> bool:
    from streamtrk.recon.engine import tensorrt_unavailable

    return tensorrt_unavailable() is None


def test_max_batch_hits_zero_means_the_devices_default() -> None:
    from dataclasses import replace

    from streamtrk.service.serve import CPU_BATCH_HITS, GPU_BATCH_HITS, batch_hits

    cfg = ServeConfig()
    assert cfg.max_batch_hits == 0
    assert (batch_hits(cfg, "cpu"), batch_hits(cfg, "cuda")) == (CPU_BATCH_HITS, GPU_BATCH_HITS)
    assert batch_hits(replace(cfg, max_batch_hits=5000), "cuda") == 5000
    with pytest.raises(ConfigError, match="max_batch_hits must be a non-negative integer"):
        ServeConfig(max_batch_hits=-1)


def test_the_budget_scale_reaches_the_served_chain() -> None:
    from streamtrk.recon.budget import Budget
    from streamtrk.service.served_model import load_served_model

    served = load_served_model(ServeConfig(device="cpu", engine="eager", budget_scale=2.5))
    assert served.reconstructor.budget == Budget().scaled(2.5)
    assert served.reconstructor.budget.edges_per_hit == 160.0


def test_the_beam_spot_is_a_finite_position_inside_the_beam_pipe(tmp_path: Path) -> None:
    path = tmp_path / "beam.toml"
    path.write_text("beam_spot_x_mm = 1.5\nbeam_spot_y_mm = -1\n")  # an integer is a number
    cfg = load_config(path, {"STREAMTRK_BEAM_SPOT_Y_MM": "-0.5"})
    assert (cfg.beam_spot_x_mm, cfg.beam_spot_y_mm) == (1.5, -0.5)
    for bad in ("nan", "inf"):
        with pytest.raises(ConfigError, match="beam_spot_x_mm must be a finite number"):
            load_config(None, {}, {"beam_spot_x_mm": bad})
    load_config(None, {}, {"beam_spot_x_mm": "12", "beam_spot_y_mm": "16"})  # 20 mm: accepted
    with pytest.raises(ConfigError, match=r"within 20 mm of the z axis \(beam_spot_x_mm from"):
        load_config(None, {}, {"beam_spot_x_mm": "12", "beam_spot_y_mm": "16.1"})


def test_a_config_file_may_start_with_a_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "bom.toml"  # as some editors save UTF-8
    path.write_bytes(b'\xef\xbb\xbfdevice = "cpu"\nmax_batch_events = 3\n')
    assert load_config(path, {}).max_batch_events == 3


def test_a_config_file_that_is_no_utf8_text_or_no_regular_file_is_named(tmp_path: Path) -> None:
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes(b'device = "cpu\xff"\n')
    with pytest.raises(ConfigError, match=r"latin1.toml is not UTF-8 text"):
        load_config(latin1, {})
    with pytest.raises(ConfigError, match=r"^cannot read config file .*gone.toml: No such file"):
        load_config(tmp_path / "gone.toml", {})
    folder = tmp_path / "folder.toml"
    folder.mkdir()
    with pytest.raises(ConfigError, match=r"^config file .*folder.toml is not a regular file$"):
        load_config(folder, {})
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)  # reading it would block until a writer came
    with pytest.raises(ConfigError, match=r"fifo.toml is not a regular file"):
        load_config(fifo, {})


def test_a_non_loopback_address_needs_curve_allow_insecure_or_connect() -> None:
    with pytest.raises(ConfigError, match=r"input tcp://0.0.0.0:5555 is not a loopback"):
        ServeConfig(input="tcp://0.0.0.0:5555")
    with pytest.raises(ConfigError, match=r"output tcp://0.0.0.0:5556 is not a loopback"):
        ServeConfig(output="tcp://0.0.0.0:5556")
    ServeConfig(input="tcp://0.0.0.0:5555", output="tcp://0.0.0.0:5556", allow_insecure=True)
    ServeConfig(input="tcp://10.0.0.5:5555", output="tcp://10.0.0.5:5556", connect=True)


@pytest.mark.parametrize(
    ("http", "connect", "clash"),
    [
        ("127.0.0.1:5555", False, "input"),
        ("0.0.0.0:5556", False, "output"),  # every address: 127.0.0.1:5556 among them
        ("localhost:5556", False, "output"),
        ("127.0.0.1:05555", False, "input"),
        ("127.0.0.1:5557", False, None),
        ("127.0.0.1:5555", True, None),  # connected: the peers' ports, not this daemon's
    ],
)
def test_http_takes_a_port_of_its_own(http: str, connect: bool, clash: str | None) -> None:
    """The HTTP server on the port the daemon binds for ZeroMQ: refused as the setting it
    is, where it failed at start-up as a port "already in use" by someone."""
    settings = {"input": "tcp://127.0.0.1:5555", "output": "tcp://127.0.0.1:5556", "http": http}

    def config() -> ServeConfig:
        return ServeConfig(**settings, connect=connect, allow_insecure=True)  # type: ignore[arg-type]

    if clash is None:
        assert config().http == http
    else:
        with pytest.raises(ConfigError, match=rf"^http and {clash} must be two addresses, got"):
            config()


@pytest.mark.parametrize(
    ("output", "one"),
    [
        ("tcp://127.0.0.1:5555", True),
        ("tcp://localhost:5555", True),
        ("tcp://LOCALHOST:5555", True),
        ("tcp://0.0.0.0:5555", True),  # binds every address: 127.0.0.1:5555 among them
        ("tcp://*:5555", True),
        ("tcp://[::]:5555", True),  # every address, IPv6 ones too
        ("tcp://127.0.0.1:05555", True),  # the same port number: libzmq reads 5555
        ("tcp://127.0.0.1:5556", False),
        ("tcp://127.0.0.2:5555", False),
        ("ipc:///tmp/x:5555", False),
    ],
)
def test_input_and_output_are_two_endpoints(output: str, one: bool) -> None:
    """One endpoint for both would fail at the second bind ('Address already in use'), or
    connect both sockets to one peer."""

    def config() -> ServeConfig:
        return ServeConfig(input="tcp://127.0.0.1:5555", output=output, allow_insecure=True)

    if one:
        with pytest.raises(ConfigError, match=r"input and output must be two endpoints, got"):
            config()
    else:
        config()


def test_one_ipc_path_for_both_sockets_is_refused() -> None:
    """Endpoints other than tcp are one where their strings are: one ipc path for input and
    output would fail at the second bind."""
    with pytest.raises(ConfigError, match=r"^input and output must be two endpoints, got"):
        ServeConfig(input="ipc:///tmp/streamtrk.sock", output="ipc:///tmp/streamtrk.sock")
    ServeConfig(input="ipc:///tmp/streamtrk.in", output="ipc:///tmp/streamtrk.out")


def test_ports_chosen_at_bind_are_two_endpoints() -> None:
    ServeConfig(input="tcp://127.0.0.1:*", output="tcp://127.0.0.1:*")
    ServeConfig(input="tcp://127.0.0.1:0", output="tcp://localhost:0")
    ServeConfig(input="tcp://127.0.0.1:00", output="tcp://127.0.0.1:00")


def test_allowed_keys_without_the_daemons_secret_are_refused(tmp_path: Path) -> None:
    """An allow-list alone would leave CURVE off, every client let in, nothing said."""
    with pytest.raises(ConfigError, match=r"curve_allowed_keys is set without curve_secret_key"):
        ServeConfig(curve_allowed_keys=tmp_path)
    with pytest.raises(ConfigError, match=r"without curve_secret_key") as e:
        load_config(None, {"STREAMTRK_CURVE_ALLOWED_KEYS": str(tmp_path)})
    assert e.value.settings == ("curve_allowed_keys", "curve_secret_key")
    assert str(e.value).endswith(  # where each came from
        "(curve_allowed_keys from environment variable STREAMTRK_CURVE_ALLOWED_KEYS, "
        "curve_secret_key from the default)"
    )


@pytest.mark.parametrize(
    ("endpoint", "loopback"),
    [
        ("tcp://127.0.0.1:5555", True),
        ("tcp://127.3.2.1:5555", True),
        ("tcp://localhost:5555", True),
        ("tcp://[::1]:5555", True),
        ("tcp://lo:5555", True),  # libzmq binds the loopback interface by name
        ("ipc:///tmp/streamtrk.in", True),
        ("tcp://*:5555", False),
        ("tcp://0.0.0.0:5555", False),
        ("tcp://[::]:5555", False),
        ("tcp://eth0:5555", False),
        ("tcp://10.0.0.5:5555", False),
        # libzmq binds what follows the last ';' (before it: a source address, ignored)
        ("tcp://127.0.0.1:0;0.0.0.0:5555", False),
        ("tcp://localhost:0;10.0.0.5:5555", False),
        ("tcp://10.0.0.5:0;127.0.0.1:5555", True),
    ],
)
def test_only_loopback_binds_go_without_curve(endpoint: str, loopback: bool) -> None:
    if loopback:
        ServeConfig(input=endpoint)
    else:
        with pytest.raises(ConfigError, match=r"is not a loopback address and CURVE is off"):
            ServeConfig(input=endpoint)


@pytest.mark.parametrize("endpoint", ["tcp://127.0.0.1:*", "tcp://*:5555", "tcp://[::1]:*"])
def test_a_daemon_that_connects_needs_a_host_and_port_there(endpoint: str) -> None:
    """libzmq's connect says only "Invalid argument" to a port or host of *."""
    other = "tcp://127.0.0.1:5560"
    for name, pair in (("input", (endpoint, other)), ("output", (other, endpoint))):
        with pytest.raises(ConfigError, match=rf"^{name} must name the host and port .*\(connect"):
            ServeConfig(input=pair[0], output=pair[1], connect=True)
        # binding: * is a free port or every host
        ServeConfig(input=pair[0], output=pair[1], allow_insecure=True)


def test_queue_capacity_may_equal_max_batch_events() -> None:
    ServeConfig(queue_capacity=8, max_batch_events=8)
    with pytest.raises(ConfigError, match="queue_capacity"):
        ServeConfig(queue_capacity=7, max_batch_events=8)


def test_http_address_strips_ipv6_brackets() -> None:
    assert ServeConfig(http="[::1]:10062").http_address == ("::1", 10062)


@pytest.mark.parametrize(
    ("name", "values"),
    [
        ("device", ("auto", "cpu", "cuda")),
        ("engine", ("auto", "eager", "compile", "tensorrt")),
        ("precision", ("fp32", "bf16", "fp16")),
        ("overload", ("block", "reject")),
        ("log_format", ("plain", "json")),
        ("log_level", ("debug", "info", "warning", "error")),
    ],
)
def test_every_documented_choice_is_accepted(name: str, values: tuple[str, ...]) -> None:
    for value in values:
        assert getattr(load_config(env={f"STREAMTRK_{name.upper()}": value}), name) == value
    with pytest.raises(ConfigError, match=rf"^{name} must be one of {', '.join(values)}, got"):
        load_config(env={f"STREAMTRK_{name.upper()}": "other"})


def test_a_choice_is_read_in_any_case(tmp_path: Path) -> None:
    """``STREAMTRK_LOG_LEVEL=DEBUG`` is what an operator types; it means debug."""
    path = tmp_path / "serve.toml"
    path.write_text('overload = "Reject"\n')
    cfg = load_config(path, {"STREAMTRK_LOG_LEVEL": "DEBUG"}, {"precision": "BF16"})
    assert (cfg.overload, cfg.log_level, cfg.precision) == ("reject", "debug", "bf16")


def test_a_configuration_cannot_be_changed_in_place() -> None:
    """The daemon swaps a reloaded configuration whole; one changed in place would bypass
    its checks."""
    cfg = ServeConfig()
    with pytest.raises(FrozenInstanceError):
        cfg.max_batch_events = 0  # type: ignore[misc]


def test_printed_configuration_says_each_setting_s_help_and_leaves_none_unset() -> None:
    printed = ServeConfig().to_toml()
    assert (
        "# longest wait for a batch to fill after its first event\n"
        "max_queue_delay_ms = 5.0\n"
        "# default per-event deadline from receipt (unset: no deadline)\n"
        "# deadline_ms = (unset)\n"
    ) in printed


def test_printed_configuration_keeps_false_and_zero() -> None:
    printed = tomllib.loads(ServeConfig().to_toml())
    assert printed["cuda_graphs"] is False and printed["connect"] is False
    assert printed["torch_threads"] == 0 and printed["max_batch_hits"] == 0
    assert "deadline_ms" not in printed  # None stays commented out


#: Each integer setting's least and largest values (ZeroMQ's and torch's C ints, int64 byte
#: and hit counts after scaling). With queue_capacity at its top and max_batch_events at 1,
#: the cross-check between them lets either reach both ends.
INT_RANGES = {
    "max_batch_events": (1, 2**31 - 1),
    "queue_capacity": (1, 2**31 - 1),
    "reply_capacity": (1, 2**31 - 1),
    "max_frames": (8, 2**31 - 1),  # a hits message's frames
    "max_hits": (1, 2**40),
    "max_message_bytes": (1, 2**62),
    "dead_letter_max_bytes": (1, 2**62),
    "sndhwm": (1, 2**31 - 1),  # ZeroMQ's 0, no limit, refused: memory stays bounded
    "rcvhwm": (1, 2**31 - 1),
    "linger_ms": (0, 2**31 - 1),
    "torch_threads": (0, 4096),
    "max_batch_hits": (0, 2**40),
}
_ROOM = {"max_batch_events": 1, "queue_capacity": 2**31 - 1}


@pytest.mark.parametrize(("name", "least", "top"), [(k, *v) for k, v in INT_RANGES.items()])
def test_each_integer_s_ends_are_accepted_and_one_past_them_refused(
    name: str, least: int, top: int
) -> None:
    assert {n for n in INT_RANGES} == {f.name for f in fields(ServeConfig) if f.type == "int"}
    # (the ignores: the field is the test's parameter; mypy checks the value against them all)
    for value in (least, top):
        assert getattr(ServeConfig(**{**_ROOM, name: value}), name) == value  # type: ignore[arg-type]
    why = "a positive integer" if least else "a non-negative integer"
    if name in MIN_SETTING_INT:
        why = rf"at least {least} \(a hits message's frames\)"
    with pytest.raises(ConfigError, match=rf"^{name} must be {why}, got {least - 1}$"):
        ServeConfig(**{**_ROOM, name: least - 1})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=rf"^{name} must be at most {top}, got {top + 1}$"):
        ServeConfig(**{**_ROOM, name: top + 1})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "bound"),
    [
        ("stall_timeout_s", " > 0"),
        ("budget_scale", " > 0"),
        ("deadline_ms", " > 0"),
        ("max_queue_delay_ms", " >= 0"),
        ("drain_timeout_s", " >= 0"),
        ("beam_spot_x_mm", ""),
        ("beam_spot_y_mm", ""),
    ],
)
@pytest.mark.parametrize("value", [math.inf, math.nan])
def test_durations_scales_and_positions_refuse_inf_and_nan(
    name: str, bound: str, value: float
) -> None:
    with pytest.raises(ConfigError, match=rf"^{name} must be a finite number{bound}, got {value}$"):
        ServeConfig(**{name: value})  # type: ignore[arg-type]  # the field is a parameter


def test_zero_delay_and_drain_are_allowed_zero_deadline_is_not() -> None:
    cfg = ServeConfig(max_queue_delay_ms=0.0, drain_timeout_s=0.0, deadline_ms=0.001)
    assert (cfg.max_queue_delay_ms, cfg.drain_timeout_s, cfg.deadline_ms) == (0.0, 0.0, 0.001)
    with pytest.raises(ConfigError, match=r"drain_timeout_s must be a finite number >= 0"):
        ServeConfig(drain_timeout_s=-1.0)
    with pytest.raises(ConfigError, match=r"deadline_ms must be a finite number > 0"):
        ServeConfig(deadline_ms=0.0)


def test_the_longest_drain_is_zeromqs_longest_linger() -> None:
    """The emitter's LINGER in a drain is what is left of it, in ms: a C int (a longer one
    killed the emit thread at the drain's end with an OverflowError, and the drain hung)."""
    assert ServeConfig(drain_timeout_s=2_147_483.0).drain_timeout_s == 2_147_483.0
    with pytest.raises(ConfigError, match=r"^drain_timeout_s must be at most 2147483 \(24 days"):
        ServeConfig(drain_timeout_s=2_147_484.0)


def test_a_threshold_lies_in_zero_to_one_without_one() -> None:
    assert ServeConfig(threshold=0.0).threshold == 0.0
    assert ServeConfig(threshold=0.999).threshold == 0.999
    for value in (-0.01, 1.0):  # the cut is "above": 1 passes no edge
        with pytest.raises(ConfigError) as e:
            ServeConfig(threshold=value)
        assert str(e.value) == (
            f"threshold must lie in [0, 1) (an edge passes above it: 1 passes none), got {value}"
        )


@pytest.mark.parametrize(
    ("endpoint", "why"),
    [
        ("udp://127.0.0.1:5555", "be a ZeroMQ endpoint such as tcp://127.0.0.1:5555"),
        ("ipc://", "be a ZeroMQ endpoint such as tcp://127.0.0.1:5555"),
        ("tcp://:5555", "be tcp://HOST:PORT, PORT a number (or * to bind a free one)"),
        # digits of other scripts: str.isdigit takes them, int refuses or reads another number
        ("tcp://127.0.0.1:\u00b2", "be tcp://HOST:PORT, PORT a number (or * to bind a free one)"),
        ("tcp://127.0.0.1:\u0663", "be tcp://HOST:PORT, PORT a number (or * to bind a free one)"),
        ("tcp://127.0.0.1:65536", "have a port of 0 to 65535 (or * to bind a free one)"),
    ],
)
def test_bad_endpoints_are_refused(endpoint: str, why: str) -> None:
    with pytest.raises(ConfigError) as e:
        ServeConfig(input=endpoint)
    assert str(e.value) == f"input must {why}, got {endpoint!r}"


def test_endpoint_and_http_port_65535_accepted_65536_refused() -> None:
    ServeConfig(input="tcp://127.0.0.1:65535", http="127.0.0.2:65535")  # two hosts
    with pytest.raises(ConfigError) as e:
        ServeConfig(http="127.0.0.1:65536")
    assert str(e.value) == "http must have a port of 0 to 65535, got '127.0.0.1:65536'"


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("on", True),
        ("TRUE", True),
        ("yes", True),
        ("1", True),
        (" Off ", False),
        ("no", False),
        ("false", False),
        ("0", False),
    ],
)
def test_boolean_variables_take_the_usual_spellings(text: str, value: bool) -> None:
    assert load_config(env={"STREAMTRK_CONNECT": text}).connect is value


@pytest.mark.parametrize(
    ("var", "text"),
    [
        ("STREAMTRK_CONNECT", ""),
        ("STREAMTRK_MAX_BATCH_EVENTS", "4.5"),
        ("STREAMTRK_MAX_BATCH_EVENTS", "1e3"),
    ],
)
def test_variables_that_are_not_of_the_type_are_refused(var: str, text: str) -> None:
    with pytest.raises(ConfigError, match=var):
        load_config(env={var: text})


def test_an_empty_variable_or_flag_unsets_an_optional_setting(tmp_path: Path) -> None:
    path = tmp_path / "serve.toml"
    path.write_text('deadline_ms = 20\nthreshold = 0.5\ndead_letter = "dl.stk"\n')
    cfg = load_config(path, {"STREAMTRK_DEADLINE_MS": "", "STREAMTRK_DEAD_LETTER": ""})
    assert (cfg.deadline_ms, cfg.threshold, cfg.dead_letter) == (None, 0.5, None)
    assert load_config(path, {}, {"threshold": ""}).threshold is None
    with pytest.raises(ConfigError, match=r"^max_frames must be an integer, got ''"):
        load_config(path, {"STREAMTRK_MAX_FRAMES": ""})  # not optional: no value to unset


def test_paths_are_paths_from_every_source(tmp_path: Path) -> None:
    path = tmp_path / "serve.toml"
    path.write_text('dead_letter = "file.stk"\n')
    cfg = load_config(path, {"STREAMTRK_CURVE_SECRET_KEY": "d.key_secret"}, {"model": "m"})
    assert (cfg.dead_letter, cfg.curve_secret_key, cfg.model) == (
        Path("file.stk"),
        Path("d.key_secret"),
        Path("m"),
    )
    assert all(isinstance(p, Path) for p in (cfg.dead_letter, cfg.curve_secret_key, cfg.model))


def test_a_false_or_zero_flag_overrides_the_environment() -> None:
    env = {"STREAMTRK_CONNECT": "yes", "STREAMTRK_ALLOW_INSECURE": "true"}
    cfg = load_config(env=env, flags={"connect": False, "allow_insecure": False})
    assert cfg.connect is False and cfg.allow_insecure is False


def test_a_cross_check_names_where_each_value_came_from() -> None:
    with pytest.raises(ConfigError) as e:
        load_config(env={"STREAMTRK_MAX_BATCH_EVENTS": "100"})
    assert (
        "(queue_capacity from the default, max_batch_events from environment variable "
        "STREAMTRK_MAX_BATCH_EVENTS)"
    ) in str(e.value)


@pytest.mark.parametrize(
    ("env", "flags", "settings", "message"),
    [
        (
            {"STREAMTRK_INPUT": "tcp://*:5555"},
            {"connect": True},
            ("input", "connect"),
            ["input must name the host and port to connect to (* and port 0 are for binding) "
             "(connect = true) (input from environment variable STREAMTRK_INPUT, connect from "
             "flag --connect)"],
        ),
        (  # libzmq takes a connect to port 0 and never connects
            {},
            {"connect": True, "output": "tcp://127.0.0.1:0"},
            ("output", "connect"),
            ["output must name the host and port to connect to (* and port 0 are for binding) "
             "(connect = true) (output from flag --output, connect from flag --connect)"],
        ),
        (
            {},
            {"output": "tcp://0.0.0.0:5556"},
            ("output", "curve_secret_key", "allow_insecure"),
            ["output tcp://0.0.0.0:5556 is not a loopback address and CURVE is off",
             '. Set curve_secret_key and curve_allowed_keys (docs/operations.md, "Keys"), or '
             "allow_insecure = true on a trusted network (output from flag --output, "
             "curve_secret_key from the default, allow_insecure from the default)"],
        ),
        (
            {},
            {"beam_spot_x_mm": "12", "beam_spot_y_mm": "16.1"},
            ("beam_spot_x_mm", "beam_spot_y_mm"),
            ["the beam spot (12.0, 16.1) mm must lie within 20 mm of the z axis (beam_spot_x_mm "
             "from flag --beam-spot-x-mm, beam_spot_y_mm from flag --beam-spot-y-mm)"],
        ),
        (
            {"STREAMTRK_ENGINE": "tensorrt"},
            {"device": "cpu"},
            ("engine", "device"),
            ["engine tensorrt needs device cuda (or auto) (engine from environment variable "
             "STREAMTRK_ENGINE, device from flag --device)"],
        ),
        (
            {},
            {"max_frames": "0"},
            ("max_frames",),
            ["max_frames must be a positive integer, got 0 (from flag --max-frames)"],
        ),
        (
            {"STREAMTRK_MAX_FRAMES": "many"},
            {},
            ("max_frames",),
            ["max_frames must be an integer, got 'many' (from environment variable "
             "STREAMTRK_MAX_FRAMES)"],
        ),
        (  # the three closest settings, no more
            {},
            {"max_bytes": "5"},
            ("max_bytes",),
            ["unknown setting 'max_bytes' in flag --max-bytes (did you mean max_hits, "
             "max_message_bytes, max_batch_events?)"],
        ),
        ({}, {"zzz": "1"}, ("zzz",), ["unknown setting 'zzz' in flag --zzz"]),
        (  # a caller's flag of another type than a string is refused as well
            {},
            {"dead_letter": 5},
            ("dead_letter",),
            ["dead_letter ", ", got 5 (from flag --dead-letter)"],
        ),
    ],
)  # fmt: skip
def test_an_error_names_its_settings_and_where_each_came_from(
    env: dict[str, str], flags: dict[str, object], settings: tuple[str, ...], message: list[str]
) -> None:
    """The message, whole (``message``: its parts, in order, with anything between)."""
    with pytest.raises(ConfigError) as e:
        load_config(None, env, flags)
    assert e.value.settings == settings
    assert re.fullmatch(".*".join(map(re.escape, message)), str(e.value), re.S), str(e.value)


def test_flags_help_and_boolean_flags() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    help_text = parser._option_string_actions["--deadline-ms"].help
    assert help_text is not None
    assert help_text.endswith("[STREAMTRK_DEADLINE_MS; default unset]")
    connect_help = parser._option_string_actions["--connect"].help
    assert connect_help is not None and connect_help.endswith("[STREAMTRK_CONNECT; default False]")
    assert parser.parse_args(["--connect"]).connect is True
    assert parser.parse_args(["--no-connect"]).connect is False
    assert parser.parse_args([]).connect is None


def test_an_override_by_a_negated_flag_names_that_flag(tmp_path: Path) -> None:
    """``--no-connect`` over ``connect = true`` in the file: the warning names the flag the
    operator typed, not ``--connect`` (which would set it true)."""
    config = tmp_path / "c.toml"
    config.write_text("connect = true\nallow_insecure = false\n")
    flags = {"connect": False, "allow_insecure": True}
    assert shadowed(config, {}, flags) == [
        f"config file {config}, line 1: connect = true is overridden by flag --no-connect: "
        "connect = false",
        f"config file {config}, line 2: allow_insecure = false is overridden by flag "
        "--allow-insecure: allow_insecure = true",
    ]


def test_systemds_copy_of_a_credential_is_no_override_worth_a_warning(tmp_path: Path) -> None:
    """The unit points STREAMTRK_CURVE_SECRET_KEY at systemd's copy of the file the TOML
    names (``LoadCredential``): warned at every start and reload, operators would learn to
    ignore the warning. Another file, or no credentials directory, is still said."""
    config = tmp_path / "c.toml"
    config.write_text('curve_secret_key = "/etc/streamtrk/keys/server.key_secret"\n')
    env = {
        "CREDENTIALS_DIRECTORY": "/run/credentials/streamtrk.service",
        "STREAMTRK_CURVE_SECRET_KEY": "/run/credentials/streamtrk.service/server.key_secret",
    }
    assert shadowed(config, env, {}) == []
    other = env | {"STREAMTRK_CURVE_SECRET_KEY": "/run/credentials/streamtrk.service/x.key_secret"}
    assert len(shadowed(config, other, {})) == 1
    elsewhere = env | {"STREAMTRK_CURVE_SECRET_KEY": "/home/old/server.key_secret"}  # same name
    assert len(shadowed(config, elsewhere, {})) == 1
    assert (
        len(shadowed(config, {k: v for k, v in env.items() if k != "CREDENTIALS_DIRECTORY"}, {}))
        == 1
    )


def test_allowed_keys_with_the_daemons_secret_are_accepted(tmp_path: Path) -> None:
    """The refusal of an allow-list alone is not of CURVE's documented setup: the daemon's
    certificate and the allow-list, from the file or the environment."""
    secret = tmp_path / "server.key_secret"
    cfg = ServeConfig(curve_secret_key=secret, curve_allowed_keys=tmp_path)
    assert (cfg.curve_secret_key, cfg.curve_allowed_keys) == (secret, tmp_path)
    env = {"STREAMTRK_CURVE_SECRET_KEY": str(secret), "STREAMTRK_CURVE_ALLOWED_KEYS": str(tmp_path)}
    assert load_config(None, env).curve_allowed_keys == tmp_path


def test_every_numeric_flag_takes_a_value_with_a_minus(tmp_path: Path) -> None:
    """``--beam-spot-x-mm -1.5``: the value, not an unknown option (argparse's reading of a
    leading minus), for the float settings as for the integers."""
    numeric = {f"--{f.name.replace('_', '-')}" for f in fields(ServeConfig)
               if f.type.replace(" | None", "") in ("int", "float")}  # fmt: skip
    assert {"--beam-spot-x-mm", "--threshold", "--max-queue-delay-ms"} <= numeric
    assert number_flags() == numeric


def test_source_of_names_where_a_setting_came_from(tmp_path: Path) -> None:
    """A refusal at start-up says where its setting came from: flag over variable over
    file (with its line) over the default."""
    p = tmp_path / "serve.toml"
    p.write_text('device = "cpu"\nmodel = "m"\n')
    assert source_of("model", p, {}, {}) == f"config file {p}, line 2"
    env = {"STREAMTRK_MODEL": "x"}
    assert source_of("model", p, env, {}) == "environment variable STREAMTRK_MODEL"
    assert source_of("model", p, env, {"model": "y"}) == "flag --model"
    assert source_of("engine", p, env, {}) == "the default"
