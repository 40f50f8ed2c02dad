"""What the subcommands share."""

from __future__ import annotations


class UsageError(Exception):
    """Bad input from the user: printed without a traceback, exit status 2."""
