"""iclf.analysis.stats on hand-computed data and, where scipy is importable, against scipy."""

import itertools
import math
import subprocess
import sys

import pytest

from iclf.analysis import stats

# Student's sleep data (Cushny & Peebles 1905): extra hours of sleep under two drugs, same 10
# patients. The textbook answers (R's t.test): paired t = -4.0621, df = 9, p = 0.002833;
# Welch t = -1.8608, df = 17.776, p = 0.07939.
DRUG1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
DRUG2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]


def test_mean_std_ci_known_values():
    r = stats.mean_std_ci([1, 2, 3, 4, 5])
    assert r.n == 5
    assert r.mean == pytest.approx(3.0)
    assert r.std == pytest.approx(math.sqrt(2.5))  # 1.5811
    # t_{0.975,4} = 2.776445; 2.776445 * 1.5811 / sqrt(5) = 1.9632
    assert r.ci == pytest.approx(1.9632, abs=1e-4)
    assert stats.mean_std_ci([1, 2, 3, 4, 5], confidence=0.90).ci == pytest.approx(
        2.131847 * math.sqrt(2.5) / math.sqrt(5), rel=1e-5
    )


def test_mean_std_ci_drops_nan_and_handles_small_n():
    r = stats.mean_std_ci([1.0, float("nan"), 3.0])
    assert (r.mean, r.n) == (2.0, 2)
    one = stats.mean_std_ci([42.0])
    assert one.mean == 42.0 and one.n == 1 and math.isnan(one.std) and math.isnan(one.ci)
    none = stats.mean_std_ci([])
    assert none.n == 0 and math.isnan(none.mean)
    with pytest.raises(ValueError, match="confidence"):
        stats.mean_std_ci([1, 2], confidence=95)


def test_paired_t_test_textbook():
    t, df, p = stats.paired_t_test(DRUG1, DRUG2)
    assert t == pytest.approx(-4.0621, abs=1e-4)
    assert df == 9
    assert p == pytest.approx(0.002833, abs=1e-6)


def test_welch_t_test_textbook():
    t, df, p = stats.welch_t_test(DRUG1, DRUG2)
    assert t == pytest.approx(-1.8608, abs=1e-4)
    assert df == pytest.approx(17.776, abs=1e-3)
    assert p == pytest.approx(0.07939, abs=1e-5)


def test_tests_degenerate_inputs():
    assert math.isnan(stats.paired_t_test([1.0], [2.0]).p)
    assert math.isnan(stats.welch_t_test([1.0], [2.0, 3.0]).p)
    same = stats.paired_t_test([1.0, 2.0], [1.0, 2.0])
    assert math.isnan(same.t) and math.isnan(same.p)
    shifted = stats.paired_t_test([2.0, 3.0], [1.0, 2.0])  # constant difference of +1
    assert shifted.t == math.inf and shifted.p == 0.0
    # NaN pairs are dropped from a paired test
    t, df, _ = stats.paired_t_test(DRUG1 + [float("nan")], DRUG2 + [1.0])
    assert df == 9 and t == pytest.approx(-4.0621, abs=1e-4)
    with pytest.raises(ValueError, match="equal"):
        stats.paired_t_test([1, 2, 3], [1, 2])


def test_pure_t_distribution_matches_tables():
    # Printed t-tables: t_{0.975, df}
    for df, q in [(1, 12.7062), (4, 2.7764), (9, 2.2622), (30, 2.0423)]:
        assert stats._t_ppf_pure(0.975, df) == pytest.approx(q, abs=1e-4)
        assert stats._t_sf_pure(q, df) == pytest.approx(0.025, abs=1e-5)
    assert stats._t_ppf_pure(0.5, 3) == 0.0
    assert stats._t_ppf_pure(0.025, 4) == pytest.approx(-2.7764, abs=1e-4)
    assert stats._t_sf_pure(-math.inf, 3) == 1.0


def test_pure_t_distribution_matches_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    for t, df in itertools.product([-25, -2.5, -0.3, 0, 0.7, 4.0, 60], [1, 2.5, 9, 17.776, 400]):
        assert stats._t_sf_pure(t, df) == pytest.approx(scipy_stats.t.sf(t, df), rel=1e-9)
    for p, df in itertools.product([1e-5, 0.05, 0.4, 0.9, 0.975, 0.9999], [1, 3.3, 9, 120]):
        assert stats._t_ppf_pure(p, df) == pytest.approx(scipy_stats.t.ppf(p, df), rel=1e-9)


def test_without_scipy_the_pure_distribution_is_used():
    code = (
        "import sys; sys.modules['scipy'] = None\n"
        "from iclf.analysis import stats\n"
        "assert stats._scipy_stats is None\n"
        "assert abs(stats.mean_std_ci([1, 2, 3, 4, 5]).ci - 1.9632) < 1e-4\n"
        f"assert abs(stats.paired_t_test({DRUG1}, {DRUG2}).p - 0.002833) < 1e-6\n"
        f"assert abs(stats.welch_t_test({DRUG1}, {DRUG2}).p - 0.07939) < 1e-5\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
