"""The vector field against formulas written out independently with NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mirrorflow_jax as mf

from .helpers import positive_signed_model, small_regression


def _np_phi(z, q, eps):
    z = np.asarray(z, dtype=float)
    if eps > 0:
        return z * (z * z + eps * eps) ** ((q - 2) / 2)
    return np.sign(z) * np.abs(z) ** (q - 1)


def _np_grad_x(problem, x):
    A, b = np.asarray(problem.A), np.asarray(problem.b)
    return A.T @ (A @ x - b) / A.shape[0]


def _np_products_except(factors):
    return np.stack(
        [np.prod(np.delete(factors, i, axis=0), axis=0) for i in range(factors.shape[0])]
    )


@pytest.mark.parametrize("q, eps", [(1.0, 1e-2), (1.5, 1e-3), (2.0, 0.0), (1.5, 0.0)])
def test_structured_velocity(q, eps):
    problem = small_regression()
    model = mf.DeepDiagonal.random(jax.random.key(1), depth=3, dim=problem.dim, scale=0.8)
    alpha = 0.2
    v = mf.SteepestFlow(mf.Lp(q, eps), decoupled_wd=alpha)(0.0, model, problem)
    w = np.asarray(model.factors)
    g = _np_grad_x(problem, w.prod(axis=0))
    expected = -_np_phi(g, q, eps) * _np_phi(_np_products_except(w), q, 0.0) - alpha * w
    np.testing.assert_allclose(v.factors, expected, rtol=1e-11, atol=1e-15)


@pytest.mark.parametrize("q, eps", [(1.0, 1e-2), (1.5, 1e-3)])
def test_naive_velocity(q, eps):
    problem = small_regression()
    model = mf.DeepDiagonal.random(jax.random.key(1), depth=3, dim=problem.dim, scale=0.8)
    v = mf.SteepestFlow(mf.Lp(q, eps), smoothing_at="naive")(0.0, model, problem)
    w = np.asarray(model.factors)
    grad_w = _np_grad_x(problem, w.prod(axis=0)) * _np_products_except(w)
    np.testing.assert_allclose(v.factors, -_np_phi(grad_w, q, eps), rtol=1e-11, atol=1e-15)


def test_smoothing_scales_are_eps_times_the_factor_jacobian():
    problem = small_regression()
    model = mf.DeepDiagonal.random(jax.random.key(1), depth=3, dim=problem.dim, scale=0.8)
    w = np.asarray(model.factors)
    structured = mf.SteepestFlow(mf.Lp(1.0, 1e-3)).smoothing_scales(model)
    np.testing.assert_allclose(structured.factors, 1e-3 * np.abs(_np_products_except(w)))
    naive = mf.SteepestFlow(mf.Lp(1.0, 1e-3), smoothing_at="naive").smoothing_scales(model)
    np.testing.assert_allclose(np.broadcast_to(naive.factors, w.shape), 1e-3)


def test_coupled_decay_enters_inside_phi():
    problem = small_regression()
    model = positive_signed_model(0, 2, problem.dim)
    beta = 0.3
    v = mf.SteepestFlow(mf.Lp(1.5), coupled_wd=beta)(0.0, model, problem)
    u, w = np.asarray(model.u), np.asarray(model.v)
    g = _np_grad_x(problem, u.prod(0) - w.prod(0))
    grad_u = g * _np_products_except(u) + beta * u
    grad_v = -g * _np_products_except(w) + beta * w
    np.testing.assert_allclose(v.u, -_np_phi(grad_u, 1.5, 0.0), rtol=1e-12)
    np.testing.assert_allclose(v.v, -_np_phi(grad_v, 1.5, 0.0), rtol=1e-12)


def test_plain_pytree_params_use_naive_smoothing():
    problem = small_regression()
    params = {"x": jnp.linspace(-1.0, 1.0, problem.dim)}
    flow = mf.SteepestFlow(mf.Lp(1.0, 1e-2))
    assert flow.smoothing_for(params) == "naive"
    v = flow(0.0, params, lambda p: problem(p["x"]))
    g = _np_grad_x(problem, np.asarray(params["x"]))
    np.testing.assert_allclose(v["x"], -_np_phi(g, 1.0, 1e-2), rtol=1e-12)


def test_decay_schedule_is_evaluated_at_t():
    schedule = optax.cosine_decay_schedule(0.5, decay_steps=4)
    flow = mf.SteepestFlow(mf.Lp(2.0), decoupled_wd=schedule)
    problem = mf.ScalarToy(0.0)
    params = jnp.array([2.0])
    v = flow(jnp.asarray(1.0), params, problem)
    alpha = 0.5 * 0.5 * (1 + np.cos(np.pi / 4))
    np.testing.assert_allclose(v, -2.0 - alpha * 2.0, rtol=1e-12)
