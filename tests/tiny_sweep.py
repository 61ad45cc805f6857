"""A tiny ablation spec for sweep tests: the tiny backbone at 64x32, 16 synthetic identities, a few
steps per epoch, CPU trials of one core each, everything under one temporary directory."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TEMPLATE = """\
name: {name}
base: {root}/experiments/synthetic.yaml
overrides:
  model.backbone: tiny
  model.pretrained: null
  model.build_pretrained: false
  model.image_size: [64, 32]
  fusion: {{style: interlaced, depth: 1, heads: 4}}
  data.synthetic: {{ids: 16, images_per_id: 2, seed: 0}}
  data.root: {tmp}/data
  data.batch_size: 8
  data.num_workers: 0
  training.epochs: {epochs}
  training.max_steps_per_epoch: 2
  schedule.warmup_epochs: 0
  evaluation.batch_size: 64
  device: cpu
space:
  {space}
seeds: {seeds}
resources: {{cpu: 1, gpu: 0}}
max_concurrent_trials: 2
storage_path: {tmp}/ray
tracking: {{uri: {tmp}/mlflow.db}}
{extra}"""


def write_tiny_spec(tmp: Path, name: str, space: str, *, seeds=(0,), epochs: int = 2,
                    extra: str = "") -> Path:
    """Write ``<tmp>/<name>.yaml``; ``space`` is one YAML line such as
    ``"lora.rank: {grid: [0, 4]}"``, ``extra`` more top-level spec keys."""
    path = Path(tmp) / f"{name}.yaml"
    path.write_text(TEMPLATE.format(name=name, root=ROOT, tmp=tmp, epochs=epochs, space=space,
                                    seeds=list(seeds), extra=extra))
    return path
