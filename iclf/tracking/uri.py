"""Tracking URIs: resolved to absolute ones before any trial starts (Tune changes a trial's working
directory). Pure Python: finding a sweep's database imports neither MLflow nor Ray."""

from __future__ import annotations

from pathlib import Path


def resolve_tracking_uri(uri: str | None, default_db: str | Path) -> str:
    """An absolute tracking URI: ``None`` -> ``sqlite:////<abs default_db>``; a relative SQLite path
    or a bare file path is made absolute against the current directory; other URIs pass through."""
    if uri is None:
        return "sqlite:///" + str(Path(default_db).expanduser().resolve())
    if uri.startswith("sqlite:///"):
        rest = uri[len("sqlite:///"):]
        return "sqlite:///" + str(Path(rest).expanduser().resolve())
    if "://" not in uri:
        return "sqlite:///" + str(Path(uri).expanduser().resolve())
    return uri


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else None."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None
