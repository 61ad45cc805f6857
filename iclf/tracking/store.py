"""Opening a tracking store: what a URI names, its driver, the first contact, one-line errors.

The stores a tracking URI can name:

* ``sqlite:////ABS/mlflow.db``: the embedded default, one machine (``runs/mlflow.db``);
* ``http://HOST:PORT``: an MLflow server (the cluster's, on PostgreSQL, with basic auth). The login
  comes from ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``, which MLflow reads in each
  process at each request;
* ``postgresql+psycopg://USER@HOST:PORT/DB`` (or any SQLAlchemy URI): the database directly. Its
  driver comes with the ``cluster`` extra; the password belongs in ``PGPASSWORD`` or ``~/.pgpass``,
  not in the URI (a sweep refuses one there: its URI is saved with the sweep).

:func:`open_client` makes the first contact through :mod:`iclf.tracking.retry` and turns what can
go wrong into a :class:`~iclf.tracking.errors.TrackingError` whose one line says what to fix. No
message here ever carries a password: URIs are shown through :func:`redact`.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any

from iclf.tracking.errors import TrackingError, TrackingUnavailable

SERVER_SCHEMES = ("http", "https")
NO_DRIVER_SCHEMES = ("sqlite", "http", "https", "file", "databricks", "databricks-uc", "uc")
USER_ENV = "MLFLOW_TRACKING_USERNAME"
PASSWORD_ENV = "MLFLOW_TRACKING_PASSWORD"
CLUSTER_EXTRA = "pip install 'iclf[cluster]' (or make install EXTRAS=cluster)"
URI_FORMS = "sqlite:///FILE, http://HOST:PORT or postgresql+psycopg://USER@HOST:PORT/DB"

_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:@/]*)(?::[^@/]*)?@")


def scheme(uri: str) -> str:
    """``postgresql+psycopg`` of ``postgresql+psycopg://...``; "" for a bare path."""
    return uri.split("://", 1)[0].lower() if "://" in uri else ""


def is_server(uri: str) -> bool:
    """Whether ``uri`` names an MLflow server (HTTP) rather than a database."""
    return scheme(uri) in SERVER_SCHEMES


def has_password(uri: str) -> bool:
    """Whether ``uri`` carries a password (``scheme://user:PASSWORD@host``)."""
    match = re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*://[^:@/]*:[^@/]*@", uri)
    return match is not None


def redact(uri: str) -> str:
    """``uri`` with any password replaced by ``***`` (for messages, logs and files)."""
    if not has_password(uri):
        return uri
    return _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", uri, count=1)


def check_driver(uri: str) -> None:
    """Raise a one-line :class:`TrackingError` when a database URI's driver is not installed."""
    kind = scheme(uri)
    if not kind or kind in NO_DRIVER_SCHEMES:
        return
    from sqlalchemy.engine.url import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        dialect = make_url(uri).get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError):
        raise TrackingError(f"tracking URI {redact(uri)}: unknown kind {kind!r}; expected "
                            f"{URI_FORMS}") from None
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        missing = getattr(exc, "name", None) or dialect.driver
        hint = CLUSTER_EXTRA if kind.startswith("postgresql") else f"pip install {missing}"
        raise TrackingError(f"tracking URI {redact(uri)} needs the database driver {missing!r}, "
                            f"which is not installed: {hint}") from None


def _http_status(exc: BaseException) -> int | None:
    from iclf.tracking.retry import _chain, _http_status as status_of

    for e in _chain(exc):
        status = status_of(e)
        if status is not None:
            return status
    return None


def explain(exc: BaseException, uri: str) -> TrackingError:
    """A one-line :class:`TrackingError` for a failed first contact with ``uri``."""
    from iclf.tracking.retry import one_line

    where = redact(uri)
    if isinstance(exc, TrackingUnavailable):
        return TrackingUnavailable(f"cannot use the tracking store {where}: {exc}; start it, or fix "
                                   f"tracking.uri / --tracking-uri")
    if isinstance(exc, TrackingError):
        return exc
    text = str(exc).lower()
    status = _http_status(exc) if is_server(uri) else None
    user = os.environ.get(USER_ENV)
    if status == 401:
        if not user:
            return TrackingError(f"the MLflow server {where} asks for a login (HTTP 401): set "
                                 f"{USER_ENV} and {PASSWORD_ENV}")
        return TrackingError(f"the MLflow server {where} refused the login of user {user!r} "
                             f"(HTTP 401): check {PASSWORD_ENV} (and {USER_ENV})")
    if status == 403:
        return TrackingError(f"the MLflow server {where} does not let user {user!r} read "
                             f"experiments (HTTP 403): ask its admin for a permission")
    if "password authentication failed" in text or "no password supplied" in text:
        return TrackingError(f"the database of {where} refused the login (password authentication "
                             f"failed): check PGPASSWORD or ~/.pgpass for that user")
    match = re.search(r'database "([^"]+)" does not exist', str(exc))
    if match:
        return TrackingError(f"the database {match[1]!r} of {where} does not exist: create it "
                             f"(README, 'On a Ray cluster') or fix the tracking URI")
    return TrackingError(f"cannot use the tracking store {where}: {one_line(exc)}")


def open_client(uri: str, policy: Any = None):
    """A :class:`~iclf.tracking.retry.RetryingClient` on ``uri``, after a first successful call
    (which, for SQLite, creates the directory, the database and its schema)."""
    from iclf.tracking.retry import RetryingClient, limit_http_retries, retry_call

    check_driver(uri)
    if is_server(uri):
        limit_http_retries()
    db = None
    where = redact(uri)
    if scheme(uri) == "sqlite" and uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a file where a folder should be, no permission, a full disk
            raise explain(exc, uri) from exc
    from mlflow import MlflowClient

    try:
        with _schema_lock(db):
            # MlflowClient opens a database store (and creates or migrates its schema) when it is
            # built; several processes doing that at once on one SQLite file race in alembic.
            client = RetryingClient(retry_call(MlflowClient, tracking_uri=uri,
                                               what="MLflow connect", where=where, policy=policy),
                                    where=where, policy=policy)
            client.search_experiments(max_results=1)  # a server answers (and checks the login)
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line naming the fix
        raise explain(exc, uri) from exc
    return client


@contextlib.contextmanager
def _schema_lock(db: Path | None):
    """For a SQLite store, an exclusive lock on ``<db>.lock`` while the store is opened: the
    processes that create (or migrate) one database take turns. Nothing for other stores."""
    if db is None:
        yield
        return
    from iclf.files import lock_beside

    with lock_beside(db):
        yield


__all__ = ["open_client", "check_driver", "explain", "redact", "has_password", "is_server",
           "scheme", "TrackingError", "TrackingUnavailable"]
