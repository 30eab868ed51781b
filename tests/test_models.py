from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mirrorflow_jax as mf
from mirrorflow_jax._models import padding_mask


def _numpy_products_except(factors):
    """∏_{j≠i} w_j by explicit loops, independent of the package's autodiff."""
    factors = np.asarray(factors)
    out = np.ones_like(factors)
    for i in range(factors.shape[0]):
        for j in range(factors.shape[0]):
            if j != i:
                out[i] *= factors[j]
    return out


@pytest.mark.parametrize("depth", [1, 2, 3, 5])
def test_deep_diagonal_product_and_jacobian(depth):
    model = mf.DeepDiagonal.random(jax.random.key(depth), depth=depth, dim=7)
    factors = np.asarray(model.factors)
    np.testing.assert_allclose(model(), factors.prod(axis=0), rtol=1e-14)
    np.testing.assert_allclose(
        model.factor_jacobian().factors, _numpy_products_except(factors), rtol=1e-13
    )


def test_jacobian_with_zero_factor():
    model = mf.DeepDiagonal.saddle(0.3, depth=3, dim=2)
    jac = np.asarray(model.factor_jacobian().factors)
    np.testing.assert_allclose(jac[0], 0.09)
    np.testing.assert_array_equal(jac[1:], 0.0)


def test_signed_model():
    model = mf.SignedDeepDiagonal.random(jax.random.key(0), depth=3, dim=4)
    u, v = np.asarray(model.u), np.asarray(model.v)
    np.testing.assert_allclose(model(), u.prod(0) - v.prod(0), rtol=1e-14)
    jac = model.factor_jacobian()
    np.testing.assert_allclose(jac.u, _numpy_products_except(u), rtol=1e-13)
    np.testing.assert_allclose(jac.v, -_numpy_products_except(v), rtol=1e-13)
    assert model.balance(1.5).shape == (2, 2, 4)
    np.testing.assert_array_equal(mf.SignedDeepDiagonal.scaled(0.1, depth=2, dim=3)(), 0.0)


def test_square_diff():
    model = mf.SquareDiff(jnp.array([1.0, 2.0]), jnp.array([0.5, 3.0]))
    np.testing.assert_allclose(model(), [0.75, -5.0])
    np.testing.assert_allclose(model.factor_jacobian().u, [2.0, 4.0])
    np.testing.assert_allclose(model.factor_jacobian().v, [-1.0, -6.0])
    assert model.balance(2.0).shape == (0, 2)


@pytest.mark.parametrize("q", [1.0, 1.5, 2.0])
@pytest.mark.parametrize("depth", [2, 4])
def test_balanced_init(q, depth):
    w1 = jnp.array([0.0, -0.4, 0.7])
    model = mf.DeepDiagonal.balanced(w1, 0.25, q=q, depth=depth)
    np.testing.assert_array_equal(model.factors[0], w1)
    np.testing.assert_allclose(model.balance(q), 0.25, rtol=1e-13)
    assert bool(jnp.all(model.factors[1:] > 0))


def test_saddle_init_is_balanced_with_c_lambda_q():
    lam, q = 0.2, 1.5
    model = mf.DeepDiagonal.saddle(lam, depth=4, dim=3)
    np.testing.assert_array_equal(model(), 0.0)
    np.testing.assert_allclose(model.balance(q), lam**q, rtol=1e-14)
    reference = mf.DeepDiagonal.balanced(jnp.zeros(3), lam**q, q=q, depth=4)
    np.testing.assert_allclose(model.factors, reference.factors, rtol=1e-14)


def test_random_init_is_seeded():
    a = mf.DeepDiagonal.random(jax.random.key(3), depth=2, dim=5, scale=0.1)
    b = mf.DeepDiagonal.random(jax.random.key(3), depth=2, dim=5, scale=0.1)
    c = mf.DeepDiagonal.random(jax.random.key(4), depth=2, dim=5, scale=0.1)
    np.testing.assert_array_equal(a.factors, b.factors)
    assert not np.allclose(a.factors, c.factors)


def test_scaled_init_is_differentiable_in_alpha():
    dx = jax.grad(lambda a: mf.DeepDiagonal.scaled(a, depth=3, dim=1)()[0])(0.5)
    np.testing.assert_allclose(dx, 3 * 0.5**2)


def test_padding_marks_the_padding_rows():
    """`padding_mask` is True exactly on the rows a padded model reads as unit factors (a
    traced depth too), and False everywhere for unpadded models."""
    deep = mf.SignedDeepDiagonal.scaled(0.5, depth=4, dim=3)
    assert not any(bool(leaf.any()) for leaf in jax.tree.leaves(padding_mask(deep)))
    expected = np.arange(4)[:, None] >= 2
    mask = padding_mask(mf.Padded(deep, 2))
    for rows in (mask.model.u, mask.model.v):
        np.testing.assert_array_equal(rows, np.broadcast_to(expected, (4, 3)))
    traced = jax.jit(lambda d: padding_mask(mf.Padded(mf.DeepDiagonal(deep.u), d)))
    np.testing.assert_array_equal(
        traced(3).model.factors, np.broadcast_to(np.arange(4)[:, None] >= 3, (4, 3))
    )


class Triple(mf.AbstractReparam):
    """A model of one's own: x = ∏_i a_i ⊙ ∏_i b_i ⊙ ∏_i c_i, stacks (depth, dim)."""

    separable: ClassVar[bool] = True
    a: jax.Array
    b: jax.Array
    c: jax.Array

    def __call__(self):
        return jnp.prod(self.a, 0) * jnp.prod(self.b, 0) * jnp.prod(self.c, 0)

    def balance(self, q):
        powered = jnp.abs(jnp.stack([self.a, self.b, self.c])) ** q
        return powered[:, 1:] - powered[:, :1]


@pytest.mark.parametrize(
    "make",
    [
        lambda depth: mf.DeepDiagonal.random(jax.random.key(1), depth=depth, dim=3),
        lambda depth: mf.SignedDeepDiagonal.random(jax.random.key(2), depth=depth, dim=3),
        lambda depth: Triple(*jax.random.normal(jax.random.key(3), (3, depth, 3))),
    ],
    ids=["deep", "signed", "own"],
)
def test_padded_model_is_the_shallower_model(make):
    """`Padded(model, L)` reads as the model's first L layers: same x, same balance on the
    real layers (NaN on the padding's), same factor Jacobian on the real rows; any deep
    model, a user's own included."""
    full = make(4)
    for depth in (1, 2, 3, 4):
        padded = mf.Padded(full, depth)
        shallow = jax.tree.map(lambda leaf, depth=depth: leaf[:depth], full)
        assert int(padded.depth) == depth and padded.max_depth == 4 and padded.dim == 3
        np.testing.assert_allclose(padded(), shallow(), rtol=1e-14)
        balance = padded.balance(1.5)
        np.testing.assert_allclose(balance[..., : depth - 1, :], shallow.balance(1.5))
        assert bool(jnp.all(jnp.isnan(balance[..., depth - 1 :, :])))
        jacobians = padded.factor_jacobian(), shallow.factor_jacobian()
        for real, ref in zip(*map(jax.tree.leaves, jacobians), strict=True):
            np.testing.assert_allclose(real[:depth], ref, rtol=1e-14)
        assert padded.separable


def test_padded_refuses_what_it_cannot_pad_and_old_names_warn():
    with pytest.raises(ValueError, match="`model`'s arrays must all be stacks"):
        mf.Padded(mf.SquareDiff.scaled(0.1, dim=3), 1)
    with pytest.raises(ValueError, match="`model` must be an AbstractReparam"):
        mf.Padded({"w": jnp.ones((2, 3))}, 1)
    deep = mf.DeepDiagonal.scaled(0.5, depth=3, dim=2)
    with pytest.raises(ValueError, match=r"`depth` must lie in \[1, 3\]"):
        mf.Padded(deep, 4)
    with pytest.raises(ValueError, match="must not be identically zero"):
        mf.Padded(mf.DeepDiagonal(deep.factors.at[1].set(0.0)), 2)
    for old in (mf.PaddedDeepDiagonal, mf.PaddedSignedDeepDiagonal):
        with pytest.warns(DeprecationWarning, match=r"use Padded\(model, depth\)"):
            assert isinstance(old.truncated(deep, 2), mf.Padded)
