"""System metrics of a trial's MLflow run: CPU and memory (psutil), GPU utilisation and memory
(pynvml, where an NVIDIA GPU is visible), disk and network, logged as ``system/...`` metrics by
MLflow's own :class:`~mlflow.system_metrics.system_metrics_monitor.SystemMetricsMonitor`.

The monitor is attached to a run by its id (``SystemMetricsMonitor(run_id, tracking_uri=...)``,
what ``mlflow.start_run(log_system_metrics=True)`` does for an active run), because a trial logs
through an :class:`~mlflow.MlflowClient` and never has an active run. It samples every
``interval / samples`` seconds in a daemon thread and logs the mean of each window as one point:
one point a minute by default (``ICLF_SYSTEM_METRICS_S``, seconds; 0 turns it off), about 600
points per metric over a 10-hour trial. ``resume_logging`` continues the steps of a retried or
resumed trial's run instead of writing step 0 again; its writes go through the project's retrying
client. The thread also ends by itself once the run is no longer RUNNING (the driver closes it),
which covers a trial process that Tune ends right after its last report; :meth:`SystemMetrics.stop`
ends it at once and flushes what it holds.

Only the GPUs the trial may use (``CUDA_VISIBLE_DEVICES``, set by Ray) are monitored, numbered as
the trial's torch sees them (``gpu_0`` is its ``cuda:0``); the CPU and memory figures are the
machine's (psutil), as MLflow logs them.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

__all__ = ["SystemMetrics", "ENV", "DEFAULT_INTERVAL_S", "interval_from_env"]

ENV = "ICLF_SYSTEM_METRICS_S"
DEFAULT_INTERVAL_S = 60.0
SAMPLE_S = 15.0  # at most this long between samples inside one logged window

_log = logging.getLogger(__name__)
_lock = threading.Lock()
_running: "SystemMetrics | None" = None  # this process's monitor (a reused Tune actor runs many)


def interval_from_env() -> float | None:
    """Seconds between logged points from ``ICLF_SYSTEM_METRICS_S`` (default 60); None when off."""
    text = os.environ.get(ENV, "").strip()
    if not text:
        return DEFAULT_INTERVAL_S
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{ENV}={text!r}: expected seconds between system-metric points "
                         f"(0 turns them off)") from None
    return value if value > 0 else None


def _visible_gpu_handles(pynvml: Any, count: int) -> list[Any]:
    """NVML handles of the GPUs in ``CUDA_VISIBLE_DEVICES`` (indices or UUIDs), in its order."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
    handles = []
    for item in (x.strip() for x in visible.split(",")):
        if not item or item == "-1":
            break  # CUDA ignores everything from an invalid entry on
        if item.isdigit():
            if int(item) >= count:
                break
            handles.append(pynvml.nvmlDeviceGetHandleByIndex(int(item)))
        else:
            handles.append(pynvml.nvmlDeviceGetHandleByUUID(item))
    return handles


class SystemMetrics:
    """MLflow's system-metrics monitor on one run (see the module docstring)."""

    def __init__(self, run_id: str, tracking_uri: str, interval_s: float):
        from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        samples = max(1, round(interval_s / SAMPLE_S))
        self.run_id = run_id
        self.monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s / samples,
                                            samples_before_logging=samples, resume_logging=True,
                                            tracking_uri=tracking_uri)
        for m in self.monitor.monitors:
            if isinstance(m, GPUMonitor):
                import pynvml

                m.gpu_handles = _visible_gpu_handles(pynvml, m.num_gpus)
        try:  # the project's retrying client for the writes (a locked SQLite file, a restart)
            from iclf.tracking.mlflow import connect

            self.monitor.mlflow_logger.client = connect(tracking_uri)
        except Exception as exc:  # noqa: BLE001 - MLflow's own client stays
            _log.debug("system metrics: MLflow's own client (%s)", exc)

    @property
    def gpus(self) -> int:
        from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor

        return sum(len(m.gpu_handles) for m in self.monitor.monitors if isinstance(m, GPUMonitor))

    @classmethod
    def start(cls, run_id: str, tracking_uri: str,
              interval_s: float | None = None) -> "SystemMetrics | None":
        """Stop this process's previous monitor, start one on ``run_id``; None when turned off
        (``interval_s`` None: from the environment) or when it cannot start (never fatal)."""
        global _running
        interval_s = interval_from_env() if interval_s is None else interval_s
        # MLflow's INFO lines about starting and stopping, in every trial's log: warnings only
        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
        with _lock:
            if _running is not None:
                _running.stop()
            if not interval_s or interval_s <= 0:
                return None
            try:
                _running = cls(run_id, tracking_uri, float(interval_s))
                _running.monitor.start()
            except Exception as exc:  # noqa: BLE001 - a trial never fails for its system metrics
                _log.warning("system metrics are off for run %s: %s", run_id, exc)
                _running = None
            return _running

    def stop(self) -> None:
        """End the sampling thread and log what it holds (idempotent)."""
        global _running
        try:
            self.monitor.finish()
        except Exception as exc:  # noqa: BLE001 - the run's result does not depend on it
            _log.warning("system metrics of run %s: %s", self.run_id, exc)
        if _running is self:
            _running = None
