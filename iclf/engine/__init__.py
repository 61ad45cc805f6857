"""The single-trial training engine (imports neither Ray nor MLflow nor Optuna)."""

from iclf.engine.evaluate import evaluate_run
from iclf.engine.reporting import ConsoleReporter, JsonlReporter, Reporter, Reporters
from iclf.engine.trainer import NonFiniteLossError, TrainResult, TrainState, train

__all__ = ["train", "evaluate_run", "TrainResult", "TrainState", "NonFiniteLossError", "Reporter",
           "Reporters", "JsonlReporter", "ConsoleReporter"]
