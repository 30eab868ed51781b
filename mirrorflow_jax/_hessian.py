"""Extreme Hessian eigenvalues by Lanczos on Hessian-vector products (theory §8: negative
curvature left after fine-tuning marks a run stuck near a saddle)."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, PRNGKeyArray

from ._custom_types import Params
from ._validate import check_choice, check_int, check_params

WHICH = ("largest", "smallest", "both")

# A Lanczos vector whose norm after orthogonalization falls below this fraction of the largest
# off-diagonal seen so far spans nothing new: the Krylov space is (numerically) invariant.
_BREAKDOWN = 1e-10


class HessianSpectrum(eqx.Module):
    """The result of `hessian_eigenvalues` (batched along leading axes when vmapped).

    **Fields:**

    - ``eigenvalues``: Ritz values θ, ascending, shape (k,) (``which="largest"`` or
      ``"smallest"``) or (2k,) (``"both"``: the k smallest, then the k largest).
    - ``residuals``: for each Ritz pair (θ, y) the residual ‖H y − θ y‖ = β_m·|s_m|, an a
      posteriori bound: H has an eigenvalue within ``residual`` of θ. Same shape.
    - ``num_iters``: the Krylov dimension m used.
    """

    eigenvalues: Float[Array, " n"]
    residuals: Float[Array, " n"]
    num_iters: int = eqx.field(static=True)


def _hvp_operator(loss, params, args):
    flat, unravel = ravel_pytree(params)

    def gradient(z):
        return ravel_pytree(jax.grad(loss)(unravel(z), args))[0]

    def hvp(v):
        return jax.jvp(gradient, (flat,), (v.astype(flat.dtype),))[1]

    return flat, hvp


def _orthogonalize(w, basis):
    """w minus its projection on the rows of ``basis`` (unused rows are zero), applied twice
    ("twice is enough" for full reorthogonalization in floating point)."""
    for _ in range(2):
        w = w - basis.T @ (basis @ w)
    return w


def _lanczos(hvp, dim, dtype, num_iters, key):
    """m steps of Lanczos with full reorthogonalization: H V_mᵀ = V_mᵀ T_m + β_m v_{m+1} e_mᵀ.

    A breakdown (β_j ≈ 0: the Krylov space is invariant) restarts from a fresh random vector
    orthogonal to the basis, with β_j = 0 in T, so T's eigenvalues stay exact Ritz values."""
    # row 0 starts the recursion, row j + 1 restarts it after a breakdown at step j
    randoms = jax.random.normal(key, (num_iters + 1, dim), dtype)
    basis = jnp.zeros((num_iters, dim), dtype)

    def step(carry, j):
        basis, v, v_prev, beta_prev, scale = carry
        basis = basis.at[j].set(v)
        w = hvp(v)
        alpha = jnp.vdot(v, w)
        w = _orthogonalize(w - alpha * v - beta_prev * v_prev, basis)
        beta = jnp.linalg.norm(w)
        scale = jnp.maximum(scale, jnp.maximum(jnp.abs(alpha), beta))
        broke = beta <= _BREAKDOWN * scale
        restart = _orthogonalize(randoms[j + 1], basis)
        w = jnp.where(broke, restart, w)
        beta = jnp.where(broke, 0.0, beta)
        return (basis, w / jnp.linalg.norm(w), v, beta, scale), (alpha, beta)

    v0 = randoms[0] / jnp.linalg.norm(randoms[0])
    zero = jnp.zeros((), dtype)
    init = (basis, v0, jnp.zeros_like(v0), zero, zero)
    _, (alphas, betas) = jax.lax.scan(step, init, jnp.arange(num_iters))
    return alphas, betas


@eqx.filter_jit
def _ritz(loss, params, args, key, num_iters):
    """All m Ritz values (ascending) and their residual bounds."""
    flat, hvp = _hvp_operator(loss, params, args)
    alphas, betas = _lanczos(hvp, flat.shape[0], flat.dtype, num_iters, key)
    tridiagonal = jnp.diag(alphas) + jnp.diag(betas[:-1], 1) + jnp.diag(betas[:-1], -1)
    ritz, vectors = jnp.linalg.eigh(tridiagonal)
    return ritz, jnp.abs(betas[-1] * vectors[-1])


def hessian_eigenvalues(
    loss: Callable[[Params, Any], Array],
    params: Params,
    args: Any = None,
    *,
    k: int,
    which: str = "both",
    num_iters: int,
    key: PRNGKeyArray,
) -> HessianSpectrum:
    r"""The k most negative and/or most positive eigenvalues of the Hessian of a loss over any
    PyTree of parameters, by Lanczos on Hessian-vector products.

    With θ ∈ Rⁿ the parameters flattened (``jax.flatten_util.ravel_pytree``) and
    H = ∇²F(θ), H is applied matrix-free as a forward-over-reverse product
    H v = d/ds ∇F(θ + s v)|_{s=0} (``jax.jvp`` of ``jax.grad``). From a random unit v_1,
    m Lanczos steps

        w = H v_j − α_j v_j − β_{j−1} v_{j−1},   α_j = v_jᵀ H v_j,   β_j = ‖w‖,   v_{j+1} = w/β_j

    (with w re-orthogonalized against all previous v_i, twice) give the tridiagonal
    T_m = tridiag(β, α, β) = V_m H V_mᵀ, whose eigenvalues θ_i (Ritz values) approach H's
    extreme eigenvalues first; each comes with the bound |λ − θ_i| ≤ β_m·|s_{m,i}| for some
    eigenvalue λ of H (s_i the eigenvector of T_m). With m = n the Ritz values are H's whole
    spectrum. Cost: m Hessian-vector products (about 4 gradients each) and O(m²n) for the
    reorthogonalization.

    **Arguments:**

    - ``loss``: F(params, args) → scalar.
    - ``params``: a PyTree of floating arrays (use ``eqx.partition`` to split off the
      non-array fields of a model).
    - ``args``: passed to ``loss`` unchanged (e.g. the data).
    - ``k``: how many eigenvalues at each requested end, 1 ≤ k ≤ m (2k ≤ m for "both").
    - ``which``: ``"largest"``, ``"smallest"`` or ``"both"``.
    - ``num_iters``: the Krylov dimension m, k ≤ m ≤ n (static: one compilation per value).
    - ``key``: the random starting vector.

    **Returns:** a `HessianSpectrum` (ascending Ritz values and their residual bounds).
    Vmappable over ``params`` and ``args``; runs under ``jit``.

    **Example:**

    ```python
    def loss(params, data):
        A, b = data
        return 0.5 * jnp.sum((A @ (params["u"] * params["v"]) - b) ** 2)

    params = {"u": jnp.full(5, 0.1), "v": jnp.full(5, -0.1)}
    data = (jax.random.normal(jax.random.key(1), (4, 5)), jnp.ones(4))
    spectrum = mf.hessian_eigenvalues(loss, params, data, k=2, num_iters=8, key=jax.random.key(0))
    most_negative, most_positive = spectrum.eigenvalues[0], spectrum.eigenvalues[-1]
    ```
    """
    check_params("params", params)
    if not callable(loss):
        raise ValueError("`loss` must be a callable F(params, args) -> scalar.")
    check_choice("which", which, WHICH)
    dim = ravel_pytree(params)[0].shape[0]
    check_int("num_iters", num_iters, 1)
    if num_iters > dim:
        raise ValueError(
            f"`num_iters` must lie in [k, n] with n = {dim} parameters; got {num_iters}."
        )
    ends = 2 if which == "both" else 1
    check_int("k", k, 1)
    if ends * k > num_iters:
        raise ValueError(
            f"`k` must satisfy {ends}·k <= num_iters = {num_iters} (which={which!r}); got {k}."
        )
    ritz, residuals = _ritz(loss, params, args, key, num_iters)
    if which == "largest":
        pick = np.arange(num_iters - k, num_iters)
    elif which == "smallest":
        pick = np.arange(k)
    else:
        pick = np.concatenate([np.arange(k), np.arange(num_iters - k, num_iters)])
    return HessianSpectrum(ritz[..., pick], residuals[..., pick], num_iters)
