"""Ablation sweeps: specs (:mod:`.spec`) and Ray Tune + Optuna runs tracked in MLflow (:mod:`.tune`).

``iclf.sweep.spec`` needs only the config; ``iclf.sweep.tune`` imports Ray, Optuna and MLflow.
"""

from iclf.sweep.spec import AblationSpec, config_key, load_spec

__all__ = ["AblationSpec", "config_key", "load_spec"]
