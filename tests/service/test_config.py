"""Configuration: precedence (defaults < file < environment < flags) and invalid settings."""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from live_daemon import clean_env

from streamtrk.service.config import (
    ConfigError,
    ServeConfig,
    add_arguments,
    load_config,
    log_format_asked,
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
        ('output = "tcp://localhost:notaport"', {}, r"output must be tcp://HOST:PORT"),
        ('output = "tcp://127.0.0.1:70000"', {}, r"output must be tcp://HOST:PORT"),
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
        ('model = ""', {}, r"model must be a path \(leave it out for the default\)"),
        ("", {"STREAMTRK_SNDHWM": "4294967296"}, r"sndhwm must be at most 2147483647"),
        # A TOML value must have the setting's type: a string is no integer, and the
        # message says why '4' is not one.
        (
            'max_batch_events = "4"',
            {},
            r"max_batch_events must be an integer, unquoted in TOML, got '4' "
            r"\(from config file .*serve.toml\)",
        ),
        ("max_batch_events = 4.0", {}, r"max_batch_events must be an integer, got 4.0"),
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
        (  # one setting in both spellings: the later one no longer wins unseen
            "max_batch_events = 3\nmax-batch-events = 4",
            {},
            r"max_batch_events is given twice in config file .*serve.toml, "
            r"as 'max_batch_events' and 'max-batch-events'",
        ),
    ],
)
def test_invalid_settings_are_named(tmp_path: Path, toml: str, env: dict, match: str) -> None:
    path = tmp_path / "serve.toml"
    path.write_text(toml + "\n")
    with pytest.raises(ConfigError, match=match):
        load_config(path, env)


def test_unknown_streamtrk_variables_are_named_with_close_settings() -> None:
    env = {"STREAMTRK_MAX_BATCH_EVENT": "3", "STREAMTRK_MODEL": "m", "STREAMTRK_SHARED": "s"}
    [warning] = unknown_variables(env)
    assert warning.startswith("environment variable STREAMTRK_MAX_BATCH_EVENT is not a setting")
    assert "did you mean STREAMTRK_MAX_BATCH_EVENTS" in warning
    out = _serve("--print-config", env={"STREAMTRK_DEADLINE": "5"})
    assert out.returncode == 0
    assert "STREAMTRK_DEADLINE is not a setting and is ignored" in out.stderr
    assert "STREAMTRK_DEADLINE_MS" in out.stderr


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


def test_printed_configuration_keeps_false_and_zero() -> None:
    printed = tomllib.loads(ServeConfig().to_toml())
    assert printed["cuda_graphs"] is False and printed["connect"] is False
    assert printed["torch_threads"] == 0 and printed["max_batch_hits"] == 0
    assert "deadline_ms" not in printed  # None stays commented out


@pytest.mark.parametrize(
    ("name", "top"), [("sndhwm", 2**31 - 1), ("torch_threads", 4096), ("max_hits", 2**40)]
)
def test_the_largest_value_is_accepted_and_one_more_refused(name: str, top: int) -> None:
    # (the ignores: the field is the test's parameter; mypy checks the value against them all)
    assert getattr(ServeConfig(**{name: top}), name) == top  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=rf"{name} must be at most {top}"):
        ServeConfig(**{name: top + 1})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name",
    ["stall_timeout_s", "budget_scale", "deadline_ms", "max_queue_delay_ms", "drain_timeout_s"],
)
@pytest.mark.parametrize("value", [math.inf, math.nan])
def test_durations_and_scales_refuse_inf_and_nan(name: str, value: float) -> None:
    with pytest.raises(ConfigError, match=rf"{name} must be a finite number"):
        ServeConfig(**{name: value})  # type: ignore[arg-type]  # the field is a parameter


def test_zero_delay_and_drain_are_allowed_zero_deadline_is_not() -> None:
    cfg = ServeConfig(max_queue_delay_ms=0.0, drain_timeout_s=0.0)
    assert (cfg.max_queue_delay_ms, cfg.drain_timeout_s) == (0.0, 0.0)
    with pytest.raises(ConfigError, match=r"drain_timeout_s must be a finite number >= 0"):
        ServeConfig(drain_timeout_s=-1.0)
    with pytest.raises(ConfigError, match=r"deadline_ms must be a finite number > 0"):
        ServeConfig(deadline_ms=0.0)


def test_a_threshold_lies_in_zero_to_one_without_one() -> None:
    assert ServeConfig(threshold=0.0).threshold == 0.0
    assert ServeConfig(threshold=0.999).threshold == 0.999
    for value in (-0.01, 1.0):  # the cut is "above": 1 passes no edge
        with pytest.raises(ConfigError, match=r"threshold must lie in \[0, 1\)"):
            ServeConfig(threshold=value)


@pytest.mark.parametrize(
    "endpoint", ["udp://127.0.0.1:5555", "ipc://", "tcp://:5555", "tcp://127.0.0.1:65536"]
)
def test_bad_endpoints_are_refused(endpoint: str) -> None:
    with pytest.raises(ConfigError, match="input must be"):
        ServeConfig(input=endpoint)


def test_endpoint_and_http_port_65535_accepted_65536_refused() -> None:
    ServeConfig(input="tcp://127.0.0.1:65535", http="127.0.0.1:65535")
    with pytest.raises(ConfigError, match="http must be HOST:PORT"):
        ServeConfig(http="127.0.0.1:65536")


@pytest.mark.parametrize(
    ("text", "value"), [("on", True), ("TRUE", True), (" Off ", False), ("1", True), ("no", False)]
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


def test_flags_help_and_boolean_flags() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    help_text = parser._option_string_actions["--deadline-ms"].help
    assert help_text is not None
    assert help_text.endswith("[STREAMTRK_DEADLINE_MS; default unset]")
    assert parser.parse_args(["--connect"]).connect is True
    assert parser.parse_args(["--no-connect"]).connect is False
    assert parser.parse_args([]).connect is None
