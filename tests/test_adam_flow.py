"""The continuous-time Adam/AdamW ODE: its vector field against written-out formulas, a closed
form, discrete Adam as η → 0, and the sign flow as its limit (docs/theory.md §1)."""

import operator

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mirrorflow_jax as mf
from mirrorflow_jax import AdamFlow, AdamState, run_optimizer, steps_at_times, trajectory_gap

from .helpers import small_regression

CONTROLLER = diffrax.PIDController(rtol=1e-10, atol=1e-12)
TOY_TS = jnp.linspace(0.0, 1.0, 9)  # scaled by t1 below; one compilation for the toy solves


class Linear(eqx.Module):
    """f(x) = c·x: a constant gradient, for which bias-corrected moments are exact."""

    c: jax.Array

    def __call__(self, x):
        return jnp.dot(self.c, x)


def _toy_solve(flow, t1):
    model = mf.DeepDiagonal.scaled(0.5, depth=2, dim=1)
    ts = TOY_TS * t1
    sol = mf.solve_flow(flow, model, mf.ScalarToy(), t1, saveat=ts, stepsize_controller=CONTROLLER)
    assert bool(sol.ok)
    return model, ts, sol


@pytest.mark.parametrize("t", [0.0, 0.3])
def test_vector_field_matches_written_out_formula(t):
    problem = small_regression()
    rng = np.random.default_rng(0)
    theta, m = (jnp.asarray(s * rng.normal(size=problem.dim)) for s in (1.0, 0.1))
    v = jnp.asarray(0.1 * rng.uniform(size=problem.dim))
    a, b, eps, decay = 3.0, 0.5, 1e-3, 0.2
    out = AdamFlow(a, b, eps, decay)(t, AdamState(theta, m, v), problem)

    A, y = np.asarray(problem.A), np.asarray(problem.b)
    g = A.T @ (A @ np.asarray(theta) - y) / A.shape[0]
    if t > 0:
        m_hat, v_hat = m / (1 - np.exp(-a * t)), v / (1 - np.exp(-b * t))
    else:
        m_hat, v_hat = g, g * g
    np.testing.assert_allclose(
        out.params, -m_hat / (np.sqrt(v_hat) + eps) - decay * theta, rtol=1e-12
    )
    np.testing.assert_allclose(out.m, a * (g - m), rtol=1e-12)
    np.testing.assert_allclose(out.v, b * (g * g - v), rtol=1e-12)


def test_constant_gradient_gives_the_closed_form():
    """With g ≡ c the bias-corrected moments are m̂ = c and v̂ = c², so
    θ(t) = θ0·e^(−λt) − c/(|c| + ε)·(1 − e^(−λt))/λ for every a, b."""
    c = jnp.array([2.0, -0.5, 1e-3, 0.0])
    theta0 = jnp.array([1.0, -1.0, 0.5, 0.25])
    a, b, eps, decay = 7.0, 0.3, 1e-3, 0.4
    ts = jnp.linspace(0.0, 3.0, 7)
    flow = AdamFlow(a, b, eps, decay)
    sol = mf.solve_flow(flow, theta0, Linear(c), 3.0, saveat=ts, stepsize_controller=CONTROLLER)
    assert bool(sol.ok)
    assert sol.geometry is None and sol.smoothing_at is None and sol.balance is None
    t = np.asarray(ts)[:, None]
    step = np.asarray(c / (jnp.abs(c) + eps))
    expected = theta0 * np.exp(-decay * t) - step * (1 - np.exp(-decay * t)) / decay
    np.testing.assert_allclose(sol.params, expected, rtol=1e-8, atol=1e-10)


def test_discrete_adamw_approaches_the_ode_linearly_in_the_step():
    flow = AdamFlow(10.0, 1.0, eps=1e-8, decoupled_wd=0.1)  # β1 = 0.9, β2 = 0.99 at η = 0.01
    t1 = 2.0
    model, ts, sol = _toy_solve(flow, t1)
    lrs = jnp.array([0.01, 0.005, 0.0025])  # a·η ≤ 0.1: at η = 0.02 the ratio is still 2.8

    def run(lr):
        steps = steps_at_times(ts, lr)
        return run_optimizer(flow.discrete(lr), model, mf.ScalarToy(), 800, save_steps=steps)

    runs = jax.vmap(run)(lrs)
    members = [jax.tree.map(operator.itemgetter(i), runs) for i in range(len(lrs))]
    gaps = np.array([trajectory_gap(run, sol, lr) for run, lr in zip(members, lrs, strict=True)])
    # measured: 4.6e-3, 2.3e-3, 1.1e-3
    np.testing.assert_allclose(gaps[:-1] / gaps[1:], 2.0, rtol=0.1)
    assert gaps[-1] < 2e-3


def test_sign_flow_is_the_limit_of_fast_moments_and_small_eps():
    """From w = (1/2, 1/2) on f(x) = (x − 1)²/2 the sign flow is w(t) = 1/2 + t until t = 1/2;
    the Adam ODE with time constants 1/a = 1/b = 1/A and ε = 0.1/A approaches it as A grows."""
    gaps = []
    for rate in [10.0, 100.0, 1000.0]:
        _, ts, sol = _toy_solve(AdamFlow(rate, rate, eps=0.1 / rate), 0.4)
        gaps.append(float(jnp.max(jnp.abs(sol.params.factors - (0.5 + ts)[:, None, None]))))
    gaps = np.array(gaps)
    # measured: 1.2e-2, 1.4e-3, 1.3e-4 (with b = a/10 the approach is slower and not monotone
    # at these rates: 2.3e-2, 2.6e-2, 6.2e-3)
    assert np.all(gaps[:-1] / gaps[1:] > 5)
    assert gaps[-1] < 5e-4


def test_discrete_is_optax_adamw_with_betas_tied_to_the_step():
    flow = AdamFlow.from_betas(0.01, b1=0.9, b2=0.99, eps=1e-6, decoupled_wd=0.1)
    np.testing.assert_allclose([flow.rate1, flow.rate2], [10.0, 1.0], rtol=1e-12)
    np.testing.assert_allclose(flow.betas(0.01), [0.9, 0.99], rtol=1e-12)
    ours, theirs = flow.discrete(0.01), optax.adamw(0.01, 0.9, 0.99, 1e-6, weight_decay=0.1)
    params = (jnp.array([1.0, -2.0, 0.5]),) * 2
    states = (ours.init(params[0]), theirs.init(params[1]))
    with jax.numpy_dtype_promotion("standard"):  # optax's β**count under strict promotion
        for k in range(3):
            grads = jnp.array([0.3, -1.0, 2.0]) * (k + 1)
            outs = [
                opt.update(grads, s, p)
                for opt, s, p in zip((ours, theirs), states, params, strict=True)
            ]
            np.testing.assert_allclose(outs[0][0], outs[1][0], rtol=1e-12)
            states = tuple(out[1] for out in outs)
            params = tuple(
                optax.apply_updates(p, out[0]) for p, out in zip(params, outs, strict=True)
            )


@pytest.mark.parametrize(
    "make, pattern",
    [
        (lambda: AdamFlow(0.0, 1.0), r"`rate1` must lie in \(0.0, inf\)"),
        (lambda: AdamFlow(1.0, -1.0), r"`rate2` must lie in \(0.0, inf\)"),
        (lambda: AdamFlow(1.0, 1.0, eps=-1.0), r"`eps` must lie in \[0.0, inf\)"),
        (lambda: AdamFlow(1.0, 1.0, decoupled_wd=-1.0), r"`decoupled_wd` must lie in"),
        (lambda: AdamFlow.from_betas(0.01, b1=1.0), r"`b1` must lie in \[0, 1\)"),
        (lambda: AdamFlow.from_betas(0.0), r"`learning_rate` must lie in \(0.0, inf\)"),
        (lambda: AdamFlow(10.0, 1.0).discrete(0.2), r"`learning_rate` must lie in \(0.0, 0.1\]"),
    ],
)
def test_bad_setup_raises(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()


def test_weight_decay_is_a_deprecated_name_of_decoupled_wd():
    """The decoupled decay is ``decoupled_wd`` in every flow and optimizer; the former name
    ``weight_decay`` of `AdamFlow` and `steepest_descent` still works, with a warning, and
    its errors name it."""
    with pytest.warns(DeprecationWarning, match="use `decoupled_wd`"):
        old = AdamFlow.from_betas(0.01, weight_decay=0.1)
    assert float(old.decoupled_wd) == float(
        AdamFlow.from_betas(0.01, decoupled_wd=0.1).decoupled_wd
    )
    with pytest.warns(DeprecationWarning, match="use `decoupled_wd`"):
        assert float(old.weight_decay) == 0.1
    with pytest.warns(DeprecationWarning, match="use `decoupled_wd`"):
        renamed = mf.steepest_descent(0.1, 1.0, weight_decay=0.3)
    params, grads = jnp.array([1.0, -2.0]), jnp.array([0.5, 0.0])
    for optimizer in (renamed, mf.steepest_descent(0.1, 1.0, decoupled_wd=0.3)):
        updates, _ = optimizer.update(grads, optimizer.init(params), params)
        np.testing.assert_allclose(updates, -0.1 * (jnp.sign(grads) + 0.3 * params), rtol=1e-15)
    for old in (lambda: AdamFlow(1.0, 1.0, weight_decay=-1.0),
                lambda: mf.steepest_descent(0.1, weight_decay=-1.0)):  # fmt: skip
        with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="`weight_decay`"):
            old()
