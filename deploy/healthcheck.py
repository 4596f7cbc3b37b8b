"""Container health probe: GET /healthz (or the path given) of the local daemon.

Usage: python healthcheck.py [PATH] [CONFIG]. The port comes from $STREAMTRK_HTTP, else
from the ``http`` key of CONFIG (default /etc/streamtrk/streamtrk.toml), else 10062; a
wildcard host (0.0.0.0, ::, *) is probed on the loopback address. Exit status 0 when the
daemon answers 200, 1 otherwise. Standard library only.
"""

from __future__ import annotations

import os
import sys
import tomllib
import urllib.request

DEFAULT_CONFIG = "/etc/streamtrk/streamtrk.toml"
WILDCARDS = {"", "0.0.0.0", "::", "[::]", "*"}


def address(config_path: str) -> str:
    http = os.environ.get("STREAMTRK_HTTP")
    if not http:
        try:
            # As the daemon reads it: a byte-order mark allowed.
            with open(config_path, encoding="utf-8-sig") as f:
                http = tomllib.loads(f.read()).get("http")
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            http = None
    host, _, port = (http or "127.0.0.1:10062").rpartition(":")
    if host in WILDCARDS:
        host = "127.0.0.1"
    return f"{host}:{port}"


def main(argv: list[str]) -> int:
    path = argv[0] if argv else "/healthz"
    config = argv[1] if len(argv) > 1 else DEFAULT_CONFIG
    url = f"http://{address(config)}{path}"
    try:
        # Directly, whatever proxy the environment names (it would get the probe).
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with direct.open(url, timeout=4) as r:
            ok = r.status == 200
    except OSError as e:
        print(f"{url}: {e}", file=sys.stderr)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
