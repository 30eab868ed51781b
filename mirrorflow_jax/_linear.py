"""Block-diagonal-plus-low-rank linear operators and their Woodbury solver, as lineax types.

The Jacobian of a steepest flow on a separable model under a linear-model loss has the shape
J = blockdiag(K_1, …, K_d) + U Vᵀ: one small R×R block per coordinate (R factor entries act on
x_j) plus a rank-r term from the loss Hessian ∇²f = C Cᵀ (r = n samples). A Rosenbrock step
solves (I − γhJ) k = b several times per step; with the Woodbury identity that costs d small
block solves and one r×r solve instead of one (Rd)×(Rd) LU.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import lineax as lx
from jaxtyping import Array, Float


class BlockLowRankOperator(lx.AbstractLinearOperator):
    r"""M = blockdiag(B_1, …, B_d) + U Vᵀ acting on arrays laid out as (R, d).

    Entry (r, j) of a vector is factor row r at coordinate j; block B_j couples the R entries
    of coordinate j, and (U Vᵀ z)[r, j] = Σ_k U[r, j, k] Σ_{s,l} V[s, l, k] z[s, l].

    **Fields:** ``blocks`` (d, R, R); ``u`` and ``v`` (R, d, r).

    `WoodburySolver` solves with it; ``as_matrix`` gives the dense (Rd × Rd) matrix in the
    row-major order of the (R, d) layout.
    """

    blocks: Float[Array, "d R R"]
    u: Float[Array, "R d r"]
    v: Float[Array, "R d r"]

    def mv(self, vector):
        block_part = jnp.einsum("jrs,sj->rj", self.blocks, vector)
        return block_part + jnp.einsum(
            "rjk,k->rj", self.u, jnp.einsum("sjk,sj->k", self.v, vector)
        )

    def as_matrix(self):
        rows, dim = self.u.shape[:2]
        eye = jnp.eye(dim, dtype=self.blocks.dtype)
        block = jnp.einsum("jrs,jl->rjsl", self.blocks, eye)
        low_rank = jnp.einsum("rjk,slk->rjsl", self.u, self.v)
        return (block + low_rank).reshape(rows * dim, rows * dim)

    def transpose(self):
        return BlockLowRankOperator(jnp.swapaxes(self.blocks, 1, 2), self.v, self.u)

    def in_structure(self):
        return jax.ShapeDtypeStruct(self.u.shape[:2], self.u.dtype)

    def out_structure(self):
        return self.in_structure()

    def shifted(self, scale) -> "BlockLowRankOperator":
        """I − scale·M, the matrix of a Rosenbrock stage for M = J and scale = γh."""
        eye = jnp.eye(self.blocks.shape[1], dtype=self.blocks.dtype)
        return BlockLowRankOperator(eye - scale * self.blocks, -scale * self.u, self.v)


@lx.linearise.register(BlockLowRankOperator)
@lx.materialise.register(BlockLowRankOperator)
@lx.conj.register(BlockLowRankOperator)
def _(operator):
    return operator


@lx.diagonal.register(BlockLowRankOperator)
def _(operator):
    block_diagonal = jnp.diagonal(operator.blocks, axis1=1, axis2=2).T
    return (block_diagonal + jnp.einsum("rjk,rjk->rj", operator.u, operator.v)).reshape(-1)


for _check in (
    lx.is_symmetric,
    lx.is_diagonal,
    lx.is_tridiagonal,
    lx.has_unit_diagonal,
    lx.is_lower_triangular,
    lx.is_upper_triangular,
    lx.is_positive_semidefinite,
    lx.is_negative_semidefinite,
):
    _check.register(BlockLowRankOperator)(lambda operator: False)


class _WoodburyState(eqx.Module):
    block_inverses: Array  # B_j⁻¹, shape (d, R, R)
    z: Array  # B⁻¹U, shape (R, d, r)
    u: Array
    v: Array
    capacitance_lu: Array
    capacitance_pivots: Array


def _block_apply(matrices, vectors):
    """(B_j y_j)_j for B of shape (d, R, R) and y of shape (R, d) or (R, d, r)."""
    if vectors.ndim == 2:
        return jnp.einsum("jrs,sj->rj", matrices, vectors)
    return jnp.einsum("jrs,sjk->rjk", matrices, vectors)


def _factor(inverses, u, v) -> _WoodburyState:
    """Woodbury state of B + U Vᵀ from the block inverses B_j⁻¹."""
    z = _block_apply(inverses, u)
    capacitance = jnp.eye(u.shape[-1], dtype=z.dtype) + jnp.einsum("sjk,sjl->kl", v, z)
    lu, pivots = jsl.lu_factor(capacitance)
    return _WoodburyState(inverses, z, u, v, lu, pivots)


class WoodburySolver(lx.AbstractLinearSolver):
    r"""Solves M z = b for a `BlockLowRankOperator` M = B + U Vᵀ by the Woodbury identity

        M⁻¹ = B⁻¹ − B⁻¹U (I + Vᵀ B⁻¹ U)⁻¹ Vᵀ B⁻¹,

    inverting the d small blocks (batched; R is the number of factor entries per coordinate,
    so explicit inverses are cheap and turn every block solve into one batched product) and
    LU-factoring the r×r capacitance matrix once in ``init``; every later ``compute`` costs
    O(d R² + d R r + r²). Singular or ill-conditioned blocks show up as large residuals or
    non-finite solutions; callers check the residual (`Rodas4` does, and rejects the step).
    """

    def init(self, operator, options):
        del options
        if not isinstance(operator, BlockLowRankOperator):
            raise ValueError(
                "`WoodburySolver` needs a BlockLowRankOperator; got "
                f"{type(operator).__name__}. Use lineax.LU() for dense operators."
            )
        return _factor(jnp.linalg.inv(operator.blocks), operator.u, operator.v)

    def compute(self, state, vector, options):
        del options
        y = _block_apply(state.block_inverses, vector)
        coefficients = jsl.lu_solve(
            (state.capacitance_lu, state.capacitance_pivots),
            jnp.einsum("sjk,sj->k", state.v, y),
        )
        return y - jnp.einsum("rjk,k->rj", state.z, coefficients), lx.RESULTS.successful, {}

    def transpose(self, state, options):
        """Mᵀ = Bᵀ + V Uᵀ: the block inverses transpose, U and V swap roles."""
        return _factor(jnp.swapaxes(state.block_inverses, 1, 2), state.v, state.u), options

    def conj(self, state, options):
        return state, options

    def assume_full_rank(self):
        return True


def relative_residual(operator: lx.AbstractLinearOperator, solution, vector) -> Array:
    """‖M z − b‖ / ‖b‖ (∞-norms; 0 when b = 0)."""
    residual = jnp.max(jnp.abs(operator.mv(solution) - vector))
    scale = jnp.max(jnp.abs(vector))
    return jnp.where(scale > 0, residual / jnp.where(scale > 0, scale, 1.0), residual)
