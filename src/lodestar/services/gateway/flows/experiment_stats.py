"""Statistics of an experiment's results: means with 95% intervals and
Welch's t-test between variants, written plainly with ``math`` so that the
gateway needs no statistics package.

The Student t distribution comes from the regularized incomplete beta
function (a continued fraction, as in Numerical Recipes); its quantile is
found by bisection, which is exact enough for intervals and costs nothing at
the sizes of a results page.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

# Two-sided significance level of a winner.
ALPHA = 0.05


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (Lentz's method)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-12:
            break
    return h


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b)
        - math.lgamma(a)
        - math.lgamma(b)
        + a * math.log(x)
        + b * math.log(1.0 - x)
    )
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return incomplete_beta(df / 2.0, 0.5, df / (df + t * t))


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile (0.5 < p < 1) of Student's t with ``df`` degrees of freedom."""
    tail = 2.0 * (1.0 - p)  # two-sided tail mass beyond the quantile
    low, high = 0.0, 1.0
    while t_two_sided_p(high, df) > tail:
        high *= 2.0
    for _ in range(100):
        middle = (low + high) / 2.0
        if t_two_sided_p(middle, df) > tail:
            low = middle
        else:
            high = middle
    return (low + high) / 2.0


@dataclass(frozen=True, slots=True)
class Summary:
    n: int
    mean: float | None
    variance: float | None
    # The 95% confidence interval of the mean (None below two samples).
    low: float | None
    high: float | None


def summarize(values: Sequence[float]) -> Summary:
    n = len(values)
    if n == 0:
        return Summary(0, None, None, None, None)
    mean = statistics.fmean(values)
    if n < 2:
        return Summary(n, mean, None, None, None)
    variance = statistics.variance(values, mean)
    half = t_quantile(1.0 - ALPHA / 2.0, n - 1) * math.sqrt(variance / n)
    return Summary(n, mean, variance, mean - half, mean + half)


def welch_p(a: Summary, b: Summary) -> float | None:
    """Two-sided p-value of Welch's t-test that ``a`` and ``b`` have the same
    mean; None when either has fewer than two samples."""
    if a.n < 2 or b.n < 2 or a.variance is None or b.variance is None:
        return None
    assert a.mean is not None
    assert b.mean is not None
    va, vb = a.variance / a.n, b.variance / b.n
    if va + vb == 0.0:
        return 1.0 if a.mean == b.mean else 0.0
    t = (a.mean - b.mean) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (a.n - 1) + vb**2 / (b.n - 1))
    return t_two_sided_p(t, df)


def winner(summaries: dict[str, Summary]) -> tuple[str | None, dict[str, float | None]]:
    """The variant with the best mean score if it beats every other one
    significantly (Welch, Bonferroni-corrected over the comparisons), and the
    p-value of each comparison with that best variant."""
    ranked = sorted(
        (name for name, s in summaries.items() if s.mean is not None),
        key=lambda name: summaries[name].mean or 0.0,
        reverse=True,
    )
    if len(ranked) < 2:
        return None, {}
    best = ranked[0]
    p_values = {name: welch_p(summaries[best], summaries[name]) for name in ranked[1:]}
    level = ALPHA / len(p_values)
    significant = all(
        p is not None and p < level and (summaries[best].mean or 0.0) > (summaries[n].mean or 0.0)
        for n, p in p_values.items()
    )
    return (best if significant else None), p_values
