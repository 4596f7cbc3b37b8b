"""``streamtrk replay``'s errors without a daemon (with one: tests/test_replay.py)."""

from cli_helpers import _run

from streamtrk.cli import main


def test_replay_to_nobody_says_no_reply_came_and_where_it_went(tmp_path):
    main(["simulate", "--events", "2", "--mu", "2", "-q", "-o", str(tmp_path / "e.stk")])
    to, from_ = "tcp://127.0.0.1:1", "tcp://127.0.0.1:2"  # nothing listens on ports 1 and 2
    out = _run("replay", str(tmp_path / "e.stk"), "--to", to, "--from", from_, "--timeout", "1")
    assert out.returncode == 1
    assert f"no reply at all: 2 events were sent to {to} and nothing came back from {from_}" in (
        out.stderr
    )


def test_replay_refuses_an_output_it_cannot_write_before_it_sends(tmp_path):
    main(["simulate", "--events", "2", "--mu", "2", "-q", "-o", str(tmp_path / "e.stk")])
    (tmp_path / "report.json").mkdir()
    to, from_ = "tcp://127.0.0.1:1", "tcp://127.0.0.1:2"
    args = [
        "--to",
        to,
        "--from",
        from_,
        "--timeout",
        "1",
        "--report",
        str(tmp_path / "report.json"),
    ]
    out = _run("replay", str(tmp_path / "e.stk"), *args)
    assert out.returncode == 1
    assert (
        out.stderr
        == f"streamtrk replay: error: {tmp_path / 'report.json'} is a folder, not a file\n"
    )
