"""The training objective: which losses run, their weights, and the forward passes they need.

Implements the totals of method.md 2.6, e.g. ICLF's
``L_itc + L_mlm + [w L_itm_ce + (1 - w) L_cl] + L_id`` (sections 2.1-2.5, 1.6(A)).
The model returns features only; every loss and weight lives here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from iclf.losses import (
    id_loss,
    intra_modal_loss,
    itc_loss,
    itm_loss,
    mlm_loss,
    negative_pairs,
    sample_hard_negatives,
    sdm_loss,
)
from iclf.names import FUSION_LOSSES, fusion_problem

#: Loss names an :class:`Objective` accepts as weight keys.
LOSS_NAMES: tuple[str, ...] = ("itc", "sdm", "mlm", "itm", "id")
#: Losses on the global (CLS / EOT) features of ``caption_ids``.
GLOBAL_LOSSES: tuple[str, ...] = ("itc", "sdm", "itm", "id")
BATCH_KEYS: tuple[str, ...] = ("images", "caption_ids", "mlm_ids", "mlm_labels", "pids")


class Objective:
    """Weighted sum of the training losses, method.md 2.6.

    Args:
        weights: loss name -> weight, names among ``LOSS_NAMES``; missing names weigh 0. A loss
            of weight 0 is not computed, nor are the forward passes only it needs.
        itm_ce_weight: ``w`` of 2.5, the "itm" entry is ``w L_itm_ce + (1 - w) L_intra``.
        intra_alpha: ``alpha`` of the intra-modal soft targets (2.5).
        logit_scale: fixed scale ``s`` of ITC and SDM (1 / 0.02 = 50).
        mask_global_text: True when the data layer feeds the masked caption to the global losses
            too (IRRA's aliasing, 2.3); the text encoder then runs once and MLM reuses its
            tokens. False runs a second text pass on ``mlm_ids`` for MLM.

    Calling ``objective(model, batch)`` returns one unweighted entry per computed loss ("itm"
    also reports its parts "itm_ce" and "intra" when computed) and ``"loss"``, the weighted sum.
    """

    def __init__(
        self,
        weights: Mapping[str, float],
        itm_ce_weight: float = 0.9,
        intra_alpha: float = 0.4,
        logit_scale: float = 50.0,
        mask_global_text: bool = True,
    ) -> None:
        unknown = sorted(set(weights) - set(LOSS_NAMES))
        if unknown:
            raise ValueError(f"Objective: unknown loss names {unknown}; known: {list(LOSS_NAMES)}")
        clean: dict[str, float] = {}
        for name, value in weights.items():
            value = float(value)
            if not math.isfinite(value) or value < 0.0:
                raise ValueError(
                    f"Objective: weight of {name!r} must be a finite number >= 0; got {value}"
                )
            clean[name] = value
        self.weights = {name: clean.get(name, 0.0) for name in LOSS_NAMES}
        if not any(self.weights.values()):
            raise ValueError(f"Objective: every loss weight is 0; got {dict(weights)}")
        for name, value, low, high in (
            ("itm_ce_weight", itm_ce_weight, 0.0, 1.0),
            ("intra_alpha", intra_alpha, 0.0, 1.0),
        ):
            if not low <= float(value) <= high:
                raise ValueError(f"Objective: {name} must be in [{low}, {high}]; got {value}")
        if not (math.isfinite(float(logit_scale)) and float(logit_scale) > 0.0):
            raise ValueError(f"Objective: logit_scale must be positive; got {logit_scale}")
        self.itm_ce_weight = float(itm_ce_weight)
        self.intra_alpha = float(intra_alpha)
        self.logit_scale = float(logit_scale)
        self.mask_global_text = bool(mask_global_text)

    @property
    def active(self) -> tuple[str, ...]:
        """Names of the losses that are computed (weight > 0), in ``LOSS_NAMES`` order."""
        return tuple(name for name in LOSS_NAMES if self.weights[name] > 0.0)

    def check_model(self, model: Any) -> None:
        """Refuse MLM / ITM on a model built without a fusion module (method.md decisions)."""
        depth = 0 if getattr(model, "fusion", None) is None else 1
        problem = fusion_problem(self.active, depth)
        if problem is not None:
            raise ValueError(f"Objective: {problem}")

    def __repr__(self) -> str:
        return (
            f"Objective(weights={self.weights}, itm_ce_weight={self.itm_ce_weight}, "
            f"intra_alpha={self.intra_alpha}, logit_scale={self.logit_scale}, "
            f"mask_global_text={self.mask_global_text})"
        )

    def __call__(
        self,
        model: Any,
        batch: Mapping[str, torch.Tensor],
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Run the forward passes the active losses need and return the loss dict.

        ``generator`` (optional) drives the ITM hard-negative sampling.
        """
        self.check_model(model)
        missing = [key for key in BATCH_KEYS if key not in batch]
        if missing:
            raise ValueError(
                f"Objective: batch is missing keys {missing}; expected {list(BATCH_KEYS)}"
            )
        w = self.weights
        images, pids = batch["images"], batch["pids"]
        use_mlm = w["mlm"] > 0.0
        use_global = any(w[name] > 0.0 for name in GLOBAL_LOSSES)

        # Text passes: the global one on caption_ids; MLM reuses it or encodes mlm_ids.
        mlm_tokens = None
        if use_global:
            feats = model(images, batch["caption_ids"])
            if use_mlm:
                if self.mask_global_text:
                    if not torch.equal(batch["caption_ids"], batch["mlm_ids"]):
                        raise ValueError(
                            "Objective: mask_global_text=True but batch['caption_ids'] differs "
                            "from batch['mlm_ids']; the data layer must feed the masked caption "
                            "to the global losses (or set mask_global_text=False)"
                        )
                    mlm_tokens = feats.text_tokens
                else:
                    mlm_tokens = model.encode_text_tokens(batch["mlm_ids"])
        else:  # MLM only: one pass on the masked caption
            feats = model(images, batch["mlm_ids"])
            mlm_tokens = feats.text_tokens

        out: dict[str, torch.Tensor] = {}
        if w["itc"] > 0.0:
            out["itc"] = itc_loss(feats.image_feat, feats.text_feat, self.logit_scale)
        if w["sdm"] > 0.0:
            out["sdm"] = sdm_loss(feats.image_feat, feats.text_feat, pids, self.logit_scale)
        if use_mlm:
            labels = batch["mlm_labels"]
            positions = labels != 0
            fused = model.fuse(mlm_tokens, feats.image_tokens)
            out["mlm"] = mlm_loss(model.mlm_logits(fused, positions), labels[positions])
        if w["itm"] > 0.0:
            out.update(self._itm(model, feats, pids, generator))
        if w["id"] > 0.0:
            out["id"] = id_loss(
                model.id_logits(feats.image_feat), model.id_logits(feats.text_feat), pids
            )
        out["loss"] = sum(w[name] * out[name] for name in LOSS_NAMES if name in out)
        return out

    def _itm(
        self, model: Any, feats: Any, pids: torch.Tensor, generator: torch.Generator | None
    ) -> dict[str, torch.Tensor]:
        """"itm" = w L_itm_ce + (1 - w) L_intra (2.5); a part of weight 0 is skipped."""
        parts: dict[str, torch.Tensor] = {}
        total = None
        if self.itm_ce_weight > 0.0:
            text_tokens, image_tokens = feats.text_tokens, feats.image_tokens
            neg_image, neg_text = sample_hard_negatives(
                feats.image_feat, feats.text_feat, pids, model.temp, generator=generator
            )
            positives = model.itm_logits(text_tokens, image_tokens)  # (B, 2)
            negatives = model.itm_logits(
                *negative_pairs(text_tokens, image_tokens, neg_image, neg_text)
            )  # (2B, 2)
            parts["itm_ce"] = itm_loss(torch.cat([positives, negatives], dim=0))
            total = self.itm_ce_weight * parts["itm_ce"]
        if self.itm_ce_weight < 1.0:
            parts["intra"] = intra_modal_loss(
                feats.image_feat, feats.text_feat, pids, model.temp, alpha=self.intra_alpha
            )
            term = (1.0 - self.itm_ce_weight) * parts["intra"]
            total = term if total is None else total + term
        parts["itm"] = total
        return parts
