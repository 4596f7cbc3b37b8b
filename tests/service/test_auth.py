"""The ZAP authenticator's credentials: the allowed-keys directory, and its log lines
about refused clients, which a peer repeating handshakes cannot turn into a flood."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.auth

from streamtrk.service.auth import LINE_LOG_S, LINES_BURST, AllowedKeys, start_authenticator


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


def test_the_keys_are_read_again_only_once_their_files_change(
    allowed, monkeypatch, tmp_path
) -> None:
    """A peer repeating handshakes at will made the daemon read every certificate at each
    one (150 us for 10 keys, under the GIL its worker needs): read again at once where a
    certificate is added or removed, else ``REREAD_S`` after the last read (one rewritten
    in place, its name and inode the same)."""
    import streamtrk.service.auth as auth
    from streamtrk.wire.curve import allowed_keys

    keys, alice = allowed
    reads: list[Path] = []

    def counted(directory: Path) -> set[bytes]:
        reads.append(directory)
        return allowed_keys(directory)

    monkeypatch.setattr(auth, "allowed_keys", counted)
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
