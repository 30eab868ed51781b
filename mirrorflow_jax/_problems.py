"""Losses f(x) on effective linear weights, and seeded data sets (docs/theory.md §2, §5, §7).

A problem is an equinox Module holding its data and called on x; it is a PyTree, so its
arrays are traced (not baked in as constants) when passed to `solve_flow` or vmapped over.
"""

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray

from ._custom_types import Scalar, ScalarLike, Vector
from ._validate import (
    as_float,
    check_array,
    check_choice,
    check_finite,
    check_int,
    check_labels,
    check_range,
)

CLASSIFICATION_LOSSES = ("logistic", "exponential")


class AbstractLoss(eqx.Module):
    """A loss f(x) of the effective weights x ∈ R^d, as an equinox Module whose data are
    fields (so that they are traced, not compiled in, and a new data set does not recompile).

    Subclass it for your own loss; `AbstractFactoredLoss` adds the Hessian factor that the
    structured stiff solvers need.
    """

    @property
    @abc.abstractmethod
    def dim(self) -> int | None:
        """The dimension d of x the loss expects, or None if it takes any."""

    @abc.abstractmethod
    def __call__(self, x: Vector) -> Scalar:
        """f(x), a scalar."""


class AbstractFactoredLoss(AbstractLoss):
    """A loss whose Hessian comes as a factor, ∇²f(x) = C(x) C(x)ᵀ with C of shape (d, r):
    the linear-model losses, where r is the number of samples. `Rodas4`'s structured
    Jacobian and `SignFlowKvaerno3` need it, and ``solver="auto"`` picks them only for such
    a loss."""

    @abc.abstractmethod
    def hessian_factor(self, x: Vector) -> Array:
        """C with ∇²f(x) = C Cᵀ, shape (d, r)."""


def _check_design(A, target, target_name):
    check_array("A", A, 2)
    check_array(target_name, target, 1)
    if jnp.ndim(A) != 2:
        raise ValueError(f"`A` must be a matrix of shape (n, d); got shape {jnp.shape(A)}.")
    if jnp.shape(target) != (A.shape[0],):
        raise ValueError(
            f"`{target_name}` must have shape (n,) = ({A.shape[0]},) to match `A`; "
            f"got {jnp.shape(target)}."
        )
    check_finite("A", A)
    check_finite(target_name, target)


class LeastSquares(AbstractFactoredLoss):
    r"""Regression loss f(x) = ‖Ax − b‖² / (2n).

    **Fields:** ``A`` (n, d); ``b`` (n,); ``truth`` (d,) the planted solution, or None.
    """

    A: Array
    b: Array
    truth: Array | None = None

    def __check_init__(self):
        _check_design(self.A, self.b, "b")

    @property
    def dim(self) -> int:
        return self.A.shape[1]

    def __call__(self, x: Vector) -> Scalar:
        residual = self.A @ x - self.b
        return 0.5 * jnp.mean(residual * residual)

    def hessian_factor(self, x: Vector) -> Array:
        """C with ∇²f(x) = C Cᵀ: here Aᵀ/√n, shape (d, n). `Rodas4` uses it for a structured
        (block-diagonal plus rank-n) Jacobian."""
        del x
        return self.A.T / jnp.sqrt(self.A.shape[0])


class LinearClassification(AbstractFactoredLoss):
    r"""Binary classification loss on labels y ∈ {−1, +1} with margins z = y ⊙ (Ax):
    logistic f(x) = mean log(1 + e^(−z)), or exponential f(x) = mean e^(−z).

    **Fields:** ``A`` (n, d); ``y`` (n,); ``loss`` "logistic" | "exponential";
    ``truth`` (d,) the planted separator, or None.
    """

    A: Array
    y: Array
    loss: str = eqx.field(static=True, default="logistic")
    truth: Array | None = None

    def __check_init__(self):
        _check_design(self.A, self.y, "y")
        check_labels("y", self.y)
        check_choice("loss", self.loss, CLASSIFICATION_LOSSES)

    @property
    def dim(self) -> int:
        return self.A.shape[1]

    def margins(self, x: Vector) -> Array:
        return self.y * (self.A @ x)

    def __call__(self, x: Vector) -> Scalar:
        z = self.margins(x)
        if self.loss == "logistic":
            return jnp.mean(jnp.logaddexp(0.0, -z))
        return jnp.mean(jnp.exp(-z))

    def hessian_factor(self, x: Vector) -> Array:
        """C with ∇²f(x) = Aᵀ diag(ℓ''(z)) A / n = C Cᵀ, shape (d, n), where ℓ''(z) is
        σ(z)σ(−z) (logistic) or e^(−z) (exponential) at the margins z."""
        z = self.margins(x)
        if self.loss == "logistic":
            curvature = jax.nn.sigmoid(z) * jax.nn.sigmoid(-z)
        else:
            curvature = jnp.exp(-z)
        return self.A.T * jnp.sqrt(curvature / self.A.shape[0])


class ScalarToy(AbstractFactoredLoss):
    r"""The saddle-escape toy f(x) = Σ_j (x_j − target)² / 2 (docs/theory.md §5, target 1).

    Any dimension: it is called on x of shape (dim,) and returns a scalar.

    **Arguments:** ``target``, a finite scalar (default 1).
    """

    target: Array

    def __init__(self, target: ScalarLike = 1.0):
        check_finite("target", target)
        self.target = as_float(target)

    @property
    def dim(self) -> None:
        return None

    def __call__(self, x: Vector) -> Scalar:
        return 0.5 * jnp.sum((x - self.target) ** 2)

    def hessian_factor(self, x: Vector) -> Array:
        """C with ∇²f(x) = C Cᵀ = I, shape (d, d)."""
        return jnp.eye(x.shape[0], dtype=x.dtype)


def _planted(key: PRNGKeyArray, n: int, d: int, k: int):
    check_int("n", n, 1)
    check_int("d", d, 1)
    check_int("k", k, 0)
    if k > d:
        raise ValueError(f"`k` must lie in [0, d] = [0, {d}]; got {k}.")
    dtype = as_float(0.0).dtype
    k_design, k_support, k_sign = jax.random.split(key, 3)
    A = jax.random.normal(k_design, (n, d), dtype=dtype)
    support = jax.random.permutation(k_support, d)[:k]
    signs = jnp.where(jax.random.bernoulli(k_sign, 0.5, (k,)), 1.0, -1.0).astype(dtype)
    truth = jnp.zeros(d, dtype).at[support].set(signs)
    return A, truth


def sparse_regression(
    key: PRNGKeyArray, *, n: int, d: int, k: int, noise: ScalarLike = 0.0
) -> LeastSquares:
    """Seeded sparse regression: A ~ N(0, 1)^(n×d), a k-sparse ±1 truth, b = A·truth + noise·ξ.

    ``n < d`` gives the underdetermined setting of the implicit-bias experiments.

    **Arguments:** ``key`` a JAX PRNG key (the data are a pure function of it); ``n``
    samples; ``d`` dimension; ``k`` ≤ d nonzeros of the truth; ``noise`` ≥ 0, the scale of
    the Gaussian noise ξ.

    **Returns:** a `LeastSquares` with ``A`` (n, d), ``b`` (n,) and ``truth`` (d,).
    """
    check_range("noise", noise, 0.0)
    A, truth = _planted(key, n, d, k)
    xi = jax.random.normal(jax.random.fold_in(key, 1), (n,), dtype=A.dtype)
    return LeastSquares(A, A @ truth + noise * xi, truth)


def sparse_classification(
    key: PRNGKeyArray, *, n: int, d: int, k: int, loss: str = "logistic"
) -> LinearClassification:
    """Seeded separable classification: y = sign(A·truth) for a k-sparse ±1 truth (k ≥ 1).

    **Arguments:** ``key`` a JAX PRNG key; ``n`` samples; ``d`` dimension; ``k`` in [1, d]
    nonzeros of the truth; ``loss`` "logistic" or "exponential".

    **Returns:** a `LinearClassification` with ``A`` ~ N(0, 1)^(n×d), ``y`` (n,) in {−1, +1}
    and ``truth`` (d,).
    """
    check_int("k", k, 1)
    A, truth = _planted(key, n, d, k)
    y = jnp.where(A @ truth >= 0, 1.0, -1.0).astype(A.dtype)
    return LinearClassification(A, y, loss, truth)
