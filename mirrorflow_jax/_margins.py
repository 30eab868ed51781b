r"""Reference solutions of the implicit-bias problems: the ℓ_p max-margin separator of a
linear classification and the minimum-ℓ1 interpolant of an underdetermined regression.

Both are convex programs solved on the host with SciPy (HiGHS linear programs, and NNLS for
the ℓ2 margin): they are references to compare a flow's endpoint with, not traceable
functions. Inputs are converted with ``np.asarray`` and must be concrete.
"""

from typing import NamedTuple

import numpy as np
from jaxtyping import ArrayLike

from ._validate import check_finite, is_concrete

MARGIN_NORMS = (1.0, 2.0, np.inf)


class MaxMargin(NamedTuple):
    """The result of `max_margin`.

    **Fields:** ``value`` γ_p*, a float; ``direction`` a maximizer x* with ‖x*‖_p = 1,
    a float64 NumPy array of shape (d,).
    """

    value: float
    direction: np.ndarray


def _host_array(name: str, value, ndim: int) -> np.ndarray:
    """``value`` as a finite float64 NumPy array with ``ndim`` axes (ValueError otherwise)."""
    if not is_concrete(value):
        raise ValueError(
            f"`{name}` must be a concrete array: the reference is solved with SciPy on the "
            "host, outside jit/vmap/grad."
        )
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim != ndim or arr.size == 0:
        shape = "(n, d)" if ndim == 2 else "(n,)"
        raise ValueError(f"`{name}` must be a non-empty array of shape {shape}; got {arr.shape}.")
    check_finite(name, arr)
    return arr


def _norm(x: np.ndarray, p: float) -> float:
    return float(np.abs(x).max()) if np.isinf(p) else float((np.abs(x) ** p).sum() ** (1 / p))


def _not_separable() -> ValueError:
    return ValueError(
        "`X` and `y` are not linearly separable through the origin (no x has y_i⟨a_i, x⟩ > 0 "
        "for every i), so the max-margin problem has no positive value."
    )


def min_weighted_l1_separator(G: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """argmin Σ_j w_j|x_j| s.t. Gx ≥ 1, the LP min wᵀ(x⁺ + x⁻) s.t. G(x⁺ − x⁻) ≥ 1, x± ≥ 0
    (G: rows y_i·a_i). ValueError if infeasible (the data are not separable)."""
    from scipy.optimize import linprog

    n, d = G.shape
    res = linprog(
        np.tile(weights, 2), A_ub=-np.hstack([G, -G]), b_ub=-np.ones(n), bounds=(0, None)
    )
    if res.status == 2:
        raise _not_separable()
    if res.status != 0:
        raise RuntimeError(f"the weighted ℓ1 linear program failed: {res.message}")
    return res.x[:d] - res.x[d:]


def _min_l2_separator(G: np.ndarray) -> np.ndarray:
    """argmin ‖x‖₂ s.t. Gx ≥ 1, by least-distance programming: with u ≥ 0 the NNLS solution of
    [Gᵀ; 1ᵀ]u ≈ (0, …, 0, 1) and r its residual, x = −r_{1:d}/r_{d+1} (Lawson & Hanson);
    r = 0 exactly when the constraints are infeasible."""
    from scipy.optimize import nnls

    n, d = G.shape
    E = np.vstack([G.T, np.ones((1, n))])
    target = np.zeros(d + 1)
    target[-1] = 1.0
    u, _ = nnls(E, target, maxiter=50 * (n + d))
    residual = E @ u - target
    if not residual[d] < -1e-12:
        raise _not_separable()
    return -residual[:d] / residual[d]


def _max_linf_margin(G: np.ndarray) -> np.ndarray:
    """argmax γ s.t. Gx ≥ γ, ‖x‖_∞ ≤ 1, as an LP in (x, γ)."""
    from scipy.optimize import linprog

    n, d = G.shape
    cost = np.zeros(d + 1)
    cost[-1] = -1.0
    bounds = [(-1.0, 1.0)] * d + [(None, None)]
    res = linprog(cost, A_ub=np.hstack([-G, np.ones((n, 1))]), b_ub=np.zeros(n), bounds=bounds)
    if res.status != 0:
        raise RuntimeError(f"the ℓ∞ linear program failed: {res.message}")
    if not -res.fun > 0:
        raise _not_separable()
    return res.x[:d]


def max_margin(X: ArrayLike, y: ArrayLike, norm: float = 2.0) -> MaxMargin:
    r"""The ℓ_p max-margin value and direction of a linearly separable classification:

        γ_p* = max_{‖x‖_p ≤ 1} min_i y_i⟨a_i, x⟩,    p ∈ {1, 2, ∞}

    the limit direction that steepest descent in the dual geometry reaches on separable data
    (the ℓ2 margin for gradient descent, ℓ1 for coordinate descent, ℓ∞ for sign descent). For
    p ∈ {1, 2} it solves min ‖x‖_p s.t. y_i⟨a_i, x⟩ ≥ 1 (an LP for p = 1, least-distance
    programming by NNLS for p = 2) and normalizes; for p = ∞ it solves the LP
    max γ s.t. y_i⟨a_i, x⟩ ≥ γ, ‖x‖_∞ ≤ 1. By minimax duality γ_p* is also
    min over the probability simplex of ‖Σ_i u_i y_i a_i‖_{p′} (p′ the dual exponent).

    **Arguments:**

    - ``X``: the inputs a_i as rows, shape (n, d).
    - ``y``: labels in {−1, +1}, shape (n,).
    - ``norm``: p, one of 1, 2, ``inf`` (default 2).

    **Returns:** a `MaxMargin` ``(value, direction)``: γ_p* (the margin min_i y_i⟨a_i, x*⟩
    of the returned direction) and x* with ‖x*‖_p = 1, as NumPy float64. Computed on the host
    with SciPy; not traceable.

    Raises ValueError for bad shapes, labels or ``norm``, and for data that are not linearly
    separable through the origin.

    **Example:**

    ```python
    import numpy as np

    X, y = np.eye(3), np.ones(3)
    mf.max_margin(X, y, 1).value  # 1/3: x* = (1, 1, 1)/3
    mf.max_margin(X, y, 2).value  # 1/√3
    ```
    """
    X = _host_array("X", X, 2)
    y = _host_array("y", y, 1)
    if y.shape[0] != X.shape[0]:
        raise ValueError(
            f"`y` must hold one label per row of `X`, shape ({X.shape[0]},); got {y.shape}."
        )
    if not np.all(np.abs(y) == 1):
        raise ValueError("`y` must hold labels in {-1, +1}.")
    numeric = isinstance(norm, int | float | np.number) and not isinstance(norm, bool)
    if not numeric or float(norm) not in MARGIN_NORMS:
        raise ValueError(f"`norm` must be one of 1, 2, inf; got {norm!r}.")
    p = float(norm)
    G = y[:, None] * X
    if p == 1:
        x = min_weighted_l1_separator(G, np.ones(G.shape[1]))
    elif p == 2:
        x = _min_l2_separator(G)
    else:
        x = _max_linf_margin(G)
    direction = x / _norm(x, p)
    return MaxMargin(value=float(np.min(G @ direction)), direction=direction)


def min_l1_interpolant(A: ArrayLike, b: ArrayLike) -> np.ndarray:
    r"""The minimum-ℓ1 interpolant of an underdetermined linear regression:

        x* = argmin ‖x‖₁  s.t.  Ax = b

    the limit of gradient flow on u⊙u − v⊙v (and on deep diagonal models) from a vanishing
    initialization. Solved as the LP min 1ᵀ(x⁺ + x⁻) s.t. A(x⁺ − x⁻) = b, x± ≥ 0 (HiGHS); its
    dual is max bᵀν s.t. ‖Aᵀν‖_∞ ≤ 1, with the same optimal value.

    **Arguments:** ``A`` the design, shape (n, d); ``b`` the targets, shape (n,).

    **Returns:** x*, a NumPy float64 array of shape (d,) (one minimizer if several exist).
    Computed on the host with SciPy; not traceable.

    Raises ValueError for bad shapes and when Ax = b has no solution.

    **Example:**

    ```python
    import numpy as np

    mf.min_l1_interpolant(np.array([[1.0, 2.0]]), np.array([2.0]))  # [0., 1.]
    ```
    """
    from scipy.optimize import linprog

    A = _host_array("A", A, 2)
    b = _host_array("b", b, 1)
    if b.shape[0] != A.shape[0]:
        raise ValueError(
            f"`b` must hold one target per row of `A`, shape ({A.shape[0]},); got {b.shape}."
        )
    d = A.shape[1]
    res = linprog(np.ones(2 * d), A_eq=np.hstack([A, -A]), b_eq=b, bounds=(0, None))
    if res.status == 2:
        raise ValueError("`A` and `b` admit no interpolant: Ax = b has no solution.")
    if res.status != 0:
        raise RuntimeError(f"the ℓ1 linear program failed: {res.message}")
    return res.x[:d] - res.x[d:]
