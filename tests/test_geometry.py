import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import mirrorflow_jax as mf

# Magnitudes from 1e-100 to 1e3 (and exact zeros): products of two stay clear of underflow.
magnitudes = st.one_of(st.just(0.0), st.floats(1e-100, 1e3))
floats = st.builds(lambda m, s: m * s, magnitudes, st.sampled_from([-1.0, 1.0]))
qs = st.floats(1.0, 2.0)
epss = st.floats(1e-6, 1.0)


def test_exact_map_endpoints():
    g = jnp.array([-2.0, -0.5, 0.0, 0.5, 3.0])
    np.testing.assert_array_equal(mf.Lp(2.0)(g), g)
    np.testing.assert_array_equal(mf.Lp(1.0)(g), np.sign(g))
    np.testing.assert_allclose(mf.Lp(1.5)(g), np.sign(g) * np.sqrt(np.abs(g)), rtol=1e-15)


def test_smoothed_map_closed_forms():
    g = jnp.linspace(-2.0, 2.0, 41)
    eps = 0.1
    np.testing.assert_allclose(mf.Lp(2.0, eps)(g), g, rtol=1e-15)
    np.testing.assert_allclose(mf.Lp(1.0, eps)(g), g / np.sqrt(g**2 + eps**2), rtol=1e-14)
    np.testing.assert_allclose(mf.Lp(1.0, eps, "tanh")(g), np.tanh(g / eps), rtol=1e-14)


@pytest.mark.parametrize("smoothing", ["sqrt", "tanh"])
def test_smoothing_converges_away_from_zero(smoothing):
    g = jnp.array([-1.3, -0.2, 0.4, 2.0])
    errors = [
        float(jnp.max(jnp.abs(mf.Lp(1.0, e, smoothing)(g) - jnp.sign(g))))
        for e in (1e-1, 1e-2, 1e-3)
    ]
    assert errors[0] > errors[1] >= errors[2]
    assert errors[2] < 1e-4


@settings(max_examples=200, deadline=None)
@given(g=floats, p=floats, q=qs, eps=epss)
def test_structured_identity(g, p, q, eps):
    """φ_q^{ε|P|}(g·P) = φ_q^ε(g)·φ_q(P): the identity the structured smoothing relies on."""
    lhs = mf.steepest_map(g * p, q, eps * abs(p))
    rhs = mf.steepest_map(g, q, eps) * mf.steepest_map(p, q, 0.0)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-10, atol=1e-300)


@settings(max_examples=100, deadline=None)
@given(g=floats, q=qs, eps=st.floats(0.0, 1.0))
def test_map_is_odd_and_monotone_magnitude(g, q, eps):
    geometry = mf.Lp(q, eps)
    assert float(geometry.map(jnp.asarray(-g))) == pytest.approx(-float(geometry.map(g)))
    assert abs(float(geometry.map(g))) <= max(abs(g) ** (q - 1), 1.0) + 1e-12


def test_leafwise_on_pytrees():
    grads = {"a": jnp.array([-1.0, 2.0]), "b": (jnp.array(4.0),)}
    out = mf.Lp(1.5)(grads)
    assert jax.tree.structure(out) == jax.tree.structure(grads)
    np.testing.assert_allclose(out["b"][0], 2.0)


@pytest.mark.parametrize("q", [1.0, 1.3, 2.0])
@pytest.mark.parametrize("eps", [0.0, 1e-3])
def test_gradient_finite_at_zero(q, eps):
    grad = jax.grad(lambda g: jnp.sum(mf.steepest_map(g, q, eps)))(jnp.zeros(3))
    assert bool(jnp.all(jnp.isfinite(grad)))


def test_vmap_over_q_and_eps_matches_loop():
    g = jnp.array([-0.7, 0.01, 1.5])
    q = jnp.array([1.0, 1.5, 2.0])
    eps = jnp.array([1e-2, 0.0, 1e-1])
    batched = jax.vmap(lambda q, e: mf.Lp(q, e)(g))(q, eps)
    for i in range(3):
        np.testing.assert_allclose(batched[i], mf.Lp(float(q[i]), float(eps[i]))(g), rtol=1e-15)
