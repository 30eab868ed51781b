"""Closed-form predictions of docs/theory.md §4–§6, for experiments and tests to compare with."""

from typing import Literal

import jax.numpy as jnp

from ._geometry import steepest_map
from ._validate import check_int, check_range


def metric_exponent(q: float, depth: int) -> float:
    """m = q(L − 1)/L: at c = 0 the mirror metric ∇²R(x) ∝ 1/|x|^m (docs/theory.md §4).

    **Arguments:** ``q`` in [1, 2]; ``depth`` L ≥ 1. **Returns:** m, a float; R is of
    Legendre type exactly when m ≤ 1.
    """
    check_range("q", q, 1.0, 2.0)
    check_int("depth", depth, 1)
    return q * (depth - 1) / depth


def saddle_speed(lam: float, q: float, depth: int) -> float:
    """μ = λ^(q(L−1)): the metric at the saddle w_1 = 0, w_i = λ (docs/theory.md §5).

    x leaves the saddle at speed μ·|∇f|^(q−1). **Arguments:** ``lam`` λ ≥ 0; ``q`` in [1, 2];
    ``depth`` L. **Returns:** μ, a float.
    """
    check_range("lam", lam, 0.0)
    return lam ** (q * (depth - 1))


def escape_regime(q: float, depth: int) -> tuple[Literal["constant", "log", "power"], float]:
    """How the escape time from w_i = α scales as α → 0 (docs/theory.md §5).

    **Arguments:** ``q`` in [1, 2]; ``depth`` L ≥ 1 (they give m = q(L − 1)/L).

    **Returns:** ``(regime, exponent)``: "constant" (m < 1, exponent 0), "log" (m = 1,
    T ~ log(1/α), exponent 0) or "power" (m > 1, T ~ α^exponent with exponent L − q(L − 1)).
    """
    m = metric_exponent(q, depth)
    if abs(m - 1) < 1e-12:
        return "log", 0.0
    if m < 1:
        return "constant", 0.0
    return "power", depth - q * (depth - 1)


def penalty_exponent(q: float, depth: int, decay: Literal["decoupled", "coupled"]) -> float:
    """Exponent p of the effective weight-decay penalty Σ|x|^p (docs/theory.md §6):
    2 − m for decoupled decay (the manifold regularizer M) and 2/L for coupled decay.

    **Arguments:** ``q`` in [1, 2]; ``depth`` L ≥ 1; ``decay`` "decoupled" or "coupled".
    """
    if decay == "decoupled":
        return 2 - metric_exponent(q, depth)
    if decay == "coupled":
        check_int("depth", depth, 1)
        return 2 / depth
    raise ValueError(f"`decay` must be one of ['coupled', 'decoupled']; got {decay!r}.")


def manifold_regularizer(x, q: float, depth: int):
    """M(x) = (L/(L(2−q)+q))·Σ|x|^(2−m), the decoupled-decay term of the mirror flow
    d∇R = −φ_q(∇f)dt − α∇M(x)dt at c = 0 (docs/theory.md §6); ∇M(x) = sign(x)|x|^(1−m).

    **Arguments:** ``x`` effective weights, shape (dim,); ``q`` in [1, 2]; ``depth`` L.
    **Returns:** M(x), a scalar.
    """
    p = penalty_exponent(q, depth, "decoupled")
    return depth / (depth * (2 - q) + q) * jnp.sum(jnp.abs(x) ** p)


def coupled_penalty(x, beta: float, depth: int):
    """(βL/2)·Σ|x|^(2/L): coupled decay (β/2)Σ‖w_i‖² at a balanced point, in x (§6).

    **Arguments:** ``x`` effective weights, shape (dim,); ``beta`` β ≥ 0; ``depth`` L.
    **Returns:** the penalty, a scalar.
    """
    return beta * depth / 2 * jnp.sum(jnp.abs(x) ** penalty_exponent(2.0, depth, "coupled"))


def stationarity_residual(
    x,
    grad_f,
    q: float,
    depth: int,
    *,
    coupled_wd: float = 0.0,
    decoupled_wd: float = 0.0,
    eps: float = 0.0,
    support: float = 1e-2,
):
    """Largest violation of the predicted stationarity conditions on the support |x_j| > support:

    - decoupled α: φ_q^ε(∇f(x)) + α·∇M(x) = 0 (the balance constant has decayed to 0);
    - coupled β: ∇f(x) + β·sign(x)|x|^(2/L − 1) = 0 (for every q: φ_q vanishes only at 0).

    Pass one of ``coupled_wd`` / ``decoupled_wd``. Off the support x = 0 is stationary anyway.

    **Arguments:** ``x`` a candidate stationary point, shape (dim,); ``grad_f`` ∇f(x), same
    shape; ``q`` in [1, 2]; ``depth`` L; ``eps`` the smoothing ε of φ_q^ε (decoupled case);
    ``support`` the threshold on |x_j|. **Returns:** the largest |residual|, a scalar.
    """
    if (coupled_wd > 0) == (decoupled_wd > 0):
        raise ValueError("pass exactly one of `coupled_wd` > 0 or `decoupled_wd` > 0.")
    x, grad_f = jnp.asarray(x), jnp.asarray(grad_f)
    on = jnp.abs(x) > support
    safe = jnp.where(on, jnp.abs(x), 1.0)
    if decoupled_wd > 0:
        m = metric_exponent(q, depth)
        residual = steepest_map(grad_f, q, eps) + decoupled_wd * jnp.sign(x) * safe ** (1 - m)
    else:
        residual = grad_f + coupled_wd * jnp.sign(x) * safe ** (2 / depth - 1)
    return jnp.max(jnp.where(on, jnp.abs(residual), 0.0))
