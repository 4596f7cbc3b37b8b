"""``streamtrk farm``'s refusals of its settings (the forwarders: tests/test_farm.py), and
those it shares with the other clients, replay and record."""

from pathlib import Path

import pytest
import zmq

from streamtrk.cli import main


@pytest.mark.parametrize(("flag", "value"), [("--hwm", "0"), ("--hwm", "-1"), ("--max-hits", "0")])
def test_a_forwarder_refuses_limits_below_one(capsys, flag: str, value: str) -> None:
    args = ["farm", "distributor", "--from", "tcp://127.0.0.1:*", "--to", "tcp://127.0.0.1:*"]
    assert main([*args, flag, value]) == 2
    assert f"{flag} must be at least 1, got {value}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("http", "why"),
    [
        ("10062", "must be HOST:PORT"),
        ("127.0.0.1:http", "must be HOST:PORT"),
        ("127.0.0.1:70000", "must have a port of 0 to 65535"),
    ],
)
def test_a_forwarder_refuses_an_http_address_that_is_not_host_port(
    capsys, http: str, why: str
) -> None:
    args = ["farm", "collector", "--from", "tcp://127.0.0.1:*", "--to", "tcp://127.0.0.1:*"]
    assert main([*args, "--http", http]) == 2
    assert f"--http {http!r} {why}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flag", "value", "most"),
    [
        ("--hwm", "3000000000", "2147483647"),
        ("--max-hits", "100000000000000000000", "1099511627776"),
    ],
)
def test_a_forwarder_refuses_limits_past_what_its_sockets_take(
    capsys, flag: str, value: str, most: str
) -> None:
    """ZeroMQ's high-water marks are C ints, its frame limit an int64 (8 bytes a hit): a
    larger value is one error line (as the daemon's config says), not an OverflowError's
    traceback from setsockopt."""
    args = ["farm", "distributor", "--from", "tcp://127.0.0.1:*", "--to", "tcp://127.0.0.1:*"]
    assert main([*args, flag, value]) == 2
    assert f"{flag} must be at most {most}, got {value}" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["farm", "replay", "record"])
@pytest.mark.parametrize("flag", ["--curve-key", "--curve-server-key"])
def test_half_a_curve_client_pair_is_a_usage_error(tmp_path, capsys, command, flag) -> None:
    """Exit status 2, as for the server pair (it was 1: the socket's own refusal)."""
    args = {
        "farm": ["farm", "distributor", "--from", "tcp://127.0.0.1:*", "--to", "tcp://127.0.0.1:*"],
        "replay": ["replay", str(tmp_path / "absent.stk")],
        "record": ["record", "--from", "tcp://127.0.0.1:5", "-o", str(tmp_path / "r.stk")],
    }[command]
    assert main([*args, flag, str(tmp_path / "k")]) == 2
    assert "--curve-key (this client's secret certificate) and --curve-server-key (the " in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize("side", ["--from", "--to"])
def test_a_port_in_use_is_said_to_be_the_sides(capsys, side: str) -> None:
    """Which of the two addresses could not be bound, by its flag (libzmq's error named
    neither: "Address already in use (addr='tcp://...')")."""
    ctx = zmq.Context()
    taken = ctx.socket(zmq.PULL)
    try:
        port = taken.bind_to_random_port("tcp://127.0.0.1")
        ends = {"--from": "tcp://127.0.0.1:*", "--to": "tcp://127.0.0.1:*"}
        ends[side] = f"tcp://127.0.0.1:{port}"
        args = ["farm", "distributor", "--from", ends["--from"], "--to", ends["--to"]]
        assert main(args) == 1
        err = capsys.readouterr().err
        assert f"cannot bind {side} tcp://127.0.0.1:{port}: Address already in use" in err
    finally:
        taken.close(linger=0)
        ctx.term()


@pytest.mark.parametrize(
    ("flag", "value"), [("--hwm", "2147483647"), ("--max-hits", "1099511627776")]
)
def test_a_forwarder_takes_limits_up_to_what_its_sockets_take(capsys, flag, value) -> None:
    """The bounds themselves are taken (the daemon's settings take them): the command is
    refused here only for its --to, checked after the limits."""
    args = ["farm", "distributor", "--from", "tcp://127.0.0.1:*", "--to", "nope"]
    assert main([*args, flag, value]) == 2
    err = capsys.readouterr().err
    assert "must be at most" not in err and "--to must be a ZeroMQ endpoint" in err


def test_a_forwarder_is_given_the_settings_of_its_command_line(monkeypatch) -> None:
    got: dict = {}
    monkeypatch.setattr("streamtrk.farm.forward", lambda *a, **kw: got.update(kw, role=a))
    ends = ["--from", "tcp://127.0.0.1:*", "--to", "tcp://0.0.0.0:*"]
    flags = ["--hwm", "7", "--max-hits", "123", "--allow-insecure", "--http", "127.0.0.1:0"]
    assert main(["farm", "collector", *ends, *flags]) == 0
    assert got["role"] == ("collector", "tcp://127.0.0.1:*", "tcp://0.0.0.0:*")
    assert (got["hwm"], got["max_hits"], got["allow_insecure"]) == (7, 123, True)
    assert got["http"] == "127.0.0.1:0"


def test_a_forwarder_s_defaults_are_those_its_help_gives(monkeypatch) -> None:
    """Without --hwm and --max-hits a forwarder runs with the high-water marks of 2 messages
    and the daemons' 1000000 hits its --help names, CURVE off and no HTTP."""
    got: dict = {}
    monkeypatch.setattr("streamtrk.farm.forward", lambda *a, **kw: got.update(kw, role=a))
    ends = ["--from", "tcp://127.0.0.1:*", "--to", "tcp://127.0.0.1:*"]
    assert main(["farm", "distributor", *ends]) == 0
    assert (got["hwm"], got["max_hits"]) == (2, 1_000_000)
    assert (got["allow_insecure"], got["http"], got["curve_key"], got["server_key"]) == (
        False, None, None, None
    )  # fmt: skip


def test_a_forwarder_is_given_its_curve_files(monkeypatch, tmp_path: Path) -> None:
    """The four CURVE paths reach the forwarder, each in its own place (client pair facing
    the daemons, server key and allowed keys facing producers or consumers)."""
    got: dict = {}
    monkeypatch.setattr("streamtrk.farm.forward", lambda *a, **kw: got.update(kw))
    ck, sk, own, allowed = (tmp_path / n for n in ("c.key_secret", "d.key", "s.key_secret", "ok"))
    ends = ["--from", "tcp://127.0.0.1:*", "--to", "tcp://127.0.0.1:*"]
    curve = ["--curve-key", str(ck), "--curve-server-key", str(sk), "--server-key", str(own),
             "--allowed-keys", str(allowed)]  # fmt: skip
    assert main(["farm", "collector", *ends, *curve]) == 0
    assert (got["curve_key"], got["curve_server_key"]) == (ck, sk)
    assert (got["server_key"], got["allowed_keys"]) == (own, allowed)
