"""Datasets, transforms, MLM masking and sampling (method.md 2.3, 3.1, 4)."""

from iclf.data.errors import DatasetError
from iclf.data.pedes import DATASETS, EvalSet, PedesData, TrainSample, load_pedes

__all__ = ["DATASETS", "DatasetError", "EvalSet", "PedesData", "TrainSample", "load_pedes"]
