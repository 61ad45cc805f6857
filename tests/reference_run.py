"""Published IRRA/ICLF run directories, written from the project's own model (test helper and script).

IRRA's ``train.py`` writes ``configs.yaml`` with ``yaml.dump(vars(args))`` (so tuples such as
``img_size`` become ``!!python/tuple``) and ``best.pth`` = ``{"model": model.state_dict(), "optimizer":
..., "scheduler": ..., "num_epoch", "iteration", "epoch"}`` from a model converted to fp16. The released
ICLF code writes the same, in fp32, with ``itm_head``, ``temp`` and an unused BERT on top.
:func:`write_reference_run` writes exactly that from a project model with random weights, through the
inverse key mapping (:func:`iclf.models.reference.reference_state_dict`). :func:`reference_keys` lists the
keys and shapes the reference model has, read off IRRA's ``model/build.py`` / ``model/clip_model.py`` and
ICLF's ``model/build.py``, so that the mapping cannot drift.

As a script (for a look at ``iclf test`` on such a directory)::

    python tests/reference_run.py OUT_DIR [--kind irra|iclf] [--data-root DIR]
    iclf test --config_file OUT_DIR/configs.yaml --root_dir DIR
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml


def _block(prefix: str, width: int) -> dict[str, tuple[int, ...]]:
    """One CLIP ResidualAttentionBlock (nn.MultiheadAttention + c_fc/c_proj MLP) of IRRA's code."""
    return {
        f"{prefix}attn.in_proj_weight": (3 * width, width),
        f"{prefix}attn.in_proj_bias": (3 * width,),
        f"{prefix}attn.out_proj.weight": (width, width),
        f"{prefix}attn.out_proj.bias": (width,),
        f"{prefix}ln_1.weight": (width,),
        f"{prefix}ln_1.bias": (width,),
        f"{prefix}mlp.c_fc.weight": (4 * width, width),
        f"{prefix}mlp.c_fc.bias": (4 * width,),
        f"{prefix}mlp.c_proj.weight": (width, 4 * width),
        f"{prefix}mlp.c_proj.bias": (width,),
        f"{prefix}ln_2.weight": (width,),
        f"{prefix}ln_2.bias": (width,),
    }


def reference_keys(*, kind: str = "irra", num_classes: int = 11003, cmt_depth: int = 4,
                   grid: tuple[int, int] = (24, 8), vision_width: int = 768, vision_layers: int = 12,
                   patch: int = 16, text_width: int = 512, text_layers: int = 12,
                   embed_dim: int = 512, vocab: int = 49408, context: int = 77,
                   losses: tuple[str, ...] | None = None) -> dict[str, tuple[int, ...]]:
    """The state-dict keys and shapes of IRRA's model (``kind="irra"``, loss_names sdm+mlm+id) or of
    the released ICLF's (``kind="iclf"``, itc+mlm+itm+id; its unused BERT left out), ViT-B/16 at
    384x128 by default. ``losses`` overrides the loss list (it decides which heads exist)."""
    if losses is None:
        losses = ("sdm", "mlm", "id") if kind == "irra" else ("itc", "mlm", "itm", "id")
    keys: dict[str, tuple[int, ...]] = {
        "base_model.positional_embedding": (context, text_width),
        "base_model.text_projection": (text_width, embed_dim),
        "base_model.visual.class_embedding": (vision_width,),
        "base_model.visual.positional_embedding": (grid[0] * grid[1] + 1, vision_width),
        "base_model.visual.proj": (vision_width, embed_dim),
        "base_model.visual.conv1.weight": (vision_width, 3, patch, patch),
        "base_model.visual.ln_pre.weight": (vision_width,),
        "base_model.visual.ln_pre.bias": (vision_width,),
    }
    for i in range(vision_layers):
        keys.update(_block(f"base_model.visual.transformer.resblocks.{i}.", vision_width))
    keys["base_model.visual.ln_post.weight"] = (vision_width,)
    keys["base_model.visual.ln_post.bias"] = (vision_width,)
    for i in range(text_layers):
        keys.update(_block(f"base_model.transformer.resblocks.{i}.", text_width))
    keys["base_model.token_embedding.weight"] = (vocab, text_width)
    keys["base_model.ln_final.weight"] = (text_width,)
    keys["base_model.ln_final.bias"] = (text_width,)
    if "id" in losses:
        keys["classifier.weight"] = (num_classes, embed_dim)
        keys["classifier.bias"] = (num_classes,)
    if "mlm" in losses:
        keys["cross_attn.in_proj_weight"] = (3 * embed_dim, embed_dim)
        keys["cross_attn.in_proj_bias"] = (3 * embed_dim,)
        keys["cross_attn.out_proj.weight"] = (embed_dim, embed_dim)
        keys["cross_attn.out_proj.bias"] = (embed_dim,)
        for i in range(cmt_depth):
            keys.update(_block(f"cross_modal_transformer.resblocks.{i}.", embed_dim))
        for ln in ("ln_pre_t", "ln_pre_i", "ln_post"):
            keys[f"{ln}.weight"] = (embed_dim,)
            keys[f"{ln}.bias"] = (embed_dim,)
        keys["mlm_head.dense.weight"] = (embed_dim, embed_dim)
        keys["mlm_head.dense.bias"] = (embed_dim,)
        keys["mlm_head.ln.weight"] = (embed_dim,)
        keys["mlm_head.ln.bias"] = (embed_dim,)
        keys["mlm_head.fc.weight"] = (vocab, embed_dim)
        keys["mlm_head.fc.bias"] = (vocab,)
    if kind == "iclf":  # build_mlp(512, 2): Linear, LayerNorm, GELU, Linear; and the temperature
        keys["itm_head.0.weight"] = (2 * embed_dim, embed_dim)
        keys["itm_head.0.bias"] = (2 * embed_dim,)
        keys["itm_head.1.weight"] = (2 * embed_dim,)
        keys["itm_head.1.bias"] = (2 * embed_dim,)
        keys["itm_head.3.weight"] = (2, 2 * embed_dim)
        keys["itm_head.3.bias"] = (2,)
        keys["temp"] = ()
    return keys


def irra_args(*, kind: str, name: str, dataset: str, root_dir: str,
              img_size: tuple[int, int], cmt_depth: int) -> dict:
    """``vars(args)`` of IRRA's (or ICLF's) ``utils/options.py`` after ``train.py`` set it up."""
    args = {
        "local_rank": 0, "name": name, "output_dir": f"/home/someone/IRRA/logs/{dataset}/"
        f"20230301_120000_{name}", "log_period": 100, "eval_period": 1, "val_dataset": "test",
        "resume": False, "resume_ckpt_file": "", "pretrain_choice": "ViT-B/16", "temperature": 0.02,
        "img_aug": True, "cmt_depth": cmt_depth, "masked_token_rate": 0.8,
        "masked_token_unchanged_rate": 0.1, "lr_factor": 5.0, "MLM": True,
        "loss_names": "sdm+mlm+id" if kind == "irra" else "itc+mlm+itm+id",
        "mlm_loss_weight": 1.0, "id_loss_weight": 1.0, "img_size": tuple(img_size),
        "stride_size": 16, "text_length": 77, "vocab_size": 49408, "optimizer": "Adam", "lr": 1e-05,
        "bias_lr_factor": 2.0, "momentum": 0.9, "weight_decay": 4e-05, "weight_decay_bias": 0.0,
        "alpha": 0.9, "beta": 0.999, "num_epoch": 60, "milestones": (20, 50), "gamma": 0.1,
        "warmup_factor": 0.1, "warmup_epochs": 5, "warmup_method": "linear",
        "lrscheduler": "cosine", "target_lr": 0, "power": 0.9, "dataset_name": dataset,
        "sampler": "random", "num_instance": 4, "root_dir": root_dir, "batch_size": 64,
        "test_batch_size": 512, "num_workers": 8, "training": True, "distributed": False,
    }
    if kind == "iclf":
        args["weight"] = 0.9
    return args


def build_reference_model(*, kind: str, num_classes: int, backbone: str = "tiny",
                          image_size: tuple[int, int] = (64, 32), cmt_depth: int = 1,
                          seed: int = 0):
    """A project model with the reference's architecture and random weights (fp16-exact for IRRA,
    whose checkpoints store those weights in fp16: loading back then reproduces them exactly)."""
    from iclf.models.iclf import build_iclf_model
    from iclf.models.reference import fp16_in_irra
    from iclf.models.registry import get_spec

    torch.manual_seed(seed)
    width = get_spec(backbone).embed_dim
    model = build_iclf_model(backbone, None, image_size, num_classes=num_classes,
                             fusion_style="irra", fusion_depth=cmt_depth,
                             fusion_heads=max(width // 64, 1), lora=None, need_mlm=True,
                             need_itm=kind == "iclf", need_id=True)
    with torch.no_grad():
        for p in model.parameters():  # no zero biases or unit LayerNorms: every key matters
            p.add_(0.02 * torch.randn_like(p))
        if kind == "irra":
            halves = fp16_in_irra(model)
            for n, p in model.named_parameters():
                if n in halves:
                    p.copy_(p.half().float())
    return model.eval()


def write_reference_run(run_dir: str | Path, model, *, kind: str, dataset: str, root_dir: str,
                        image_size: tuple[int, int], cmt_depth: int, name: str | None = None,
                        with_unused_bert: bool = True) -> Path:
    """Write ``configs.yaml`` and ``best.pth`` of ``model`` as IRRA (``kind="irra"``: fp16) or the
    released ICLF (``kind="iclf"``: fp32, plus a stand-in for its unused BERT) write them."""
    from iclf.models.reference import reference_state_dict

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    args = irra_args(kind=kind, name=name or kind, dataset=dataset, root_dir=root_dir,
                     img_size=image_size, cmt_depth=cmt_depth)
    with open(run_dir / "configs.yaml", "w") as fh:  # as IRRA's utils/iotools.save_train_configs
        yaml.dump(args, fh, default_flow_style=False)
    state = reference_state_dict(model, fp16=kind == "irra")
    if kind == "iclf" and with_unused_bert:
        width = state["base_model.text_projection"].shape[1]
        state["text_encoder.bert.embeddings.word_embeddings.weight"] = torch.randn(30522, 8)
        state["text_feats_2_bert.weight"] = torch.randn(768, width)
    torch.save({"model": state, "optimizer": {"state": {}, "param_groups": []},
                "num_epoch": 60, "iteration": 0, "epoch": 37}, run_dir / "best.pth")
    return run_dir


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="the run directory to write")
    parser.add_argument("--kind", choices=["irra", "iclf"], default="irra")
    parser.add_argument("--data-root", default="runs/reference-data",
                        help="where the synthetic CUHK-PEDES goes (generated when absent)")
    parser.add_argument("--ids", type=int, default=16)
    args = parser.parse_args(argv)
    from iclf.data.pedes import load_pedes
    from iclf.engine.prepare import ensure_synthetic

    ensure_synthetic(args.data_root, "CUHK-PEDES", ids=args.ids, images_per_id=2, seed=0)
    num_classes = load_pedes("CUHK-PEDES", args.data_root).num_train_ids
    model = build_reference_model(kind=args.kind, num_classes=num_classes)
    write_reference_run(args.out, model, kind=args.kind, dataset="CUHK-PEDES",
                        root_dir="/home/someone/data", image_size=(64, 32), cmt_depth=1)
    print(f"wrote {args.out}/configs.yaml and {args.out}/best.pth ({args.kind} layout); evaluate with\n"
          f"  iclf test --config_file {args.out}/configs.yaml --root_dir {args.data_root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
