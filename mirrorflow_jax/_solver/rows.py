"""The row layout of a separable model's factors and the structured Jacobian of a steepest flow
on it, shared by the toolkit's stiff solvers.

A separable model (an `AbstractReparam`: every leaf's last axis is the coordinate) is laid out
as one (R, d) array of factor rows. In that layout the Jacobian of a steepest flow under a
linear-model loss is block diagonal (one R×R block per coordinate) plus the rank-r loss
Hessian seen through the model: a `BlockLowRankOperator`.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from .._flow import FlowArgs, SteepestFlow
from .._models import AbstractReparam
from .._problems import AbstractFactoredLoss
from .linear import BlockLowRankOperator


class _Linear(eqx.Module):
    """The linear loss x ↦ g·x, whose gradient through a model is g ⊙ ∂x/∂w."""

    g: Array

    def __call__(self, x):
        return jnp.dot(self.g, x)


def rows(tree, dim: int) -> Array:
    """Lay a separable model's leaves out as one (R, dim) array of factor rows."""
    return jnp.concatenate([jnp.reshape(leaf, (-1, dim)) for leaf in jax.tree.leaves(tree)])


def unrows(layout: Array, like):
    """The inverse of `rows`: a PyTree like ``like`` from its (R, dim) row layout."""
    leaves, treedef = jax.tree.flatten(like)
    out, start = [], 0
    for leaf in leaves:
        count = leaf.size // layout.shape[1]
        out.append(jnp.reshape(layout[start : start + count], leaf.shape))
        start += count
    return jax.tree.unflatten(treedef, out)


def structured_capable(flow, params, loss) -> bool:
    """Whether a solve has the structure of `structured_jacobian`: a `SteepestFlow` on a
    separable toolkit model (`AbstractReparam`) under an `AbstractFactoredLoss`."""
    return (
        isinstance(flow, SteepestFlow)
        and isinstance(params, AbstractReparam)
        and params.separable
        and isinstance(loss, AbstractFactoredLoss)
    )


def supports_structured(args, y) -> bool:
    """`structured_capable` for the ``args`` (`FlowArgs`) and state ``y`` of a diffrax step."""
    return isinstance(args, FlowArgs) and structured_capable(args.flow, y, args.loss)


def velocity_and_jacobian(flow: SteepestFlow, model: AbstractReparam, loss, t):
    """The velocity in the (R, d) row layout and its `structured_jacobian`, from one
    linearization of the flow (the velocity is the linearization's primal output)."""
    return linearized_rows(lambda m, f: flow(t, m, f), model, loss)


def linearized_rows(fn, model: AbstractReparam, loss):
    """``fn(model, loss)`` (a PyTree like ``model``, separable in the coordinate given the
    loss gradient g) in the (R, d) row layout, and its Jacobian in the factors as a
    `BlockLowRankOperator`, from one linearization in (w, g) with R + 1 tangents."""
    x = model()
    dim = x.shape[0]
    w = rows(model, dim)
    g = jax.grad(loss)(x)

    def rows_of(w_rows, g_):
        return rows(fn(unrows(w_rows, model), _Linear(g_)), dim)

    value, linear = jax.linearize(rows_of, w, g)
    # R + 1 tangents in one batch: (e_s ⊗ 1, 0) gives column s of every block at once (the
    # model is separable), (0, 1) gives ∂fn/∂g_j entry by entry.
    count = w.shape[0]
    w_tangents = jnp.concatenate(
        [jnp.eye(count, dtype=w.dtype)[:, :, None] * jnp.ones_like(x), jnp.zeros_like(w)[None]]
    )
    g_tangents = jnp.concatenate([jnp.zeros((count, dim), g.dtype), jnp.ones_like(g)[None]])
    columns = jax.vmap(linear)(w_tangents, g_tangents)
    operator = BlockLowRankOperator(
        blocks=jnp.transpose(columns[:count], (2, 1, 0)),
        left=columns[count],
        right=rows(model.factor_jacobian(), dim),
        factor=loss.hessian_factor(x),
    )
    return value, operator


def structured_jacobian(flow: SteepestFlow, model: AbstractReparam, loss, t=0.0):
    r"""The Jacobian J = ∂v/∂w of the steepest-flow velocity v = ``flow(t, model, loss)`` as a
    `BlockLowRankOperator` on the (R, d) row layout of the model's factors.

    Writing v(w) = Φ(w, g(x(w))) with g = ∇f(x), and Φ separable in the coordinate j given g,

        J = ∂Φ/∂w|_g + diag(∂Φ/∂g) E ∇²f Eᵀ diag(∂x/∂w),   ∇²f = C Cᵀ,

    the first term is block diagonal (one R×R block per coordinate) and the second has rank
    r (= n for regression and classification losses); E copies coordinate j to its R factor
    entries. All of it comes from one linearization of the flow with R + 1 tangents, so it
    covers both smoothing placements and coupled and decoupled weight decay.

    **Arguments:** ``flow`` a `SteepestFlow`; ``model`` a separable `AbstractReparam` (every
    leaf's last axis is the coordinate); ``loss`` with ``hessian_factor(x) -> C`` of shape
    (d, r); ``t`` the time.
    """
    return velocity_and_jacobian(flow, model, loss, t)[1]
