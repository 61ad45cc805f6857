"""A tiny pretrained CLIP for the synthetic default.

Real runs start from OpenAI's ViT-B/16 weights; a newcomer's first run has none. This module pretrains
the tiny backbone with a plain contrastive (ITC) loss on a synthetic dataset generated with its own seed
(so its identities are not those used for fine-tuning), and saves it as a state dict in the OpenAI
layout: the fine-tuning run then loads it through the same loader as real OpenAI weights, and LoRA has
something pretrained to adapt. The file is built once and reused (a file lock keeps concurrent trials
from building it twice).
"""

from __future__ import annotations

import fcntl
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm


def pretrain_backbone(path: Path, *, backbone: str = "tiny", image_size: tuple[int, int] = (128, 64),
                      dataset: str = "CUHK-PEDES", ids: int = 300, images_per_id: int = 4,
                      epochs: int = 5, batch_size: int = 64, lr: float = 1e-3, seed: int = 1000,
                      progress: bool = True) -> Path:
    """Pretrain ``backbone`` contrastively on synthetic data and save it to ``path`` (OpenAI layout)."""
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(path.name + ".lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if path.is_file():
                return path
            return _pretrain(path, backbone=backbone, image_size=image_size, dataset=dataset, ids=ids,
                             images_per_id=images_per_id, epochs=epochs, batch_size=batch_size,
                             lr=lr, seed=seed, progress=progress)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _pretrain(path: Path, *, backbone, image_size, dataset, ids, images_per_id, epochs, batch_size,
              lr, seed, progress) -> Path:
    from iclf.data.datasets import TrainPairs, collate
    from iclf.data.pedes import load_pedes
    from iclf.engine.prepare import ensure_synthetic
    from iclf.data.transforms import build_train_transform
    from iclf.engine.checkpoint import save_atomic
    from iclf.engine.seed import seed_everything
    from iclf.losses import itc_loss
    from iclf.models import create_backbone
    from iclf.models.weights import backbone_state_dict_openai_layout
    from iclf.tokenizer import Tokenizer

    t0 = time.perf_counter()
    data_root = path.parent / f"pretrain-data-{seed}"
    ensure_synthetic(data_root, dataset, ids=ids, images_per_id=images_per_id, seed=seed)
    data = load_pedes(dataset, data_root, val_fraction=0.0 if dataset == "ICFG-PEDES" else None)
    seed_everything(seed)
    model = create_backbone(backbone, pretrained=None, image_size=image_size)
    transform = build_train_transform(image_size, flip=True, pad_crop=True, random_erasing=False)
    pairs = TrainPairs(data.train, transform=transform, tokenizer=Tokenizer(), mask_rate=0.15,
                       mask_prob=0.8, random_prob=0.1, mask_global_text=False, seed=seed)
    loader = DataLoader(pairs, batch_size=batch_size, shuffle=True, collate_fn=collate,
                        drop_last=True)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    total_steps = epochs * len(loader)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total_steps,
                                                pct_start=0.1)
    bar = tqdm(total=total_steps, desc="pretraining the tiny backbone", disable=not progress)
    model.train()
    for epoch in range(epochs):
        pairs.set_epoch(epoch)
        for batch in loader:
            loss = itc_loss(model.encode_image(batch["images"]), model.encode_text(batch["caption_ids"]),
                            logit_scale=20.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.set_postfix(itc=f"{loss.item():.3f}")
            bar.update(1)
    bar.close()
    save_atomic(backbone_state_dict_openai_layout(model), path)
    print(f"[iclf] pretrained {backbone} backbone saved to {path} "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return path
