"""Where a sweep lives: its Ray directory, its state file and its tracking URI.

``<storage_path>/<sweep name>/`` holds Ray Tune's experiment, every trial's run directory
(``runs/<trial id>/``), the resolved spec and ``sweep.json``: the tracking URI, the MLflow experiment
and the parent run of the sweep, written once the parent run exists. Reading a sweep back starts
here; nothing in this module imports Ray or MLflow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iclf.names import DEFAULT_DB, STATE_FILE
from iclf.sweep.spec import AblationSpec
from iclf.tracking.uri import resolve_tracking_uri


@dataclass(frozen=True)
class SweepPaths:
    storage: Path        # Ray's storage_path, absolute
    sweep_dir: Path      # <storage>/<sweep name>
    tracking_uri: str    # absolute

    @property
    def state_file(self) -> Path:
        return self.sweep_dir / STATE_FILE


def sweep_paths(spec: AblationSpec) -> SweepPaths:
    """The absolute paths and tracking URI of ``spec``'s sweep."""
    storage = Path(spec.storage_path).expanduser().resolve()
    return SweepPaths(storage, storage / spec.sweep_name,
                      resolve_tracking_uri(spec.tracking.uri, DEFAULT_DB))


def read_state(sweep_dir: Path) -> dict[str, Any] | None:
    """The sweep's state file (``sweep.json``), or None when the sweep has none yet."""
    path = Path(sweep_dir) / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def write_state(sweep_dir: Path, state: dict[str, Any]) -> None:
    """Write ``sweep.json`` atomically."""
    path = Path(sweep_dir) / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(path)
