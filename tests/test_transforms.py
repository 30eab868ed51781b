"""jit without retracing, vmap equal to a loop, grad through solves."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

import mirrorflow_jax as mf

from .helpers import small_regression
from .test_errors import TRACES, CountingLoss

CONTROLLER = diffrax.PIDController(rtol=1e-10, atol=1e-12)


def _solve(alpha, q, eps, beta, decay, problem, t1=1.0):
    flow = mf.SteepestFlow(mf.Lp(q, eps), coupled_wd=beta, decoupled_wd=decay)
    model = mf.SignedDeepDiagonal.scaled(alpha, depth=3, dim=problem.dim)
    return mf.solve_flow(flow, model, problem, t1, stepsize_controller=CONTROLLER)


def test_new_hyperparameter_values_do_not_retrace():
    """Values are arrays, not constants of the program: new ones reuse it. With
    solver="auto" that holds within a solver's region of (q, ε) (here the exact maps, q < 2
    and ε = 0); a concrete q or ε in another region picks another solver, so another program
    (sweeps and traced q choose per member inside one program instead)."""
    problem = CountingLoss(small_regression())
    _solve(0.1, 1.5, 0.0, 0.0, 0.0, problem)
    traced = TRACES["count"]
    _solve(0.2, 1.25, 0.0, 0.1, 0.05, problem, t1=2.0)
    _solve(0.05, 1.75, 0.0, 0.0, 0.2, problem, t1=0.5)
    assert TRACES["count"] == traced
    _solve(0.05, 1.0, 1e-2, 0.0, 0.2, problem, t1=0.5)  # the smoothed sign flow
    assert TRACES["count"] > traced


def test_vmap_matches_loop():
    problem = small_regression()
    grid = {
        "alpha": jnp.array([0.05, 0.1, 0.2, 0.3]),
        "q": jnp.array([1.0, 1.5, 2.0, 1.2]),
        "eps": jnp.array([1e-2, 0.0, 0.0, 1e-2]),
        "beta": jnp.array([0.0, 0.1, 0.0, 0.0]),
        "decay": jnp.array([0.0, 0.0, 0.2, 0.1]),
    }
    batched = jax.vmap(lambda a, q, e, b, d: _solve(a, q, e, b, d, problem))(*grid.values())
    assert bool(jnp.all(batched.ok))
    for i in range(4):
        single = _solve(*(float(v[i]) for v in grid.values()), problem)
        np.testing.assert_allclose(batched.x[i], single.x, rtol=1e-9, atol=1e-12)
        assert int(batched.num_steps[i]) == int(single.num_steps)


def test_grad_of_final_loss_matches_finite_differences():
    problem = small_regression()

    def final_loss(alpha):
        return _solve(alpha, 1.5, 1e-3, 0.0, 0.1, problem).loss[-1]

    alpha, h = 0.3, 1e-5
    grad = jax.grad(final_loss)(alpha)
    fd = (final_loss(alpha + h) - final_loss(alpha - h)) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=1e-5)


def test_solve_inside_user_jit():
    problem = small_regression()

    @jax.jit
    def run(alpha):
        return _solve(alpha, 2.0, 0.0, 0.0, 0.0, problem).loss[-1]

    np.testing.assert_allclose(run(0.1), _solve(0.1, 2.0, 0.0, 0.0, 0.0, problem).loss[-1])
