"""The tracking login, carried from the driver to every trial process without being written down.

MLflow reads its login from the environment of the process that makes the request
(``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``, or ``MLFLOW_TRACKING_TOKEN``; libpq
reads ``PGPASSWORD`` for a direct PostgreSQL URI). Trials run in Ray worker processes, which do not
see the driver's environment: on a real cluster they are started by each node's ``ray start``, and
even on one machine by raylets that were started before the driver set anything.

So the driver takes a :class:`Credentials` snapshot of those variables and hands it to each trial
inside its context (``tune.with_parameters``: Ray's object store, in memory), and the trial puts them
into its own environment (:meth:`Credentials.apply`) before it connects. This is deliberately not
a Ray ``runtime_env`` of ``env_vars``: Ray keeps a job's and an actor's runtime environment in its
metadata, which ``ray list`` and the dashboard display. The values are never params, tags,
artifacts, Tune config or printed: ``repr`` shows the variable names only.
"""

from __future__ import annotations

import os
from typing import Mapping

VARIABLES = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
             "PGPASSWORD")


class Credentials:
    """A snapshot of the tracking login variables that are set (names and values)."""

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, str] | None = None):
        self._values = tuple(sorted((k, str(v)) for k, v in (values or {}).items()
                                    if k in VARIABLES and v))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Credentials":
        env = os.environ if environ is None else environ
        return cls({k: env[k] for k in VARIABLES if env.get(k)})

    def apply(self) -> None:
        """Set the variables in this process's environment (a trial's, before it connects)."""
        for key, value in self._values:
            os.environ[key] = value

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self._values)

    def secrets(self) -> tuple[str, ...]:
        """The values that must never appear in a run's data (tests check this)."""
        return tuple(v for k, v in self._values if k != "MLFLOW_TRACKING_USERNAME")

    def __bool__(self) -> bool:
        return bool(self._values)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Credentials) and self._values == other._values

    def __hash__(self) -> int:
        return hash(self._values)

    def __repr__(self) -> str:
        return f"Credentials({', '.join(self.names) or 'none'})"

    def __getstate__(self):
        return {"values": self._values}  # never empty: pickle skips __setstate__ for a falsy state

    def __setstate__(self, state):
        self._values = state["values"]


__all__ = ["Credentials", "VARIABLES"]
