"""ICLF: interlaced cross-attention + LoRA fine-tuning for text-to-image person re-identification.

The core library (models, data, losses, metrics, engine) imports without Ray, MLflow or Optuna;
only :mod:`iclf.sweep` and :mod:`iclf.tracking` bring those in.
"""

__version__ = "0.1.0"
