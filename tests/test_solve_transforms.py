"""jit without retracing, vmap equal to a loop, grad through solves.

Every concrete solve of the exact maps (1 < q < 2, ε = 0) on `PROBLEM` is one program: the
retrace test's, the loop of the vmap test and the reference of the user-jit test share it.
Gradient flow (q = 2) is solved concretely by the retrace test alone, which asserts that it
is another program.
"""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

import mirrorflow_jax as mf

from .helpers import small_regression
from .test_validate import TRACES, CountingLoss

CONTROLLER = diffrax.PIDController(rtol=1e-10, atol=1e-12)
PROBLEM = CountingLoss(small_regression())


def _solve(alpha, q, eps, beta, decay, problem=PROBLEM, t1=1.0):
    flow = mf.SteepestFlow(mf.Lp(q, eps), coupled_wd=beta, decoupled_wd=decay)
    model = mf.SignedDeepDiagonal.scaled(alpha, depth=3, dim=problem.dim)
    return mf.solve_flow(flow, model, problem, t1, stepsize_controller=CONTROLLER)


def test_new_hyperparameter_values_do_not_retrace():
    """Values are arrays, not constants of the program: new ones reuse it. With
    solver="auto" that holds within a solver's region of (q, ε) (here the exact maps, q < 2
    and ε = 0); a concrete q or ε in another region (here gradient flow, q = 2) is another
    program (sweeps and traced q choose per member inside one program instead)."""
    problem = CountingLoss(small_regression())  # a new instance: its arrays are traced too
    _solve(0.1, 1.5, 0.0, 0.0, 0.0, problem)
    traced = TRACES["count"]
    _solve(0.2, 1.25, 0.0, 0.1, 0.05, problem, t1=2.0)
    _solve(0.05, 1.75, 0.0, 0.0, 0.2, problem, t1=0.5)
    assert TRACES["count"] == traced
    _solve(0.05, 2.0, 0.0, 0.0, 0.2, problem, t1=0.5)  # gradient flow: another region
    assert TRACES["count"] > traced


def test_vmap_matches_loop():
    """α, q, β and the decay vmapped (ε = 0: every member on one solver, the exact maps'
    explicit one, so the batched program holds no switch) equal the solves one by one.
    (Members that drive a factor through 0 are left out: the exact q < 2 map is not
    Lipschitz there and turns the batched program's rounding into other steps.)"""
    grid = {
        "alpha": jnp.array([0.05, 0.1, 0.2, 0.15]),
        "q": jnp.array([1.5, 1.75, 1.9, 1.6]),
        "beta": jnp.array([0.0, 0.1, 0.0, 0.05]),
        "decay": jnp.array([0.0, 0.0, 0.2, 0.1]),
    }
    batched = jax.vmap(lambda a, q, b, d: _solve(a, q, 0.0, b, d))(*grid.values())
    assert batched.solver == "Tsit5", "one solver for the whole batch"
    assert bool(jnp.all(batched.ok))
    for i in range(4):
        values = [float(v[i]) for v in grid.values()]
        single = _solve(values[0], values[1], 0.0, *values[2:])
        case = dict(zip(grid, values, strict=True))
        np.testing.assert_allclose(batched.x[i], single.x, rtol=1e-9, atol=1e-12, err_msg=case)
        assert int(batched.num_steps[i]) == int(single.num_steps), case


def test_grad_of_final_loss_matches_finite_differences():
    """jax.grad through a Rodas4 solve (q = 1.5, ε = 1e-3) against central differences of
    the same function (its values from the same compiled program; measured agreement 1e-9)."""

    def final_loss(alpha):
        return _solve(alpha, 1.5, 1e-3, 0.0, 0.1, t1=0.5).loss[-1]

    value_and_grad = jax.jit(jax.value_and_grad(final_loss))
    alpha, h = 0.3, 1e-5
    _, grad = value_and_grad(alpha)
    fd = (value_and_grad(alpha + h)[0] - value_and_grad(alpha - h)[0]) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=1e-5)


def test_solve_inside_user_jit():
    @jax.jit
    def run(alpha):
        return _solve(alpha, 1.5, 0.0, 0.0, 0.0).loss[-1]

    np.testing.assert_allclose(run(0.1), _solve(0.1, 1.5, 0.0, 0.0, 0.0).loss[-1])
