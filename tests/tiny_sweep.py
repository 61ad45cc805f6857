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
max_failures: 1
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


def run_rank_sweep(tmp: Path, name: str, extra: str = "") -> Path:
    """Run a finished sweep to read back: lora.rank 0 vs 4 (the baseline 0) x seeds 0 and 1, on a
    local 2-CPU Ray instance through `iclf sweep`; returns the spec. ``extra``: more spec keys."""
    import ray

    from iclf.cli import main

    spec = write_tiny_spec(tmp, name, "lora.rank: {grid: [0, 4]}", seeds=(0, 1),
                           extra="baseline: {lora.rank: 0}\n" + extra)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert main(["sweep", str(spec), "--quiet"]) == 0
    finally:
        ray.shutdown()
    return spec


def start_ui(spec: Path, cwd: Path):
    """`iclf ui SPEC` on a free port; returns ``(process, base URL, experiment id)`` once the URL of
    the sweep's run table is printed (the server is ready then). Terminate the process when done."""
    proc, table, _ = start_ui_view(spec, cwd)
    import re

    match = re.match(r"(http://127\.0\.0\.1:\d+)/#/experiments/(\d+)/runs", table)
    return proc, match.group(1), match.group(2)


def start_ui_view(spec: Path, cwd: Path):
    """`iclf ui SPEC` on a free port; returns ``(process, table URL, charts URL)``: the two URLs it
    prints first, the sweep's comparison view as a table and as charts."""
    import re
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "iclf", "ui", str(spec), "--port", str(port),
                             "--quiet"], stdout=subprocess.PIPE, text=True, cwd=cwd)
    lines = [proc.stdout.readline(), proc.stdout.readline()]
    urls = [re.search(r"http://127\.0\.0\.1:\d+/#/experiments/\d+/runs\S*", line)
            for line in lines]
    if not all(urls):
        proc.terminate()
        raise AssertionError(f"iclf ui printed {lines!r}")
    return proc, urls[0].group(0), urls[1].group(0)


def sweep_runs(tmp: Path, name: str):
    """``(client, parent runs, trial runs)`` of sweep ``name`` in ``<tmp>/mlflow.db``."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    found = client.search_runs([client.get_experiment_by_name(name).experiment_id])
    parents = [r for r in found if r.data.tags.get("iclf.role") == "sweep"]
    kids = [r for r in found if r.data.tags.get("iclf.role") == "trial"]
    return client, parents, kids
