"""Structured logging to stderr: plain text or JSON lines.

Pass structured fields as ``log.info("message", extra={"fields": {...}})``; plain format
appends them as ``key=value``, JSON format merges them into the line's object.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any

LOGGER = "streamtrk"


class Throttle:
    """One warning at most every ``every_s`` seconds about a condition a peer can repeat at
    will (a log line each time would flood the log): :meth:`count` says when one is due."""

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self._since = 0  # occurrences since the last warning
        self._next = 0.0  # monotonic time from which the next warning may go
        self._last = 0.0  # monotonic time of the last occurrence

    def count(self, n: int = 1) -> int:
        """Count ``n`` occurrences; when a warning is due, the occurrences since the last one
        (these included), else 0."""
        self._since += n
        now = time.monotonic()
        if n:
            self._last = now
        if now < self._next:
            return 0
        since, self._since, self._next = self._since, 0, now + self.every_s
        return since

    def pending(self, final: bool = False) -> int:
        """The occurrences not warned about yet, once a warning about them is due and none
        has come for ``every_s`` (the burst stopped; the warning then counts as given), else
        0: for a caller that polls, so that the last of a burst is said without waiting for
        a next occurrence, while a stream still going gets its warnings from :meth:`count`
        (the caller's full message, not the poll's count). ``final`` (the caller stops):
        all of them, due or not."""
        if final:
            since, self._since = self._since, 0
            return since
        if not self._since or time.monotonic() - self._last < self.every_s:
            return 0
        return self.count(0)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return getattr(record, "fields", None) or {}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class PlainFormatter(logging.Formatter):
    """``time level logger: message key=value ...``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        extra = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        text = super().formatMessage(record)
        return f"{text} {extra}" if extra else text


def configure(fmt: str, level: str) -> None:
    """(Re)configure the ``streamtrk`` logger: one stderr handler, ``fmt`` plain or json. The
    handlers are swapped in one assignment: other threads' records (a reload's) never find
    none, which would send them to logging's last resort."""
    logger = logging.getLogger(LOGGER)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else PlainFormatter())
    logger.handlers = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False
