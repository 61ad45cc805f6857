"""The engine's Reporter for MLflow: one run receives a training run's params, tags, per-epoch
metrics, final test metrics and artifacts, through a :class:`~iclf.tracking.mlflow.RunLogger` (so a
retried or resumed run never logs an epoch, a param or a test metric twice).

Used as it is by ``iclf reproduce`` and extended by the sweep's trial reporter
(:class:`iclf.sweep.tune.TuneReporter`), which also reports to Tune.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from iclf.names import RUN_DIR_TAG, THREADS_TAG, without_test

MAX_ARTIFACT_MB = 512.0  # weights above this size stay on disk (path tagged) instead of in MLflow


class MlflowReporter:
    """Logs one training run into one MLflow run (see the module docstring).

    * ``on_start``: the flattened resolved config as params; tags ``dataset_fingerprint``,
      ``device``, ``run_dir``, ``torch_threads``, ``paper_protocol``; ``trainable_params`` and
      ``total_params``; ``configs.yaml`` as an artifact (on a fresh run);
    * ``on_epoch``: the epoch's metrics (never test ones) with ``peak_memory_mb``, at step
      ``epoch``; the last epoch also carries ``device_seconds`` including the final evaluation;
    * ``on_result``: ``test/*`` and ``test_last/*`` at the last trained epoch, the config and the
      selected checkpoint's trainable weights as artifacts (:func:`log_weights`), and what it
      retrieves for the pictured validation queries (:func:`log_retrieval`).
    """

    def __init__(self, logger):
        self.logger = logger
        self.device = None
        self.final_device_seconds: float | None = None

    def on_start(self, info: dict[str, Any]) -> None:
        import torch

        self.device = torch.device(info["device"])
        run_dir = Path(info["run_dir"])
        self.logger.log_params(info.get("config", {}))
        self.logger.set_tags({"dataset_fingerprint": info.get("dataset_fingerprint", ""),
                              "device": info["device"], RUN_DIR_TAG: str(run_dir),
                              THREADS_TAG: info.get("torch_threads", ""),
                              "paper_protocol": str(bool(info.get("paper_protocol"))).lower()})
        self.logger.log_once({"trainable_params": info["trainable_params"],
                              "total_params": info["total_params"]}, step=0)
        if int(info.get("resumed_from_epoch", 0)) == 0:
            self.logger.log_artifact(run_dir / "configs.yaml")

    def on_epoch(self, epoch: int, metrics: dict[str, float], checkpoint_dir: Path) -> None:
        from iclf.engine.trainer import peak_memory_mb

        logged = without_test(metrics)
        logged["peak_memory_mb"] = peak_memory_mb(self.device)
        if self.final_device_seconds is not None:
            logged["device_seconds"] = self.final_device_seconds  # includes the final test evaluation
        self.logger.log_epoch(int(epoch), logged)

    def on_result(self, result: Any) -> None:
        final = {f"test/{k}": v for k, v in result.test.items()}
        final.update({f"test_last/{k}": v for k, v in result.test_last.items()})
        self.logger.log_once(final, step=int(result.epochs_trained or result.best_epoch))
        self.final_device_seconds = float(result.device_seconds)
        log_weights(self.logger, Path(result.run_dir))
        log_retrieval(self.logger, Path(result.run_dir))


def log_weights(logger, run_dir: Path) -> None:
    """The resolved config and the selected checkpoint's trainable weights (adapters and new modules,
    never the frozen backbone) as artifacts; weights over MAX_ARTIFACT_MB stay on disk, path tagged."""
    logger.log_artifact(run_dir / "configs.yaml")
    best = run_dir / "checkpoint" / "best.pt"
    if not best.is_file():
        return
    size_mb = best.stat().st_size / 2**20
    if size_mb <= MAX_ARTIFACT_MB:
        logger.log_artifact(best, "checkpoint")
    else:
        logger.set_tags({"best_weights_path": str(best), "best_weights_mb": f"{size_mb:.0f}"})


RETRIEVAL_DIR = "retrieval"  # artifact folder: the selected checkpoint's retrieval picture + data


def log_retrieval(logger, run_dir: Path) -> bool:
    """The selected checkpoint's retrieval grid (``best_retrieval.png``) and its data
    (``best_retrieval.json``, :mod:`iclf.engine.retrieval`) as artifacts under ``retrieval/``;
    False when the run has none (no evaluation yet)."""
    from iclf.engine.retrieval import PICTURE_FILE, RECORD_FILE

    logged = False
    for name in (RECORD_FILE, PICTURE_FILE):
        path = run_dir / "checkpoint" / name
        if path.is_file():
            logger.log_artifact(path, RETRIEVAL_DIR)
            logged = True
    return logged


def load_retrieval(client, run_id: str) -> dict[str, Any] | None:
    """A run's retrieval record (``retrieval/best_retrieval.json``), or None when it has none."""
    import json
    import tempfile

    from iclf.engine.retrieval import RECORD_FILE

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, f"{RETRIEVAL_DIR}/{RECORD_FILE}", tmp)
        except Exception:  # noqa: BLE001 - MlflowException / OSError: no such artifact
            return None
        return json.loads(Path(path).read_text())
