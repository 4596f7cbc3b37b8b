"""``streamtrk keys``: a CURVE certificate pair."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from streamtrk.cli.common import subcommand


def _keys_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("directory", type=Path, help="where to write the certificates")
    s.add_argument("name", help="certificate name: NAME.key (public), NAME.key_secret")


@subcommand(
    "keys",
    _keys_arguments,
    help="write a CURVE certificate pair (NAME.key, NAME.key_secret)",
    description="Write a CurveZMQ certificate pair in pyzmq's zmq.auth format: NAME.key holds "
    "the public key (give it to the other side: a client's goes into the daemon's "
    "curve_allowed_keys directory, the daemon's to its clients' --curve-server-key), "
    "NAME.key_secret the public and the secret key (keep it; readable by its owner only). "
    "See docs/operations.md, Keys.",
)
def _keys(args: argparse.Namespace) -> int:
    from streamtrk.wire.curve import create_certificates

    try:
        public, secret = create_certificates(args.directory, args.name)
    except FileExistsError as e:
        print(f"streamtrk keys: error: {e.filename} exists; not overwritten", file=sys.stderr)
        return 1
    print(f"wrote {public} (public) and {secret} (secret)")
    return 0
