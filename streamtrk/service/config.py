"""The daemon's configuration: one typed dataclass, loaded from TOML, environment and flags.

Precedence, lowest first: the embedded defaults, the TOML file (``--config``), the
``STREAMTRK_<SETTING>`` environment variables, the command-line flags. Every setting has
all three spellings: ``max_batch_events`` in TOML, ``STREAMTRK_MAX_BATCH_EVENTS`` in the
environment, ``--max-batch-events`` on the command line.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from streamtrk import tomlio
from streamtrk.detector import MAX_BEAM_SPOT
from streamtrk.recon.choices import (
    DEVICES,
    ENGINE_CACHE_ENV,
    ENGINES,
    PRECISIONS,
    threshold_ok,
)
from streamtrk.recon.kernels import SANITIZE_ENV
from streamtrk.service import faults
from streamtrk.threads import MAX_TORCH_THREADS
from streamtrk.wire.curve import bound_host, exposed_without_curve
from streamtrk.wire.schema import COLUMNS

ENV_PREFIX = "STREAMTRK_"
CHOICES: dict[str, tuple[str, ...]] = {
    "device": ("auto", *DEVICES),
    "engine": ENGINES,
    "precision": PRECISIONS,
    "overload": ("block", "reject"),
    "log_format": ("plain", "json"),
    "log_level": ("debug", "info", "warning", "error"),
}
#: Settings a SIGHUP cannot change (they shape sockets, queues or the HTTP server).
RESTART_ONLY: frozenset[str] = frozenset(
    {
        "input",
        "output",
        "connect",
        "http",
        "queue_capacity",
        "reply_capacity",
        "sndhwm",
        "rcvhwm",
        "max_hits",
        "max_message_bytes",
        "max_frames",
        "dead_letter",
        "dead_letter_max_bytes",
        "torch_threads",
        "linger_ms",
        "curve_secret_key",
        "curve_allowed_keys",
        "allow_insecure",
    }
)


class ConfigError(ValueError):
    """An invalid setting; the message names it and where its value came from."""

    def __init__(self, message: str, *settings: str) -> None:
        super().__init__(message)
        self.settings = settings


def _help(text: str) -> dict[str, str]:
    """Field metadata: the setting's help text (flags, ``--print-config``)."""
    return {"help": text}


@dataclass(frozen=True)
class ServeConfig:
    """Every setting of ``streamtrk serve`` (see ``streamtrk serve --help``)."""

    device: str = field(
        default="auto",
        metadata=_help("auto (cuda if torch sees a GPU and cupy imports), cpu, cuda"),
    )
    engine: str = field(
        default="auto",
        metadata=_help(
            "edge classifier engine: auto (tensorrt, else compile on CUDA; eager on CPU), "
            "eager, compile, tensorrt"
        ),
    )
    precision: str = field(default="fp32", metadata=_help("network precision: fp32, bf16, fp16"))
    cuda_graphs: bool = field(
        default=False,
        metadata=_help("replay CUDA graphs per shape bucket (engine compile on CUDA)"),
    )
    torch_threads: int = field(
        default=0,
        metadata=_help(
            "torch CPU threads (0: the CPUs this process may use: affinity mask, cgroup quota)"
        ),
    )
    model: Path | None = field(default=None, metadata=_help("model directory (default: shipped)"))
    threshold: float | None = field(
        default=None, metadata=_help("edge-score threshold (default: the model's)")
    )
    input: str = field(default="tcp://127.0.0.1:5555", metadata=_help("hits in (PULL socket)"))
    output: str = field(default="tcp://127.0.0.1:5556", metadata=_help("tracks out (PUSH socket)"))
    connect: bool = field(
        default=False, metadata=_help("connect both sockets instead of binding (farm mode)")
    )
    curve_secret_key: Path | None = field(
        default=None,
        metadata=_help(
            "CURVE: the daemon's secret certificate (NAME.key_secret of `streamtrk keys`); "
            "both sockets then admit only allowed clients"
        ),
    )
    curve_allowed_keys: Path | None = field(
        default=None,
        metadata=_help(
            "CURVE: directory of the allowed clients' public certificates (*.key), read again "
            "at a handshake once it has changed, at least once a second (unset: none allowed)"
        ),
    )
    allow_insecure: bool = field(
        default=False,
        metadata=_help("bind an address other than loopback without CURVE (refused otherwise)"),
    )
    http: str = field(default="127.0.0.1:10062", metadata=_help("HOST:PORT of /metrics and health"))
    max_batch_events: int = field(default=8, metadata=_help("most events in one batch"))
    max_batch_hits: int = field(
        default=0,
        metadata=_help("most hits in one batch; 0: 100000 on the CPU, 2000000 on a GPU"),
    )
    max_queue_delay_ms: float = field(
        default=5.0, metadata=_help("longest wait for a batch to fill after its first event")
    )
    deadline_ms: float | None = field(
        default=None, metadata=_help("default per-event deadline from receipt (unset: no deadline)")
    )
    queue_capacity: int = field(default=16, metadata=_help("events waiting to be batched"))
    reply_capacity: int = field(default=64, metadata=_help("replies waiting to be sent"))
    overload: str = field(
        default="block", metadata=_help("full queue: block the sender, or reject with 'overloaded'")
    )
    sndhwm: int = field(default=100, metadata=_help("ZeroMQ send high-water mark (messages)"))
    rcvhwm: int = field(
        default=8,
        metadata=_help(
            "ZeroMQ receive high-water mark, messages per peer (each up to max_message_bytes)"
        ),
    )
    linger_ms: int = field(
        default=1000,
        metadata=_help(
            "ZeroMQ LINGER of the output socket (unsent replies) where it closes outside a "
            "drain, after its thread failed; in a drain, what is left of drain_timeout_s"
        ),
    )
    stall_timeout_s: float = field(
        default=300.0,
        metadata=_help(
            "/healthz fails when a thread with work makes no progress this long (longer than "
            "the slowest batch)"
        ),
    )
    drain_timeout_s: float = field(
        default=30.0, metadata=_help("longest drain on SIGTERM/SIGINT before exiting")
    )
    dead_letter: Path | None = field(
        default=None,
        metadata=_help(
            "recording file for input that gets no reply: unidentifiable messages, and "
            "replies (tracks messages) sent to the input (unset: not kept)"
        ),
    )
    dead_letter_max_bytes: int = field(
        default=64 * 1024 * 1024, metadata=_help("size cap of the dead-letter file")
    )
    log_format: str = field(default="plain", metadata=_help("plain or json (one object a line)"))
    log_level: str = field(default="info", metadata=_help("debug, info, warning or error"))
    max_hits: int = field(default=1_000_000, metadata=_help("decoder limit: most hits per event"))
    budget_scale: float = field(
        default=1.0,
        metadata=_help(
            "times the work budget, per hit and per event (docs/reconstruction.md): events "
            "past it are answered too_dense; raise it for pileup denser than MU=400"
        ),
    )
    beam_spot_x_mm: float = field(
        default=0.0,
        metadata=_help(
            "x of the beam line the reconstruction is centred on (tracks' d0, phi, z0 are of "
            "the perigee to it); set it where streamtrk_beam_spot_x_meters reads the beam "
            "(x 1000: that metric is in metres)"
        ),
    )
    beam_spot_y_mm: float = field(
        default=0.0, metadata=_help("y of the beam line the reconstruction is centred on")
    )
    max_message_bytes: int = field(
        default=32 * 1024 * 1024,
        metadata=_help("most bytes of one message (frames together); larger ones are refused"),
    )
    max_frames: int = field(
        default=32,
        metadata=_help(
            "most frames of one message (at least 8: a hits message's); more are refused"
        ),
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            _check(f.name, getattr(self, f.name))
        if one_endpoint(self.input, self.output):
            raise ConfigError(
                f"input and output must be two endpoints, got {self.input!r} and {self.output!r}",
                "input",
                "output",
            )
        for name in ("input", "output") if self.connect else ():
            if why := endpoint_problem(getattr(self, name), bind=False):
                raise ConfigError(f"{name} {why} (connect = true)", name, "connect")
        for name in () if self.connect else ("input", "output"):  # bound here, as http is
            if one_endpoint(f"tcp://{self.http}", getattr(self, name)):
                raise ConfigError(
                    f"http and {name} must be two addresses, got {self.http!r} and "
                    f"{getattr(self, name)!r}",
                    "http",
                    name,
                )
        if self.curve_allowed_keys is not None and self.curve_secret_key is None:
            raise ConfigError(
                "curve_allowed_keys is set without curve_secret_key: CURVE would be off and "
                "no client checked; set curve_secret_key (the daemon's NAME.key_secret) too",
                "curve_allowed_keys",
                "curve_secret_key",
            )
        if not self.connect and self.curve_secret_key is None and not self.allow_insecure:
            remedy = (
                'Set curve_secret_key and curve_allowed_keys (docs/operations.md, "Keys"), '
                "or allow_insecure = true on a trusted network"
            )
            for name in ("input", "output"):
                if why := exposed_without_curve(getattr(self, name), remedy):
                    raise ConfigError(f"{name} {why}", name, "curve_secret_key", "allow_insecure")
        if not math.hypot(self.beam_spot_x_mm, self.beam_spot_y_mm) <= MAX_BEAM_SPOT:
            raise ConfigError(
                f"the beam spot ({self.beam_spot_x_mm}, {self.beam_spot_y_mm}) mm must lie "
                f"within {MAX_BEAM_SPOT:g} mm of the z axis",
                "beam_spot_x_mm",
                "beam_spot_y_mm",
            )
        if self.engine == "tensorrt" and self.device == "cpu":
            raise ConfigError("engine tensorrt needs device cuda (or auto)", "engine", "device")
        if self.queue_capacity < self.max_batch_events:
            raise ConfigError(
                f"queue_capacity ({self.queue_capacity}) must be at least "
                f"max_batch_events ({self.max_batch_events})",
                "queue_capacity",
                "max_batch_events",
            )

    @property
    def http_address(self) -> tuple[str, int]:
        return split_http(self.http)

    def to_toml(self) -> str:
        """The configuration as TOML; unset optional settings appear commented out."""
        lines = []
        for f in fields(self):
            value = getattr(self, f.name)
            lines.append(f"# {f.metadata['help']}")
            lines.append(f"# {f.name} = (unset)" if value is None else _shown(f.name, value))
        return "\n".join(line.rstrip("\n") for line in lines) + "\n"


# --------------------------------------------------------------------------- checks


_POSITIVE_INT = (
    "max_message_bytes",
    "max_frames",
    "max_batch_events",
    "queue_capacity",
    "reply_capacity",
    "dead_letter_max_bytes",
    "max_hits",
    "sndhwm",  # ZeroMQ's 0 is no limit: the memory bound would not hold
    "rcvhwm",
)
_NONNEG_INT = ("linger_ms", "torch_threads", "max_batch_hits")
#: Largest values: ZeroMQ socket options are C ints, torch's thread count too (more than a
#: few thousand threads crash it), byte and hit counts int64 after scaling.
MAX_SETTING_INT = {
    "sndhwm": 2**31 - 1,
    "rcvhwm": 2**31 - 1,
    "linger_ms": 2**31 - 1,
    "torch_threads": MAX_TORCH_THREADS,
    "max_frames": 2**31 - 1,
    "max_hits": 2**40,
    "max_batch_hits": 2**40,
    "max_batch_events": 2**31 - 1,
    "queue_capacity": 2**31 - 1,
    "reply_capacity": 2**31 - 1,
    "max_message_bytes": 2**62,
    "dead_letter_max_bytes": 2**62,
}


#: Smallest values beyond positive: a hits message is a header and a frame per column.
MIN_SETTING_INT = {"max_frames": 1 + len(COLUMNS["hits"])}


#: The longest drain: the emitter's LINGER in a drain is what is left of it, in ms, a C int.
MAX_DRAIN_S = (2**31 - 1) // 1000


def _check(name: str, value: Any) -> None:
    def bad(why: str) -> ConfigError:
        return ConfigError(f"{name} {why}, got {value!r:.200}", name)

    if name in CHOICES and value not in CHOICES[name]:
        raise bad(f"must be one of {', '.join(CHOICES[name])}")
    if name in _POSITIVE_INT and value < 1:
        raise bad("must be a positive integer")
    if name in _NONNEG_INT and value < 0:
        raise bad("must be a non-negative integer")
    if name in MIN_SETTING_INT and value < MIN_SETTING_INT[name]:
        raise bad(f"must be at least {MIN_SETTING_INT[name]} (a hits message's frames)")
    if name in MAX_SETTING_INT and value > MAX_SETTING_INT[name]:
        raise bad(f"must be at most {MAX_SETTING_INT[name]}")
    if name in ("stall_timeout_s", "budget_scale") and not (math.isfinite(value) and value > 0):
        raise bad("must be a finite number > 0")
    if name in ("beam_spot_x_mm", "beam_spot_y_mm") and not math.isfinite(value):
        raise bad("must be a finite number")
    if name in ("max_queue_delay_ms", "drain_timeout_s") and not (
        math.isfinite(value) and value >= 0
    ):
        raise bad("must be a finite number >= 0")
    if name == "drain_timeout_s" and value > MAX_DRAIN_S:
        raise bad(f"must be at most {MAX_DRAIN_S:.0f} (24 days: ZeroMQ's longest LINGER)")
    if name == "deadline_ms" and value is not None and not (math.isfinite(value) and value > 0):
        raise bad("must be a finite number > 0")
    if name == "threshold" and value is not None and not threshold_ok(value):
        raise bad("must lie in [0, 1) (an edge passes above it: 1 passes none)")
    if name in ("input", "output") and (why := endpoint_problem(value)):
        raise bad(why)
    if name == "http":
        try:
            split_http(value)
        except ValueError as e:
            raise bad(str(e)) from None


def endpoint_problem(value: str, bind: bool = True) -> str | None:
    """What makes ``value`` no ZeroMQ endpoint to bind (or, ``bind`` false, to connect to)
    for the daemon's sockets or its clients' (``"must be ..."``), or None."""
    scheme, sep, rest = value.partition("://")
    if scheme == "inproc":  # the daemon's peers are other processes
        return "must be tcp:// or ipc:// (inproc:// reaches no other process)"
    if not sep or scheme not in ("tcp", "ipc") or not rest:
        return "must be a ZeroMQ endpoint such as tcp://127.0.0.1:5555"
    host, colon, port = rest.rpartition(":")
    if scheme == "tcp" and not (colon and host and (port == "*" or _digits(port))):
        return "must be tcp://HOST:PORT, PORT a number (or * to bind a free one)"
    if scheme == "tcp" and port != "*" and int(port) > 65535:
        return "must have a port of 0 to 65535 (or * to bind a free one)"
    address = bound_host(rest)  # after a source address (tcp://SOURCE;HOST:PORT)
    bracketed = address.startswith("[") and address.endswith("]")
    if scheme == "tcp" and ":" in address and not bracketed:
        return "must put an IPv6 address in brackets, such as tcp://[::1]:5555"
    if scheme == "tcp" and not bind and ("*" in (host, port) or int(port) == 0):
        return "must name the host and port to connect to (* and port 0 are for binding)"
    return None


#: Hosts that bind every address (a port taken by one is taken for any host on it).
_ANY_HOST = frozenset({"*", "0.0.0.0", "[::]"})


def one_endpoint(a: str, b: str) -> bool:
    """Whether endpoints ``a`` and ``b`` are one (the second bind would fail, or both sockets
    connect to one peer): the same string (other than tcp), or tcp on one port number (not
    ``*`` or 0, chosen at bind: two of those are never one; 05555 is 5555) whose hosts are
    the same, ``localhost`` taken as 127.0.0.1, or either a host that binds every address."""
    (scheme_a, _, rest_a), (scheme_b, _, rest_b) = a.partition("://"), b.partition("://")
    if not scheme_a == scheme_b == "tcp":
        return a == b
    port_a, port_b = (
        int(port) if _digits(port := rest.rpartition(":")[2]) else port for rest in (rest_a, rest_b)
    )
    if port_a != port_b or port_a in ("*", 0):
        return False
    hosts = {
        {"localhost": "127.0.0.1"}.get(h.lower(), h.lower())
        for h in (bound_host(rest_a), bound_host(rest_b))
    }
    return len(hosts) == 1 or bool(hosts & _ANY_HOST)


def split_http(value: str) -> tuple[str, int]:
    """(host, port) of ``HOST:PORT`` (an IPv6 host in brackets); ValueError if it is not one,
    or names no host the HTTP server can bind (``*``, ZeroMQ's every address)."""
    host, sep, port = value.rpartition(":")
    name = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not (sep and name and _digits(port)) or any(c in "[]/" or c.isspace() for c in name):
        raise ValueError("must be HOST:PORT, such as 127.0.0.1:10062")
    if name == "*":
        raise ValueError("must name a host: every address is 0.0.0.0 (or [::] for IPv6)")
    if int(port) > 65535:
        raise ValueError("must have a port of 0 to 65535")
    return name, int(port)


# --------------------------------------------------------------------------- parsing


_TYPE_NAMES = {"bool": "true or false", "int": "an integer", "float": "a number"}


def _typed_ok(base: str, v: Any) -> bool:
    """Whether a TOML value ``v`` has the type of a field of type ``base``."""
    return {
        "bool": isinstance(v, bool),
        "int": isinstance(v, int) and not isinstance(v, bool),
        "float": isinstance(v, int | float) and not isinstance(v, bool),
    }.get(base, isinstance(v, str))


def _ok_unquoted(base: str, v: Any) -> bool:
    """Whether the string ``v``, unquoted, would be a TOML value of type ``base`` ("4" for an
    integer, "true" for a boolean; not "yes", nor "four")."""
    if not isinstance(v, str) or base not in _TYPE_NAMES or "\n" in v:
        return False
    try:
        return _typed_ok(base, tomllib.loads(f"v = {v}").get("v"))
    except tomllib.TOMLDecodeError:
        return False


def _type_name(f: Any) -> str:
    """The name of a setting's type (``"int | None"``)."""
    return f.type if isinstance(f.type, str) else f.type.__name__


def _base_type(f: Any) -> str:
    """The name of a setting's type, ``None`` left out (``"int"`` for ``int | None``)."""
    return _type_name(f).replace(" | None", "")


def _flag(name: str) -> str:
    """The command-line flag of setting ``name``."""
    return "--" + name.replace("_", "-")


def _flag_given(name: str, raw: Any) -> str:
    """The flag that gave setting ``name`` the value ``raw``: a boolean's false from its
    ``--no-`` form."""
    return _flag(name).replace("--", "--no-", 1) if raw is False else _flag(name)


def _converter(f: Any) -> Callable[[Any, bool], Any]:
    """Converts a setting's value to the field's type: a TOML value must already have it
    (``typed``: no ``"4"`` for an integer), an environment or flag string is parsed; a
    choice is read in any case (``DEBUG`` is ``debug``)."""
    optional = "None" in _type_name(f)
    base = _base_type(f)
    want = _TYPE_NAMES.get(base, "a string")

    def convert(v: Any, typed: bool) -> Any:
        if optional and (v is None or (not typed and v == "")):
            return None
        if typed:
            if not _typed_ok(base, v):  # "4" for 4: a string, said when 4 would do
                hint = ", unquoted in TOML" if _ok_unquoted(base, v) else ""
                raise ValueError(f"must be {want}{hint}")
        elif base == "bool":
            s = str(v).strip().lower()
            if s not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                raise ValueError(f"must be {want}")
            return s in ("1", "true", "yes", "on")
        try:
            if base in ("int", "float") and (not str(v).isascii() or "_" in str(v)):
                raise ValueError  # int() and float() also take other scripts' digits, and 1_0
            if base == "int":
                return int(str(v).strip())
            if base == "float":
                return float(v)
        except (ValueError, OverflowError):  # OverflowError: an integer past any float
            raise ValueError(f"must be {want}") from None
        if base == "Path" and v == "":  # Path("") would be the current directory
            raise ValueError("must be a path (leave it out for the default)")
        if isinstance(v, str) and not _utf8(v):  # bytes the environment or argv could not decode
            raise ValueError("must be UTF-8 text (the configuration file, TOML, holds no other)")
        if f.name in CHOICES and isinstance(v, str):
            return v.lower()  # choices in any case: STREAMTRK_LOG_LEVEL=DEBUG
        return Path(v) if base == "Path" else v

    return convert


_FIELDS = {f.name: f for f in fields(ServeConfig)}


def _utf8(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8 (not so: undecodable bytes, as surrogates)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _digits(text: str) -> bool:
    """ASCII digits only (``str.isdigit`` also takes '²' and other scripts' digits)."""
    return text.isascii() and text.isdigit()


def _convert(
    values: dict[str, tuple[Any, str]], key: str, raw: Any, source: str, typed: bool = False
) -> None:
    name = key.replace("-", "_")
    if name not in _FIELDS:
        close = difflib.get_close_matches(name, _FIELDS, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        if isinstance(raw, dict):  # a [table], as other daemons' files have them
            hint = " (a table: the settings are top-level keys)"
        raise ConfigError(f"unknown setting {key!r} in {source}{hint}", key)
    try:
        values[name] = (_converter(_FIELDS[name])(raw, typed), source)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{name} {e}, got {raw!r:.200} (from {source})", name) from None


def _read_file(path: Path) -> tuple[str, dict[str, Any]]:
    """The text of the configuration file ``path`` and its TOML table; ConfigError saying
    why not."""
    try:
        text = tomlio.read_config_text(path, ConfigError)
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text: {e}") from None
    try:
        return text, tomllib.loads(text)
    except tomlio.NOT_TOML as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None


def _key_line(text: str, key: str) -> int | None:
    """The line (from 1) of the TOML ``text`` that sets the top-level ``key``, bare or
    quoted, or opens it as a table (``[key]``, ``[key.sub]``); None where no line starts
    so (a key set in an inline table). A line so within a multi-line string is text, not it:
    the TOML before it does not parse."""
    spelt = "|".join(re.escape(k) for k in (key, f'"{key}"', f"'{key}'"))
    pattern = rf"^[ \t]*(?:(?:{spelt})[ \t]*=|\[\[?[ \t]*(?:{spelt})[ \t]*[\].])"
    for match in re.finditer(pattern, text, re.MULTILINE):
        try:
            tomllib.loads(text[: match.start()])
        except ValueError:  # TOMLDecodeError: an unclosed string
            continue
        return text.count("\n", 0, match.start()) + 1
    return None


def _file_settings(path: Path) -> dict[str, tuple[str, Any, str]]:
    """The file's settings: setting name -> (the key as written, its value, where: "config
    file F, line N"), a dash read as an underscore (``max-batch-events`` is
    ``max_batch_events``); ConfigError where a setting is given in both spellings."""
    text, table = _read_file(path)
    settings: dict[str, tuple[str, Any, str]] = {}
    for key, raw in table.items():
        name = key.replace("-", "_")
        line = _key_line(text, key)
        at = "" if line is None else f", line {line}"
        if name in settings:
            first, _, first_at = settings[name]
            raise ConfigError(
                f"{name} is given twice in {first_at}, as {first!r}, and{at}, as {key!r}", name
            )
        settings[name] = (key, raw, f"config file {path}{at}")
    return settings


def log_format_asked(path: Path | None, env: Mapping[str, str], flags: Mapping[str, Any]) -> str:
    """The log format the sources of :func:`load_config` ask for, with its precedence, where
    the configuration may not load: to report why in the format asked for."""
    asked: Any = "plain"
    if (flag := flags.get("log_format")) is not None:
        asked = flag
    elif (var := env.get(ENV_PREFIX + "LOG_FORMAT")) is not None:
        asked = var
    elif path is not None:
        with contextlib.suppress(ConfigError):
            asked = _file_settings(path).get("log_format", ("", "plain", ""))[1]
    return str(asked).lower()  # a choice, in any case


def load_config(
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> ServeConfig:
    """Defaults, then the TOML file, then ``STREAMTRK_*`` variables, then ``flags``
    (setting name -> value, None meaning not given). Raises :class:`ConfigError`."""
    values = _given(path, env, flags)
    try:
        return ServeConfig(**{k: v for k, (v, _) in values.items()})
    except ConfigError as e:
        sources = [values[k][1] if k in values else "the default" for k in e.settings]
        where = ", ".join(
            f"{k} from {src}" if len(sources) > 1 else f"from {src}"
            for k, src in zip(e.settings, sources, strict=True)
        )
        raise ConfigError(f"{e} ({where})", *e.settings) from None


def source_of(
    name: str,
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> str:
    """Where the setting ``name`` of :func:`load_config` (same arguments) came from: "flag
    --model", "environment variable STREAMTRK_MODEL", "config file F, line N" or "the
    default"."""
    given = _given(path, env, flags)
    return given[name][1] if name in given else "the default"


def shadowed(path: Path | None, env: Mapping[str, str], flags: Mapping[str, Any]) -> list[str]:
    """A warning for each setting of the file ``path`` that a variable or flag overrides
    with another value: an operator who edits the file and sends SIGHUP would otherwise
    see nothing change, and no word why. Not for a file systemd hands the daemon as a
    credential (``LoadCredential``): its copy of the same file, in the directory
    ``$CREDENTIALS_DIRECTORY`` names, is the file's value."""
    if path is None:
        return []
    in_file, used = _given(path, {}, {}), _given(path, env, flags)
    credentials = env.get("CREDENTIALS_DIRECTORY")

    def copied(value: Any, instead: Any) -> bool:
        return (
            credentials is not None
            and isinstance(value, Path)
            and isinstance(instead, Path)
            and instead == Path(credentials) / value.name
        )

    return [
        f"{where}: {_shown(name, value)} is overridden by {used[name][1]}: "
        f"{_shown(name, used[name][0])}"
        for name, (value, where) in in_file.items()
        if used[name][0] != value and not copied(value, used[name][0])
    ]


def _shown(name: str, value: Any) -> str:
    """``name = value`` as TOML writes it (``name unset`` for None)."""
    if value is None:
        return f"{name} unset"
    return tomlio.dumps({name: str(value) if isinstance(value, Path) else value}).strip()


def _given(
    path: Path | None, env: Mapping[str, str] | None, flags: Mapping[str, Any] | None
) -> dict[str, tuple[Any, str]]:
    """The settings given (name -> value and its source), each from the last place that
    gives it: the file, the environment, the flags."""
    values: dict[str, tuple[Any, str]] = {}
    if path is not None:
        for key, raw, where in _file_settings(path).values():
            _convert(values, key, raw, where, typed=True)
    env = os.environ if env is None else env
    for name in _FIELDS:
        var = ENV_PREFIX + name.upper()
        if var in env:
            _convert(values, name, env[var], f"environment variable {var}")
    for name, raw in (flags or {}).items():
        if raw is not None:
            _convert(values, name, raw, f"flag {_flag_given(name, raw)}")
    return values


#: The variables of the daemon's settings.
SETTING_VARIABLES = frozenset(ENV_PREFIX + name.upper() for name in _FIELDS)
#: ``STREAMTRK_*`` variables that are read elsewhere, not settings of the daemon: the
#: project's own (the tests' strict skips, the compose file's image variant) among them.
OTHER_VARIABLES = frozenset(
    {
        ENGINE_CACHE_ENV,
        SANITIZE_ENV,
        faults.ENV,
        "STREAMTRK_SHARED",
        "STREAMTRK_STRICT_SKIPS",
        "STREAMTRK_VARIANT",
    }
)


def unknown_variables(env: Mapping[str, str]) -> list[str]:
    """A warning for each ``STREAMTRK_*`` variable that names no setting (it would otherwise
    be ignored without a word), with the settings' variables it is close to."""
    known = SETTING_VARIABLES | OTHER_VARIABLES
    out = []
    for var in sorted(k for k in env if k.startswith(ENV_PREFIX) and k not in known):
        close = difflib.get_close_matches(var, sorted(known), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        out.append(f"environment variable {var} is not a setting and is ignored{hint}")
    return out


def number_flags() -> set[str]:
    """The flags of the numeric settings (their values may start with a minus: refused, or
    taken, by the setting's own range, not by argparse as an unknown option)."""
    return {_flag(f.name) for f in fields(ServeConfig) if _base_type(f) in ("int", "float")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting (default None: not given)."""
    for f in fields(ServeConfig):
        flag = _flag(f.name)
        env = ENV_PREFIX + f.name.upper()
        default = "unset" if f.default in (None, MISSING) else f.default
        help_ = f"{f.metadata['help']} [{env}; default {default}]"
        if f.type in ("bool", bool):
            parser.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_
            )
        else:
            parser.add_argument(flag, dest=f.name, default=None, help=help_)


def flags_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The setting flags of parsed arguments (None where not given)."""
    return {name: getattr(args, name, None) for name in _FIELDS}
