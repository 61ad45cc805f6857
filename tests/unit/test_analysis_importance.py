"""iclf.analysis.importance: an in-memory Optuna study replayed from a synthetic finished sweep."""

import math
import subprocess
import sys

import numpy as np
import pytest

from iclf.analysis.importance import build_distribution, param_importances
from synthetic_sweep import synthetic_sweep

GRID = {"lora.rank": [0, 4, 8, 16, 32], "fusion.depth": [1, 2], "optim.lr": [1e-5, 1e-4, 1e-3]}


@pytest.fixture(scope="module")
def trials():
    frame, _ = synthetic_sweep(GRID, seeds=(0, 1), n_failed=2)
    return frame


def test_table_lists_exactly_the_ablated_parameters(trials):
    table = param_importances(trials, metric="val/R1")
    assert sorted(table["param"]) == sorted(GRID)
    assert len(table) == len(GRID)
    assert table["importance"].sum() == pytest.approx(1.0)
    assert list(table["importance"]) == sorted(table["importance"], reverse=True)
    assert table["param"].iloc[0] == "lora.rank"  # 2 R1 points per grid step, the others less
    assert table.attrs["note"] == ""
    dist = dict(zip(table["param"], table["distribution"]))
    assert dist["lora.rank"] == "int[0, 32]" and dist["fusion.depth"] == "categorical[1, 2]"

    subset = param_importances(trials, params=["param.fusion.depth", "optim.lr"])
    assert sorted(subset["param"]) == ["fusion.depth", "optim.lr"]


@pytest.mark.parametrize("evaluator", ["fanova", "mean_decrease_impurity"])
def test_seeded_evaluators_label_scores_correctly(trials, evaluator):
    if evaluator == "mean_decrease_impurity":
        pytest.importorskip("sklearn")  # Optuna's MDI evaluator fits a scikit-learn forest
    first = param_importances(trials, evaluator=evaluator, seed=0)
    again = param_importances(trials, evaluator=evaluator, seed=0)
    assert first["param"].iloc[0] == "lora.rank"  # guards the Optuna name-order mislabelling
    np.testing.assert_allclose(first["importance"], again["importance"])


def test_failed_rows_and_constant_params(trials):
    frame = trials.copy()
    frame["param.model.name"] = "iclf_tiny"  # logged but not varied among finished runs
    frame.loc[frame["status"] == "FAILED", "param.fusion.depth"] = 9  # only on FAILED runs
    table = param_importances(frame)
    dist = dict(zip(table["param"], table["distribution"]))
    assert dist["fusion.depth"] == "categorical[1, 2]"
    assert dist["model.name"] == "categorical['iclf_tiny']"
    assert table.set_index("param").loc["model.name", "importance"] == 0.0
    assert len(table) == len(GRID) + 1


def test_conditional_parameter_with_ped_anova(trials):
    frame = trials.copy()
    frame["param.lora.alpha"] = np.where(frame["param.lora.rank"] == 0, np.nan, 16.0)
    frame.loc[frame["param.lora.rank"] == 32, "param.lora.alpha"] = 32.0
    table = param_importances(frame)  # inactive on rank 0: a regime of its own in PED-ANOVA
    assert sorted(table["param"]) == sorted([*GRID, "lora.alpha"])
    assert table["importance"].notna().all()


def test_degenerate_sweeps_do_not_raise():
    one, _ = synthetic_sweep({"lora.rank": [0, 8]}, seeds=(0, 1))
    with pytest.warns(UserWarning, match="only lora.rank varies"):
        table = param_importances(one)
    assert table["importance"].tolist() == [1.0]

    flat, _ = synthetic_sweep(
        {"lora.rank": [0, 8], "fusion.depth": [1, 2]}, effect=lambda c: 50.0, noise=0.0
    )
    with pytest.warns(UserWarning, match="constant"):
        table = param_importances(flat)
    assert table["importance"].isna().all() and len(table) == 2

    single = one.iloc[:1]
    with pytest.warns(UserWarning, match="1 finished"):
        assert param_importances(single)["importance"].isna().all()


def test_bad_arguments_are_named(trials):
    with pytest.raises(ValueError, match="nope"):
        param_importances(trials, params=["nope"])
    with pytest.raises(ValueError, match="val/R99"):
        param_importances(trials, metric="val/R99")
    with pytest.raises(ValueError, match="evaluator"):
        param_importances(trials, evaluator="shap")
    with pytest.raises(ValueError, match="nothing was ablated"):
        param_importances(trials.drop(columns=[f"param.{k}" for k in GRID]))


def test_build_distribution_rules():
    dist, cast = build_distribution(["8", "16", "4", "32", "64"])  # MLflow params are strings
    assert type(dist).__name__ == "IntDistribution" and cast == [8, 16, 4, 32, 64]
    assert not dist.log
    dist, _ = build_distribution([1e-5, 1e-4, 1e-3, 3e-3, 1e-2])
    assert type(dist).__name__ == "FloatDistribution" and dist.log
    dist, _ = build_distribution(["irra", "interlaced", "irra"])
    assert type(dist).__name__ == "CategoricalDistribution"
    assert dist.choices == ("irra", "interlaced")
    dist, _ = build_distribution([True, False])
    assert dist.choices == (True, False)
    dist, _ = build_distribution([1, 2, 4])
    assert dist.choices == (1, 2, 4)
    dist, _ = build_distribution([1, 2, 4], categorical_max_values=2)
    assert type(dist).__name__ == "IntDistribution"
    assert math.isfinite(dist.high)


def test_optuna_is_imported_lazily():
    code = "import sys, iclf.analysis; assert 'optuna' not in sys.modules, 'optuna imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
