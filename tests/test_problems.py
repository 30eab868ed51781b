import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mirrorflow_jax as mf


def test_sparse_regression_is_planted_and_seeded():
    p = mf.sparse_regression(jax.random.key(0), n=20, d=50, k=4)
    assert p.A.shape == (20, 50) and p.b.shape == (20,) and p.dim == 50
    assert int(jnp.count_nonzero(p.truth)) == 4
    np.testing.assert_allclose(p.A @ p.truth, p.b, rtol=1e-13)
    assert float(p(p.truth)) == pytest.approx(0.0, abs=1e-25)
    again = mf.sparse_regression(jax.random.key(0), n=20, d=50, k=4)
    np.testing.assert_array_equal(p.A, again.A)
    noisy = mf.sparse_regression(jax.random.key(0), n=20, d=50, k=4, noise=0.1)
    assert float(noisy(noisy.truth)) > 0


def test_least_squares_value():
    A = jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    b = jnp.array([1.0, 0.0, -1.0])
    x = jnp.array([0.5, -0.25])
    expected = np.sum((np.asarray(A) @ np.asarray(x) - np.asarray(b)) ** 2) / (2 * 3)
    assert float(mf.LeastSquares(A, b)(x)) == pytest.approx(expected, rel=1e-14)


@pytest.mark.parametrize("loss", ["logistic", "exponential"])
def test_classification(loss):
    p = mf.sparse_classification(jax.random.key(1), n=30, d=40, k=3, loss=loss)
    assert bool(jnp.all(p.margins(p.truth) > 0))
    x = 0.1 * jax.random.normal(jax.random.key(2), (40,), dtype=jnp.float64)
    z = np.asarray(p.y) * (np.asarray(p.A) @ np.asarray(x))
    expected = np.mean(np.log1p(np.exp(-z))) if loss == "logistic" else np.mean(np.exp(-z))
    assert float(p(x)) == pytest.approx(expected, rel=1e-13)


def test_scalar_toy():
    toy = mf.ScalarToy()
    assert float(toy(jnp.array([0.0]))) == 0.5
    assert float(toy(jnp.array([1.0]))) == 0.0
