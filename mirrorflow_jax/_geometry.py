"""Steepest-descent maps φ_q for the ℓ_p geometry and their smoothings (PAPER.md §1)."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike

from ._custom_types import Params, ScalarLike
from ._validate import as_float, check_choice, check_range

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
    exact = jnp.sign(g) * _abs_pow(g, q - 1)
    positive = eps > 0
    eps_safe = jnp.where(positive, eps, 1.0)
    if smoothing == "sqrt":
        # g·(g² + ε²)^((q−2)/2) evaluated in units of s = max(|g|, ε), so that neither g² nor
        # ε² can underflow (ε may be tiny where the structured smoothing scales it by |P|).
        s = jnp.maximum(jnp.abs(g), eps_safe)
        r, e = g / s, eps_safe / s
        smooth = r * (r * r + e * e) ** ((q - 2) / 2) * s ** (q - 1)
    else:
        smooth = jnp.tanh(g / eps_safe) * _abs_pow(g, q - 1)
    return jnp.where(positive, smooth, exact)


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
