"""`max_margin` and `min_l1_interpolant` against closed forms and against their duals, solved
as different programs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

import mirrorflow_jax as mf

NORMS = [1, 2, np.inf]


def _separable(seed, n=12, d=6):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = np.sign(X @ rng.standard_normal(d))
    return X, y


def _dual_margin(G, p):
    """min over the simplex of ‖Gᵀu‖_{p′} (minimax dual of the max-margin problem), as an LP in
    (u, s) for p′ ∈ {1, ∞} and by SLSQP for p′ = 2."""
    n, d = G.shape
    if p == 2:
        res = optimize.minimize(
            lambda u: np.sum((G.T @ u) ** 2),
            np.full(n, 1 / n),
            jac=lambda u: 2 * G @ (G.T @ u),
            bounds=[(0, None)] * n,
            constraints=[{"type": "eq", "fun": lambda u: np.sum(u) - 1}],
            method="SLSQP",
            options={"ftol": 1e-15, "maxiter": 1000},
        )
        return float(np.sqrt(res.fun))
    # |Gᵀu| ≤ s entrywise; p′ = ∞ (p = 1): one bound s for every entry, p′ = 1: one per entry
    k = 1 if p == 1 else d
    cost = np.concatenate([np.zeros(n), np.ones(k)])
    spread = np.ones((d, 1)) if p == 1 else np.eye(d)
    A_ub = np.block([[G.T, -spread], [-G.T, -spread]])
    A_eq = np.concatenate([np.ones(n), np.zeros(k)])[None]
    res = optimize.linprog(cost, A_ub=A_ub, b_ub=np.zeros(2 * d), A_eq=A_eq, b_eq=[1.0])
    assert res.status == 0
    return float(res.fun)


@pytest.mark.parametrize("norm", NORMS)
def test_orthogonal_points_have_margin_d_to_the_minus_one_over_p(norm):
    """Points e_1, …, e_d (labels +1): x* = (1, …, 1)/d^(1/p), γ* = d^(−1/p); the labels and
    a flipped point (−e_j, −1) give the same constraints."""
    d = 3
    X, y = np.eye(d), np.ones(d)
    X[1], y[1] = -X[1], -1.0
    value, direction = mf.max_margin(X, y, norm)
    expected = d ** (-1 / norm)
    np.testing.assert_allclose(value, expected, rtol=1e-9)
    np.testing.assert_allclose(direction, np.full(d, expected), rtol=1e-7)


@pytest.mark.parametrize("norm, value, direction", [
    (1, 4.0, [0.0, 1.0]),
    (2, 5.0, [0.6, 0.8]),
    (np.inf, 7.0, [1.0, 1.0]),
])  # fmt: skip
def test_one_point_margin_is_the_dual_norm(norm, value, direction):
    """One point a = (3, 4): γ_p* = max_{‖x‖_p ≤ 1} ⟨a, x⟩ = ‖a‖_{p′} (∞, 2, 1 for p = 1, 2, ∞)."""
    result = mf.max_margin(jnp.array([[3.0, 4.0]]), jnp.array([1.0]), norm)
    assert isinstance(result, mf.MaxMargin)
    np.testing.assert_allclose(result.value, value, rtol=1e-9)
    np.testing.assert_allclose(result.direction, direction, atol=1e-9)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("seed", [0, 1])
def test_max_margin_equals_its_minimax_dual(norm, seed):
    X, y = _separable(seed)
    value, direction = mf.max_margin(X, y, norm)
    G = y[:, None] * X
    np.testing.assert_allclose(value, _dual_margin(G, norm), rtol=1e-6)
    # the direction is feasible, has unit norm and attains the value
    unit = np.abs(direction).max() if np.isinf(norm) else np.sum(np.abs(direction) ** norm)
    np.testing.assert_allclose(unit, 1.0, rtol=1e-12)
    np.testing.assert_allclose(np.min(G @ direction), value, rtol=1e-12)
    # and no random unit direction does better
    rng = np.random.default_rng(seed)
    trials = rng.standard_normal((2000, X.shape[1]))
    norms = np.linalg.norm(trials, ord=norm, axis=1)
    assert np.max(np.min(trials @ G.T, axis=1) / norms) <= value * (1 + 1e-9)


def test_classification_problem_margins_are_ordered_by_the_norm_inequalities():
    """‖x‖_∞ ≤ ‖x‖_2 ≤ ‖x‖_1 gives γ_1* ≤ γ_2* ≤ γ_∞* on the toolkit's sparse classification."""
    problem = mf.sparse_classification(jax.random.key(0), n=20, d=10, k=2)
    values = [mf.max_margin(problem.A, problem.y, p).value for p in NORMS]
    assert 0 < values[0] <= values[1] <= values[2]


@pytest.mark.parametrize("norm", NORMS)
def test_not_separable_raises(norm):
    X = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match="not linearly separable"):
        mf.max_margin(X, np.ones(3), norm)


@pytest.mark.parametrize("args, pattern", [
    ((np.ones((2, 2)), np.ones(2), 3), r"`norm` must be one of 1, 2, inf"),
    ((np.ones((2, 2)), np.ones(2), True), r"`norm` must be one of"),
    ((np.ones((2, 2)), np.array([1.0, 0.5]), 2), r"`y` must hold labels in \{-1, \+1\}"),
    ((np.ones((2, 2)), np.ones(3), 2), r"`y` must hold one label per row of `X`"),
    ((np.ones(2), np.ones(2), 2), r"`X` must be a non-empty array of shape \(n, d\)"),
    ((np.array([[np.nan, 1.0]]), np.ones(1), 2), r"`X` must be finite"),
])  # fmt: skip
def test_max_margin_bad_input(args, pattern):
    with pytest.raises(ValueError, match=pattern):
        mf.max_margin(*args)


def test_max_margin_refuses_traced_input():
    with pytest.raises(ValueError, match="`X` must be a concrete array"):
        jax.jit(lambda X: mf.max_margin(X, np.ones(1)).value)(jnp.ones((1, 2)))


@pytest.mark.parametrize("A, b, expected", [
    ([[1.0, 2.0]], [2.0], [0.0, 1.0]),
    ([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]], [1.0, 1.0], [0.0, 1.0, 0.0]),
    ([[1.0, 0.0], [0.0, 1.0]], [3.0, -2.0], [3.0, -2.0]),
])  # fmt: skip
def test_min_l1_interpolant_closed_forms(A, b, expected):
    """x = (0, 1) + t(1, −1, 1) in the second case: ‖x‖₁ = 2|t| + |1 − t|, least at t = 0."""
    np.testing.assert_allclose(mf.min_l1_interpolant(A, b), expected, atol=1e-12)


def test_min_l1_interpolant_recovers_a_sparse_vector_and_meets_its_dual():
    rng = np.random.default_rng(3)
    n, d = 20, 40
    A = rng.standard_normal((n, d))
    truth = np.zeros(d)
    truth[[3, 17, 31]] = [1.5, -2.0, 0.7]
    b = A @ truth
    x = mf.min_l1_interpolant(A, b)
    np.testing.assert_allclose(x, truth, atol=1e-8)
    # dual: max bᵀν s.t. ‖Aᵀν‖_∞ ≤ 1 has the same value (strong LP duality)
    dual = optimize.linprog(
        -b, A_ub=np.vstack([A.T, -A.T]), b_ub=np.ones(2 * d), bounds=(None, None)
    )
    assert dual.status == 0
    np.testing.assert_allclose(np.abs(x).sum(), -dual.fun, rtol=1e-9)


def test_min_l1_interpolant_bad_input():
    with pytest.raises(ValueError, match="Ax = b has no solution"):
        mf.min_l1_interpolant([[1.0, 0.0], [1.0, 0.0]], [1.0, 2.0])
    with pytest.raises(ValueError, match=r"`b` must hold one target per row of `A`"):
        mf.min_l1_interpolant(np.ones((2, 3)), np.ones(3))
