"""iclf.analysis.plots writes real, non-trivial PNG files."""

import subprocess
import sys

import pandas as pd
import pytest
from PIL import Image

from iclf.analysis import plots, summarize
from synthetic_sweep import synthetic_sweep

GRID = {"lora.rank": [0, 4, 16], "fusion.depth": [1, 2]}


@pytest.fixture(scope="module")
def sweep():
    trials, curves = synthetic_sweep(GRID, seeds=(0, 1, 2), epochs=3)
    baseline = {"lora.rank": 0, "fusion.depth": 1}
    table = summarize(trials, metrics=["val/R1", "val/mAP"], baseline=baseline)
    return trials, curves, table


def _check_png(path, min_kb=8):
    assert path.exists() and path.suffix == ".png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > min_kb * 1024
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.size[0] > 300 and im.size[1] > 150


def test_metric_vs_params_two_params(sweep, tmp_path):
    _, _, table = sweep
    path = plots.plot_metric_vs_params(table, tmp_path / "sub" / "mvp.png", metric="val/mAP")
    _check_png(path, min_kb=20)
    with Image.open(path) as im:  # two subplots side by side at dpi 120
        assert im.size[0] > im.size[1]


def test_metric_vs_params_one_and_three_params(tmp_path):
    one, _ = synthetic_sweep({"lora.rank": [0, 8]}, seeds=(0, 1))
    _check_png(plots.plot_metric_vs_params(summarize(one), tmp_path / "one.png", error="std"))
    three, _ = synthetic_sweep({**GRID, "fusion.style": ["irra", "interlaced"]}, seeds=(0, 1))
    _check_png(plots.plot_metric_vs_params(summarize(three), tmp_path / "three.png"))
    # a single-seed configuration (NaN CI) still plots
    single = summarize(one[one["seed"] == 0])
    _check_png(plots.plot_metric_vs_params(single, tmp_path / "single.png"))


def test_cost_benefit_and_curves(sweep, tmp_path):
    _, curves, table = sweep
    _check_png(plots.plot_cost_benefit(table, tmp_path / "cost.png"), min_kb=20)
    _check_png(plots.plot_curves(curves, tmp_path / "curves.png"), min_kb=20)
    two = ["lora.rank=0,fusion.depth=1", "lora.rank=16,fusion.depth=2"]
    subset = plots.plot_curves(curves, tmp_path / "two.png", metric="val/mAP", configs=two)
    _check_png(subset)


def test_importance_chart(sweep, tmp_path):
    table = pd.DataFrame({"param": ["lora.rank", "fusion.depth"], "importance": [0.8, 0.2]})
    _check_png(plots.plot_importance(table, tmp_path / "imp.png"))
    undefined = pd.DataFrame({"param": ["a", "b"], "importance": [float("nan")] * 2})
    undefined.attrs["note"] = "importance undefined: val/R1 is constant"
    _check_png(plots.plot_importance(undefined, tmp_path / "nan.png"))


def test_bad_inputs_are_named(sweep, tmp_path):
    _, curves, table = sweep
    with pytest.raises(ValueError, match="test/R1"):
        plots.plot_metric_vs_params(table, tmp_path / "x.png", metric="test/R1")
    with pytest.raises(ValueError, match="error"):
        plots.plot_metric_vs_params(table, tmp_path / "x.png", error="sem")
    with pytest.raises(ValueError, match="trainable_params"):
        plots.plot_cost_benefit(table.drop(columns=["trainable_params"]), tmp_path / "x.png")
    with pytest.raises(ValueError, match="nope"):
        plots.plot_curves(curves, tmp_path / "x.png", configs=["nope"])
    with pytest.raises(ValueError, match="val/R5"):
        plots.plot_curves(curves, tmp_path / "x.png", metric="val/R5")
    assert not list(tmp_path.glob("x.png"))


def test_plots_leave_pyplot_alone(tmp_path):
    code = (
        "import sys, pandas as pd; from iclf.analysis import plots; "
        "plots.plot_importance(pd.DataFrame({'param': ['a'], 'importance': [1.0]}), sys.argv[1]); "
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "a.png")], check=True)


def _searched(n=24):
    """A TPE-like sweep: ``n`` configurations of one seed each, every parameter drawn (a log-spaced
    learning rate and eps, a rank, four loss weights, a style inactive at some draws): config keys
    of ~250 characters, as `ablations/joint.yaml` makes them."""
    import numpy as np

    rng = np.random.default_rng(3)
    lrs = [float(x) for x in np.exp(rng.uniform(np.log(1e-6), np.log(1e-4), n))]
    trials, curves = synthetic_sweep({"optim.lr": lrs}, seeds=(0,), epochs=3,
                                     effect=lambda c: 60.0 + 4.0 * np.log10(c["optim.lr"] / 1e-6))
    keys = {}
    for i, lr in enumerate(lrs):
        extra = {"lora.rank": [0, 4, 16, 64][i % 4],
                 "losses.weights.itc": float(rng.uniform(0, 2)),
                 "losses.weights.mlm": float(rng.uniform(0, 2)),
                 "losses.weights.itm": float(rng.uniform(0, 2)),
                 "losses.weights.id": float(rng.uniform(0, 2)),
                 "optim.eps": float(np.exp(rng.uniform(np.log(1e-8), np.log(1e-3)))),
                 "fusion.style": None if i % 3 == 0 else "interlaced"}
        rows = trials["param.optim.lr"] == lr
        for k, v in extra.items():
            trials.loc[rows, f"param.{k}"] = v
        old = trials.loc[rows, "config_key"].iloc[0]
        keys[old] = ",".join(f"{k}={v}" for k, v in {"optim.lr": lr, **extra}.items()
                             if v is not None)
    trials["config_key"] = trials["config_key"].map(keys)
    curves["config_key"] = curves["config_key"].map(keys)
    return trials, curves


def test_a_searched_sweep_plots_readably(tmp_path):
    """TPE draws a new value of every parameter per trial: no grid to draw lines along, one seed per
    configuration, keys too long for a legend. metric-vs-parameter shows each parameter as a
    scatter on its own scale (log for a learning rate), the curves the ten best configurations, the
    cost/benefit chart names the Pareto front only; none warns that its layout collapsed."""
    import warnings

    trials, curves = _searched()
    table = summarize(trials)
    assert max(len(k) for k in table["config_key"]) > 200
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "constrained_layout not applied ... collapsed"
        _check_png(plots.plot_metric_vs_params(table, tmp_path / "mvp.png"), min_kb=20)
        _check_png(plots.plot_curves(curves, tmp_path / "curves.png"), min_kb=20)
        _check_png(plots.plot_cost_benefit(table, tmp_path / "cost.png"), min_kb=20)
        two = summarize(trials[trials["config_key"].isin(table["config_key"][:2])])
        _check_png(plots.plot_metric_vs_params(two, tmp_path / "two.png"))  # lines, cut labels
    shown = plots.curve_configs(curves, "val/R1")
    best = table.sort_values("val/R1 mean", ascending=False)["config_key"].head(10)
    assert len(shown) == 10 and set(shown) == set(best)
