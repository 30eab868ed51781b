"""Weight decay (docs/theory.md §6): long-run flows against the predicted stationarity conditions,
and the regularizers against their derivatives."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mirrorflow_jax as mf

from .helpers import small_regression

LONG = diffrax.PIDController(rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "q, eps, depth, decay, t1",
    [
        (2.0, 0.0, 2, "decoupled", 1500.0),
        (2.0, 0.0, 3, "decoupled", 300.0),
        (1.5, 1e-3, 3, "decoupled", 300.0),
        (2.0, 0.0, 4, "coupled", 300.0),
    ],
)
def test_long_run_flow_is_stationary(q, eps, depth, decay, t1):
    problem = small_regression()
    strength = 0.05
    flow = mf.SteepestFlow(mf.Lp(q, eps), **{f"{decay}_wd": strength})
    model = mf.DeepDiagonal.saddle(0.5, depth=depth, dim=problem.dim)
    sol = mf.solve_flow(flow, model, problem, t1, stepsize_controller=LONG)
    assert bool(sol.ok)
    x = sol.x[-1]
    assert int(jnp.sum(jnp.abs(x) > 1e-2)) >= 2  # a non-trivial support
    residual = mf.stationarity_residual(
        x, jax.grad(problem)(x), q, depth, eps=eps, **{f"{decay}_wd": strength}
    )
    assert float(residual) <= 1e-6


def test_gradient_flow_decays_agree():
    """At q = 2, coupled and decoupled decay are the same flow: −∇f − βw either way."""
    problem = small_regression()
    model = mf.DeepDiagonal.saddle(0.5, depth=3, dim=problem.dim)
    ends = [
        mf.solve_flow(mf.SteepestFlow(mf.Lp(2.0), **{kind: 0.05}), model, problem, 20.0).x[-1]
        for kind in ("coupled_wd", "decoupled_wd")
    ]
    np.testing.assert_allclose(ends[0], ends[1], rtol=1e-12)


@pytest.mark.parametrize("q, depth", [(1.0, 2), (1.5, 3), (2.0, 4), (1.0, 8)])
def test_regularizer_gradients(q, depth):
    x = jnp.array([-1.3, 0.2, 0.7, 2.5])
    m = mf.metric_exponent(q, depth)
    np.testing.assert_allclose(
        jax.grad(mf.manifold_regularizer)(x, q, depth),
        np.sign(x) * np.abs(x) ** (1 - m),
        rtol=1e-12,
    )
    beta = 0.3
    np.testing.assert_allclose(
        jax.grad(mf.coupled_penalty)(x, beta, depth),
        beta * np.sign(x) * np.abs(x) ** (2 / depth - 1),
        rtol=1e-12,
    )
    assert mf.penalty_exponent(q, depth, "decoupled") == pytest.approx(2 - m)
    assert mf.penalty_exponent(q, depth, "coupled") == pytest.approx(2 / depth)
