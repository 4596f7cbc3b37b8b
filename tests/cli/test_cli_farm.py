"""``streamtrk farm``'s refusals of its settings (the forwarders: tests/service/test_farm.py)."""

import pytest

from streamtrk.cli import main


@pytest.mark.parametrize(("flag", "value"), [("--hwm", "0"), ("--hwm", "-1"), ("--max-hits", "0")])
def test_a_forwarder_refuses_limits_below_one(capsys, flag: str, value: str) -> None:
    args = ["farm", "distributor", "--from", "tcp://127.0.0.1:*", "--to", "tcp://127.0.0.1:*"]
    assert main([*args, flag, value]) == 1
    assert f"{flag} must be at least 1, got {value}" in capsys.readouterr().err


@pytest.mark.parametrize("http", ["10062", "127.0.0.1:http", "127.0.0.1:70000"])
def test_a_forwarder_refuses_an_http_address_that_is_not_host_port(capsys, http: str) -> None:
    args = ["farm", "collector", "--from", "tcp://127.0.0.1:*", "--to", "tcp://127.0.0.1:*"]
    assert main([*args, "--http", http]) == 1
    assert f"--http {http!r} must be HOST:PORT" in capsys.readouterr().err
