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


def test_report_pictures_baseline_and_best_retrievals_of_one_seed(tmp_path):
    """The same queries for the baseline and the best configuration side by side, from trials of
    the lowest seed both finished; a missing record is named, not drawn."""
    from PIL import Image

    from iclf.engine.retrieval import GREEN, RED, GridLayout

    grid = {"lora.rank": [0, 4, 16]}
    trials, curves = synthetic_sweep(grid, seeds=(0, 1))
    image = tmp_path / "person.png"
    Image.new("RGB", (32, 64), (10, 120, 200)).save(image)
    asked = []

    def record(run_id):
        asked.append(run_id)
        row = trials[trials["run_id"] == run_id].iloc[0]
        right = row["config_key"] != "lora.rank=0"  # the baseline gets everything wrong
        gallery = [{"index": i, "path": str(image), "pid": 7 if right and i == 0 else 8,
                    "score": 1.0 - i / 10, "correct": right and i == 0} for i in range(10)]
        return {"split": "val", "epoch": 3, "k": 10,
                "queries": [{"index": 5, "caption": "a person in a blue coat", "pid": 7,
                             "gallery": gallery}]}

    with pytest.warns(UserWarning, match="only lora.rank varies"):
        paths = write_report(trials, curves, tmp_path / "report", baseline={"lora.rank": 0},
                             metric="val/R1", retrieval=record)
    facts = json.loads(paths["report_json"].read_text())
    done = trials[trials["status"] == "FINISHED"]
    seed = facts["retrieval"]["seed"]
    assert seed == min(set(done[done["config_key"] == "lora.rank=0"]["seed"])
                       & set(done[done["config_key"] == facts["best_key"]]["seed"]))
    runs = facts["retrieval"]["runs"]
    assert set(runs) == {"lora.rank=0", facts["best_key"]} and sorted(asked) == sorted(runs.values())
    for key, run_id in runs.items():
        row = trials[trials["run_id"] == run_id].iloc[0]
        assert row["config_key"] == key and row["seed"] == seed and row["status"] == "FINISHED"
    layout = GridLayout(rows=1, k=10, panels=2)
    with Image.open(paths["retrieval_png"]) as picture:
        picture = picture.convert("RGB")
        assert picture.size == layout.size
        assert picture.getpixel(layout.cell_box(0, 0, 0)[:2]) == RED      # baseline, rank 1
        assert picture.getpixel(layout.cell_box(0, 0, 1)[:2]) == GREEN    # best, rank 1
        assert picture.getpixel(layout.cell_box(0, 1, 1)[:2]) == RED

    paths = write_report(trials, curves, tmp_path / "again", baseline={"lora.rank": 0},
                         metric="val/R1", retrieval=lambda run_id: None)
    facts = json.loads(paths["report_json"].read_text())
    assert "retrieval_png" not in paths
    assert facts["skipped"]["retrieval_png"].startswith("no retrieval record in run(s) ")
