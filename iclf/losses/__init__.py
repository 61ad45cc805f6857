"""Training losses, one per module, as plain functions on tensors (method.md section 2)."""

from iclf.losses.id import id_loss
from iclf.losses.intra import intra_modal_loss
from iclf.losses.itc import itc_loss
from iclf.losses.itm import itm_labels, itm_loss, negative_pairs, sample_hard_negatives
from iclf.losses.mlm import mlm_loss
from iclf.losses.sdm import sdm_loss

__all__ = [
    "id_loss",
    "intra_modal_loss",
    "itc_loss",
    "itm_labels",
    "itm_loss",
    "mlm_loss",
    "negative_pairs",
    "sample_hard_negatives",
    "sdm_loss",
]
