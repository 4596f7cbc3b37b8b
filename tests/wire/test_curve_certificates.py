"""CURVE certificates: ``create_certificates`` writes a pair it never lets others read."""

from __future__ import annotations

import os
import re
import stat
import threading
from pathlib import Path
from typing import Any

import pytest
import zmq.auth

from streamtrk.cli import main
from streamtrk.wire.curve import (
    CERTIFICATE_MAX_BYTES,
    CurveError,
    allowed_keys,
    create_certificates,
    exposed_without_curve,
    host_only,
    load_keypair,
    load_public,
    make_server,
)


def test_a_pair_is_written_with_the_secret_never_readable_by_others(tmp_path, monkeypatch):
    """The secret file is its owner's from its creation: pyzmq writes it with the umask's
    mode (0644 here), so it is made 0600 before pyzmq writes the key into it."""
    seen = {}
    write = zmq.auth.create_certificates

    def observed(directory, name):  # the secret file's mode as pyzmq leaves it
        files = write(directory, name)
        seen["mode"] = stat.S_IMODE(os.stat(files[1]).st_mode)
        return files

    monkeypatch.setattr(zmq.auth, "create_certificates", observed)
    old = os.umask(0o022)
    try:
        public, secret = create_certificates(tmp_path / "keys", "alice")
    finally:
        os.umask(old)
    assert seen["mode"] == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    assert load_public(public) == load_keypair(secret)[0]


def test_the_directory_made_for_a_pair_is_its_owner_s_to_write_whatever_the_umask(tmp_path):
    """Under umask 000 the directory was made 0777: another user could replace the pair."""
    old = os.umask(0)
    try:
        create_certificates(tmp_path / "etc" / "keys" / "private", "alice")
    finally:
        os.umask(old)
    for level in ("etc", "etc/keys", "etc/keys/private"):  # each level made
        assert stat.S_IMODE((tmp_path / level).stat().st_mode) == 0o755, level


@pytest.mark.parametrize("name", ["", ".hidden", "../escape", "sub/alice"])
def test_a_name_that_is_not_a_plain_file_name_is_refused(tmp_path, name, capsys):
    """An empty name writes the hidden ``.key`` (which a keys directory would still allow),
    a path writes outside the directory."""
    assert main(["keys", str(tmp_path / "keys"), name]) == 2  # the command line refused
    assert "a certificate name is a plain file name" in capsys.readouterr().err
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_a_certificate_there_is_never_overwritten(tmp_path: Path, capsys) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "alice.key_secret").write_text("mine")
    assert main(["keys", str(keys), "alice"]) == 1
    assert f"{keys / 'alice.key_secret'} exists; not overwritten" in capsys.readouterr().err
    assert [p.name for p in keys.iterdir()] == ["alice.key_secret"]  # no public key left
    assert (keys / "alice.key_secret").read_text() == "mine"


def test_a_directory_that_is_a_file_is_said_to_be_no_directory(tmp_path: Path, capsys) -> None:
    """Not "exists; not overwritten", which reads as a certificate already there."""
    (tmp_path / "keys").write_text("mine")
    assert main(["keys", str(tmp_path / "keys"), "alice"]) == 1
    err = capsys.readouterr().err
    assert "not overwritten" not in err and f"{tmp_path / 'keys'} is not a directory" in err
    assert [p.name for p in tmp_path.iterdir()] == ["keys"]


@pytest.mark.parametrize("below", ["", "sub"])
def test_a_link_to_nowhere_is_said_to_be_no_directory(tmp_path: Path, capsys, below) -> None:
    """A dangling link as the directory or a level above it: no pair there either."""
    (tmp_path / "keys").symlink_to(tmp_path / "nowhere")
    assert main(["keys", str(tmp_path / "keys" / below), "alice"]) == 1
    err = capsys.readouterr().err
    assert "not overwritten" not in err and f"{tmp_path / 'keys'} is not a directory" in err
    assert [p.name for p in tmp_path.iterdir()] == ["keys"]


@pytest.mark.parametrize("load", [load_keypair, load_public])
def test_a_missing_certificate_is_said_to_be_missing(tmp_path: Path, load) -> None:
    """Not pyzmq's "Invalid certificate file", which reads as a damaged one."""
    with pytest.raises(CurveError, match=r"CURVE certificate .*server.key_secret: no such file$"):
        load(tmp_path / "server.key_secret")


@pytest.mark.parametrize("load", [load_keypair, load_public, allowed_keys])
@pytest.mark.parametrize("line", ["public-key", "secret-key"])
def test_a_key_line_without_its_value_is_refused_naming_the_file(
    tmp_path: Path, load, line: str
) -> None:
    """A key line cut before its ``=`` (an edit, a file read while copied): pyzmq's parser
    raises IndexError there, which would end the ZAP thread reading the allowed keys."""
    (tmp_path / "bob.key").write_text(f"#   ZeroMQ CURVE Public Certificate\n    {line}\n")
    with pytest.raises(
        CurveError,
        match=r"cannot read the CURVE certificate .+/bob\.key: a key line without its value$",
    ):
        load(tmp_path if load is allowed_keys else tmp_path / "bob.key")


def test_an_allowed_keys_path_says_whether_it_is_missing_or_no_directory(tmp_path: Path) -> None:
    with pytest.raises(CurveError, match=r"directory .+/nowhere does not exist$"):
        allowed_keys(tmp_path / "nowhere")
    (tmp_path / "a.key").write_text("")
    with pytest.raises(CurveError, match=r"directory .+/a\.key is not a directory$"):
        allowed_keys(tmp_path / "a.key")


def _damaged(path: Path, field: str) -> Path:
    """A copy of certificate ``path`` whose ``field`` key lost its first five characters
    (a key cut short in a copy or an edit: no 40-character Z85 key any more)."""
    head, _, tail = path.read_text().partition(f'{field} = "')
    damaged = path.with_name(f"damaged-{path.name}")
    damaged.write_text(f'{head}{field} = "{tail[5:]}')
    damaged.chmod(path.stat().st_mode)  # a secret one its owner's alone, as the original
    return damaged


@pytest.mark.parametrize(
    ("role", "damage"),
    [
        ("server", ("server.key_secret", "secret-key")),
        ("server", ("server.key_secret", "public-key")),
        ("client", ("alice.key_secret", "secret-key")),
        ("client", ("server.key", "public-key")),
    ],
)
def test_a_damaged_key_is_refused_naming_its_file(tmp_path: Path, role: str, damage) -> None:
    """libzmq says only "Invalid argument" to a key that is not 40 Z85 characters."""
    from streamtrk.wire.curve import make_client, make_server

    for name in ("server", "alice"):
        create_certificates(tmp_path, name)
    bad = _damaged(tmp_path / damage[0], damage[1])
    ctx = zmq.Context()
    try:
        with (
            ctx.socket(zmq.PUSH) as sock,
            pytest.raises(CurveError, match=rf"^{bad}: its {damage[1]} is not a CURVE key"),
        ):
            if role == "server":
                make_server(sock, bad)
            elif damage[0] == "server.key":
                make_client(sock, tmp_path / "alice.key_secret", bad)
            else:
                make_client(sock, bad, tmp_path / "server.key")
    finally:
        ctx.term()


def test_a_key_of_40_characters_not_all_z85_is_refused_naming_its_file(tmp_path: Path) -> None:
    """libzmq says only "Invalid argument" to a key with a character outside Z85 too."""
    create_certificates(tmp_path, "server")
    path = tmp_path / "server.key_secret"
    head, _, tail = path.read_text().partition('secret-key = "')
    path.write_text(f'{head}secret-key = "~{tail[1:]}')  # still 40 characters
    ctx = zmq.Context()
    try:
        with (
            ctx.socket(zmq.PUSH) as sock,
            pytest.raises(CurveError, match=rf"^{path}: its secret-key is not a CURVE key"),
        ):
            make_server(sock, path)
    finally:
        ctx.term()


@pytest.mark.parametrize(
    "endpoint", ["tipc://{5560,0,0}", "udp://239.0.0.1:5555", "epgm://eth0;239.192.1.1:5555"]
)
def test_transports_other_than_tcp_ipc_and_inproc_reach_other_hosts(endpoint: str) -> None:
    """What the daemon's config refuses before asking, farm and the CLI's --bind ask too."""
    assert not host_only(endpoint)


@pytest.mark.parametrize("endpoint", ["inproc://events", "ipc:///tmp/streamtrk.in"])
def test_inproc_and_ipc_reach_this_host_only(endpoint: str) -> None:
    """Neither leaves the host: no CURVE is asked of them."""
    assert host_only(endpoint) and exposed_without_curve(endpoint, "remedy") is None


@pytest.mark.parametrize("host", ["1270.0.0.1", "127net", "12.7.0.1"])
def test_only_127_dot_addresses_are_loopback(host: str) -> None:
    """Loopback is 127.0.0.0/8: a host or interface name that merely starts with the
    digits 127 is another address, bound only with CURVE."""
    assert not host_only(f"tcp://{host}:5555")


def test_the_refusal_ends_with_the_remedy_it_is_given() -> None:
    """The remedy (which option turns CURVE on there) is what the user acts on."""
    why = exposed_without_curve("tcp://0.0.0.0:5555", "Give --curve-key or bind 127.0.0.1.")
    assert why is not None and why.startswith("tcp://0.0.0.0:5555 is not a loopback address")
    assert why.endswith("replies. Give --curve-key or bind 127.0.0.1.")


def test_the_directory_is_created_with_its_parents(tmp_path: Path, capsys) -> None:
    """docs/operations.md's ``streamtrk keys /etc/streamtrk/keys server`` on a host without
    /etc/streamtrk yet."""
    assert main(["keys", str(tmp_path / "etc" / "streamtrk" / "keys"), "server"]) == 0
    assert sorted(p.name for p in (tmp_path / "etc" / "streamtrk" / "keys").iterdir()) == [
        "server.key", "server.key_secret",
    ]  # fmt: skip


@pytest.mark.parametrize("stop", [KeyboardInterrupt, RuntimeError])
def test_a_pair_cut_short_leaves_no_file(tmp_path: Path, monkeypatch, stop) -> None:
    """Ctrl-C (or any error) while the keys are written: no empty or half-written file is
    left, which the next run would refuse to overwrite."""

    def interrupted(directory, name):
        raise stop()

    monkeypatch.setattr(zmq.auth, "create_certificates", interrupted)
    with pytest.raises(stop):
        create_certificates(tmp_path / "keys", "alice")
    assert list((tmp_path / "keys").iterdir()) == []


def test_only_the_key_files_of_the_directory_are_allowed(tmp_path: Path) -> None:
    """A key set aside (renamed ``NAME.key.revoked``, an editor's ``NAME.key~``) is no longer
    allowed; a secret file is not read as a client's."""
    public, _ = create_certificates(tmp_path, "alice")
    for name in ("bob", "carol"):
        create_certificates(tmp_path / "other", name)
    (tmp_path / "other" / "bob.key").rename(tmp_path / "bob.key.revoked")
    (tmp_path / "other" / "carol.key").rename(tmp_path / "carol.key~")
    assert allowed_keys(tmp_path) == {load_public(public)}


def test_a_public_certificate_given_for_a_secret_one_is_said_to_be_one(tmp_path: Path) -> None:
    """``--curve-key keys/alice.key`` for ``alice.key_secret``: said, not a TypeError."""
    public, _ = create_certificates(tmp_path, "alice")
    with pytest.raises(CurveError, match=r"alice\.key holds no secret key \(use the NAME\.key_"):
        load_keypair(public)


@pytest.mark.parametrize("kind", ["fifo", "device", "huge"])
def test_a_key_that_is_no_small_regular_file_is_refused_at_once(tmp_path: Path, kind) -> None:
    """A FIFO among the allowed keys held the authenticator in its open for ever (every
    client refused, the daemon's exit hung); a link to /dev/zero filled the memory."""
    create_certificates(tmp_path, "alice")
    odd = tmp_path / "odd.key"
    if kind == "fifo":
        os.mkfifo(odd)
    elif kind == "device":
        odd.symlink_to("/dev/zero")
    else:
        odd.write_bytes(b"#" * (CERTIFICATE_MAX_BYTES + 1))
    why = "past the 65536 a certificate can take" if kind == "huge" else "not a regular file"
    error = _refused_within_5_s(tmp_path)
    assert re.search(rf"certificate .+/odd\.key: .*{why}", error), error


def test_a_certificate_is_read_as_pyzmq_reads_one(tmp_path: Path) -> None:
    """Comments, CRLF, metadata and quotes as pyzmq's reader takes them; an empty key line
    before the real one gives the real one (the reader stopped at the empty one)."""
    _, secret = create_certificates(tmp_path, "alice")
    keys = zmq.auth.load_certificate(secret)
    text = secret.read_text()
    for variant in (
        text.replace("\n", "\r\n"),
        text.replace('secret-key = "', 'secret-key = ""\n    secret-key = "'),
        text.replace('"', "'"),
    ):
        secret.write_text(variant)
        assert load_keypair(secret) == keys == zmq.auth.load_certificate(secret)


def test_a_secret_key_other_users_may_read_is_refused(tmp_path: Path) -> None:
    """Mode 666 (a copy under another umask, an archive unpacked): used without a word."""
    _, secret = create_certificates(tmp_path, "server")
    secret.chmod(0o644)
    with pytest.raises(CurveError, match=r"server\.key_secret: other users may read or write"):
        load_keypair(secret)
    secret.chmod(0o640)  # its group's: a deployment's choice
    assert load_keypair(secret)


def test_a_hidden_key_file_is_allowed_as_any_other(tmp_path: Path) -> None:
    """Why ``keys`` refuses a name starting with '.': the hidden ``.key`` would be allowed."""
    public, _ = zmq.auth.create_certificates(tmp_path, "")
    assert Path(public).name == ".key" and allowed_keys(tmp_path) == {load_public(public)}


def test_a_damaged_key_among_the_allowed_is_refused_naming_its_file(tmp_path: Path) -> None:
    """docs/serve.md: a certificate cut short in a copy refuses every client while it is
    there, and is named (not taken as a 35-character key no client has)."""
    create_certificates(tmp_path, "alice")
    bad = _damaged(tmp_path / "alice.key", "public-key")
    with pytest.raises(CurveError, match=rf"^{bad}: its public-key is not a CURVE key"):
        allowed_keys(tmp_path)


def test_a_dangling_key_link_among_the_allowed_is_refused_naming_it(tmp_path: Path) -> None:
    """A ``NAME.key`` symlink whose target is gone (a secret mount mid-update) is named as
    unreadable, not taken for a key removed after the listing."""
    create_certificates(tmp_path, "alice")
    (tmp_path / "bob.key").symlink_to(tmp_path / "gone" / "bob.key")
    with pytest.raises(CurveError, match=r"certificate .+/bob\.key: no such file$"):
        allowed_keys(tmp_path)


def test_a_key_removed_after_the_listing_is_not_there(tmp_path: Path, monkeypatch) -> None:
    """A rotation's ``rm OLD.key`` between the listing and the reading of its file: the
    others are the allowed keys, not a CurveError that refuses every client."""
    from streamtrk.wire import curve

    alice, _ = create_certificates(tmp_path, "alice")
    create_certificates(tmp_path, "old")
    load = curve._load_certificate

    def racing(path: str | Path) -> tuple[bytes, bytes | None, int]:
        if Path(path).name == "old.key":
            os.unlink(path)
        return load(path)

    monkeypatch.setattr(curve, "_load_certificate", racing)
    assert allowed_keys(tmp_path) == {load_public(alice)}


def test_an_allowed_keys_directory_it_may_not_list_is_said_so(tmp_path: Path, monkeypatch) -> None:
    """Not "no certificate there" (pathlib's glob says nothing of a folder it may not list):
    the permission is what to mend. (EACCES made by hand: the tests may run as root.)"""
    create_certificates(tmp_path, "alice")
    scandir = os.scandir

    def denied(path: str | Path = ".") -> object:
        if Path(path) == tmp_path:
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", denied)
    with pytest.raises(
        CurveError, match=r"cannot list the allowed CURVE keys directory .+: Permission denied$"
    ):
        allowed_keys(tmp_path)


@pytest.mark.parametrize("load", [load_public, allowed_keys])
def test_a_certificate_without_a_public_key_is_refused_naming_it(tmp_path: Path, load) -> None:
    """A ``.key`` file holding no ``public-key`` line (a truncated copy, a stray file) is a
    CurveError naming it, not a KeyError that would end the ZAP thread."""
    (tmp_path / "bob.key").write_text("#   ZeroMQ CURVE Public Certificate\nmetadata\n")
    with pytest.raises(CurveError, match=r"certificate .+/bob\.key: No public key found in it$"):
        load(tmp_path if load is allowed_keys else tmp_path / "bob.key")


def test_lines_after_both_keys_are_not_read(tmp_path: Path) -> None:
    """As pyzmq's reader, the first public and secret keys are the certificate's: lines
    after them (another key, a key line cut short) are neither taken nor refused."""
    _, secret = create_certificates(tmp_path, "alice")
    keys = zmq.auth.load_certificate(secret)
    with secret.open("a") as f:
        f.write('    public-key = "' + "x" * 40 + '"\n    secret-key\n')
    assert load_keypair(secret) == keys == zmq.auth.load_certificate(secret)


def test_a_certificate_of_exactly_the_size_limit_is_read(tmp_path: Path) -> None:
    """``CERTIFICATE_MAX_BYTES`` is the most a certificate may take, that size included."""
    public, _ = create_certificates(tmp_path, "alice")
    text = public.read_bytes()
    public.write_bytes(b"#" * (CERTIFICATE_MAX_BYTES - len(text) - 1) + b"\n" + text)
    assert public.stat().st_size == CERTIFICATE_MAX_BYTES
    assert load_public(public) == zmq.auth.load_certificate(public)[0]


def _refused_within_5_s(directory: Path) -> str:
    """The CurveError ``allowed_keys(directory)`` gives within 5 s (not waiting on a FIFO)."""
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            allowed_keys(directory)
        except CurveError as e:
            outcome.append(e)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(5)
    assert not reader.is_alive() and len(outcome) == 1
    return str(outcome[0])


def test_a_fifo_put_in_place_after_the_stat_is_refused_at_once(tmp_path: Path, monkeypatch):
    """A key replaced by a FIFO between the check of its path and its opening (a rotation
    racing the authenticator): opened without waiting for a writer and refused as no
    regular file, not read as an empty certificate nor waited on for ever."""
    create_certificates(tmp_path, "alice")
    odd = tmp_path / "odd.key"
    odd.write_text("")
    real_open = os.open

    def racing(path, flags, *args):
        if Path(path) == odd and not odd.is_fifo():
            odd.unlink()
            os.mkfifo(odd)
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", racing)
    error = _refused_within_5_s(tmp_path)
    assert error.endswith("odd.key: not a regular file"), error


def test_a_secret_key_s_mode_is_the_file_read_s(tmp_path: Path, monkeypatch) -> None:
    """The secret file replaced just after it was read (a rotation) by one anyone may read:
    the mode checked is that of the file read, not of whatever the path names by then (a
    removal there let a FileNotFoundError out)."""
    _, secret = create_certificates(tmp_path, "alice")
    keys = zmq.auth.load_certificate(secret)
    fdopen = os.fdopen

    def racing(fd: int, *args: Any, **kwargs: Any) -> Any:
        opened = fdopen(fd, *args, **kwargs)
        if secret.stat().st_mode & 0o007 == 0:
            secret.unlink()
            secret.write_text("")
            secret.chmod(0o666)
        return opened

    monkeypatch.setattr(os, "fdopen", racing)
    assert load_keypair(secret) == keys
