"""The single-trial training engine (imports neither Ray nor MLflow nor Optuna)."""

from iclf.engine.reporting import ConsoleReporter, JsonlReporter, Reporter, Reporters
from iclf.engine.trainer import NonFiniteLossError, TrainResult, evaluate_run, train

__all__ = ["train", "evaluate_run", "TrainResult", "NonFiniteLossError", "Reporter", "Reporters",
           "JsonlReporter", "ConsoleReporter"]
