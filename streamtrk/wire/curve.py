"""CurveZMQ (authentication and encryption) for the daemon's sockets, with pyzmq's own
``zmq.auth`` certificate files: ``NAME.key`` holds a public key, ``NAME.key_secret`` the
public and the secret key (``streamtrk keys DIR NAME`` writes both).

The daemon is the CURVE server on both of its sockets, whether it binds or connects: it
holds a secret certificate, and a ZAP handler admits only the clients whose public
certificates lie in its allowed-keys directory. Producers, consumers, distributors and
collectors are clients: their own secret certificate, and the daemon's public one.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.utils.z85 import Z85CHARS

from streamtrk.errors import SettingError

#: The ZAP domain of the project's CURVE servers (see :func:`make_server`).
ZAP_DOMAIN = "streamtrk"
#: Bytes CURVE adds to each frame as libzmq checks it against ``ZMQ_MAXMSGSIZE`` (the
#: MESSAGE command's name and size byte 8, nonce 8, flags 1, MAC 16): a receiver's limit
#: is raised by it, or frames just within the limit are dropped with their connection.
CURVE_FRAME_OVERHEAD = 33
# A handshake refused by the peer, by its monitor event: the cause named in metrics and
# messages (a CURVE key not allowed; no common mechanism, as CURVE on one side only).
REFUSALS: dict[int, str] = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "auth",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "handshake",
}


class CurveError(ValueError):
    """A certificate file that cannot be used; the message names the file and the cause."""


def host_only(endpoint: str) -> bool:
    """Whether a ZeroMQ endpoint is reachable from this host only (ipc, inproc, loopback:
    its addresses, ``localhost`` or Linux's interface ``lo``): one that needs no CURVE.
    Other transports (tipc, udp, pgm, ...) reach other hosts. Of ``tcp://SOURCE;HOST:PORT``
    libzmq binds ``HOST:PORT`` (what follows the last ``;``), so that is what counts."""
    scheme, _, rest = endpoint.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    host = bound_host(rest).strip("[]")
    return host in ("localhost", "lo", "::1") or host.startswith("127.")


def bound_host(rest: str) -> str:
    """The host libzmq binds of a tcp endpoint's ``rest`` (``[SOURCE;]HOST:PORT``): what
    follows the last ``;``, less the port."""
    return rest.rpartition(";")[2].rpartition(":")[0]


def names_another_host(error: zmq.ZMQError) -> bool:
    """Whether a bind failed for an address that is not this host's: libzmq's ENODEV (no
    interface of that name: another host's name) or EADDRNOTAVAIL (another host's IP)."""
    return error.errno in (errno.ENODEV, errno.EADDRNOTAVAIL)


def exposed_without_curve(endpoint: str, remedy: str) -> str | None:
    """Why ``endpoint`` may not be bound with CURVE off (it is reachable beyond this host),
    ending with ``remedy``; None where it is not (:func:`host_only`)."""
    if host_only(endpoint):
        return None
    return (
        f"{endpoint} is not a loopback address and CURVE is off on it: anyone who reaches it "
        f"could send events or take them or their replies. {remedy}"
    )


def ipv6_literal(endpoint: str) -> bool:
    """Whether a ZeroMQ endpoint names an IPv6 address (``tcp://[::1]:5555``): its socket
    needs ``ZMQ_IPV6``. Host names and IPv4 ones keep IPv4 sockets, as they always had."""
    return endpoint.partition("://")[2].startswith("[")


#: A certificate's size at most (one is about 300 bytes).
CERTIFICATE_MAX_BYTES = 65_536


def create_certificates(directory: str | Path, name: str) -> tuple[Path, Path]:
    """Write ``NAME.key`` and ``NAME.key_secret`` into ``directory`` (created if needed);
    return their paths. ``name`` is a plain file name (no folder, no leading dot: a hidden
    ``.key`` would still be allowed as a client's); files there are never overwritten
    (FileExistsError). The secret file is created readable by its owner only, before a key
    is written into it."""
    if not name or Path(name).name != name or name.startswith("."):
        raise SettingError(
            f"a certificate name is a plain file name not starting with '.': {name!r}"
        )
    directory = Path(directory)
    # Each level made at most 0755 (under umask 000 others could replace a pair).
    for level in reversed([p for p in (directory, *directory.parents) if not p.exists()]):
        try:
            level.mkdir(mode=0o755, exist_ok=True)
        except FileExistsError:  # a link to nowhere (not "exists"), or a file made meanwhile
            raise NotADirectoryError(f"{level} is not a directory") from None
    if not directory.is_dir():  # a file of that name: no certificate there, as "exists" says
        raise NotADirectoryError(f"{directory} is not a directory")
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    made: list[Path] = []
    try:
        for path, mode in ((public, 0o644), (secret, 0o600)):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))
            made.append(path)
        zmq.auth.create_certificates(directory, name)  # into the files made above
    except BaseException:
        for path in made:
            path.unlink()
        raise
    return public, secret


def _load_certificate(path: str | Path) -> tuple[bytes, bytes | None, int]:
    """(public, secret or None) keys of a certificate file, read as pyzmq's
    ``load_certificate`` reads one, and the mode of the file read; CurveError naming it and
    why not (pyzmq calls a missing file "Invalid certificate file")."""
    if not Path(path).exists():
        raise CurveError(f"cannot read the CURVE certificate {path}: no such file")
    keys: dict[bytes, bytes] = {}
    try:
        data, mode = _certificate_bytes(path)
        for line in (raw.strip() for raw in data.split(b"\n")):
            for name in (b"public-key", b"secret-key"):
                if line.startswith(name):
                    keys[name] = line.split(b"=", 1)[1].strip(b" \t'\"")
            if all(keys.get(name) for name in (b"public-key", b"secret-key")):
                break
    except OSError as e:
        raise CurveError(f"cannot read the CURVE certificate {path}: {e.strerror or e}") from None
    except IndexError:  # a key line without "="
        raise CurveError(
            f"cannot read the CURVE certificate {path}: a key line without its value"
        ) from None
    if b"public-key" not in keys:
        raise CurveError(f"cannot read the CURVE certificate {path}: No public key found in it")
    return keys[b"public-key"], keys.get(b"secret-key"), mode


def _certificate_bytes(path: str | Path) -> tuple[bytes, int]:
    """The bytes and mode of certificate file ``path``: a regular file of at most
    ``CERTIFICATE_MAX_BYTES`` (a FIFO among the allowed keys held the authenticator in its
    open for ever, every client refused; a link to /dev/zero filled the memory)."""
    _regular(path, os.stat(path))  # a device is not even opened
    try:  # a FIFO put there since the stat opens at once, refused below
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except BlockingIOError:  # a lease (an SMB oplock, an NFS delegation) being broken
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _regular(path, info := os.fstat(fd))  # the file read, whatever the path names since
        with os.fdopen(os.dup(fd), "rb") as f:  # read to its end, however it comes
            return f.read(CERTIFICATE_MAX_BYTES), info.st_mode
    finally:
        os.close(fd)


def _regular(path: str | Path, info: os.stat_result) -> None:
    """CurveError unless ``info`` is a regular file's of at most ``CERTIFICATE_MAX_BYTES``."""
    if not stat.S_ISREG(info.st_mode):
        raise CurveError(f"cannot read the CURVE certificate {path}: not a regular file")
    if info.st_size > CERTIFICATE_MAX_BYTES:
        raise CurveError(
            f"cannot read the CURVE certificate {path}: {info.st_size} bytes, past the "
            f"{CERTIFICATE_MAX_BYTES} a certificate can take"
        )


def _checked(path: str | Path, field: str, key: bytes) -> bytes:
    """``key`` where it is one libzmq takes (40 Z85 characters); else a CurveError naming
    the file (libzmq would say only "Invalid argument")."""
    if len(key) != 40 or not set(key) <= set(Z85CHARS):  # ZeroMQ RFC 32's alphabet
        raise CurveError(f"{path}: its {field} is not a CURVE key (40 Z85 characters)")
    return key


def load_keypair(path: str | Path) -> tuple[bytes, bytes]:
    """(public, secret) keys of a secret certificate file; a CurveError where users other
    than its owner and group may read or write it (used without a word, it was anyone's on
    the host; ssh refuses a group's access too, which deployments sharing keys through a
    group use here)."""
    public, secret, mode = _load_certificate(path)
    if secret is None:
        raise CurveError(f"{path} holds no secret key (use the NAME.key_secret file)")
    if mode & 0o007:
        raise CurveError(
            f"{path}: other users may read or write this secret key (mode "
            f"{stat.S_IMODE(mode):o}): chmod o= {path}, and make a new pair where they may "
            "have read it"
        )
    return _checked(path, "public-key", public), _checked(path, "secret-key", secret)


def load_public(path: str | Path) -> bytes:
    """The public key (Z85 text) of a certificate file (``NAME.key`` or ``.key_secret``);
    a CurveError where it is none libzmq takes (a copy cut short within the key)."""
    return _checked(path, "public-key", _load_certificate(path)[0])


def allowed_keys(directory: str | Path) -> set[bytes]:
    """Public keys (Z85) of the ``*.key`` certificates in ``directory`` (maybe none); a
    CurveError when ``directory`` is not one or cannot be listed (a mistyped path, or one
    the daemon's user may not read, would refuse every client), or a certificate there is
    damaged. One removed after the listing (a rotation's ``rm OLD.key``) is not there."""
    path = Path(directory)
    if not path.is_dir():
        why = "is not a directory" if path.exists() else "does not exist"
        raise CurveError(f"the allowed CURVE keys directory {path} {why}")
    try:  # (pathlib's glob takes a folder it may not list for one without certificates)
        with os.scandir(path) as entries:
            names = sorted(e.name for e in entries if e.name.endswith(".key"))
    except OSError as e:
        raise CurveError(
            f"cannot list the allowed CURVE keys directory {path}: {e.strerror or e}"
        ) from None
    keys = set()
    for name in names:
        try:
            keys.add(load_public(path / name))
        except CurveError:
            if os.path.lexists(path / name):
                raise
    return keys


def make_server(socket: zmq.Socket[Any], secret_certificate: str | Path) -> None:
    """Make ``socket`` a CURVE server with this secret certificate (before bind/connect),
    in the ZAP domain :data:`ZAP_DOMAIN`, enforced: a client is admitted only when a ZAP
    handler (``streamtrk.service.auth``) answers yes; libzmq would admit any client while
    none answers (before it starts, after it stops)."""
    public, secret = load_keypair(secret_certificate)
    socket.curve_publickey, socket.curve_secretkey = public, secret
    socket.curve_server = True
    socket.zap_domain = ZAP_DOMAIN.encode()
    socket.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)


def make_client(
    socket: zmq.Socket[Any], secret_certificate: str | Path, server_certificate: str | Path
) -> None:
    """Make ``socket`` a CURVE client: its own secret certificate, and the public one of the
    server it talks to (before bind/connect)."""
    public, secret = load_keypair(secret_certificate)
    socket.curve_publickey, socket.curve_secretkey = public, secret
    socket.curve_serverkey = load_public(server_certificate)
