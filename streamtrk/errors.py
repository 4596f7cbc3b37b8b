"""Errors that every command reports alike."""

from __future__ import annotations


class SettingError(ValueError):
    """A setting the caller gave, out of range or at odds with another: a command line's
    (or a configuration file's) refusal, exit status 2 as for argparse's own; a ValueError
    to callers of the library."""
