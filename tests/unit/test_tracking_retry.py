"""The retry layer's rules, the login snapshot and URI redaction (no store needed; the real faults
are in tests/integration/test_tracking_faults.py and test_tracking_cluster.py)."""

import pickle
import sqlite3

import pytest

pytest.importorskip("mlflow")

from mlflow.exceptions import MlflowException, RestException  # noqa: E402
from mlflow.protos.databricks_pb2 import UNAUTHENTICATED  # noqa: E402

from iclf.tracking.credentials import Credentials  # noqa: E402
from iclf.tracking.errors import TrackingError, TrackingUnavailable  # noqa: E402
from iclf.tracking.retry import RetryPolicy, retry_call, transient_reason  # noqa: E402
from iclf.tracking.store import has_password, redact  # noqa: E402


def _raised(exc, cause=None):
    """``exc`` as raised ``from cause`` (so that its chain is set as in real code)."""
    try:
        try:
            raise cause if cause is not None else exc
        except BaseException as inner:
            if cause is None:
                raise
            raise exc from inner
    except BaseException as outer:
        return outer


@pytest.mark.parametrize("exc, reason", [
    (_raised(MlflowException("wrapped"), sqlite3.OperationalError("database is locked")),
     "database is locked"),
    (MlflowException("API request to http://h:5/api/2.0/mlflow/runs/log-batch failed with "
                     "exception HTTPConnectionPool(host='h', port=5): Max retries exceeded "
                     "(Caused by NewConnectionError('Failed to establish a new connection: "
                     "[Errno 111] Connection refused'))"), "connection refused"),
    (MlflowException("API request to http://h/x failed with exception ... (Caused by "
                     "ResponseError('too many 503 error responses'))"), "too many 5"),
    (RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "busy"}), "HTTP 503"),
    (RestException({"error_code": "INTERNAL_ERROR", "message": "boom"}), "HTTP 500"),
    (_raised(RuntimeError("x"), OSError("server closed the connection unexpectedly")),
     "server closed the connection"),
])
def test_transient_failures_are_retried(exc, reason):
    assert transient_reason(exc) == reason


@pytest.mark.parametrize("exc", [
    MlflowException("API request to endpoint /api/2.0/mlflow/experiments/search failed with "
                    "error code 401 != 200. Response body: 'You are not authenticated.'",
                    error_code=UNAUTHENTICATED),
    RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no run"}),
    RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "bad"}),
    _raised(MlflowException("x"), OSError('connection to server at "127.0.0.1", port 5432 '
                                          'failed: FATAL:  password authentication failed')),
    MlflowException("(sqlite3.OperationalError) no such table: runs"),
    ValueError("a bug"),
])
def test_other_failures_are_raised_at_once(exc):
    assert transient_reason(exc) is None


def test_retry_call_retries_then_succeeds_and_says_so(capsys):
    calls = []

    def flaky(x):
        calls.append(x)
        if len(calls) < 3:
            raise sqlite3.OperationalError("database is locked")
        return x * 2

    policy = RetryPolicy(budget_s=10, first_delay_s=0.01)
    assert retry_call(flaky, 21, what="log", where="sqlite:///db", policy=policy) == 42
    assert calls == [21, 21, 21]
    err = capsys.readouterr().err
    assert "log on sqlite:///db: database is locked; retrying for up to 10 s" in err
    assert "succeeded after 3 attempts" in err


def test_retry_call_gives_up_loudly_within_the_budget():
    def locked():
        raise sqlite3.OperationalError("database is locked")

    with pytest.raises(TrackingUnavailable, match=r"log: gave up after \d+ attempt\(s\) in \d+ s "
                       r"\(database is locked; retry budget 0.2 s, ICLF_TRACKING_RETRY_S\)"):
        retry_call(locked, what="log", policy=RetryPolicy(budget_s=0.2, first_delay_s=0.01))


def test_retry_call_raises_a_permanent_error_at_once():
    calls = []

    def bad():
        calls.append(1)
        raise ValueError("a bug")

    with pytest.raises(ValueError):
        retry_call(bad, what="x", policy=RetryPolicy(budget_s=10, first_delay_s=0.01))
    assert calls == [1]


def test_the_budget_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("ICLF_TRACKING_RETRY_S", "7.5")
    assert RetryPolicy.from_env().budget_s == 7.5
    monkeypatch.setenv("ICLF_TRACKING_RETRY_S", "soon")
    with pytest.raises(TrackingError, match="ICLF_TRACKING_RETRY_S='soon': expected seconds >= 0"):
        RetryPolicy.from_env()
    monkeypatch.delenv("ICLF_TRACKING_RETRY_S")
    assert RetryPolicy.from_env().budget_s == 120


def test_credentials_never_show_their_values():
    env = {"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": "pw-123456789",
           "HOME": "/root", "PGPASSWORD": ""}
    creds = Credentials.from_env(env)
    assert creds.names == ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_USERNAME")
    assert "pw-123456789" not in repr(creds) and "alice" not in repr(creds)
    assert creds.secrets() == ("pw-123456789",)
    assert pickle.loads(pickle.dumps(creds)) == creds
    assert not pickle.loads(pickle.dumps(Credentials.from_env({})))


def test_uri_passwords_are_redacted():
    assert redact("postgresql+psycopg://mlflow:se:cret@h:5432/db") == \
        "postgresql+psycopg://mlflow:***@h:5432/db"
    assert redact("postgresql+psycopg://mlflow@h/db") == "postgresql+psycopg://mlflow@h/db"
    assert redact("http://10.0.0.1:5000") == "http://10.0.0.1:5000"
    assert redact("sqlite:////tmp/a:b@c.db") == "sqlite:////tmp/a:b@c.db"
    assert has_password("https://u:p@h") and not has_password("sqlite:////x/mlflow.db")
