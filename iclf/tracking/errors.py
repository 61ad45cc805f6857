"""What can go wrong with a tracking store, as one-line errors that say what to fix.

Importing this module imports neither MLflow nor Ray (the CLI catches these errors).
"""

from __future__ import annotations


class TrackingError(RuntimeError):
    """The tracking store cannot be used: a wrong password, a missing driver, a server that does not
    answer. The message is one line and names what to fix; the CLI prints it and exits 2."""


class TrackingUnavailable(TrackingError):
    """A transient failure (a locked database, a refused connection, an HTTP 5xx) outlasted the retry
    budget. Raised instead of dropping the call: a trial that meets it fails, loudly."""


__all__ = ["TrackingError", "TrackingUnavailable"]
