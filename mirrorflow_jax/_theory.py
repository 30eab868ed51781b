"""Closed-form predictions of PAPER.md §4–§5, for experiments and tests to compare against."""

from typing import Literal

from ._validate import check_int, check_range


def metric_exponent(q: float, depth: int) -> float:
    """m = q(L − 1)/L: at c = 0 the mirror metric ∇²R(x) ∝ 1/|x|^m (PAPER.md §4)."""
    check_range("q", q, 1.0, 2.0)
    check_int("depth", depth, 1)
    return q * (depth - 1) / depth


def saddle_speed(lam: float, q: float, depth: int) -> float:
    """μ = λ^(q(L−1)): the metric at the saddle w_1 = 0, w_i = λ (PAPER.md §5)."""
    check_range("lam", lam, 0.0)
    return lam ** (q * (depth - 1))


def escape_regime(q: float, depth: int) -> tuple[Literal["constant", "log", "power"], float]:
    """How the escape time from w_i = α scales as α → 0 (PAPER.md §5, Table 1).

    **Returns:** ``(regime, exponent)``: "constant" (m < 1, exponent 0), "log" (m = 1,
    T ~ log(1/α), exponent 0) or "power" (m > 1, T ~ α^exponent with exponent L − q(L − 1)).
    """
    m = metric_exponent(q, depth)
    if abs(m - 1) < 1e-12:
        return "log", 0.0
    if m < 1:
        return "constant", 0.0
    return "power", depth - q * (depth - 1)
