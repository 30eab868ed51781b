"""docs/theory.md §6: the effective penalty exponent of coupled weight decay, measured.

On the separable f(x) = Σ_j (x_j − b_j)²/2 a stationary point of the coupled-decay flow has
b_j − x_j = β·|x_j|^(p−1) (docs/mirror.md, "Table 1, measured"), so the slope of log|b − x|
against log|x| over coordinates with spread-out targets measures p − 1 without using any
predicted exponent. The full table (L ∈ {2, 3, 4, 8}, q ∈ {1, 2}, coupled and decoupled) is
docs/scripts/penalty_table.py.
"""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mirrorflow_jax as mf

DIM = 6


@pytest.mark.parametrize("depth", [2, 3])
def test_coupled_gradient_flow_penalty_exponent(depth):
    targets = jnp.geomspace(1.0, 10.0, DIM)
    problem = mf.LeastSquares(jnp.sqrt(DIM) * jnp.eye(DIM), jnp.sqrt(DIM) * targets)
    beta = 0.1
    flow = mf.SteepestFlow(mf.Lp(2.0), coupled_wd=beta)
    # unbalanced positive init: the stationary point has to restore the balance itself
    model = mf.DeepDiagonal(jnp.linspace(0.6, 1.4, depth)[:, None] * jnp.ones((depth, DIM)))
    sol = mf.solve_flow(
        flow,
        model,
        problem,
        400.0,
        solver=diffrax.Tsit5(),
        stepsize_controller=diffrax.PIDController(rtol=1e-10, atol=1e-12),
    )
    assert bool(sol.ok)
    x = sol.x[-1]
    grad = jax.grad(problem)(x)
    assert float(mf.stationarity_residual(x, grad, 2.0, depth, coupled_wd=beta)) <= 1e-8
    slope, intercept = np.polyfit(np.log(np.abs(x)), np.log(np.abs(grad)), 1)
    measured = 1 + slope
    assert measured == pytest.approx(2 / depth, abs=1e-6)  # the closed form 2/L
    assert intercept == pytest.approx(np.log(beta), abs=1e-6)  # and the strength β
    assert measured == pytest.approx(mf.penalty_exponent(2.0, depth, "coupled"), abs=1e-6)
