"""Core modules import without Ray, MLflow or Optuna (rule 7): only the sweep and tracking layers, when
they run, bring them in. Checked in a fresh interpreter, so nothing imported by other tests counts."""

import subprocess
import sys

import pytest

HEAVY = ("ray", "mlflow", "optuna")
CORE = ["iclf", "iclf.models", "iclf.tokenizer", "iclf.losses", "iclf.objective", "iclf.metrics",
        "iclf.data", "iclf.data.pedes", "iclf.data.synthetic", "iclf.data.cache", "iclf.config",
        "iclf.engine", "iclf.engine.trainer", "iclf.engine.pretrain", "iclf.analysis",
        "iclf.precision", "iclf.models.reference", "iclf.engine.runs", "iclf.names", "iclf.errors",
        "iclf.arguments", "iclf.files"]
# The command line registers every subcommand at start-up; their modules defer the heavy imports.
COMMANDS = ["iclf.cli", "iclf.sweep.cli", "iclf.sweep.spec", "iclf.sweep.results", "iclf.demo",
            "iclf.sweep.storage", "iclf.sweep.lease", "iclf.tracking.uri", "iclf.sweep.plan",
            "iclf.sweep.cleanup"]


@pytest.mark.parametrize("modules", [CORE, COMMANDS], ids=["core", "commands"])
def test_imports_leave_ray_mlflow_optuna_out(modules):
    code = (f"import sys, importlib\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            f"heavy = sorted(k for k in sys.modules if k.split('.')[0] in {HEAVY!r})\n"
            f"assert not heavy, heavy\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def test_iclf_help_builds_every_command_without_them():
    code = ("import sys\nfrom iclf.cli import build_parser\nbuild_parser()\n"
            f"assert not [k for k in sys.modules if k.split('.')[0] in {HEAVY!r}]\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
