"""System metrics on a run by id (iclf.tracking.system): MLflow's monitor logs CPU and memory into
a run it never made active, a restarted monitor continues the steps, stop() ends the thread, the
interval comes from ICLF_SYSTEM_METRICS_S, and only the trial's own GPUs are watched."""

import threading
import time
from types import SimpleNamespace

import pytest

pytest.importorskip("mlflow")

from iclf.tracking import system  # noqa: E402
from iclf.tracking.system import ENV, SystemMetrics, _visible_gpu_handles, interval_from_env  # noqa: E402


def test_interval_from_the_environment(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert interval_from_env() == 60.0
    monkeypatch.setenv(ENV, "2.5")
    assert interval_from_env() == 2.5
    monkeypatch.setenv(ENV, "0")
    assert interval_from_env() is None
    monkeypatch.setenv(ENV, "often")
    with pytest.raises(ValueError, match="ICLF_SYSTEM_METRICS_S='often'"):
        interval_from_env()
    assert SystemMetrics.start("no-run", "sqlite:///unused.db", interval_s=0) is None


def test_only_the_visible_gpus(monkeypatch):
    nvml = SimpleNamespace(nvmlDeviceGetHandleByIndex=lambda i: f"h{i}",
                           nvmlDeviceGetHandleByUUID=lambda u: f"u:{u}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert _visible_gpu_handles(nvml, 3) == ["h0", "h1", "h2"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")
    assert _visible_gpu_handles(nvml, 3) == ["h2", "h0"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-abc")
    assert _visible_gpu_handles(nvml, 3) == ["u:GPU-abc"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,-1,2")
    assert _visible_gpu_handles(nvml, 3) == ["h1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert _visible_gpu_handles(nvml, 3) == []


def _threads() -> int:
    return sum(t.name == "SystemMetricsMonitor" and t.is_alive() for t in threading.enumerate())


def test_monitor_logs_into_a_run_by_id_and_resumes_its_steps(tmp_path):
    from iclf.tracking.mlflow import connect

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = connect(uri)
    exp = client.create_experiment("e")
    run_id = client.create_run(exp).info.run_id
    key = "system/cpu_utilization_percentage"

    first = SystemMetrics.start(run_id, uri, interval_s=0.3)
    assert first is not None and first.gpus == 0  # no GPU on this machine
    time.sleep(1.5)
    first.stop()
    assert _threads() == 0
    steps = [m.step for m in client.get_metric_history(run_id, key)]
    assert steps and steps == list(range(len(steps)))
    assert "system/system_memory_usage_megabytes" in client.get_run(run_id).data.metrics

    # a retried trial reopens its run: the steps continue, none is written twice
    second = SystemMetrics.start(run_id, uri, interval_s=0.3)
    time.sleep(1.0)
    # a reused worker process starting its next trial ends the previous monitor first
    other = client.create_run(exp).info.run_id
    third = SystemMetrics.start(other, uri, interval_s=0.3)
    assert _threads() == 1 and system._running is third
    more = [m.step for m in client.get_metric_history(run_id, key)]
    assert more[:len(steps)] == steps and more == list(range(len(more))) and len(more) > len(steps)
    second.stop()  # idempotent on a stopped monitor
    # a run the driver closes ends its monitor by itself (the trial's process may be gone)
    client.set_terminated(other)
    deadline = time.monotonic() + 10
    while _threads() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _threads() == 0
    third.stop()
