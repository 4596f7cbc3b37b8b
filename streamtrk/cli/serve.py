"""``streamtrk serve``: the reconstruction daemon."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from streamtrk.cli.common import SIGNED_OPTIONS, subcommand
from streamtrk.stop import StopFlag, handlers_kept

if TYPE_CHECKING:
    from streamtrk.service.config import ServeConfig


def _serve_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--config", type=Path, help="TOML configuration file")
    s.add_argument(
        "--print-config", action="store_true", help="print the effective configuration and exit"
    )
    from streamtrk.service.config import add_arguments, number_flags

    add_arguments(s)
    SIGNED_OPTIONS.update(number_flags())  # --beam-spot-x-mm -1e-3


@subcommand(
    "serve",
    _serve_arguments,
    takes_hangup=True,
    help="run the daemon: hits in, tracks out, metrics and health over HTTP",
    description="Run the reconstruction daemon. Settings come from the embedded defaults, "
    "then --config FILE (TOML, keys named like the flags with underscores), then "
    "STREAMTRK_<SETTING> environment variables, then these flags. Signals: SIGTERM/SIGINT "
    "drain and exit, SIGHUP reloads configuration and model.",
)
def _serve(args: argparse.Namespace) -> int:
    # The handlers set here and by the daemon are undone on return (``main`` may run
    # in-process: a --print-config, tests), as SIGINT would set a flag nothing reads.
    with handlers_kept(signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        return _serve_kept(args)


def _serve_kept(args: argparse.Namespace) -> int:
    # SIGHUP's default action ends the process: one during the imports below (seconds, with
    # torch) or while ``main`` read the command line would stop the daemon unlogged, and a
    # supervisor restarts no process a SIGHUP ended (systemd's Restart=on-failure). Kept, it
    # makes the daemon reload once ready.
    # SIGTERM's would end it unlogged too (status -15), SIGINT's with a traceback: kept,
    # either stops the daemon as it starts (logged, status 0; nothing received yet).
    hup, stop = args.hangup, StopFlag()
    signal.signal(signal.SIGHUP, lambda *_: hup.set())
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    from streamtrk.recon.device import cuda_unavailable, resolve_device
    from streamtrk.recon.engine import engine_unavailable
    from streamtrk.recon.model import model_missing
    from streamtrk.service.config import (
        ConfigError,
        flags_from_args,
        load_config,
        log_format_asked,
        shadowed,
        source_of,
        unknown_variables,
    )

    flags = flags_from_args(args)

    def load() -> ServeConfig:
        return load_config(args.config, os.environ, flags)

    def overridden() -> list[str]:  # after load(); a file since made invalid: said by a reload
        try:
            return shadowed(args.config, os.environ, flags)
        except ConfigError:
            return []

    def refused_here(cfg: ServeConfig) -> str | None:
        """Why this host cannot serve ``cfg`` (a model, device or engine it lacks), and
        where the setting came from, or None."""
        why, setting = None, ""
        if cfg.model is not None and (no_model := model_missing(cfg.model)):
            why, setting = f"model: {no_model}", "model"
        elif cfg.device == "cuda" and (no_cuda := cuda_unavailable()):
            why, setting = f"device cuda: {no_cuda}", "device"
        elif cfg.engine == "tensorrt":  # the one engine refused; the others fall back
            # (quiet: before logging is set up; the model's load says it, once)
            device = resolve_device(cfg.device, warn=False)
            why, setting = engine_unavailable(cfg.engine, device), "engine"
        if why is None:
            return None
        return f"{why} (from {source_of(setting, args.config, os.environ, flags)})"

    def reload() -> ServeConfig:  # SIGHUP: refused as at start-up, the old model kept
        cfg = load()
        if why := refused_here(cfg):
            raise ConfigError(why, "model", "device", "engine")
        return cfg

    try:
        cfg = load()
    except ConfigError as e:
        # A mistyped variable is likeliest to matter now: said before the refusal.
        _serve_error(
            f"invalid configuration: {e}",
            log_format_asked(args.config, os.environ, flags),
            unknown_variables(os.environ),
        )
        return 2
    refusal = refused_here(cfg)
    if args.print_config:  # the configuration, checked on any host (a GPU node's, on a laptop)
        warnings = unknown_variables(os.environ) + overridden()
        warnings += [f"{refusal} (serving would refuse it here)"] if refusal else []
        if unusable := _curve_unusable(cfg):
            warnings.append(f"{unusable} (serving would stop at start-up here)")
        for warning in warnings:
            print(f"streamtrk serve: warning: {warning}", file=sys.stderr)
        print(cfg.to_toml(), end="")
        return 0
    if refusal:
        _serve_error(
            f"invalid configuration: {refusal}", cfg.log_format, unknown_variables(os.environ)
        )
        return 2
    from streamtrk.service.serve import serve

    return serve(cfg, reload, hup, stop, overridden)


def _curve_unusable(cfg: ServeConfig) -> str | None:
    """Why the CURVE files the configuration names cannot be used here, or None."""
    from streamtrk.wire.curve import CurveError, allowed_keys, load_keypair

    try:
        if cfg.curve_secret_key is not None:
            load_keypair(cfg.curve_secret_key)
        if cfg.curve_allowed_keys is not None:
            allowed_keys(cfg.curve_allowed_keys)
    except CurveError as e:
        return str(e)
    return None


def _serve_error(message: str, log_format: str, warnings: Sequence[str] = ()) -> None:
    """A start-up failure before the daemon's logging exists, after ``warnings``: a line
    each on stderr, a JSON object each where the configuration asks for JSON logs (as a log
    shipper reads them)."""
    if log_format == "json":
        from streamtrk.service.logs import configure

        configure("json", "warning")
        log = logging.getLogger("streamtrk.serve")
        for warning in warnings:
            log.warning(warning)
        log.error(message)
    else:
        for warning in warnings:
            print(f"streamtrk serve: warning: {warning}", file=sys.stderr)
        print(f"streamtrk serve: {message}", file=sys.stderr)
