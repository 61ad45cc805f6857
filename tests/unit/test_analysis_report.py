"""iclf.analysis.write_report: every artifact of a sweep in one call."""

import json

import pytest

from iclf.analysis import parse_latex, parse_markdown, write_report
from synthetic_sweep import synthetic_sweep


def test_write_report_full_sweep(tmp_path):
    grid = {"lora.rank": [0, 4, 16], "fusion.depth": [1, 2]}
    trials, curves = synthetic_sweep(grid, seeds=(0, 1))
    paths = write_report(
        trials,
        curves,
        tmp_path / "report",
        baseline={"lora.rank": 0, "fusion.depth": 1},
        metric="val/R1",
    )
    assert set(paths) == {
        "summary_csv",
        "summary_md",
        "summary_tex",
        "summary_txt",
        "importance_csv",
        "importance_png",
        "metric_vs_params_png",
        "cost_benefit_png",
        "curves_png",
        "report_json",
    }
    for path in paths.values():
        assert path.parent == tmp_path / "report" and path.stat().st_size > 0
    for key in ("importance_png", "metric_vs_params_png", "cost_benefit_png", "curves_png"):
        assert paths[key].read_bytes()[:4] == b"\x89PNG"
    facts = json.loads(paths["report_json"].read_text())
    assert facts["baseline_key"] == "lora.rank=0,fusion.depth=1"
    assert facts["best_key"].startswith("lora.rank=16")
    assert set(facts["importance"]) == {"lora.rank", "fusion.depth"}
    assert facts["n_trials"] == len(trials) and facts["n_finished"] == len(trials) - 1
    assert facts["skipped"] == {}
    md = parse_markdown(paths["summary_md"].read_text())
    tex = parse_latex(paths["summary_tex"].read_text())
    assert md.equals(tex)


def test_write_report_without_curves_or_costs(tmp_path):
    trials, _ = synthetic_sweep({"fusion.style": ["irra", "interlaced"]}, seeds=(0, 1, 2))
    with pytest.warns(UserWarning, match="only fusion.style varies"):
        paths = write_report(
            trials.drop(columns=["trainable_params"]),
            None,
            tmp_path,
            baseline="fusion.style=irra",
            metric="val/mAP",
        )
    assert "curves_png" not in paths and "cost_benefit_png" not in paths
    facts = json.loads(paths["report_json"].read_text())
    assert set(facts["skipped"]) == {"curves_png", "cost_benefit_png"}
    assert facts["primary"] == "val/mAP"
    assert "Δ val/mAP (p)" in paths["summary_md"].read_text()
