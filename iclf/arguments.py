"""Command-line parsing shared by the commands: errors are one line, overrides go anywhere."""

from __future__ import annotations

import argparse

from iclf.errors import UsageError


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are :class:`UsageError` (one line, exit 2), not a usage
    block; its subcommands' parsers are of the same class."""

    def error(self, message: str):  # noqa: D102 - argparse's hook
        raise UsageError(f"{self.prog}: {message}")


class IntermixedParser(OneLineParser):
    """Accepts ``key=value`` overrides before and after the flags (``SPEC --smoke a=1 b=2``), which a
    plain parser refuses once an optional has ended the positional list. A subcommand's parser is
    made one with ``parser.__class__ = IntermixedParser`` (the subparsers object picks the class)."""

    _inside = False

    def parse_known_args(self, args=None, namespace=None):
        if self._inside:
            return super().parse_known_args(args, namespace)
        self._inside = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False
