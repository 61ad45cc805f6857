"""What ``iclf sweep`` prints while it runs: one table of the trials, on the metrics that matter.

Ray Tune's default output (its "AIR" console engine) infers a few columns from whatever a trial
reports (``train/itc``, ``lr``, ...), points at TensorBoard, and with ``verbose=2`` announces every
checkpoint. :class:`TrialTable` is a :class:`ray.tune.ProgressReporter` (Tune's public reporter
API, which Tune 2.60 uses only with its legacy console engine: ``RAY_AIR_NEW_OUTPUT=0``,
:func:`use_trial_table`) that prints, at most every ``every_s`` seconds and when something changed,
and once at the end::

    [iclf] 0:01:25  2 running, 3 pending, 7 done of 12  best val/R1 63.33: lora.rank=0 fusion.depth=1 seed=1
    trial        status   lora.rank  fusion.depth  seed  epoch  val/R1  best val/R1  val/mAP  samples/s
    6f1c_00003   running  4          1             0     2/3     55.83        58.33    51.20      101.4

``--verbose`` (``verbose=2``) gives Ray's own output back, TensorBoard hint and checkpoint
messages included.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from typing import Any, Callable, Mapping, Sequence, TextIO

from ray.tune import ProgressReporter

from iclf.names import EPOCH, OBJECTIVE, better

__all__ = ["TrialTable", "use_trial_table", "quiet_trial_logs"]

STATUS = {"PENDING": "pending", "RUNNING": "running", "PAUSED": "paused", "TERMINATED": "done",
          "ERROR": "failed"}
MAX_ROWS = 30
MAX_CELL = 24

# Ray's own INFO lines that are not progress: where results were written, checkpoints persisted.
_DRIVER_CHATTER = ("ray.tune.tune", "ray.tune.impl.tuner_internal")
_TRIAL_CHATTER = ("ray.train._internal.storage", "ray.train.v2._internal.execution.storage")
_AIR_ENV = "RAY_AIR_NEW_OUTPUT"
_air_env_before: str | None | bool = False  # False: not changed by us yet


def use_trial_table(on: bool) -> None:
    """Make Tune use a ProgressReporter (its legacy console engine) with ``on``, or its default
    engine again (the environment as it was) without; Tune reads it when ``fit`` starts. The
    driver's own INFO chatter is quieted with ``on``."""
    global _air_env_before
    if on:
        if _air_env_before is False:
            _air_env_before = os.environ.get(_AIR_ENV)
        os.environ[_AIR_ENV] = "0"
    elif _air_env_before is not False:
        if _air_env_before is None:
            os.environ.pop(_AIR_ENV, None)
        else:
            os.environ[_AIR_ENV] = _air_env_before
        _air_env_before = False
    for name in _DRIVER_CHATTER:
        logging.getLogger(name).setLevel(logging.WARNING if on else logging.NOTSET)


def quiet_trial_logs() -> None:
    """In a trial's process: Ray's "Checkpoint successfully created at ..." after every epoch (its
    stdout reaches the driver's console) only with ``--verbose``."""
    for name in _TRIAL_CHATTER:
        logging.getLogger(name).setLevel(logging.WARNING)


def _cell(value: Any, digits: int | None = 2) -> str:
    """A table cell: metrics with ``digits`` decimals, anything else (parameters) as written."""
    if value is None:
        return ""
    if isinstance(value, float) and digits is not None:
        text = f"{value:.{digits}f}"
    else:
        text = str(value)
    return text if len(text) <= MAX_CELL else text[:MAX_CELL - 1] + "~"


def _number(result: Mapping[str, Any], key: str) -> float | None:
    value = result.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class TrialTable(ProgressReporter):
    """Ray Tune's progress reporter for an iclf sweep (see the module docstring).

    ``params_of(config)`` and ``seed_of(config)`` read a trial's swept parameters and seed from its
    Tune config (Optuna's labels mapped back); ``metric``/``mode`` are the spec's; ``objective`` is
    the key holding the best value so far that trials report.
    """

    def __init__(self, params: Sequence[str], metric: str, mode: str, max_epochs: int, *,
                 params_of: Callable[[Mapping[str, Any]], Mapping[str, Any]],
                 seed_of: Callable[[Mapping[str, Any]], int], objective: str = OBJECTIVE,
                 every_s: float = 20.0, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.params = list(params)
        self.metric = metric
        self.mode = mode
        self.max_epochs = max_epochs
        self.params_of = params_of
        self.seed_of = seed_of
        self.objective = objective
        self.every_s = every_s
        self.stream = stream
        self.clock = clock
        self.total: int | None = None
        self._start = clock()
        self._last_print: float | None = None
        self._last_state: tuple | None = None
        others = [m for m in ("val/R1", "val/mAP") if m != metric]
        self.columns = ["trial", "status", *self.params, "seed", "epoch", metric, f"best {metric}",
                        *others, "samples/s"]
        self._metric_keys = [metric, objective, *others, "samples_per_s"]

    def __getstate__(self):  # Tune may pickle the reporter with its experiment state
        state = dict(self.__dict__)
        state["stream"] = None
        return state

    def setup(self, start_time: float | None = None, total_samples: int | None = None,
              **kwargs: Any) -> None:
        self._start = self.clock()
        self.total = total_samples if total_samples and total_samples < sys.maxsize else None

    # ------------------------------------------------------------------------- Tune's protocol

    def _state(self, trials: Sequence[Any]) -> tuple:
        return tuple((t.trial_id, t.status, (t.last_result or {}).get(EPOCH)) for t in trials)

    def should_report(self, trials: Sequence[Any], done: bool = False) -> bool:
        if done:
            return True
        now = self.clock()
        if self._last_print is not None and now - self._last_print < self.every_s:
            return False
        return self._state(trials) != self._last_state

    def report(self, trials: Sequence[Any], done: bool, *sys_info: str) -> None:
        self._last_print = self.clock()
        self._last_state = self._state(trials)
        print(self.render(trials, done), file=self.stream or sys.stdout, flush=True)

    # ------------------------------------------------------------------------------- rendering

    def _status(self, trial: Any) -> str:
        status = STATUS.get(trial.status, str(trial.status).lower())
        epochs = _number(trial.last_result or {}, EPOCH)
        if status == "done" and epochs is not None and epochs < self.max_epochs:
            return "stopped"  # by the scheduler (ASHA), before the last epoch
        return status

    def _row(self, trial: Any) -> list[str]:
        config = trial.config or {}
        params = self.params_of(config)
        result = trial.last_result or {}
        epochs = _number(result, EPOCH)
        row = [str(trial.trial_id), self._status(trial)]
        row += [_cell(params.get(p, "-"), None) for p in self.params]
        try:
            row.append(_cell(self.seed_of(config)))
        except (KeyError, ValueError, TypeError, IndexError):
            row.append("")
        row.append(f"{int(epochs)}/{self.max_epochs}" if epochs is not None else "")
        row += [_cell(_number(result, k)) for k in self._metric_keys]
        return row

    def _best(self, trials: Sequence[Any]) -> tuple[Any, float] | None:
        best = None
        for t in trials:
            value = _number(t.last_result or {}, self.objective)
            if value is not None and math.isfinite(value) and (
                    best is None or better(value, best[1], self.mode)):
                best = (t, value)
        return best

    def _shown(self, trials: Sequence[Any]) -> tuple[list[Any], int]:
        """Every trial while they fit; else the running and failed ones, then the best others."""
        if len(trials) <= MAX_ROWS:
            return list(trials), 0
        first = [t for t in trials if t.status in ("RUNNING", "ERROR")]
        rest = [t for t in trials if t not in first and t.last_result]
        sign = -1.0 if self.mode == "max" else 1.0
        rest.sort(key=lambda t: sign * (_number(t.last_result, self.objective) or 0.0))
        shown = (first + rest)[:MAX_ROWS]
        return shown, len(trials) - len(shown)

    def render(self, trials: Sequence[Any], done: bool = False) -> str:
        elapsed = int(self.clock() - self._start)
        counts: dict[str, int] = {}
        for t in trials:
            s = self._status(t)
            counts[s] = counts.get(s, 0) + 1
        order = ("running", "pending", "paused", "done", "stopped", "failed")
        summary = ", ".join(f"{counts[s]} {s}" for s in order if counts.get(s))
        total = self.total or len(trials)
        head = (f"[iclf] {elapsed // 3600}:{elapsed // 60 % 60:02d}:{elapsed % 60:02d}  "
                f"{summary or 'no trial yet'} of {total}" + (" (final)" if done else ""))
        best = self._best(trials)
        if best is not None:
            trial, value = best
            params = self.params_of(trial.config or {})
            described = " ".join(f"{k}={_cell(params[k], None)}" for k in self.params
                                 if k in params)
            try:
                described += f" seed={self.seed_of(trial.config or {})}"
            except (KeyError, ValueError, TypeError, IndexError):
                pass
            head += f"  best {self.metric} {value:.2f}: {described.strip()} ({trial.trial_id})"
        shown, hidden = self._shown(trials)
        rows = [self.columns] + [self._row(t) for t in shown]
        widths = [max(len(r[i]) for r in rows) for i in range(len(self.columns))]
        numeric = set(range(len(self.columns) - len(self._metric_keys), len(self.columns)))
        lines = [head]
        for r in rows:
            cells = [c.rjust(w) if i in numeric else c.ljust(w)
                     for i, (c, w) in enumerate(zip(r, widths))]
            lines.append("  ".join(cells).rstrip())
        if hidden:
            lines.append(f"... and {hidden} more trials (iclf ui shows them all)")
        return "\n".join(lines)
