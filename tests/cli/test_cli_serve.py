"""``streamtrk serve``'s start-up errors (the daemon itself: tests/service)."""

import json
import signal

import pytest
from cli_helpers import _run

from streamtrk.cli import main
from streamtrk.recon.device import cuda_unavailable


def test_print_config_warns_of_curve_files_serving_would_stop_on(tmp_path):
    out = _run("serve", "--curve-secret-key", str(tmp_path / "none.key_secret"), "--print-config")
    assert out.returncode == 0 and "curve_secret_key" in out.stdout
    assert out.stderr == (
        f"streamtrk serve: warning: cannot read the CURVE certificate {tmp_path}/none.key_secret:"
        " no such file (serving would stop at start-up here)\n"
    )


def test_cuda_without_cuda_is_one_line_and_exit_2(tmp_path):
    if cuda_unavailable() is None:
        pytest.skip("this machine can run device=cuda")
    main(["simulate", "--events", "1", "--mu", "2", "-q", "-o", str(tmp_path / "e.stk")])
    for args, who in (
        (["evaluate", str(tmp_path / "e.stk"), "--device", "cuda"], "streamtrk evaluate: error"),
        (["serve", "--device", "cuda"], "streamtrk serve: invalid configuration"),
    ):
        out = _run(*args)
        assert out.returncode == 2 and out.stdout == ""
        assert out.stderr.startswith(f"{who}: device cuda: {cuda_unavailable()}")
        assert args[0] == "evaluate" or out.stderr.endswith(" (from flag --device)\n")
        assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    # Printing the configuration checks it, not this host: a GPU node's prints here too.
    out = _run("serve", "--device", "cuda", "--print-config")
    assert out.returncode == 0 and 'device = "cuda"' in out.stdout
    assert "warning: device cuda: " in out.stderr and "serving would refuse it here" in out.stderr


def test_a_model_path_without_a_model_is_a_configuration_error(tmp_path):
    """Refused before the sockets bind (exit 2, as a bad setting), naming the shipped model
    (a typo is likelier than a model still to train); --print-config warns of it."""
    missing = tmp_path / "modle"
    out = _run("serve", "--model", str(missing))  # the default ports: refused before binding
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith(
        f"streamtrk serve: invalid configuration: model: no model at {missing}"
    )
    assert "check the path (the shipped model is " in out.stderr
    assert out.stderr.endswith(" (from flag --model)\n")
    out = _run("serve", "--model", str(missing), "--print-config")
    assert out.returncode == 0 and "warning: model: no model at " in out.stderr


def test_serve_s_start_up_error_is_a_json_line_where_json_logs_are_asked_for(tmp_path):
    """A log shipper reading the daemon's JSON lines gets its start-up failure as one, asked
    for by flag, variable or the file itself; plain text otherwise."""
    bad = tmp_path / "bad.toml"
    bad.write_text('log_format = "json"\nmax_batch_events = 0\n')
    for args, env in (
        (["--log-format", "json", "--max-batch-events", "0"], None),
        (["--max-batch-events", "0"], {"STREAMTRK_LOG_FORMAT": "json"}),
        (["--config", str(bad)], None),
    ):
        out = _run("serve", *args, env=env)
        assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
        line = json.loads(out.stderr)
        assert line["level"] == "error" and line["logger"] == "streamtrk.serve"
        assert line["message"].startswith("invalid configuration: max_batch_events must be")
    out = _run("serve", "--max-batch-events", "0")
    assert out.returncode == 2
    assert out.stderr.startswith("streamtrk serve: invalid configuration: max_batch_events")


def test_a_refusal_of_this_host_is_a_json_line_where_json_logs_are_asked_for(tmp_path) -> None:
    """A model path without a model (refused after the configuration loads, by
    refused_here) is reported in the log format the configuration asks for, as a
    configuration error is: a log shipper reads one JSON line."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('log_format = "json"\n')
    for args, env in (
        (["--log-format", "json"], None),
        ([], {"STREAMTRK_LOG_FORMAT": "json"}),
        (["--config", str(cfg)], None),
    ):
        out = _run("serve", "--model", str(tmp_path / "modle"), *args, env=env)
        assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
        line = json.loads(out.stderr)
        assert line["level"] == "error" and line["logger"] == "streamtrk.serve"
        assert line["message"].startswith("invalid configuration: model: no model at ")
        assert line["message"].endswith(" (from flag --model)")


def test_print_config_warns_of_an_allowed_keys_directory_serving_would_stop_on(tmp_path):
    assert main(["keys", str(tmp_path), "server"]) == 0
    missing = tmp_path / "none"
    secret = str(tmp_path / "server.key_secret")
    out = _run("serve", "--curve-secret-key", secret, "--curve-allowed-keys", str(missing),
               "--print-config")  # fmt: skip
    assert out.returncode == 0 and "curve_allowed_keys" in out.stdout
    assert out.stderr == (
        f"streamtrk serve: warning: the allowed CURVE keys directory {missing} does not exist"
        " (serving would stop at start-up here)\n"
    )


def test_a_refusal_of_this_host_names_the_variables_that_are_not_settings_first(tmp_path):
    """As a refused configuration does: the mistyped variable may be what was meant to mend
    the refused setting."""
    out = _run("serve", "--model", str(tmp_path / "modle"), env={"STREAMTRK_MODLE": "x"})
    assert out.returncode == 2, out.stderr
    warning, error = out.stderr.splitlines()
    assert warning.startswith(
        "streamtrk serve: warning: environment variable STREAMTRK_MODLE is not a setting"
    )
    assert error.startswith("streamtrk serve: invalid configuration: model: no model at ")


def test_json_logs_carry_the_warnings_before_a_refusal_of_this_host(tmp_path) -> None:
    """Where JSON logs are asked for, the variables that are not settings are JSON warning
    lines too, before the refusal's error line (a log shipper reads every line)."""
    out = _run("serve", "--model", str(tmp_path / "modle"), "--log-format", "json",
               env={"STREAMTRK_MODLE": "x"})  # fmt: skip
    assert out.returncode == 2, out.stderr
    warning, error = (json.loads(line) for line in out.stderr.splitlines())
    assert (warning["level"], warning["logger"]) == ("warning", "streamtrk.serve")
    assert warning["message"].startswith("environment variable STREAMTRK_MODLE is not a setting")
    assert error["level"] == "error"
    assert error["message"].startswith("invalid configuration: model: no model at ")


def test_serve_in_process_gives_the_signal_handlers_back(capsys):
    """``main`` run in-process (a --print-config, a refused start) leaves SIGINT, SIGTERM
    and SIGHUP as it found them: not set to a stop flag nothing reads (Ctrl-C ignored)."""
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    before = {sig: signal.getsignal(sig) for sig in signals}
    assert main(["serve", "--print-config"]) == 0
    assert main(["serve", "--max-batch-events", "0"]) == 2
    assert {sig: signal.getsignal(sig) for sig in signals} == before
    capsys.readouterr()
