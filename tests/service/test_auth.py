"""The ZAP authenticator's credentials: the allowed-keys directory, and its log lines
about refused clients, which a peer repeating handshakes cannot turn into a flood."""

from __future__ import annotations

import logging
import os
import threading
import time
import types
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.auth

import streamtrk.service.auth as auth
import streamtrk.service.logs as logs
from streamtrk.service.auth import (
    KEY_LOG_S,
    LINE_LOG_S,
    LINES_BURST,
    REREAD_S,
    AllowedKeys,
    start_authenticator,
)
from streamtrk.wire.curve import allowed_keys


def _key() -> bytes:
    return zmq.curve_keypair()[0]


def _refusals(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith("refused a CURVE client")]


@pytest.fixture
def allowed(tmp_path: Path) -> tuple[AllowedKeys, bytes]:
    """Keys allowed from a directory holding alice's certificate, and alice's key."""
    public, _ = zmq.auth.create_certificates(tmp_path, "alice")
    return AllowedKeys(tmp_path), zmq.auth.load_certificate(public)[0]


def test_a_key_in_the_directory_is_admitted_and_others_named(allowed, caplog) -> None:
    keys, alice = allowed
    mallory = _key()
    assert keys.callback("*", alice) and not keys.callback("*", mallory)
    [line] = _refusals(caplog)
    assert line.fields["client_key"] == mallory.decode()  # type: ignore[attr-defined]


def test_each_stale_client_is_named(allowed, caplog) -> None:
    """libzmq clients do not try a refused key again: after a rotation, each stale client is
    one refusal, and each is named, however close together they come."""
    keys, _ = allowed
    stale = [_key() for _ in range(LINES_BURST)]
    for key in stale:
        assert not keys.callback("*", key)
    named = [(r.fields["client_key"], r.fields["unlogged"]) for r in _refusals(caplog)]  # type: ignore[attr-defined]
    assert named == [(key.decode(), 0) for key in stale]


def test_a_key_refused_again_is_named_once_a_while(allowed, caplog) -> None:
    keys, _ = allowed
    mallory, eve = _key(), _key()
    for _ in range(5):
        assert not keys.callback("*", mallory)
    assert not keys.callback("*", eve)
    named = [(r.fields["client_key"], r.fields["unlogged"]) for r in _refusals(caplog)]  # type: ignore[attr-defined]
    assert named == [(mallory.decode(), 0), (eve.decode(), 4)]


def test_a_flood_of_new_keys_gets_a_line_a_while(allowed, caplog) -> None:
    keys, _ = allowed
    t0 = time.monotonic()
    for _ in range(200):
        assert not keys.callback("*", _key())
    spent = time.monotonic() - t0
    time.sleep(1.1 * LINE_LOG_S)
    assert not keys.callback("*", _key())
    lines = _refusals(caplog)
    assert LINES_BURST + 1 <= len(lines) <= LINES_BURST + 2 + spent / LINE_LOG_S
    assert sum(1 + r.fields["unlogged"] for r in lines) == 201  # type: ignore[attr-defined]
    assert lines[-1].fields["unlogged"] > 0  # type: ignore[attr-defined]


def test_a_directory_that_cannot_be_read_refuses_all_and_says_so_once_a_while(
    allowed, caplog, tmp_path
) -> None:
    keys, alice = allowed
    keys.directory = tmp_path / "gone"
    for _ in range(10):
        assert not keys.callback("*", alice)
    [line] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert line.getMessage().startswith(
        f"cannot read the allowed CURVE keys, every client is refused: the allowed CURVE keys "
        f"directory {keys.directory} does not exist"
    )


def test_a_damaged_certificate_refuses_all_until_it_is_mended(allowed, caplog, tmp_path) -> None:
    """A key file cut short in the directory: every client refused and the file named, not
    an exception (which would end the ZAP thread: no client admitted ever after)."""
    keys, alice = allowed
    (tmp_path / "bob.key").write_text("#   ZeroMQ CURVE Public Certificate\n    public-key\n")
    assert not keys.callback("*", alice)
    [line] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "every client is refused: cannot read the CURVE certificate" in line.getMessage()
    (tmp_path / "bob.key").unlink()
    assert keys.callback("*", alice)


def test_any_error_reading_the_keys_refuses_the_client_and_is_said(
    allowed, caplog, monkeypatch
) -> None:
    """Whatever reading the keys raises, the callback refuses, logs it and returns: an
    exception would end the ZAP thread."""
    keys, alice = allowed

    def broken(directory: Path) -> set[bytes]:
        raise RuntimeError("something unforeseen")

    monkeypatch.setattr("streamtrk.service.auth.allowed_keys", broken)
    assert not keys.callback("*", alice)
    [line] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert line.getMessage().endswith("every client is refused: something unforeseen")


def _counted_reads(monkeypatch) -> list[Path]:
    """The directories ``allowed_keys`` reads from now on, one item per read."""
    reads: list[Path] = []

    def counted(directory: Path) -> set[bytes]:
        reads.append(directory)
        return allowed_keys(directory)

    monkeypatch.setattr(auth, "allowed_keys", counted)
    return reads


def test_the_keys_are_read_again_only_once_their_files_change(
    allowed, monkeypatch, tmp_path
) -> None:
    """A peer repeating handshakes at will made the daemon read every certificate at each
    one (150 us for 10 keys, under the GIL its worker needs): read again at once where a
    certificate is added or removed, else ``REREAD_S`` after the last read (one rewritten
    in place, its name and inode the same)."""
    keys, alice = allowed
    reads = _counted_reads(monkeypatch)
    monkeypatch.setattr(auth, "REREAD_S", 60.0)
    for _ in range(100):
        assert not keys.callback("*", _key())
    assert keys.callback("*", alice) and len(reads) == 1
    bob_file = Path(zmq.auth.create_certificates(tmp_path, "bob")[0])
    (tmp_path / "other").mkdir()
    carol = Path(zmq.auth.create_certificates(tmp_path / "other", "carol")[0]).read_text()
    bob, bob_text = zmq.auth.load_certificate(bob_file)[0], bob_file.read_text()
    assert keys.callback("*", bob) and len(reads) == 2  # added: at once
    bob_file.unlink()
    assert not keys.callback("*", bob) and len(reads) == 3  # removed: at once
    alice_file = tmp_path / "alice.key"
    alice_file.write_text(bob_text)  # rewritten in place: its time changes
    assert keys.callback("*", bob) and not keys.callback("*", alice) and len(reads) == 4
    read = alice_file.stat()
    alice_file.write_text(carol)  # the same size ...
    os.utime(alice_file, ns=(read.st_atime_ns, read.st_mtime_ns))  # ... and time
    assert alice_file.stat().st_size == read.st_size
    assert keys.callback("*", bob) and len(reads) == 4  # not seen: the same stamp
    monkeypatch.setattr(auth, "REREAD_S", 0.0)
    assert not keys.callback("*", bob) and len(reads) == 5  # REREAD_S later


def test_stopping_an_authenticator_whose_thread_ended_returns(tmp_path: Path) -> None:
    """pyzmq's ``stop`` sends its thread TERMINATE over a PAIR socket: with the thread gone
    (no reader) the send waited for ever, and a daemon drained but never exited."""
    ctx: zmq.Context[Any] = zmq.Context()
    auth = start_authenticator(ctx, tmp_path)
    assert not auth.died
    auth.zap.pipe.send(b"TERMINATE")  # how pyzmq ends the thread: it is gone, as if it died
    auth.zap.thread.join(10)
    assert bool(auth.died)  # (bool(): mypy keeps the first assertion's narrowing otherwise)
    stopping = threading.Thread(target=auth.stop, daemon=True)
    stopping.start()
    stopping.join(10)
    assert not stopping.is_alive()
    ctx.term()


@pytest.fixture
def clock(monkeypatch) -> list[float]:
    """The authenticator's monotonic clock and its log throttle's, set by the test (an hour
    into the process); asked for before ``allowed``, which reads it."""
    now = [3600.0]
    fake = types.SimpleNamespace(monotonic=lambda: now[0])
    monkeypatch.setattr(auth, "time", fake)
    monkeypatch.setattr(logs, "time", fake)
    return now


def test_without_a_directory_no_client_is_admitted(caplog) -> None:
    """CURVE on without curve_allowed_keys (a forwarder's --server-key without
    --allowed-keys): every client refused, and named."""
    keys = AllowedKeys(None)
    mallory = _key()
    assert not keys.callback("streamtrk", mallory)
    [line] = _refusals(caplog)
    assert line.fields["client_key"] == mallory.decode()  # type: ignore[attr-defined]
    assert line.fields["allowed_keys"] == "(no curve_allowed_keys: none allowed)"  # type: ignore[attr-defined]


def test_a_flood_gets_the_burst_then_one_line_a_second_however_long_the_daemon_ran(
    clock, allowed, caplog
) -> None:
    """The budget refills with the time since the last refusal, not since the start."""
    keys, _ = allowed
    clock[0] += 3600  # an hour without a refusal
    for _ in range(100):  # 100 new keys within a second
        clock[0] += 0.009
        assert not keys.callback("*", _key())
    assert len(_refusals(caplog)) == LINES_BURST
    clock[0] += 1.0
    for _ in range(3):
        assert not keys.callback("*", _key())
    lines = _refusals(caplog)
    assert len(lines) == LINES_BURST + 1
    assert lines[-1].fields["unlogged"] == 100 - LINES_BURST  # type: ignore[attr-defined]


def test_each_line_counts_the_refusals_unlogged_since_the_line_before(
    clock, allowed, caplog
) -> None:
    keys, _ = allowed
    for _ in range(3):  # three seconds of a flood: 100 new keys a second
        for _ in range(100):
            clock[0] += 0.01
            assert not keys.callback("*", _key())
    unlogged = [r.fields["unlogged"] for r in _refusals(caplog)]  # type: ignore[attr-defined]
    assert sum(1 + u for u in unlogged) + keys._unlogged == 300
    assert unlogged[:LINES_BURST] == [0] * LINES_BURST


def test_named_keys_are_forgotten_once_not_named_for_a_while(clock, allowed, caplog) -> None:
    """A peer with a new key each second for an hour, each key coming back 30 s later: no
    key is named twice within KEY_LOG_S, and those named are not all kept for ever."""
    keys, _ = allowed
    sent = []
    for _ in range(3600):
        clock[0] += 1.0
        sent.append(_key())
        assert not keys.callback("*", sent[-1])
        if len(sent) > 30:
            assert not keys.callback("*", sent[-31])
    named: dict[str, float] = {}
    for r in _refusals(caplog):
        key = r.fields["client_key"]  # type: ignore[attr-defined]
        named[key] = named.get(key, 0) + 1
    assert max(named.values()) == 1  # each named once: 30 s later is within KEY_LOG_S
    assert len(keys._named) <= 2 * (LINES_BURST + KEY_LOG_S)


def test_a_certificate_removed_as_the_directory_is_listed_refuses_no_one(
    allowed, monkeypatch, tmp_path
) -> None:
    """A rotation's ``rm OLD.key`` between the listing and its stat: the others are still
    admitted (a refused libzmq client never tries its key again)."""
    keys, alice = allowed
    zmq.auth.create_certificates(tmp_path, "old")
    stamp = auth._stamp

    def racing(entry: os.DirEntry[str]) -> tuple[str, int, int, int]:
        if entry.name == "old.key":
            os.unlink(entry.path)
        return stamp(entry)

    monkeypatch.setattr(auth, "_stamp", racing)
    assert keys.callback("*", alice)


@pytest.mark.parametrize("how", ["renamed over it", "rewritten in place, another size"])
def test_a_certificate_replaced_at_the_same_time_is_read_again_at_once(
    allowed, monkeypatch, tmp_path, how: str
) -> None:
    """Its time the same (``cp -p``, ``rsync -t``, a kernel tick): its inode or its size
    still tells the change, without waiting for ``REREAD_S``."""
    keys, alice = allowed
    monkeypatch.setattr(auth, "REREAD_S", 60.0)
    (tmp_path / "new").mkdir()
    bob_file = Path(zmq.auth.create_certificates(tmp_path / "new", "bob")[0])
    bob = zmq.auth.load_certificate(bob_file)[0]
    assert keys.callback("*", alice) and not keys.callback("*", bob)
    alice_file = tmp_path / "alice.key"
    was = alice_file.stat()
    if how == "renamed over it":
        assert bob_file.stat().st_size == was.st_size
        os.utime(bob_file, ns=(was.st_atime_ns, was.st_mtime_ns))
        os.replace(bob_file, alice_file)
    else:
        alice_file.write_text(bob_file.read_text() + "\n")
        os.utime(alice_file, ns=(was.st_atime_ns, was.st_mtime_ns))
    assert keys.callback("*", bob) and not keys.callback("*", alice)


def test_the_unreadable_directory_line_says_how_many_refusals_it_covers(
    clock, allowed, caplog, monkeypatch, tmp_path
) -> None:
    keys, alice = allowed
    keys.directory = tmp_path / "gone"
    for dt in (0.0, 1.0, KEY_LOG_S):
        clock[0] += dt
        assert not keys.callback("*", alice)
    first, second = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "every client is refused: " in first
    assert "every client is refused (2 since the last line): " in second


def test_starting_on_a_missing_or_damaged_directory_is_refused(tmp_path: Path) -> None:
    """A CurveError before the thread starts (a mistyped path would refuse every client)."""
    from streamtrk.wire.curve import CurveError

    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "bob.key").write_text("#   ZeroMQ CURVE Public Certificate\n")
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        for directory, why in (("nowhere", "does not exist"), ("damaged", "bob.key")):
            with pytest.raises(CurveError, match=why):
                start_authenticator(ctx, tmp_path / directory).stop()  # stop: not refused
    finally:
        ctx.term()


@pytest.mark.parametrize("keys", [0, 1])
def test_starting_on_a_directory_without_keys_says_no_client_can_connect(
    tmp_path: Path, caplog, keys: int
) -> None:
    if keys:
        zmq.auth.create_certificates(tmp_path, "alice")
    ctx: zmq.Context[Any] = zmq.Context()
    start_authenticator(ctx, tmp_path).stop()
    ctx.term()
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == ([] if keys else [
        f"no *.key certificate in {tmp_path}: no client can connect until one is added"
    ])  # fmt: skip


def test_files_other_than_public_certificates_do_not_make_the_keys_read_again(
    allowed, monkeypatch, tmp_path
) -> None:
    """Only ``*.key`` files are watched: a secret certificate, a note or an editor's swap
    file written next to them is no reason to read every certificate again."""
    keys, alice = allowed
    reads = _counted_reads(monkeypatch)
    monkeypatch.setattr(auth, "REREAD_S", 60.0)
    assert keys.callback("*", alice) and len(reads) == 1
    (tmp_path / "README").write_text("the farm's clients\n")
    (tmp_path / ".alice.key.swp").write_text("x")
    (tmp_path / "alice.key_secret").write_text("rewritten\n")
    assert keys.callback("*", alice) and len(reads) == 1


def test_the_keys_are_read_again_at_rereads_after_the_last_read_not_later(
    clock, allowed, monkeypatch
) -> None:
    """``REREAD_S`` after the last read, to the tick, the keys are read again."""
    keys, alice = allowed
    reads = _counted_reads(monkeypatch)
    assert keys.callback("*", alice) and len(reads) == 1
    clock[0] += REREAD_S / 2
    assert keys.callback("*", alice) and len(reads) == 1
    clock[0] += REREAD_S / 2  # REREAD_S since the read, exactly
    assert keys.callback("*", alice) and len(reads) == 2


def test_a_refused_key_is_named_again_once_key_log_s_has_passed(clock, allowed, caplog) -> None:
    """One key is named at most once a ``KEY_LOG_S``: at ``KEY_LOG_S`` after its last line,
    to the tick, it is named again, with the refusals not logged since."""
    keys, _ = allowed
    mallory = _key()
    assert not keys.callback("*", mallory)
    clock[0] += KEY_LOG_S / 2
    assert not keys.callback("*", mallory)  # within KEY_LOG_S: counted, not named
    clock[0] += KEY_LOG_S / 2
    assert not keys.callback("*", mallory)
    named = [(r.fields["client_key"], r.fields["unlogged"]) for r in _refusals(caplog)]  # type: ignore[attr-defined]
    assert named == [(mallory.decode(), 0), (mallory.decode(), 1)]


def test_an_unreadable_directory_names_no_client_as_not_allowed(allowed, caplog, tmp_path) -> None:
    """Refused because the keys cannot be read, a client is not said to be refused for its
    key: the one error line, no warning naming the client."""
    keys, alice = allowed
    keys.directory = tmp_path / "gone"
    assert not keys.callback("*", alice)
    assert _refusals(caplog) == []
    assert [r.levelno for r in caplog.records] == [logging.ERROR]


def test_a_curve_server_of_no_zap_domain_admits_only_the_allowed_keys(tmp_path: Path) -> None:
    """The authenticator answers for a CURVE server socket without ``make_server``'s ZAP
    domain as well (ZAP's empty domain): the allowed clients get through, others do not."""
    server_public, server_secret = zmq.curve_keypair()
    alice = zmq.auth.load_certificate(zmq.auth.create_certificates(tmp_path, "alice")[1])
    ctx: zmq.Context[Any] = zmq.Context()
    authenticator = start_authenticator(ctx, tmp_path)
    sockets = [server := ctx.socket(zmq.PULL)]
    try:
        server.curve_server = True
        server.curve_publickey, server.curve_secretkey = server_public, server_secret
        port = server.bind_to_random_port("tcp://127.0.0.1")
        got = []
        for public, secret in (alice, zmq.curve_keypair()):
            sockets.append(client := ctx.socket(zmq.PUSH))
            client.curve_serverkey = server_public
            client.curve_publickey, client.curve_secretkey = public, secret
            client.connect(f"tcp://127.0.0.1:{port}")
            client.send(public)
            got += [server.recv() for _ in range(server.poll(2000))]
        assert got == [alice[0]]  # alice's message only
    finally:
        for socket in sockets:
            socket.close(linger=0)
        authenticator.stop()
        ctx.term()
