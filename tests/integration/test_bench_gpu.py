"""bench/gpu.py, the prepared GPU benchmark, in its --smoke mode (tiny model, CPU): every section
runs and its JSON has the keys the GPU run reports, so the script cannot rot between GPU sessions.
No timing is checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu.py"
# What the GPU machine lacks (or what the core must not need): never imported by the benchmark.
ABSENT_THERE = {"ray", "mlflow", "optuna", "open_clip", "pandas", "matplotlib"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-bench") / "result.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout), json.loads(out.read_text())


def test_smoke_runs_every_section_without_errors(smoke):
    result, written = smoke
    assert written == result  # --out holds the same JSON as stdout
    assert result["errors"] == {} and result["skipped"] == {}
    assert result["mode"].startswith("smoke")
    for key in ("machine", "peak_matmul", "data", "train_step", "lora_memory", "evaluation",
                "loader", "packing", "summary", "wall_seconds", "settings", "goals"):
        assert key in result, key
    assert result["machine"]["bpe_vocab"].endswith("bpe_simple_vocab_16e6.txt.gz")


def test_train_step_reports_every_preset(smoke):
    steps = smoke[0]["train_step"]
    assert list(steps) == ["irra", "iclf_release", "iclf", "iclf_full"]
    for preset, case in steps.items():
        for key in ("samples_per_s", "step_seconds", "flops_per_step", "mfu", "peak_memory_gib",
                    "trainable_params", "total_params", "precision", "lora_rank"):
            assert key in case, (preset, key)
        assert case["flops_per_step"] > 0 and case["samples_per_s"] > 0
    assert steps["iclf"]["lora_rank"] == 16 and steps["iclf_full"]["lora_rank"] == 0
    assert steps["iclf"]["trainable_params"] < steps["iclf_full"]["trainable_params"]
    assert set(smoke[0]["lora_memory"]) >= {"iclf_lora_r16_over_iclf_full_ft", "goal"}


def test_evaluation_loader_and_packing_sections(smoke):
    result = smoke[0]
    ev = result["evaluation"]
    assert ev["images"] == result["settings"]["eval_images"]
    assert ev["captions"] == result["settings"]["eval_captions"]
    assert [r["from_cache"] for r in ev["runs"]] == [False, False, True]
    assert ev["same_R1_from_cache"] is True
    runs = result["loader"]["runs"]
    assert [r["from_cache"] for r in runs] == [False, True]
    assert all(r["samples_per_s"] > 0 for r in runs)
    assert "decoding_over_gpu_iclf" in result["loader"]
    packing = result["packing"]["runs"]
    assert [r["trials"] for r in packing] == list(result["settings"]["packing_counts"])
    for r in packing:
        assert len(r["per_trial"]) == r["trials"] and r["aggregate_samples_per_s"] > 0
        assert "speedup_over_one" in r
    assert set(result["summary"]) == {"mfu_iclf", "lora_memory_fraction", "packing_speedup"}
    assert all(v["met"] is None for v in result["summary"].values())  # a smoke run judges nothing


def test_imports_only_what_the_gpu_machine_has(smoke):
    imported = set(smoke[0]["third_party_modules"])
    assert {"torch", "peft"} <= imported
    assert not imported & ABSENT_THERE, imported & ABSENT_THERE


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible here")
def test_without_cuda_the_full_run_refuses_with_one_line():
    proc = subprocess.run([sys.executable, str(SCRIPT)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: no CUDA device") and "--smoke" in proc.stderr
