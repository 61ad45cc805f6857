"""Retrying transient tracking failures: one policy for every MLflow call the project makes.

Transient: a locked SQLite database ("database is locked"), a refused, reset or timed-out
connection (to an MLflow server or to PostgreSQL), a PostgreSQL server that is restarting or out of
connection slots, and an HTTP 5xx, 429 or 408 from an MLflow server. Everything else (a wrong
password, HTTP 401/403/404, a bad request) is raised at once.

:func:`retry_call` retries with exponential backoff (0.5 s doubling to at most 15 s, each pause
jittered to 50-100 % so that many trials do not retry in step) for at most ``budget_s`` seconds of
wall time (``ICLF_TRACKING_RETRY_S``, default 120; 0 turns retrying off). Then it raises
:class:`~iclf.tracking.errors.TrackingUnavailable`, naming the call, the store, the reason and the
last error: a call is never dropped, so a trial that cannot log fails instead of losing a metric.
Retrying is safe because every call the project makes is idempotent or made so by its caller:
MLflow's SQL store ignores a metric that it already has (same key, step, timestamp and value, and
:class:`~iclf.tracking.mlflow.RunLogger` builds each batch once, before the first attempt), params
may be logged again with the same value, tags and run status are overwritten, and trial runs are
found-or-created by their trial id.

MLflow has retries of its own, and the two must not multiply:

* SQLite: every MLflow session waits up to 20 s on a lock (``PRAGMA busy_timeout = 20000``) before
  it raises, and opening a store waits 5 s (the sqlite3 default). A lock shorter than that never
  reaches this layer; a longer one costs one 20 s attempt per retry, inside the same budget.
* HTTP: MLflow's client retries connection errors and 408/429/5xx itself through urllib3
  (``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` = 7 retries, backoff factor 2: up to about 4 minutes per
  call), each attempt with a 120 s timeout. Under this layer that would make a 2-minute budget
  last many minutes, so :func:`limit_http_retries` sets MLflow's retries to 0 and its timeout to
  60 s, unless those variables are already set. This layer then owns the retrying: a call gives up
  after the budget plus at most one request timeout.
"""

from __future__ import annotations

import functools
import os
import random
import re
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from iclf.tracking.errors import TrackingError, TrackingUnavailable

BUDGET_ENV = "ICLF_TRACKING_RETRY_S"
DEFAULT_BUDGET_S = 120.0

# MLflow's HTTP client settings while this layer retries (a variable already set wins).
HTTP_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}

# Lower-case fragments of error messages. PERMANENT wins: a PostgreSQL login failure reads
# "connection to server ... failed: FATAL: password authentication failed".
PERMANENT = ("password authentication failed", "authentication failed", "no pg_hba.conf entry",
             "permission denied")
TRANSIENT = ("database is locked", "database table is locked", "connection refused",
             "connection reset", "connection aborted", "remotedisconnected", "remote end closed",
             "server closed the connection", "terminating connection", "could not connect",
             "timed out", "timeout", "the database system is starting up",
             "the database system is shutting down", "the database system is in recovery mode",
             "too many clients", "remaining connection slots", "too many 5", "too many 429",
             "too many 408", "name or service not known", "temporary failure in name resolution",
             "deadlock detected", "could not serialize access", "ssl syscall error",
             "eof detected", "broken pipe")

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How long to keep retrying a call (wall time) and how to space the attempts."""

    budget_s: float = DEFAULT_BUDGET_S
    first_delay_s: float = 0.5
    max_delay_s: float = 15.0

    @classmethod
    def from_env(cls) -> "RetryPolicy":
        """The policy with ``budget_s`` from ``ICLF_TRACKING_RETRY_S`` when it is set."""
        text = os.environ.get(BUDGET_ENV, "").strip()
        if not text:
            return cls()
        try:
            budget = float(text)
        except ValueError:
            budget = -1.0
        if not budget >= 0:
            raise TrackingError(f"{BUDGET_ENV}={text!r}: expected seconds >= 0 (default "
                                f"{DEFAULT_BUDGET_S:g}; 0 = no retrying)")
        return cls(budget_s=budget)


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _http_status(exc: BaseException) -> int | None:
    """The HTTP status of an MLflow error that came back from a server, else None."""
    from mlflow.exceptions import MlflowException, RestException

    if isinstance(exc, RestException) or (isinstance(exc, MlflowException)
                                          and str(exc).startswith("API request to")):
        match = re.search(r"failed with error code (\d{3})", str(exc))
        if match:  # a response that was not MLflow's JSON error (e.g. the login check's 401)
            return int(match[1])
        try:
            return int(exc.get_http_status_code())
        except (TypeError, ValueError):
            return None
    return None


def transient_reason(exc: BaseException) -> str | None:
    """Why ``exc`` is worth retrying (a short phrase), or None when it is not transient."""
    chain = list(_chain(exc))
    text = " | ".join(f"{type(e).__name__}: {e}" for e in chain).lower()
    if any(m in text for m in PERMANENT):
        return None
    for marker in TRANSIENT:
        if marker in text:
            return marker
    for e in chain:
        status = _http_status(e)
        if status is not None:
            return f"HTTP {status}" if status >= 500 or status in (408, 429) else None
        name = type(e).__name__
        if type(e).__module__.split(".")[0] in ("requests", "urllib3") and (
                "Connection" in name or "Timeout" in name):
            return name
    return None


def one_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an error, shortened (SQLAlchemy appends the whole statement)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def retry_call(fn: Callable[..., T], *args: Any, what: str, where: str = "",
               policy: RetryPolicy | None = None, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``, retried on transient failures (see the module docstring).

    ``what`` names the call and ``where`` the store (never with a password) in the messages: one
    line on stderr when retrying starts and one when it succeeds, and the
    :class:`TrackingUnavailable` raised when the budget is spent.
    """
    policy = policy or RetryPolicy.from_env()
    start = time.monotonic()
    delay = policy.first_delay_s
    attempt = 0
    place = f" on {where}" if where else ""
    while True:
        attempt += 1
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            reason = transient_reason(exc)
            if reason is None:
                raise
            elapsed = time.monotonic() - start
            pause = min(delay, policy.max_delay_s) * (0.5 + random.random() / 2)
            if elapsed + pause > policy.budget_s:
                raise TrackingUnavailable(
                    f"{what}{place}: gave up after {attempt} attempt(s) in {elapsed:.0f} s "
                    f"({reason}; retry budget {policy.budget_s:g} s, {BUDGET_ENV}): "
                    f"{one_line(exc)}") from exc
            if attempt == 1:
                print(f"[iclf] tracking: {what}{place}: {reason}; retrying for up to "
                      f"{policy.budget_s:g} s", file=sys.stderr, flush=True)
            time.sleep(pause)
            delay *= 2
            continue
        if attempt > 1:
            print(f"[iclf] tracking: {what}{place} succeeded after {attempt} attempts "
                  f"({time.monotonic() - start:.1f} s)", file=sys.stderr, flush=True)
        return result


def limit_http_retries() -> None:
    """Leave the retrying of HTTP calls to this layer (see the module docstring)."""
    for key, value in HTTP_SETTINGS.items():
        os.environ.setdefault(key, value)


class RetryingClient:
    """An :class:`mlflow.MlflowClient` whose every public method call goes through
    :func:`retry_call`; attributes and properties pass through. Calls MLflow makes inside one
    method are not retried separately, so retries never nest."""

    def __init__(self, client: Any, where: str = "", policy: RetryPolicy | None = None):
        self.unwrapped = client
        self.where = where
        self.policy = policy

    def __getattr__(self, name: str) -> Any:
        if name in ("unwrapped", "where", "policy"):  # not set yet (unpickling)
            raise AttributeError(name)
        attr = getattr(self.unwrapped, name)
        if name.startswith("_") or not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            return retry_call(attr, *args, what=f"MLflow {name}", where=self.where,
                              policy=self.policy, **kwargs)

        return call

    def __repr__(self) -> str:
        return f"RetryingClient({self.where or self.unwrapped!r})"


__all__ = ["RetryPolicy", "RetryingClient", "retry_call", "transient_reason", "limit_http_retries",
           "one_line", "BUDGET_ENV", "DEFAULT_BUDGET_S"]
