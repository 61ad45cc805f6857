"""How the trainer reports: a small protocol, a JSON-lines + console default, and a fan-out.

The trainer only talks to a :class:`Reporter`; the sweep layer adds Ray and MLflow reporters without
touching it. ``on_result`` is called *before* the final ``on_epoch``: Ray Tune may end a trial's
process right after its last report.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Protocol, Sequence, TextIO

from iclf.names import HEADLINE_METRICS


class Reporter(Protocol):
    def on_start(self, info: dict[str, Any]) -> None: ...

    def on_epoch(self, epoch: int, metrics: dict[str, float], checkpoint_dir: Path) -> None: ...

    def on_result(self, result: Any) -> None: ...


class JsonlReporter:
    """Appends one JSON object per event to ``<run_dir>/metrics.jsonl``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def _write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record, sort_keys=True, default=str) + "\n")

    def on_start(self, info: dict[str, Any]) -> None:
        self._write({"event": "start", **{k: v for k, v in info.items() if k != "config"}})

    def on_epoch(self, epoch: int, metrics: dict[str, float], checkpoint_dir: Path) -> None:
        self._write({"event": "epoch", **metrics})

    def on_result(self, result: Any) -> None:
        self._write({"event": "result", **result.to_dict()})


class ConsoleReporter:
    """One line per epoch and a short result block on the console."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stdout

    def on_start(self, info: dict[str, Any]) -> None:
        print(f"[iclf] run {info.get('run_dir')} on {info.get('device')}: "
              f"{info.get('trainable_params'):,} trainable of {info.get('total_params'):,} parameters",
              file=self.stream, flush=True)
        if info.get("paper_protocol"):
            print("[iclf] paper_protocol is on: checkpoints are SELECTED ON TEST, as the published code "
                  "does; these numbers are not a held-out estimate", file=self.stream, flush=True)

    def on_epoch(self, epoch: int, metrics: dict[str, float], checkpoint_dir: Path) -> None:
        keys = [k for k in metrics if k.startswith(("val/", "test/")) and k.split("/")[-1] in
                HEADLINE_METRICS]
        shown = " ".join(f"{k}={metrics[k]:.2f}" for k in keys)
        print(f"[iclf] epoch {epoch}: loss={metrics.get('train/loss', float('nan')):.4f} {shown}",
              file=self.stream, flush=True)

    def on_result(self, result: Any) -> None:
        print(result.describe(), file=self.stream, flush=True)


class Reporters:
    """Fans every event out to several reporters, in order."""

    def __init__(self, reporters: Sequence[Reporter]):
        self.reporters = [r for r in reporters if r is not None]

    def on_start(self, info: dict[str, Any]) -> None:
        for r in self.reporters:
            r.on_start(info)

    def on_epoch(self, epoch: int, metrics: dict[str, float], checkpoint_dir: Path) -> None:
        for r in self.reporters:
            r.on_epoch(epoch, metrics, checkpoint_dir)

    def on_result(self, result: Any) -> None:
        for r in self.reporters:
            r.on_result(result)
