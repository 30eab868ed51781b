"""Block-diagonal-plus-low-rank linear operators and their Woodbury solver, as lineax types.

The Jacobian of a steepest flow on a separable model under a linear-model loss has the shape

    J = blockdiag(K_1, …, K_d) + diag(a) E C Cᵀ Eᵀ diag(b):

one small R×R block per coordinate (R factor entries act on x_j), plus the loss Hessian
∇²f = C Cᵀ (rank r = n samples) seen through the model: E copies a coordinate to its R
entries, ``a`` is ∂(velocity)/∂g and ``b`` = ∂x/∂w per entry. A Rosenbrock step solves
(I − γhJ) k = b several times per step; with the Woodbury identity that costs d small block
solves and one r×r solve instead of one (Rd)×(Rd) LU, and every product with the low-rank
part goes through C (d×r) alone, never an (R, d, r) tensor.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Float


def _low_rank_apply(left, right, factor, vector) -> Array:
    """(diag(left) E C Cᵀ Eᵀ diag(right)) z for z of shape (R, d)."""
    coordinates = jnp.sum(right * vector, axis=0)
    return left * (factor @ (coordinates @ factor))[None, :]


class BlockLowRankOperator(lx.AbstractLinearOperator):
    r"""M = blockdiag(B_1, …, B_d) + diag(a) E C Cᵀ Eᵀ diag(b), acting on arrays laid out as
    (R, d).

    Entry (r, j) of a vector is factor row r at coordinate j; block B_j couples the R entries
    of coordinate j, and the low-rank part is

        (M_low z)[r, j] = a[r, j] · Σ_l (C Cᵀ)[j, l] · Σ_s b[s, l] z[s, l],

    of rank at most r (the columns of C). For a steepest flow's Jacobian (`structured_jacobian`)
    C Cᵀ is the loss Hessian ∇²f(x), ``a`` = ∂(velocity)/∂g and ``b`` = ∂x/∂w.

    **Fields:** ``blocks`` (d, R, R); ``left`` = a and ``right`` = b, each (R, d); ``factor``
    = C, (d, r).

    `WoodburySolver` solves with it; ``as_matrix`` gives the dense (Rd × Rd) matrix in the
    row-major order of the (R, d) layout.
    """

    blocks: Float[Array, "d R R"]
    left: Float[Array, "R d"]
    right: Float[Array, "R d"]
    factor: Float[Array, "d r"]

    def mv(self, vector):
        # A fused multiply-and-reduce: the blocks are tiny, so a batched matmul costs more.
        block_part = jnp.sum(self.blocks * vector.T[:, None, :], axis=2).T
        return block_part + _low_rank_apply(self.left, self.right, self.factor, vector)

    def as_matrix(self):
        rows, dim = self.left.shape
        eye = jnp.eye(dim, dtype=self.blocks.dtype)
        block = jnp.einsum("jrs,jl->rjsl", self.blocks, eye)
        hessian = self.factor @ self.factor.T
        low_rank = jnp.einsum("rj,jl,sl->rjsl", self.left, hessian, self.right)
        return (block + low_rank).reshape(rows * dim, rows * dim)

    def transpose(self):
        return BlockLowRankOperator(
            jnp.swapaxes(self.blocks, 1, 2), self.right, self.left, self.factor
        )

    def in_structure(self):
        return jax.ShapeDtypeStruct(self.left.shape, self.left.dtype)

    def out_structure(self):
        return self.in_structure()

    def shifted(self, scale) -> "BlockLowRankOperator":
        """I − scale·M, the matrix of a Rosenbrock stage for M = J and scale = γh."""
        eye = jnp.eye(self.blocks.shape[1], dtype=self.blocks.dtype)
        return BlockLowRankOperator(
            eye - scale * self.blocks, -scale * self.left, self.right, self.factor
        )


@lx.linearise.register(BlockLowRankOperator)
@lx.materialise.register(BlockLowRankOperator)
@lx.conj.register(BlockLowRankOperator)
def _(operator):
    return operator


@lx.diagonal.register(BlockLowRankOperator)
def _(operator):
    block_diagonal = jnp.diagonal(operator.blocks, axis1=1, axis2=2).T
    hessian_diagonal = jnp.sum(operator.factor**2, axis=1)
    return (block_diagonal + operator.left * operator.right * hessian_diagonal).reshape(-1)


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
    block_inverses: Array  # B_j⁻¹ laid out (R, R, d): [r, s, j] = (B_j⁻¹)[r, s]
    z: Array  # B⁻¹ a, shape (R, d)
    left: Array
    right: Array
    factor: Array
    capacitance_inverse: Array


def _block_apply(inverses, vectors):
    """(B_j⁻¹ y_j)_j for inverses laid out (R, R, d) and y of shape (R, d): one fused
    multiply-and-reduce (the blocks are tiny, so a batched matmul would cost more)."""
    return jnp.sum(inverses * vectors[None, :, :], axis=1)


def _gauss_jordan(blocks: Array) -> Array:
    """Inverses of blocks laid out (R, R, d) by Gauss–Jordan elimination without pivoting,
    unrolled over R and vectorized over d: a few fused elementwise passes, where a batched
    LAPACK inverse of d tiny matrices costs several times more. Inaccurate when a leading
    minor is near zero; `_block_inverses` checks and falls back."""
    rows = blocks.shape[0]
    eye = jnp.broadcast_to(jnp.eye(rows, dtype=blocks.dtype)[:, :, None], blocks.shape)
    augmented = jnp.concatenate([blocks, eye], axis=1)
    for k in range(rows):
        pivot_row = augmented[k] / augmented[k, k][None, :]
        augmented = augmented - augmented[:, k][:, None, :] * pivot_row[None]
        augmented = augmented.at[k].set(pivot_row)
    return augmented[:, rows:]


def _block_inverses(blocks: Array) -> Array:
    """B_j⁻¹ laid out (R, R, d) for blocks given as (d, R, R): Gauss–Jordan without pivoting,
    checked on one vector (max_j |B_j (B_j⁻¹ 𝟙) − 𝟙| ≤ 1e-8 · max(1, |B_j⁻¹ 𝟙|·‖B_j‖)),
    else a pivoted (LAPACK) inverse."""
    laid_out = jnp.transpose(blocks, (1, 2, 0))
    inverses = _gauss_jordan(laid_out)
    ones = jnp.sum(inverses, axis=1)  # B⁻¹ 𝟙, (R, d)
    back = _block_apply(laid_out, ones)
    size = jnp.max(jnp.abs(ones), axis=0) * jnp.max(jnp.sum(jnp.abs(laid_out), axis=1), axis=0)
    accurate = jnp.all(jnp.max(jnp.abs(back - 1), axis=0) <= 1e-8 * jnp.maximum(1.0, size))
    return jax.lax.cond(
        accurate,
        lambda: inverses,
        lambda: jnp.transpose(jnp.linalg.inv(blocks), (1, 2, 0)),
    )


def _capacitance(inverses, left, right, factor) -> tuple[Array, Array]:
    """B⁻¹ a and the capacitance of B + diag(a) E C Cᵀ Eᵀ diag(b) from the block inverses B_j⁻¹.

    With U = diag(a) E C and V = diag(b) E C, the capacitance I + Vᵀ B⁻¹ U is
    I + Cᵀ diag(σ) C, σ_j = b_jᵀ B_j⁻¹ a_j."""
    z = _block_apply(inverses, left)
    sigma = jnp.sum(right * z, axis=0)
    return z, jnp.eye(factor.shape[1], dtype=z.dtype) + factor.T @ (sigma[:, None] * factor)


def _factor(inverses, left, right, factor) -> _WoodburyState:
    """Woodbury state of B + diag(a) E C Cᵀ Eᵀ diag(b) from the block inverses B_j⁻¹."""
    z, capacitance = _capacitance(inverses, left, right, factor)
    # An explicit r×r inverse (pivoted LU, once per factorization) turns every later solve into
    # one matrix–vector product instead of two triangular solves.
    return _WoodburyState(inverses, z, left, right, factor, jnp.linalg.inv(capacitance))


class WoodburySolver(lx.AbstractLinearSolver):
    r"""Solves M z = b for a `BlockLowRankOperator` M = B + U Vᵀ (U = diag(a) E C,
    V = diag(b) E C) by the Woodbury identity

        M⁻¹ = B⁻¹ − B⁻¹U (I + Vᵀ B⁻¹ U)⁻¹ Vᵀ B⁻¹,

    inverting the d small blocks (R is the number of factor entries per coordinate:
    Gauss–Jordan vectorized over the coordinates, checked, with a pivoted fallback; explicit
    inverses turn every block solve into one fused product) and inverting the r×r
    capacitance matrix I + Cᵀ diag(σ) C (pivoted LU) once in ``init`` (O(d R³ + d r² + r³));
    every later ``compute`` costs O(d R² + d r + r²). Singular or
    ill-conditioned blocks show up as large residuals or non-finite solutions; callers check
    the residual (`Rodas4` does, and rejects the step).
    """

    def init(self, operator, options):
        del options
        if not isinstance(operator, BlockLowRankOperator):
            raise ValueError(
                "`WoodburySolver` needs a BlockLowRankOperator; got "
                f"{type(operator).__name__}. Use lineax.LU() for dense operators."
            )
        return _factor(
            _block_inverses(operator.blocks), operator.left, operator.right, operator.factor
        )

    def compute(self, state, vector, options):
        del options
        y = _block_apply(state.block_inverses, vector)
        coefficients = state.capacitance_inverse @ (
            jnp.sum(state.right * y, axis=0) @ state.factor
        )
        correction = state.z * (state.factor @ coefficients)[None, :]
        return y - correction, lx.RESULTS.successful, {}

    def transpose(self, state, options):
        """Mᵀ = Bᵀ + V Uᵀ: the block inverses transpose, a and b swap roles."""
        inverses = jnp.swapaxes(state.block_inverses, 0, 1)
        return _factor(inverses, state.right, state.left, state.factor), options

    def conj(self, state, options):
        return state, options

    def assume_full_rank(self):
        return True


def woodbury_solve(operator: BlockLowRankOperator, vector: Array) -> Array:
    """M⁻¹ b for one right-hand side: the `WoodburySolver` identity with the r×r capacitance
    system solved once (pivoted LU) instead of inverted, for callers that factor M anew for
    every solve (`SignFlowKvaerno3`'s per-entry Newton iterates)."""
    inverses = _block_inverses(operator.blocks)
    factor = operator.factor
    z, capacitance = _capacitance(inverses, operator.left, operator.right, factor)
    y = _block_apply(inverses, vector)
    coefficients = jnp.linalg.solve(capacitance, jnp.sum(operator.right * y, axis=0) @ factor)
    return y - z * (factor @ coefficients)[None, :]


def relative_residual(operator: lx.AbstractLinearOperator, solution, vector) -> Array:
    """‖M z − b‖ / ‖b‖ (∞-norms; 0 when b = 0)."""
    residual = jnp.max(jnp.abs(operator.mv(solution) - vector))
    scale = jnp.max(jnp.abs(vector))
    return jnp.where(scale > 0, residual / jnp.where(scale > 0, scale, 1.0), residual)
