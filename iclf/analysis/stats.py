"""Statistics over seeds: mean, standard deviation, Student-t confidence intervals and t-tests.

A sweep runs each configuration with a few seeds; R1 moves by about 2 points between seeds with
the IRRA setting (method.md, "Reproducibility gaps and seed variance"), so a gain is only reported
with its confidence interval and a significance test against the baseline.

The Student-t distribution comes from scipy when it is importable (mlflow pulls it in) and from the
pure-Python regularized incomplete beta function below otherwise; the tests check both agree.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np

try:  # scipy is a dependency of mlflow, so normally present; the fallback keeps this module pure.
    from scipy import stats as _scipy_stats
except ImportError:  # pragma: no cover - exercised through the _pure functions in the tests
    _scipy_stats = None

__all__ = [
    "MeanStdCI",
    "TTest",
    "mean_std_ci",
    "paired_t_test",
    "t_ppf",
    "t_sf",
    "welch_t_test",
]


class MeanStdCI(NamedTuple):
    """Mean, sample standard deviation (ddof=1), CI half-width and count of the finite values."""

    mean: float
    std: float
    ci: float
    n: int


class TTest(NamedTuple):
    """A two-sided t-test: statistic, degrees of freedom and p-value."""

    t: float
    df: float
    p: float


def _finite(values: Iterable[float]) -> np.ndarray:
    arr = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"expected a 1-D sequence of numbers, got shape {arr.shape}")
    return arr[np.isfinite(arr)]


def mean_std_ci(values: Iterable[float], confidence: float = 0.95) -> MeanStdCI:
    """Mean, std (ddof=1) and Student-t CI half-width ``t_{(1+c)/2, n-1} * sd / sqrt(n)``.

    NaN values (a metric a run never logged) are dropped first. With one value std and CI are NaN;
    with none everything is NaN and ``n`` is 0.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    x = _finite(values)
    n = int(x.size)
    if n == 0:
        return MeanStdCI(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n == 1:
        return MeanStdCI(mean, math.nan, math.nan, 1)
    std = float(x.std(ddof=1))
    half = t_ppf(0.5 + confidence / 2.0, n - 1) * std / math.sqrt(n)
    return MeanStdCI(mean, std, float(half), n)


def _t_from_mean_and_se(diff: float, se: float, df: float) -> TTest:
    if not (df > 0 and math.isfinite(df)):
        return TTest(math.nan, math.nan, math.nan)
    if se == 0.0:
        if diff == 0.0:  # identical samples: no evidence either way, the statistic is undefined
            return TTest(math.nan, df, math.nan)
        return TTest(math.copysign(math.inf, diff), df, 0.0)
    t = diff / se
    return TTest(float(t), float(df), float(min(1.0, 2.0 * t_sf(abs(t), df))))


def paired_t_test(a: Iterable[float], b: Iterable[float]) -> TTest:
    """Two-sided paired t-test of ``mean(a - b) = 0``; ``a[i]`` and ``b[i]`` share a seed.

    Pairs where either value is NaN are dropped; fewer than two pairs gives NaN.
    """
    xa = np.asarray(list(a), dtype=float)
    xb = np.asarray(list(b), dtype=float)
    if xa.shape != xb.shape or xa.ndim != 1:
        raise ValueError(f"paired samples need equal 1-D lengths, got {xa.shape} and {xb.shape}")
    keep = np.isfinite(xa) & np.isfinite(xb)
    d = xa[keep] - xb[keep]
    n = d.size
    if n < 2:
        return TTest(math.nan, math.nan, math.nan)
    return _t_from_mean_and_se(float(d.mean()), float(d.std(ddof=1)) / math.sqrt(n), n - 1)


def welch_t_test(a: Iterable[float], b: Iterable[float]) -> TTest:
    """Two-sided Welch t-test (unequal variances) of ``mean(a) = mean(b)``.

    ``t = (ma - mb) / sqrt(va/na + vb/nb)`` with the Welch-Satterthwaite degrees of freedom.
    NaN values are dropped; each sample needs two values, otherwise the result is NaN.
    """
    xa, xb = _finite(a), _finite(b)
    na, nb = xa.size, xb.size
    if na < 2 or nb < 2:
        return TTest(math.nan, math.nan, math.nan)
    qa = float(xa.var(ddof=1)) / na
    qb = float(xb.var(ddof=1)) / nb
    se2 = qa + qb
    if se2 == 0.0:
        df = float(na + nb - 2)  # both samples constant: the statistic is 0/0 or +-inf
    else:
        df = se2**2 / (qa**2 / (na - 1) + qb**2 / (nb - 1))
    return _t_from_mean_and_se(float(xa.mean() - xb.mean()), math.sqrt(se2), df)


# --- Student t distribution ------------------------------------------------------------------


def t_sf(t: float, df: float) -> float:
    """Survival function ``P(T > t)`` of Student's t with ``df`` (possibly fractional) dof."""
    if _scipy_stats is not None:
        return float(_scipy_stats.t.sf(t, df))
    return _t_sf_pure(t, df)


def t_ppf(p: float, df: float) -> float:
    """Quantile function of Student's t: the ``t`` with ``P(T <= t) = p``."""
    if _scipy_stats is not None:
        return float(_scipy_stats.t.ppf(p, df))
    return _t_ppf_pure(p, df)


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        for aa in (
            m * (b - m) * x / ((qam + m2) * (a + m2)),  # even step
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),  # odd step
        ):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            return h
    raise ArithmeticError(f"incomplete beta did not converge for a={a}, b={b}, x={x}")


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta ``I_x(a, b)``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):  # the fraction converges fast on this side
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def _t_sf_pure(t: float, df: float) -> float:
    if not df > 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|)
    return tail if t >= 0 else 1.0 - tail


def _t_ppf_pure(p: float, df: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"probability must lie in [0, 1], got {p}")
    if p == 0.0:
        return -math.inf
    if p == 1.0:
        return math.inf
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -_t_ppf_pure(1.0 - p, df)
    target = 1.0 - p  # solve sf(t) = target for t > 0; sf is decreasing
    lo, hi = 0.0, 1.0
    while _t_sf_pure(hi, df) > target:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _t_sf_pure(mid, df) > target:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)
