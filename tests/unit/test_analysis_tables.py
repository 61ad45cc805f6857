"""iclf.analysis.tables: Markdown and LaTeX parse back to the summary's numbers at 2 decimals."""

import math

import numpy as np
import pandas as pd
import pytest

from iclf.analysis import best, summarize, summarize_sweep, tables
from synthetic_sweep import synthetic_sweep

PRINTED = ["val/R1", "val/mAP", "val/mINP", "test/R1", "test/mAP", "test/mINP"]


@pytest.fixture(scope="module")
def summary():
    trials, _ = synthetic_sweep({"lora.rank": [0, 4, 16], "fusion.depth": [1, 2]}, seeds=(0, 1, 2))
    # an awkward key (LaTeX and Markdown specials) on a config with a single seed
    odd = trials.iloc[[0]].assign(
        run_id="odd",
        config_key="loss.mask_global_text=true,a&b|c$%#{x}~^",
        seed=7,
        **{"param.lora.rank": 2, "val/R1": 99.0, "test/mAP": np.nan},
    )
    # a configuration whose seeds differ from the baseline's: Welch
    welch = trials[trials["config_key"] == "lora.rank=4,fusion.depth=1"].assign(
        seed=lambda f: f["seed"] + 10,
        config_key="lora.rank=8,fusion.depth=1",
        **{"param.lora.rank": 8, "run_id": lambda f: f["run_id"] + "w"},
    )
    trials = pd.concat([trials, odd, welch], ignore_index=True)
    return summarize_sweep(trials, baseline={"lora.rank": 0, "fusion.depth": 1})


def _check_parsed(parsed: pd.DataFrame, summary):
    table = summary.table.set_index("config_key")
    assert list(parsed.index) == list(table.index)
    for m in PRINTED:
        for stat in ("mean", "std"):
            expected = table[f"{m} {stat}"].round(2)
            np.testing.assert_allclose(parsed[f"{m} {stat}"], expected, atol=1e-9, equal_nan=True)
        best = table[f"{m} mean"].round(2)
        assert list(parsed.index[parsed[f"{m} best"]]) == list(best.index[best == best.max()])
    np.testing.assert_array_equal(parsed["n"], table["n"])
    np.testing.assert_array_equal(parsed["is_baseline"], table["is_baseline"])
    delta = table["delta val/R1"].where(~table["is_baseline"]).round(2)
    np.testing.assert_allclose(parsed["delta val/R1"], delta, atol=1e-9, equal_nan=True)
    p = table["p val/R1"].where(~table["is_baseline"])
    np.testing.assert_allclose(parsed["p val/R1"], p, rtol=0.05, equal_nan=True)  # 2 sig. digits
    np.testing.assert_array_equal(parsed["sig val/R1"], table["sig val/R1"])


def test_markdown_round_trip(summary):
    text = tables.to_markdown(summary)
    assert text.splitlines()[1].startswith("|:--|--:")
    assert "**99.00**" in text  # the single-seed config has the best val/R1 ...
    assert "99.00 ±" not in text  # ... and no spread
    _check_parsed(tables.parse_markdown(text), summary)


def test_latex_round_trip(summary):
    text = tables.to_latex(summary, caption="CUHK-PEDES ablation.", label="tab:rank")
    for token in (
        r"\toprule",
        r"\midrule",
        r"\bottomrule",
        r"\label{tab:rank}",
        r"$\pm$",
        r"\textbf{99.00}",
        r"\_",
        r"\&",
    ):
        assert token in text
    assert text.count(r"\begin{tabular}{l" + "r" * 8 + "}") == 1
    _check_parsed(tables.parse_latex(text), summary)


def test_significance_and_tests_in_tables(summary):
    table = summary.table.set_index("config_key")
    assert table.loc["lora.rank=8,fusion.depth=1", "test"] == "welch"
    assert table.loc["lora.rank=4,fusion.depth=1", "test"] == "paired"
    md = tables.parse_markdown(tables.to_markdown(summary))
    assert md.loc["lora.rank=16,fusion.depth=1", "sig val/R1"]  # 6 points over 0.5-point noise


def test_metric_subset_and_missing_metrics():
    trials, _ = synthetic_sweep({"lora.rank": [0, 8]}, seeds=(0, 1))
    trials[["test/R1", "test/mAP", "test/mINP"]] = np.nan  # no test phase yet
    table = summarize(trials)
    text = tables.to_markdown(table)
    assert "test/R1" not in text and "Δ" not in text  # no baseline, no comparison column
    parsed = tables.parse_markdown(text)
    assert [c for c in parsed.columns if c.endswith(" mean")] == [
        "val/R1 mean",
        "val/mAP mean",
        "val/mINP mean",
    ]
    only = tables.parse_latex(tables.to_latex(table, metrics=["val/mAP"]))
    assert list(only.columns) == ["n", "val/mAP mean", "val/mAP std", "val/mAP best"]
    with pytest.raises(ValueError, match="val/R5"):
        tables.to_markdown(table, metrics=["val/R5"])


def test_csv_and_write_tables(summary, tmp_path):
    paths = tables.write_tables(summary, tmp_path / "out")
    assert set(paths) == {"csv", "md", "tex", "txt"}
    back = pd.read_csv(paths["csv"])
    assert list(back.columns) == list(summary.table.columns)
    np.testing.assert_allclose(back["val/R1 ci95"], summary.table["val/R1 ci95"], equal_nan=True)
    assert paths["md"].read_text().startswith("| Configuration |")
    assert tables.parse_latex(paths["tex"].read_text()).shape[0] == len(summary.table)


def test_console_table_is_aligned(summary):
    text = tables.format_console(summary)
    lines = text.splitlines()
    header, rule, rows = lines[0], lines[1], lines[2 : 2 + len(summary.table)]
    assert set(rule) == {"-", " "} and len(rule) == len(header)
    for metric in ("val/R1", "test/mINP"):
        end = header.index(metric) + len(metric)  # right-aligned: every cell ends there
        for row in rows:
            assert row[end - 1].isdigit() and row[end : end + 2] == "  "
    base = int(summary.table["is_baseline"].to_numpy().argmax())
    ci = summary.table.loc[base, "val/R1 ci95"]
    assert f"± {ci:.2f}" in rows[base] and "baseline" in rows[base]
    single = next(r for r in rows if r.startswith("loss.mask"))
    assert "99.00  " in single and "99.00 ±" not in single  # no CI for one seed
    assert f"device-hours: {summary.total_device_hours:.2f}" in text
    assert f"best by val/R1: {best(summary, 'max')}" in text


def test_console_table_says_which_differences_are_significant(summary):
    """Below the table, in words: the configurations whose difference from the baseline is
    significant, those whose difference is not, each with Δ and p as the table prints them."""
    text = tables.format_console(summary)
    table = summary.table
    sig = [k for k, s, b in zip(table["config_key"], table["sig val/R1"], table["is_baseline"])
           if s and not b]
    tested = table[~table["is_baseline"] & table["p val/R1"].notna()]
    not_sig = [k for k, s in zip(tested["config_key"], tested["sig val/R1"]) if not s]
    assert sig and not_sig  # the fixture has both kinds
    lines = text.splitlines()

    def block(title: str) -> list[str]:
        at = lines.index(title) + 1
        rows = []
        while at < len(lines) and lines[at].startswith("  "):
            rows.append(lines[at].split())
            at += 1
        return rows

    significant = block("significant (p < 0.05) vs the baseline on val/R1:")
    rest = block("not significant (p >= 0.05): not told apart from seed-to-seed variation with "
                 "these seeds:")
    assert sorted(r[0] for r in significant) == sorted(sig)
    assert sorted(r[0] for r in rest) == sorted(not_sig)
    for row in significant + rest:
        got = table[table["config_key"] == row[0]].iloc[0]
        assert row[1:] == ["Δ", f"{got['delta val/R1']:+.2f}", "p", f"{got['p val/R1']:.2g}"]
    untested = table[~table["is_baseline"] & table["p val/R1"].isna()]["config_key"]
    assert sorted(r[0] for r in block("not tested (one seed, or seeds that cannot be compared):")) \
        == sorted(untested)


def test_parsers_reject_garbage():
    with pytest.raises(ValueError, match="pipe table"):
        tables.parse_markdown("no table here")
    with pytest.raises(ValueError, match="booktabs"):
        tables.parse_latex(r"\begin{tabular}{ll} a & b \end{tabular}")
    assert math.isnan(tables._number("-"))
