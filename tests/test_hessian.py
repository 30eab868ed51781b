"""Extreme Hessian eigenvalues by Lanczos against dense eigendecompositions of jax.hessian."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from mirrorflow_jax import hessian_eigenvalues

KEY = jax.random.key(3)


@functools.cache
def _mlp_problem():
    """A small tanh MLP (73 parameters) and a cross-entropy loss on random data."""
    model = eqx.nn.MLP(4, 3, 5, 2, activation=jnp.tanh, key=jax.random.key(0))
    params, static = eqx.partition(model, eqx.is_inexact_array)
    inputs = jax.random.normal(jax.random.key(1), (20, 4))
    labels = jax.random.randint(jax.random.key(2), (20,), 0, 3)

    def loss(params, data):
        inputs, labels = data
        logits = jax.vmap(eqx.combine(params, static))(inputs)
        picked = jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1)
        return -jnp.mean(picked)

    return loss, params, (inputs, labels)


@jax.jit
def _dense_hessian(params, data):
    loss = _mlp_problem()[0]
    flat, unravel = ravel_pytree(params)
    return jax.hessian(lambda z: loss(unravel(z), data))(flat)


def _dense_spectrum(params, data):
    return np.linalg.eigvalsh(np.asarray(_dense_hessian(params, data)))


def test_lanczos_matches_dense_eigh_on_a_small_mlp():
    loss, params, data = _mlp_problem()
    dense = _dense_spectrum(params, data)
    assert dense.size == 73 and dense[0] < 0 < dense[-1]  # a real saddle-like spectrum
    k = 3
    spectrum = hessian_eigenvalues(loss, params, data, k=k, num_iters=30, key=KEY)
    expected = np.concatenate([dense[:k], dense[-k:]])
    assert spectrum.eigenvalues.dtype == jnp.float64
    np.testing.assert_allclose(spectrum.eigenvalues, expected, rtol=0, atol=1e-6)
    # the a posteriori bound is honest: each Ritz value is within its residual of the truth
    errors = np.abs(np.asarray(spectrum.eigenvalues) - expected)
    assert np.all(errors <= np.asarray(spectrum.residuals) + 1e-12)


def test_degenerate_spectrum_survives_lanczos_breakdown():
    """Repeated eigenvalues make the Krylov space invariant after 4 steps: without restarts
    Lanczos would stop finding eigenvalues (or divide by zero)."""
    values = np.array([-2.0, -2.0, -2.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 5.0])
    rotation, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(10, 10)))
    matrix = jnp.asarray(rotation @ np.diag(values) @ rotation.T)

    def loss(params, args):
        z = jnp.concatenate([params["a"], params["b"].ravel()])
        return 0.5 * z @ args @ z

    params = {"a": jnp.ones(4), "b": jnp.ones((2, 3))}
    spectrum = hessian_eigenvalues(
        loss, params, matrix, k=10, which="smallest", num_iters=10, key=KEY
    )
    assert np.all(np.isfinite(spectrum.eigenvalues))
    np.testing.assert_allclose(spectrum.eigenvalues, values, rtol=0, atol=1e-10)


def test_which_selects_ends_and_vmap_matches_single_calls():
    loss, params, data = _mlp_problem()
    dense = _dense_spectrum(params, data)
    largest = hessian_eigenvalues(loss, params, data, k=2, which="largest", num_iters=30, key=KEY)
    smallest = hessian_eigenvalues(
        loss, params, data, k=4, which="smallest", num_iters=30, key=KEY
    )
    np.testing.assert_allclose(largest.eigenvalues, dense[-2:], atol=1e-6)
    np.testing.assert_allclose(smallest.eigenvalues, dense[:4], atol=1e-6)

    batch = jax.tree.map(lambda p: jnp.stack([p, 1.5 * p]), params)
    batched = jax.vmap(
        lambda p: hessian_eigenvalues(loss, p, data, k=2, which="largest", num_iters=30, key=KEY)
    )(batch)
    second = jax.tree.map(lambda p: p[1], batch)
    dense_second = _dense_spectrum(second, data)
    np.testing.assert_allclose(batched.eigenvalues[0], dense[-2:], atol=1e-6)
    np.testing.assert_allclose(batched.eigenvalues[1], dense_second[-2:], atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"k": 0, "num_iters": 10}, "`k`"),
        ({"k": 6, "num_iters": 10}, "`k`"),  # 2k > num_iters for "both"
        ({"k": 2, "num_iters": 11}, "`num_iters`"),  # more than the 10 parameters
        ({"k": 2, "num_iters": 0}, "`num_iters`"),
        ({"k": 2, "num_iters": 6, "which": "top"}, "`which`"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(kwargs, name):
    params = {"a": jnp.ones(4), "b": jnp.ones(6)}

    def loss(p, args):
        return jnp.sum(p["a"] ** 2) + jnp.sum(p["b"] ** 4)

    with pytest.raises(ValueError, match=name):
        hessian_eigenvalues(loss, params, None, key=KEY, **kwargs)


def test_integer_params_raise():
    with pytest.raises(ValueError, match="`params`"):
        hessian_eigenvalues(lambda p, a: 0.0, {"a": jnp.arange(3)}, k=1, num_iters=2, key=KEY)
