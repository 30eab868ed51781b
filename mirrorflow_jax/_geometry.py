"""Steepest-descent maps φ_q for the ℓ_p geometry and their smoothings (docs/theory.md §1)."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike

from ._custom_types import Params, ScalarLike
from ._validate import as_float, check_choice, check_range, check_scalar

SMOOTHINGS = ("sqrt", "tanh")


def _abs_pow(g: Array, p: Array) -> Array:
    """|g|^p with 0^p := 0 for p > 0 and 1 for p = 0, and finite gradients at g = 0."""
    absg = jnp.abs(g)
    nonzero = absg > 0
    safe = jnp.where(nonzero, absg, 1.0)
    return jnp.where(nonzero, safe**p, jnp.where(p == 0, 1.0, 0.0))


def steepest_map(g: ArrayLike, q: ArrayLike, eps: ArrayLike = 0.0, smoothing: str = "sqrt"):
    r"""The elementwise steepest map φ_q and its regularization φ_q^ε.

    Exact (``eps == 0``):  φ_q(g) = sign(g)·|g|^(q−1), identity at q = 2 and sign at q = 1.

    Smoothed (``eps > 0``):

    - ``"sqrt"``: φ_q^ε(g) = g·(g² + ε²)^((q−2)/2), which is the identity at q = 2 and
      g/√(g²+ε²) at q = 1;
    - ``"tanh"``: φ_q^ε(g) = tanh(g/ε)·|g|^(q−1), which is tanh(g/ε) at q = 1.

    ``eps`` broadcasts against ``g`` (an elementwise ε is how the structure-preserving smoothing
    is applied, see `SteepestFlow`). Entries with ε = 0 use the exact map.

    **Arguments:** ``g`` array; ``q`` in [1, 2]; ``eps`` ≥ 0; ``smoothing`` "sqrt" or "tanh".

    **Returns:** an array shaped like ``g``.
    """
    g = jnp.asarray(g)
    q = jnp.asarray(q, dtype=g.dtype)
    eps = jnp.asarray(eps, dtype=g.dtype)
    branches = _BRANCHES[smoothing]
    if q.ndim:
        return branches[2](g, q, eps)
    # The sign (q = 1) and identity (q = 2) cases skip the powers, which dominate the cost of
    # a flow's vector field; a scalar q picks its branch at run time (under vmap over q,
    # lax.switch evaluates all three and selects).
    branch = jnp.where(q == 1, 0, jnp.where(q == 2, 1, 2))
    return jax.lax.switch(branch, branches, g, q, eps)


def _tanh_map(g: Array, q: Array | None, eps: Array) -> Array:
    """tanh(g/ε)·|g|^(q−1), and sign(g)·|g|^(q−1) where ε = 0; q = None means q = 1."""
    positive = eps > 0
    eps_safe = jnp.where(positive, eps, 1.0)
    sign = jnp.where(positive, jnp.tanh(g / eps_safe), jnp.sign(g))
    return sign if q is None else sign * _abs_pow(g, q - 1)


def _sqrt_map(g: Array, q: Array | None, eps: Array) -> Array:
    """g·(g² + ε²)^((q−2)/2), the exact map where ε = 0; q = None means q = 1."""
    # In units of s = max(|g|, ε): with r = g/s and e = ε/s the base r² + e² lies in [1, 2],
    # so nothing underflows (ε may be tiny where the structured smoothing scales it by |P|),
    # and the value is r·exp(((q−2)/2)·log(r² + e²) + (q−1)·log s): two logarithms and one
    # exponential (at q = 1, r/√(r² + e²)). At ε = 0 the same formula is the exact map
    # sign(g)·|g|^(q−1) (e = 0, base 1); g = ε = 0 gives 0.
    s = jnp.maximum(jnp.abs(g), eps)
    nonzero = s > 0
    s_safe = jnp.where(nonzero, s, 1.0)
    r, e = g / s_safe, eps / s_safe
    base = jnp.where(nonzero, r * r + e * e, 1.0)
    if q is None:
        value = r / jnp.sqrt(base)
    else:
        value = r * jnp.exp(0.5 * (q - 2) * jnp.log(base) + (q - 1) * jnp.log(s_safe))
    return jnp.where(nonzero, value, 0.0)


def _identity(g: Array, q: Array, eps: Array) -> Array:
    return g * jnp.ones_like(eps)


def _tanh_sign(g: Array, q: Array, eps: Array) -> Array:
    return _tanh_map(g, None, eps)


def _sqrt_sign(g: Array, q: Array, eps: Array) -> Array:
    return _sqrt_map(g, None, eps)


# lax.switch branches per smoothing: q = 1, q = 2, general q (module-level functions, so that
# eager calls hit JAX's cache).
_BRANCHES = {
    "sqrt": (_sqrt_sign, _identity, _sqrt_map),
    "tanh": (_tanh_sign, _identity, _tanh_map),
}


class Lp(eqx.Module):
    r"""The steepest-descent geometry of the ℓ_p norm, written through its dual exponent q.

    Maps a gradient PyTree leafwise to the steepest direction φ_q^ε(∇F) (see `steepest_map`):
    q = 2 is gradient flow, q = 1 sign gradient flow (the paper's proxy for Adam), and values
    in between interpolate. ``q`` and ``eps`` are stored as arrays so that a sweep over them
    compiles once.

    **Arguments:**

    - ``q``: dual exponent in [1, 2].
    - ``eps``: smoothing scale ε ≥ 0; 0 means the exact (possibly discontinuous) map.
    - ``smoothing``: ``"sqrt"`` (default) or ``"tanh"``.

    **Example:**

    ```python
    geometry = mf.Lp(q=1.0, eps=1e-3)    # smoothed sign flow
    grad_w = jnp.array([0.5, -0.1, 0.0])
    direction = geometry({"w": grad_w})  # leafwise φ_1^ε: {"w": ≈ [1, -1, 0]}
    ```
    """

    q: Array
    eps: Array
    smoothing: str = eqx.field(static=True)

    def __init__(self, q: ScalarLike = 2.0, eps: ScalarLike = 0.0, smoothing: str = "sqrt"):
        check_scalar("q", q)
        check_scalar("eps", eps)
        check_range("q", q, 1.0, 2.0)
        check_range("eps", eps, 0.0)
        check_choice("smoothing", smoothing, SMOOTHINGS)
        self.q = as_float(q)
        self.eps = as_float(eps)
        self.smoothing = smoothing

    def map(self, g: Array, eps: ArrayLike | None = None) -> Array:
        """φ_q^ε on one array; ``eps`` overrides the stored ε (e.g. elementwise)."""
        return steepest_map(g, self.q, self.eps if eps is None else eps, self.smoothing)

    def exact(self, g: Array) -> Array:
        """The unsmoothed φ_q on one array."""
        return steepest_map(g, self.q, 0.0)

    def __call__(self, grads: Params) -> Params:
        """φ_q^ε applied leafwise to a gradient PyTree."""
        return jax.tree.map(self.map, grads)
