"""Errors every command reports the same way: one line on stderr, exit code 2."""


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""
