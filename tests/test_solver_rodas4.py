"""Rodas4 and the structured (block-diagonal plus low-rank) Jacobian of the sign flow.

Independent references: ``jax.jacfwd`` of the flattened field for the Jacobian, dense
``numpy.linalg.solve`` for the Woodbury solves, and scipy's Radau at rtol 1e-10 on the same
regularized field for the trajectories.
"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest

import mirrorflow_jax as mf
from mirrorflow_jax._solver.linear import _block_inverses, _gauss_jordan, woodbury_solve
from mirrorflow_jax._solver.rows import rows as _rows, unrows as _unrows

from .helpers import positive_signed_model, radau_reference, small_regression


def _classification(loss, seed=3, n=6, d=7):
    return mf.sparse_classification(jax.random.key(seed), n=n, d=d, k=2, loss=loss)


def _model(kind, depth, dim, scale, seed=1):
    key = jax.random.key(seed)
    if kind == "signed":
        return mf.SignedDeepDiagonal.random(key, depth=depth, dim=dim, scale=scale)
    if kind == "deep":
        return mf.DeepDiagonal.random(key, depth=depth, dim=dim, scale=scale)
    if kind == "padded":
        model = mf.SignedDeepDiagonal.random(key, depth=depth + 2, dim=dim, scale=scale)
        return mf.Padded(model, depth)
    return mf.SquareDiff.scaled(scale, dim=dim)


JACOBIAN_CASES = [
    # (model kind, depth, scale, eps, smoothing_at, loss, coupled, decoupled)
    ("signed", 3, 1.0, 1e-2, "structured", "squares", 0.0, 0.0),
    ("signed", 2, 0.1, 1e-6, "structured", "logistic", 0.05, 0.02),
    ("deep", 4, 1.0, 1e-3, "naive", "exponential", 0.0, 0.03),
    ("signed", 3, 0.3, 1e-6, "naive", "squares", 0.1, 0.0),
    ("padded", 2, 1.0, 1e-2, "structured", "squares", 0.0, 0.01),
    ("squarediff", 1, 0.5, 1e-3, "structured", "logistic", 0.02, 0.0),
]


@eqx.filter_jit
def _both_jacobians(flow, model, loss):
    dim = model().shape[0]
    structured = mf.structured_jacobian(flow, model, loss, 0.5).as_matrix()
    w = _rows(model, dim)
    dense = jax.jacfwd(lambda r: _rows(flow(0.5, _unrows(r, model), loss), dim))(w)
    return structured, dense.reshape(w.size, w.size)


@pytest.mark.parametrize("case", JACOBIAN_CASES, ids=str)
def test_structured_jacobian_equals_jacfwd(case):
    kind, depth, scale, eps, place, loss_kind, coupled, decoupled = case
    if loss_kind == "squares":
        loss = small_regression(seed=2, n=6, d=7)
    else:
        loss = _classification(loss_kind)
    flow = mf.SteepestFlow(
        mf.Lp(1.0 if eps < 1e-2 else 1.3, eps),
        coupled_wd=coupled,
        decoupled_wd=decoupled,
        smoothing_at=place,
    )
    structured, dense = _both_jacobians(flow, _model(kind, depth, 7, scale), loss)
    assert np.all(np.isfinite(structured))
    error = np.max(np.abs(structured - dense)) / np.max(np.abs(dense))
    assert error <= 1e-10


def _random_operator(seed, scale, rows=4, dim=9, rank=3):
    keys = jax.random.split(jax.random.key(seed), 4)
    blocks = scale * jax.random.normal(keys[0], (dim, rows, rows), dtype=jnp.float64)
    left = jax.random.normal(keys[1], (rows, dim), dtype=jnp.float64)
    right = jax.random.normal(keys[2], (rows, dim), dtype=jnp.float64)
    factor = jax.random.normal(keys[3], (dim, rank), dtype=jnp.float64)
    return mf.BlockLowRankOperator(blocks, left, right, factor)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_woodbury_solve_equals_dense_solve(scale):
    operator = _random_operator(int(np.log10(scale)) + 5, scale).shifted(0.7)
    rows, dim = operator.left.shape
    b = jax.random.normal(jax.random.key(11), (rows, dim), dtype=jnp.float64)
    solution = lx.linear_solve(operator, b, mf.WoodburySolver()).value
    dense = np.linalg.solve(np.asarray(operator.as_matrix()), np.asarray(b).reshape(-1))
    np.testing.assert_allclose(np.asarray(solution).reshape(-1), dense, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(operator.mv(solution), b, rtol=1e-9, atol=1e-11)
    # The one-shot variant (capacitance solved, not inverted) gives the same solution.
    once = woodbury_solve(operator, b)
    np.testing.assert_allclose(np.asarray(once).reshape(-1), dense, rtol=1e-9, atol=1e-12)
    # mv and the diagonal agree with the dense matrix.
    matrix = np.asarray(operator.as_matrix())
    np.testing.assert_allclose(
        np.asarray(operator.mv(b)).reshape(-1), matrix @ np.asarray(b).reshape(-1), rtol=1e-12
    )
    np.testing.assert_allclose(lx.diagonal(operator), np.diag(matrix), rtol=1e-12)
    # The transposed solve from the same factorization equals a dense solve with Mᵀ.
    solver = mf.WoodburySolver()
    state_t, _ = solver.transpose(solver.init(operator, {}), {})
    solution_t = solver.compute(state_t, b, {})[0]
    dense_t = np.linalg.solve(matrix.T, np.asarray(b).reshape(-1))
    np.testing.assert_allclose(np.asarray(solution_t).reshape(-1), dense_t, rtol=1e-9, atol=1e-12)


def test_block_inverses_fall_back_to_pivoting():
    """Blocks whose leading entry is 0 defeat elimination without pivoting; the checked
    inverse falls back to a pivoted one and stays exact."""
    swap = jnp.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
    blocks = jnp.stack([swap, jnp.eye(3) + 0.1 * swap])
    inverses = jnp.transpose(_block_inverses(blocks), (2, 0, 1))
    np.testing.assert_allclose(inverses, np.linalg.inv(np.asarray(blocks)), atol=1e-14)
    assert not np.all(np.isfinite(np.asarray(_gauss_jordan(jnp.transpose(blocks, (1, 2, 0))))))


TRAJECTORY_CASES = [
    # (smoothing_at, structure, eps, decoupled schedule?, loss)
    ("structured", "structured", 1e-2, False, "squares"),
    ("naive", "structured", 1e-3, True, "squares"),
    ("structured", "dense", 1e-2, False, "logistic"),
]


class _Decay(eqx.Module):
    rate: jax.Array

    def __call__(self, t):
        return self.rate * (1 + jnp.sin(t))


def _controller(rtol, atol):
    """A PIDController whose tolerances are arrays: traced, so solves at other tolerances
    reuse the compiled program (Python floats in it would be static)."""
    return diffrax.PIDController(rtol=jnp.asarray(rtol), atol=jnp.asarray(atol))


def _sign_flow(eps, place="structured", decay=0.0):
    return mf.SteepestFlow(mf.Lp(1.0, eps), decoupled_wd=decay, smoothing_at=place)


# Save times of every Rodas4 trajectory below (one length, so one program per structure).
SAVES = 41


def _rodas4(flow, model, loss, t1, controller, structure="structured"):
    return mf.solve_flow(
        flow,
        model,
        loss,
        t1,
        saveat=jnp.linspace(0.0, t1, SAVES),
        solver=mf.Rodas4(structure=structure),
        stepsize_controller=controller,
        max_steps=20_000,
    )


@pytest.mark.parametrize("case", TRAJECTORY_CASES, ids=str)
def test_rodas4_matches_radau_reference(case):
    place, structure, eps, scheduled, loss_kind = case
    loss = (
        small_regression(seed=4, n=5, d=6)
        if loss_kind == "squares"
        else _classification("logistic", n=5, d=6)
    )
    decay = _Decay(jnp.asarray(0.05)) if scheduled else 0.0
    flow = _sign_flow(eps, place, decay)
    model = positive_signed_model(seed=7, depth=2, dim=6)
    sol = _rodas4(flow, model, loss, 10.0, _controller(1e-10, 1e-12), structure)
    assert bool(sol.ok)
    reference = radau_reference(flow, model, loss, np.linspace(0.0, 10.0, SAVES))
    scale = np.maximum(np.abs(reference), 1.0)
    assert np.max(np.abs(np.asarray(sol.x) - reference) / scale) <= 1e-6


def test_rodas4_is_fourth_order():
    """Halving a constant step divides the global error by ≈ 2⁴ on the non-autonomous
    y' = −y² + cos t (which also exercises the ∂f/∂t terms of the stages)."""
    term = diffrax.ODETerm(lambda t, y, args: -(y**2) + jnp.cos(t))
    y0 = jnp.array([1.0])
    reference = diffrax.diffeqsolve(
        term,
        diffrax.Tsit5(),
        0.0,
        1.0,
        0.01,
        y0,
        stepsize_controller=diffrax.PIDController(rtol=1e-13, atol=1e-14),
    ).ys[-1]
    # dt0 as an array: one compiled program for the three step sizes
    errors = [
        float(
            jnp.abs(
                diffrax.diffeqsolve(term, mf.Rodas4(), 0.0, 1.0, jnp.asarray(dt), y0).ys[-1]
                - reference
            )[0]
        )
        for dt in (0.1, 0.05, 0.025)
    ]
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    assert np.all((ratios > 13.0) & (ratios < 20.0))


def test_dense_output_is_accurate_between_steps():
    """Save times between Rodas4 steps come from its dense output, accurate to tolerance
    (the program of the trajectory test above, at a loose tolerance: long steps)."""
    loss = small_regression(seed=5, n=5, d=6)
    model = positive_signed_model(seed=2, depth=2, dim=6)
    flow = _sign_flow(1e-2)
    rodas = _rodas4(flow, model, loss, 5.0, _controller(1e-7, 1e-9))
    assert bool(rodas.ok)
    reference = radau_reference(flow, model, loss, np.linspace(0.0, 5.0, SAVES))
    assert np.max(np.abs(np.asarray(rodas.x) - reference)) <= 1e-5


def test_vmap_over_eps_and_event_derivative():
    """Saddle escape of the smoothed sign flow on the scalar toy: vmapped over ε it equals a
    lone solve, and d(escape time)/dε (forward mode through the event) matches finite
    differences. Two programs: the lone solve, and the vmapped forward-mode solve whose
    members also give the finite differences."""
    model = mf.DeepDiagonal.scaled(0.1, depth=2, dim=1)

    @jax.jit
    def escape_time(eps):
        flow = mf.SteepestFlow(mf.Lp(1.0, eps))
        sol = mf.solve_flow(
            flow,
            model,
            mf.ScalarToy(),
            50.0,
            solver=mf.Rodas4(),
            event=mf.NormAbove(0.5),
            adjoint=diffrax.ForwardMode(),
        )
        return sol.event_time

    step = 1e-4
    eps = jnp.array([1e-1, 1e-2, 1e-1 + step, 1e-1 - step])
    batched, slopes = jax.vmap(lambda e: jax.jvp(escape_time, (e,), (jnp.ones_like(e),)))(eps)
    assert np.all(np.isfinite(batched))
    np.testing.assert_allclose(batched[1], escape_time(eps[1]), rtol=1e-10)
    finite_difference = (batched[2] - batched[3]) / (2 * step)
    assert abs(float(slopes[0])) > 0
    np.testing.assert_allclose(slopes[0], finite_difference, rtol=1e-4)


def test_failed_linear_solves_reject_steps():
    """A residual tolerance no solve can meet rejects every step: the solve reports failure
    instead of accepting an unchecked step."""
    loss = small_regression(seed=0, n=4, d=5)
    model = positive_signed_model(seed=1, depth=2, dim=5)
    flow = mf.SteepestFlow(mf.Lp(1.0, 1e-2))
    sol = mf.solve_flow(
        flow, model, loss, 1.0, solver=mf.Rodas4(residual_tol=1e-300), max_steps=50
    )
    assert not bool(sol.ok)
    np.testing.assert_array_equal(sol.x[-1] if np.isfinite(sol.ts[-1]) else sol.x[0], sol.x[0])


def test_bad_solver_setup_is_rejected():
    with pytest.raises(ValueError, match="structure"):
        mf.Rodas4(structure="sparse")
    with pytest.raises(ValueError, match="residual_tol"):
        mf.Rodas4(residual_tol=0.0)
    mirror = mf.MirrorFlow(mf.Lp(2.0), depth=2, c=0.1)
    with pytest.raises(ValueError, match="structure='dense'"):
        mf.solve_mirror_flow(
            mirror,
            jnp.full(5, 0.1),
            small_regression(n=4, d=5),
            1.0,
            solver=mf.Rodas4(structure="structured"),
        )


def test_eps_sensitivity_reports_each_endpoint():
    loss = small_regression(seed=8, n=5, d=6)
    model = positive_signed_model(seed=3, depth=2, dim=6)
    flow = _sign_flow(0.5)
    eps = [1e-1, 1e-2, 1e-3]
    controller = _controller(1e-8, 1e-10)
    ds = mf.eps_sensitivity(
        flow,
        model,
        loss,
        10.0,
        eps,
        solver=mf.Rodas4(structure="structured"),
        stepsize_controller=controller,
        max_steps=20_000,
    )
    assert bool(ds.ok.all()) and ds.attrs["solver"] == "Rodas4"
    single = _rodas4(_sign_flow(1e-2), model, loss, 10.0, controller)  # the program above
    np.testing.assert_allclose(ds.x_final.sel(eps=1e-2), single.x[-1], rtol=1e-9, atol=1e-12)
    distances = ds.distance_to_smallest_eps.values
    assert distances[-1] == 0.0 and distances[0] > distances[1] > 0.0
    with pytest.raises(ValueError, match="eps"):
        mf.eps_sensitivity(flow, model, loss, 10.0, [1e-2, 0.0])
