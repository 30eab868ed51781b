"""Shared fixtures and independent reference computations for the tests."""

import functools
from typing import ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from scipy import integrate

import mirrorflow_jax as mf

# Tight tolerances for the law-checking tests: integration error must sit well below the
# tolerances the tests assert.
TIGHT = diffrax.PIDController(rtol=1e-11, atol=1e-13)

EXACT_GEOMETRIES = [(1.5, 0.0), (2.0, 0.0)]
SMOOTHED_GEOMETRIES = [(1.0, 1e-3), (1.0, 1e-2), (1.5, 1e-3)]
DEPTHS = [2, 3, 4]


def small_regression(seed: int = 0, n: int = 8, d: int = 12, k: int = 3) -> mf.LeastSquares:
    return mf.sparse_regression(jax.random.key(seed), n=n, d=d, k=k)


def positive_signed_model(seed: int, depth: int, dim: int) -> mf.SignedDeepDiagonal:
    """Unbalanced, strictly positive factors (so every balance quantity is non-trivial)."""
    ku, kv = jax.random.split(jax.random.key(seed))
    u = 0.3 + 0.5 * jax.random.uniform(ku, (depth, dim), dtype=jnp.float64)
    v = 0.3 + 0.5 * jax.random.uniform(kv, (depth, dim), dtype=jnp.float64)
    return mf.SignedDeepDiagonal(u, v)


def balanced_toy_speed(w, q, depth, eps=0.0, naive=False):
    """dw/dt of one factor on the scalar toy f(x) = (x − 1)²/2 from a uniform init w_i = w.

    Written from the equations, independently of the package: x = w^L, g = x − 1 and
    ∂x/∂w_i = w^(L−1). Exact: −φ_q(g)·φ_q(w^(L−1)); naive smoothing: −φ_q^ε(g·w^(L−1)).
    """
    x = w**depth
    g = x - 1.0
    p = w ** (depth - 1)

    def phi(z, e):
        if e > 0:
            return z * (z * z + e * e) ** ((q - 2) / 2)
        return np.sign(z) * abs(z) ** (q - 1)

    if naive:
        return -phi(g * p, eps)
    return -phi(g, eps) * phi(p, 0.0)


def toy_escape_time(alpha, q, depth, eps=0.0, naive=False, x_escape=0.5):
    """Time for x = w^L to climb from α^L to ``x_escape``: ∫ dw / (dw/dt) by quadrature, in
    u = log w (∫ w / (dw/dt) du), which stays accurate when α spans many decades."""
    w_escape = x_escape ** (1 / depth)
    value, _ = integrate.quad(
        lambda u: np.exp(u) / balanced_toy_speed(np.exp(u), q, depth, eps, naive),
        np.log(alpha),
        np.log(w_escape),
        epsabs=0.0,
        epsrel=1e-12,
        limit=500,
        points=None,
    )
    return value


def radau_reference(flow, model, loss, ts):
    """scipy Radau (rtol 1e-10, exact Jacobian) on the same field, flattened."""
    y0, unravel = ravel_pytree(model)
    field = jax.jit(lambda t, y: ravel_pytree(flow(t, unravel(y), loss))[0])
    jacobian = jax.jit(jax.jacfwd(field, argnums=1))
    result = integrate.solve_ivp(
        lambda t, y: np.asarray(field(t, y)),
        (0.0, float(ts[-1])),
        np.asarray(y0),
        method="Radau",
        t_eval=np.asarray(ts),
        jac=lambda t, y: np.asarray(jacobian(t, y)),
        rtol=1e-10,
        atol=1e-12,
    )
    assert result.success
    return np.stack([np.asarray(mf.effective_weights(unravel(y))) for y in result.y.T])


COSINE = optax.cosine_decay_schedule(0.5, decay_steps=1.0)


class Decay(eqx.Module):
    """α(t) = level + scale·COSINE(t): "none" (0, 0), "constant" (0.3, 0) and "schedule"
    (0, 1, the optax cosine schedule) as values of one schedule, so they share a program."""

    level: jax.Array
    scale: jax.Array

    def __call__(self, t):
        return self.level + self.scale * COSINE(t)


DECAYS = {"none": (0.0, 0.0), "constant": (0.3, 0.0), "schedule": (0.0, 1.0)}


@functools.cache
def _rolled_class(declared: bool):
    class Rolled(mf.AbstractReparam):
        separable: ClassVar[bool] = declared
        u: jax.Array
        v: jax.Array

        def __call__(self):
            return self.u * (self.v + jnp.roll(self.v, 1))

        def balance(self, q):
            return jnp.zeros((0, self.u.shape[0]), self.u.dtype)

    return Rolled


def rolled(u, v, *, declared: bool = False) -> mf.AbstractReparam:
    """x = u ⊙ (v + roll(v, 1)): x_j depends on v_j and v_{j−1}, so the model is not
    separable; ``declared=True`` (wrongly) declares it separable, to show what the flag
    prevents. One class per value of ``declared``."""
    return _rolled_class(declared)(jnp.asarray(u), jnp.asarray(v))
