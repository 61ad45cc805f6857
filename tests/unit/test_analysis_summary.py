"""iclf.analysis.summary on a hand-built sweep with known statistics."""

import math

import pandas as pd
import pytest

from iclf.analysis import stats
from iclf.analysis.summary import best, resolve_baseline, summarize, summarize_sweep
from synthetic_sweep import synthetic_sweep

METRICS = ["val/R1", "test/R1"]


def _run(rank, seed, r1, status="FINISHED", test=None, hours=1.0):
    return {
        "run_id": f"r{rank}-s{seed}-{status}",
        "config_key": f"lora.rank={rank}",
        "param.lora.rank": rank,
        "seed": seed,
        "status": status,
        "val/R1": r1,
        "test/R1": r1 - 1.0 if test is None else test,
        "trainable_params": 1000 * (rank + 1),
        "device_seconds": 3600.0 * hours,
    }


@pytest.fixture
def trials():
    rows = [
        _run(0, 0, 60.0),
        _run(0, 1, 61.0),
        _run(0, 2, 62.0),
        _run(0, 3, 0.0, status="FAILED"),  # would drag the baseline mean down if counted
        # same seeds as the baseline: a paired test; the gain is consistent across seeds
        _run(8, 0, 62.0),
        _run(8, 1, 63.1),
        _run(8, 2, 64.0),
        _run(8, 9, 99.0, status="KILLED"),
        # other seeds than the baseline: Welch
        _run(16, 0, 63.0),
        _run(16, 1, 65.0),
        _run(16, 2, 64.0),
        _run(16, 3, 66.0, test=math.nan),
        _run(32, 5, 70.0),  # a single seed
    ]
    return pd.DataFrame(rows)


def _row(table, key):
    return table.set_index("config_key").loc[key]


def test_known_mean_std_ci_and_failed_rows_ignored(trials):
    table = summarize(trials, metrics=METRICS)
    base = _row(table, "lora.rank=0")
    assert base["n"] == 3 and base["n_failed"] == 1 and base["seeds"] == "0,1,2"
    assert base["val/R1 mean"] == pytest.approx(61.0)
    assert base["val/R1 std"] == pytest.approx(1.0)
    assert base["val/R1 ci95"] == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert _row(table, "lora.rank=8")["n"] == 3  # the KILLED run is not a seed
    # a NaN metric leaves the other metrics' counts alone
    r16 = _row(table, "lora.rank=16")
    assert (r16["val/R1 n"], r16["test/R1 n"]) == (4, 3)
    assert r16["test/R1 mean"] == pytest.approx(63.0)
    # rows are sorted by parameter value, numerically
    assert list(table["param.lora.rank"]) == [0, 8, 16, 32]


def test_single_seed_gives_nan_ci(trials):
    table = summarize(trials, metrics=METRICS, baseline={"lora.rank": 0})
    one = _row(table, "lora.rank=32")
    assert one["n"] == 1 and one["val/R1 mean"] == 70.0
    assert math.isnan(one["val/R1 std"]) and math.isnan(one["val/R1 ci95"])
    assert one["delta val/R1"] == pytest.approx(9.0)
    assert math.isnan(one["p val/R1"]) and not one["sig val/R1"]


def test_baseline_comparison_paired_vs_welch(trials):
    table = summarize(trials, metrics=METRICS, baseline={"lora.rank": 0})
    assert list(table.loc[table["is_baseline"], "config_key"]) == ["lora.rank=0"]
    base = _row(table, "lora.rank=0")
    assert base["delta val/R1"] == 0.0 and not base["sig val/R1"]

    r8 = _row(table, "lora.rank=8")
    assert r8["test"] == "paired"
    assert r8["delta val/R1"] == pytest.approx(63.0333333 - 61.0)
    paired = stats.paired_t_test([62.0, 63.1, 64.0], [60.0, 61.0, 62.0])
    assert r8["p val/R1"] == pytest.approx(paired.p)
    assert r8["p val/R1"] < 0.01 and r8["sig val/R1"]
    # the same numbers unpaired are not significant: pairing by seed is what the test relies on
    assert stats.welch_t_test([62.0, 63.1, 64.0], [60.0, 61.0, 62.0]).p > 0.05

    r16 = _row(table, "lora.rank=16")
    assert r16["test"] == "welch"
    welch = stats.welch_t_test([63.0, 65.0, 64.0, 66.0], [60.0, 61.0, 62.0])
    assert r16["p val/R1"] == pytest.approx(welch.p)
    assert r16["delta val/R1"] == pytest.approx(64.5 - 61.0)
    assert r16["p test/R1"] == pytest.approx(stats.welch_t_test([62, 64, 63], [59, 60, 61]).p)


def test_device_hours_count_every_run(trials):
    summary = summarize_sweep(trials, metrics=METRICS, baseline="lora.rank=0")
    assert _row(summary.table, "lora.rank=0")["device_hours"] == pytest.approx(4.0)
    assert summary.total_device_hours == pytest.approx(len(trials))
    assert summary.baseline_key == "lora.rank=0"
    assert summary.primary == "val/R1" and best(summary, "max") == "lora.rank=32"
    assert (summary.n_trials, summary.n_finished) == (len(trials), len(trials) - 2)
    assert summary.params == ("param.lora.rank",)


def test_baseline_forms_and_errors(trials):
    done = trials[trials["status"] == "FINISHED"]
    assert resolve_baseline(done, {"param.lora.rank": "8"}) == "lora.rank=8"  # MLflow str params
    assert resolve_baseline(done, {"lora.rank": 16.0}) == "lora.rank=16"
    assert resolve_baseline(done, "lora.rank=32") == "lora.rank=32"
    with pytest.raises(ValueError, match="not an ablated parameter"):
        resolve_baseline(done, {"fusion.depth": 1})
    with pytest.raises(ValueError, match="matches 0 configurations"):
        resolve_baseline(done, {"lora.rank": 4})
    with pytest.raises(ValueError, match="no FINISHED"):
        resolve_baseline(done, "lora.rank=4")

    two, _ = synthetic_sweep({"lora.rank": [0, 8], "fusion.depth": [1, 2]}, seeds=(0, 1))
    with pytest.raises(ValueError, match="matches 2 configurations"):
        summarize(two, baseline={"lora.rank": 8})
    table = summarize(two, baseline={"lora.rank": 8, "fusion.depth": 1})
    assert list(table.loc[table["is_baseline"], "config_key"]) == ["lora.rank=8,fusion.depth=1"]
    assert set(table["test"]) == {"", "paired"}


def test_bad_input_is_named(trials):
    with pytest.raises(ValueError, match="val/mAP"):
        summarize(trials, metrics=["val/mAP"])
    with pytest.raises(ValueError, match="seed"):
        summarize(trials.drop(columns=["seed"]))
    dup = pd.concat([trials, trials.iloc[[0]].assign(run_id="again")])
    with pytest.raises(ValueError, match=r"lora.rank=0.*seed.*again"):
        summarize(dup, metrics=METRICS)
    mixed = trials.copy()
    mixed.loc[0, "param.lora.rank"] = 4
    with pytest.raises(ValueError, match="differing values"):
        summarize(mixed, metrics=METRICS)
    with pytest.raises(ValueError, match="FINISHED"):
        summarize(trials.assign(status="FAILED"), metrics=METRICS)
    with pytest.raises(ValueError, match="primary"):
        summarize_sweep(trials, metrics=METRICS, primary="val/mAP")


def test_default_metrics_are_those_present():
    trials, _ = synthetic_sweep({"lora.rank": [0, 4]}, seeds=(0, 1))
    table = summarize(trials)
    for m in ("val/R1", "val/mAP", "val/mINP", "test/R1", "test/mAP", "test/mINP"):
        assert f"{m} mean" in table.columns
    assert "val/R5 mean" not in table.columns
    assert "is_baseline" not in table.columns  # no baseline, no comparison


def test_best_follows_the_mode():
    trials, _ = synthetic_sweep({"lora.rank": [0, 4, 32]}, seeds=(0, 1, 2))
    summary = summarize_sweep(trials, primary="val/R1", mode="min")
    means = summary.table.set_index("config_key")["val/R1 mean"]
    assert best(summary, "min") == means.idxmin() and best(summary, "max") == means.idxmax()
    assert best(summary, "min") != best(summary, "max")
    with pytest.raises(ValueError, match="max or min"):
        best(summary, "lowest")


def test_a_trial_packed_on_a_shared_gpu_costs_its_share_of_the_device_hours(trials):
    """Two trials at ``resources.gpu: 0.5`` share one GPU for their whole length: what they cost
    is one device's time, not two. Runs without a share (``iclf train``, older sweeps) count whole."""
    packed = trials.copy()
    packed["device_share"] = 1.0
    packed.loc[packed["config_key"] == "lora.rank=0", "device_share"] = 0.5
    summary = summarize_sweep(packed, metrics=METRICS, baseline="lora.rank=0")
    assert _row(summary.table, "lora.rank=0")["device_hours"] == pytest.approx(2.0)
    assert _row(summary.table, "lora.rank=8")["device_hours"] == pytest.approx(4.0)
    assert summary.total_device_hours == pytest.approx(len(trials) - 2.0)
    packed.loc[packed["config_key"] == "lora.rank=8", "device_share"] = math.nan  # no tag: whole
    again = summarize_sweep(packed, metrics=METRICS, baseline="lora.rank=0")
    assert _row(again.table, "lora.rank=8")["device_hours"] == pytest.approx(4.0)
