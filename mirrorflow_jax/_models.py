"""Equinox reparameterizations x = x(w) and their initializations (docs/theory.md §2–§3).

Every model is an immutable PyTree of its factors and returns the effective linear weights
``x`` when called. All models here are *separable* (they declare ``separable = True``): x_j
depends only on the factors' j-th entries, so the Jacobian ∂x/∂w is diagonal per factor,
which is what the structure-preserving smoothing of `SteepestFlow` uses.
"""

import abc
import functools
import operator
import warnings
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from equinox import AbstractClassVar
from jaxtyping import Array, ArrayLike, PRNGKeyArray

from ._custom_types import Factors, ScalarLike, Vector
from ._validate import as_float, check_finite, check_int, check_range, is_concrete


class AbstractReparam(eqx.Module):
    """A reparameterization x = x(w) of linear weights x ∈ R^d.

    Subclasses implement ``__call__`` (the effective weights) and ``balance`` (the quantities
    |w_i|^q − |w_1|^q that the flow conserves, stacked as an array), and declare the class
    variable ``separable``:

    - ``separable = True``: x_j depends only on the factors' j-th entries, so ∂x/∂w is
      diagonal per factor, ∇_w f(x(w)) = ∇f(x) ⊙ ∂x/∂w, and `SteepestFlow` may use the
      structure-preserving smoothing (the default for such models);
    - ``separable = False``: any other x(w); `SteepestFlow` then smooths the full gradient
      (``smoothing_at="naive"``) and refuses ``"structured"``, which would integrate a
      different ODE.

    **Example:**

    ```python
    from typing import ClassVar


    class Hadamard(mf.AbstractReparam):  # x = u ⊙ v
        separable: ClassVar[bool] = True
        u: jax.Array
        v: jax.Array

        def __call__(self):
            return self.u * self.v

        def balance(self, q):
            return (jnp.abs(self.v) ** q - jnp.abs(self.u) ** q)[None]


    model = Hadamard(jnp.ones(3), jnp.full(3, 0.5))  # structured smoothing under "auto"
    ```
    """

    separable: AbstractClassVar[bool]

    @abc.abstractmethod
    def __call__(self) -> Vector:
        """The effective linear weights x, shape (dim,)."""

    @abc.abstractmethod
    def balance(self, q: ScalarLike) -> Array:
        """|w_i|^q − |w_1|^q for i = 2..L per coordinate (docs/theory.md §3)."""

    def factor_jacobian(self) -> "AbstractReparam":
        """P = ∂x/∂w per factor entry, as a model-shaped PyTree.

        For a separable model ∇_w f(x(w)) = ∇f(x) ⊙ P, and P is one vector–Jacobian product
        with a cotangent of ones (e.g. P_i = ∏_{j≠i} w_j for the deep diagonal model).
        """
        x, pullback = jax.vjp(lambda model: model(), self)
        (jac,) = pullback(jnp.ones_like(x))
        return jac


def _check_stacks(depth_name: str, **stacks):
    """Raise ValueError unless the factor stacks share one shape (depth, dim), depth ≥ 1, and
    are finite."""
    shapes = [jnp.shape(stack) for stack in stacks.values()]
    if len(shapes[0]) != 2 or shapes[0][0] < 1 or any(s != shapes[0] for s in shapes):
        names = " and ".join(f"`{name}`" for name in stacks)
        same = "the same shape" if len(stacks) > 1 else "shape"
        got = " and ".join(str(s) for s in shapes)
        raise ValueError(
            f"{names} must have {same} ({depth_name}, dim) with {depth_name} >= 1; got {got}."
        )
    for name, stack in stacks.items():
        check_finite(name, stack)


def _layers(depth: int, dim: int, value) -> Factors:
    check_int("depth", depth, 1)
    check_int("dim", dim, 1)
    return jnp.broadcast_to(as_float(value), (depth, dim))


def _balanced_layers(w1: ArrayLike, c: ScalarLike, q: ScalarLike, depth: int) -> Factors:
    """w_1 given, w_i = (|w_1|^q + c)^(1/q) for i ≥ 2, so |w_i|^q − |w_1|^q = c."""
    check_int("depth", depth, 1)
    check_range("q", q, 1.0, 2.0)
    w1 = jnp.atleast_1d(as_float(w1))
    power = jnp.abs(w1) ** q + c
    if is_concrete(power) and bool(jnp.any(power < 0)):
        raise ValueError(
            "`c` must satisfy |w1|^q + c >= 0 for every coordinate (the other factors are "
            f"(|w1|^q + c)^(1/q)); got min |w1|^q + c = {float(jnp.min(power)):g}."
        )
    rest = jnp.broadcast_to(power ** (1 / q), (depth - 1, w1.shape[0]))
    return jnp.concatenate([w1[None], rest], axis=0)


def _product(stack: Array) -> Array:
    """∏_i stack[i] over the leading (depth) axis, written as a chain of multiplies (depth is
    static): its derivatives are fused elementwise products, where those of ``jnp.prod`` go
    through cumulative products, several times slower inside an ODE solve."""
    return functools.reduce(operator.mul, list(stack))


def _factor_balance(factors: Factors, q: ScalarLike) -> Array:
    powered = jnp.abs(factors) ** q
    return powered[1:] - powered[:1]


class DeepDiagonal(AbstractReparam):
    r"""Deep diagonal network x = w_1 ⊙ w_2 ⊙ … ⊙ w_L (L = 2: the diagonal linear network).

    **Fields:** ``factors``, shape (depth, dim).

    **Example:**

    ```python
    model = mf.DeepDiagonal.saddle(0.1, depth=3, dim=10)  # w_1 = 0, w_2 = w_3 = 0.1
    x = model()                                          # all zeros
    ```
    """

    separable: ClassVar[bool] = True
    factors: Factors

    def __check_init__(self):
        _check_stacks("depth", factors=self.factors)

    @property
    def depth(self) -> int:
        return self.factors.shape[0]

    @property
    def dim(self) -> int:
        return self.factors.shape[1]

    def __call__(self) -> Vector:
        return _product(self.factors)

    def balance(self, q: ScalarLike) -> Array:
        """|w_i|^q − |w_1|^q, shape (depth − 1, dim)."""
        return _factor_balance(self.factors, q)

    @classmethod
    def scaled(cls, alpha: ScalarLike, *, depth: int, dim: int) -> "DeepDiagonal":
        """All factors equal to ``alpha`` (the scale-α init; differentiable in ``alpha``)."""
        return cls(_layers(depth, dim, alpha))

    @classmethod
    def balanced(
        cls, w1: ArrayLike, c: ScalarLike, *, q: ScalarLike, depth: int
    ) -> "DeepDiagonal":
        """λ-balanced init: w_1 given, |w_i|^q − |w_1|^q = c for i ≥ 2 (w_i > 0)."""
        return cls(_balanced_layers(w1, c, q, depth))

    @classmethod
    def saddle(cls, lam: ScalarLike, *, depth: int, dim: int) -> "DeepDiagonal":
        """The origin-adjacent saddle of the paper: w_1 = 0, w_i = λ for i ≥ 2."""
        layers = _layers(depth, dim, lam)
        return cls(layers.at[0].set(0.0))

    @classmethod
    def random(
        cls, key: PRNGKeyArray, *, depth: int, dim: int, scale: ScalarLike = 1.0
    ) -> "DeepDiagonal":
        """Factors drawn i.i.d. from N(0, scale²)."""
        noise = jax.random.normal(key, (depth, dim), dtype=as_float(0.0).dtype)
        return cls(_layers(depth, dim, scale) * noise)


class SignedDeepDiagonal(AbstractReparam):
    r"""Signed deep diagonal network x = ∏_i u_i − ∏_i v_i, which can learn signs from a
    uniform init.

    **Fields:** ``u`` and ``v``, each of shape (depth, dim).
    """

    separable: ClassVar[bool] = True
    u: Factors
    v: Factors

    def __check_init__(self):
        _check_stacks("depth", u=self.u, v=self.v)

    @property
    def depth(self) -> int:
        return self.u.shape[0]

    @property
    def dim(self) -> int:
        return self.u.shape[1]

    def __call__(self) -> Vector:
        return _product(self.u) - _product(self.v)

    def balance(self, q: ScalarLike) -> Array:
        """|u_i|^q − |u_1|^q and |v_i|^q − |v_1|^q stacked, shape (2, depth − 1, dim)."""
        return jnp.stack([_factor_balance(self.u, q), _factor_balance(self.v, q)])

    @classmethod
    def scaled(cls, alpha: ScalarLike, *, depth: int, dim: int) -> "SignedDeepDiagonal":
        """All factors of u and v equal to ``alpha`` (so x = 0)."""
        layers = _layers(depth, dim, alpha)
        return cls(layers, layers)

    @classmethod
    def balanced(
        cls, u1: ArrayLike, v1: ArrayLike, c: ScalarLike, *, q: ScalarLike, depth: int
    ) -> "SignedDeepDiagonal":
        """u and v each λ-balanced with the same constant c (first factors given)."""
        return cls(_balanced_layers(u1, c, q, depth), _balanced_layers(v1, c, q, depth))

    @classmethod
    def saddle(cls, lam: ScalarLike, *, depth: int, dim: int) -> "SignedDeepDiagonal":
        """u_1 = v_1 = 0, all other factors λ."""
        layers = _layers(depth, dim, lam).at[0].set(0.0)
        return cls(layers, layers)

    @classmethod
    def random(
        cls, key: PRNGKeyArray, *, depth: int, dim: int, scale: ScalarLike = 1.0
    ) -> "SignedDeepDiagonal":
        """u and v drawn i.i.d. from N(0, scale²)."""
        ku, kv = jax.random.split(key)
        return cls(
            DeepDiagonal.random(ku, depth=depth, dim=dim, scale=scale).factors,
            DeepDiagonal.random(kv, depth=depth, dim=dim, scale=scale).factors,
        )


class SquareDiff(AbstractReparam):
    r"""x = u ⊙ u − v ⊙ v (Woodworth et al. 2020). Its two factors per sign are tied, so it
    has no balance quantities (``balance`` returns an empty (0, dim) array).

    **Fields:** ``u`` and ``v``, each of shape (dim,).
    """

    separable: ClassVar[bool] = True
    u: Vector
    v: Vector

    def __check_init__(self):
        if jnp.ndim(self.u) != 1 or jnp.shape(self.u) != jnp.shape(self.v):
            raise ValueError(
                "`u` and `v` must be vectors of the same shape (dim,); "
                f"got {jnp.shape(self.u)} and {jnp.shape(self.v)}."
            )
        check_finite("u", self.u)
        check_finite("v", self.v)

    @property
    def dim(self) -> int:
        return self.u.shape[0]

    def __call__(self) -> Vector:
        return self.u * self.u - self.v * self.v

    def balance(self, q: ScalarLike) -> Array:
        return jnp.zeros((0, self.dim), self.u.dtype)

    @classmethod
    def scaled(cls, alpha: ScalarLike, *, dim: int) -> "SquareDiff":
        """u = v = α (x = 0), the init whose scale α sets the ℓ1–ℓ2 regime."""
        layer = _layers(1, dim, alpha)[0]
        return cls(layer, layer)


def effective_weights(params):
    """x for a toolkit model (``params()``); any other PyTree is its own effective weights.

    **Arguments:** ``params``, an `AbstractReparam` (e.g. `DeepDiagonal`, giving
    x = w_1 ⊙ … ⊙ w_L of shape (dim,)) or any PyTree (returned unchanged).
    """
    return params() if isinstance(params, AbstractReparam) else params


def _rows_at_or_after(leaf: Array, depth: Array) -> Array:
    """True for the rows of ``leaf`` (leading axis) at and after ``depth``, broadcast."""
    rows = jnp.arange(leaf.shape[0]).reshape((-1,) + (1,) * (leaf.ndim - 1))
    return jnp.broadcast_to(rows >= depth, leaf.shape)


def _padded_depth(leaves) -> Array:
    """The depth encoded by zero padding: 1 + the index of the last row (after the first)
    that is nonzero in any of ``leaves``."""
    nonzero = functools.reduce(
        operator.or_, [jnp.any(leaf != 0, axis=tuple(range(1, leaf.ndim))) for leaf in leaves]
    )
    rows = jnp.arange(1, leaves[0].shape[0] + 1)
    return jnp.max(jnp.where(nonzero, rows, 1))


def _truncate(leaves, depth) -> list[Array]:
    """Zero the rows at and after ``depth`` of each leaf (the padding), after checking that
    the padding can be read back: ``depth`` in [1, max_depth], and the last real row nonzero."""
    max_depth = leaves[0].shape[0]
    depth = jnp.asarray(depth)
    if is_concrete(depth):
        check_int("depth", depth.item() if depth.ndim == 0 else depth, 1)
        check_range("depth", depth, 1, max_depth)
    padded = [jnp.where(_rows_at_or_after(leaf, depth), 0.0, leaf) for leaf in leaves]
    bad = (depth < 1) | (depth > max_depth) | (_padded_depth(padded) != depth)
    if is_concrete(padded) and is_concrete(depth) and bool(bad):
        raise ValueError(
            f"the depth-{int(depth)} factor must not be identically zero: trailing zero factors "
            "mark padding (a zero factor w_L at init would be read as a shallower model)."
        )
    # Traced (a sweep over depth): NaN factors instead of a run-time error, so that only this
    # member fails (its solve ends at once with result `nonfinite`), not the whole program.
    return [jnp.where(bad, jnp.nan, leaf) for leaf in padded]


class Padded(AbstractReparam):
    r"""A deep model of depth L ≤ max_depth stored at depth max_depth, so that a sweep over L
    (a traced integer) compiles once: ``Padded(DeepDiagonal.scaled(α, depth=4, dim=d), L)``
    is ``DeepDiagonal.scaled(α, depth=L, dim=d)``.

        x = w_1 ⊙ … ⊙ w_L ⊙ 1 ⊙ … ⊙ 1

    Any `AbstractReparam` whose factors are stacks over a leading depth axis and which
    multiplies its rows (`DeepDiagonal`, `SignedDeepDiagonal`, or a model of one's own) can
    be padded. The rows after the first L of every factor stack are *padding*: stored as
    zeros and read as unit factors. A zero row with zero gradient is a fixed point of every
    steepest flow (any q and ε, either smoothing, coupled or decoupled weight decay), so the
    padding stays exactly in place, and x, the real factors' velocities and the structured
    smoothing's P_i = ∏_{j≠i} w_j equal those of the unpadded model.

    The depth is read back from the padding (1 + the last nonzero row), so the last real
    factor must not be identically zero (the uniform α = 0 init, a stationary point, is the
    only common init that violates this). It is not a separate field because every floating
    field of the params is integrated by the flow, and weight decay would shrink a mask. A
    traced depth outside [1, max_depth] gives NaN factors, so that member's solve ends at
    once with result ``nonfinite``.

    ``balance(q)`` is the model's own, NaN on the rows of padding layers (its axis −2, where
    that axis has max_depth − 1 entries: layers 2..max_depth). The adaptive step-size
    controller sees the padding's (exactly zero) errors: with diffrax's default RMS norm they
    loosen the tolerance by √(max_depth/L); ``PIDController(..., norm=optimistix.max_norm)``
    makes the padded solve take the unpadded model's steps.

    **Arguments:** ``model`` an `AbstractReparam` of depth max_depth (every array field of
    shape (max_depth, …)); ``depth`` an integer in [1, max_depth], may be traced.

    **Fields:** ``model``, the wrapped model with its padding rows zeroed.

    **Example:**

    ```python
    flow, problem, d, t1 = mf.SteepestFlow(), mf.ScalarToy(), 3, 1.0

    def run(alpha, depth):  # depth: a traced integer in [1, 4]
        model = mf.Padded(mf.DeepDiagonal.scaled(alpha, depth=4, dim=d), depth)
        return mf.solve_flow(flow, model, problem, t1)

    sols = jax.vmap(run)(jnp.array([0.5, 0.5]), jnp.array([2, 3]))  # one compilation
    ```
    """

    model: AbstractReparam

    def __init__(self, model: AbstractReparam, depth: ArrayLike):
        if not isinstance(model, AbstractReparam) or isinstance(model, Padded):
            raise ValueError(
                "`model` must be an AbstractReparam with factor stacks over a leading depth "
                f"axis (DeepDiagonal, SignedDeepDiagonal, ...); got {type(model).__name__}."
            )
        leaves, treedef = jax.tree.flatten(model)
        shapes = [jnp.shape(leaf) for leaf in leaves]
        if not leaves or any(len(s) < 2 or s[0] != shapes[0][0] for s in shapes):
            raise ValueError(
                "`model`'s arrays must all be stacks (max_depth, ...) over one leading depth "
                f"axis to be padded; {type(model).__name__} has shapes {shapes[:4]}."
            )
        self.model = jax.tree.unflatten(treedef, _truncate(leaves, depth))

    @property
    def separable(self) -> bool:
        """The wrapped model's: padding rows are unit factors, which keep x_j's dependence."""
        return self.model.separable

    @property
    def max_depth(self) -> int:
        return jax.tree.leaves(self.model)[0].shape[0]

    @property
    def dim(self) -> int:
        return jax.tree.leaves(self.model)[0].shape[-1]

    @property
    def depth(self) -> Array:
        """L, read from the padding (an integer array; traced under a sweep)."""
        return _padded_depth(jax.tree.leaves(self.model))

    def __call__(self) -> Vector:
        depth = self.depth

        def unit(leaf):
            return jnp.where(_rows_at_or_after(leaf, depth), 1.0, leaf)

        return jax.tree.map(unit, self.model)()

    def balance(self, q: ScalarLike) -> Array:
        """The model's ``balance(q)``, NaN on the padding layers' rows."""
        balance = self.model.balance(q)
        if balance.ndim < 2 or balance.shape[-2] != self.max_depth - 1:
            return balance
        layers = jnp.arange(1, self.max_depth)[:, None]  # layers 2..max_depth, axis -2
        return jnp.where(layers >= self.depth, jnp.nan, balance)

    def padding(self) -> "Padded":
        """A Padded-shaped PyTree of booleans, True on the padding rows (at and after
        ``depth``)."""
        depth = self.depth
        return jax.tree.map(lambda leaf: _rows_at_or_after(leaf, depth), self)


def padding_mask(params) -> AbstractReparam:
    """A params-shaped PyTree of booleans, True for padding entries (stored zeros that the
    model reads as unit factors and every flow keeps in place): the rows after the depth of a
    `Padded` model, none for any other model."""
    if isinstance(params, Padded):
        return params.padding()
    return jax.tree.map(lambda leaf: jnp.zeros(jnp.shape(leaf), bool), params)


class PaddedDeepDiagonal:
    """Deprecated: `Padded` pads any deep model.

    ``PaddedDeepDiagonal.truncated(model, depth)`` returns ``Padded(model, depth)`` (the first
    ``depth`` layers of ``model``, padded to its depth) and warns; it will be removed in the
    next release.
    """

    @staticmethod
    def truncated(model: DeepDiagonal, depth) -> Padded:
        """Deprecated: ``Padded(model, depth)``."""
        warnings.warn(
            "PaddedDeepDiagonal.truncated(model, depth) is deprecated; use Padded(model, depth).",
            DeprecationWarning,
            stacklevel=2,
        )
        return Padded(model, depth)


class PaddedSignedDeepDiagonal:
    """Deprecated: `Padded` pads any deep model.

    ``PaddedSignedDeepDiagonal.truncated(model, depth)`` returns ``Padded(model, depth)``
    (the first ``depth`` layers of ``model``, padded to its depth) and warns; it will be
    removed in the next release.
    """

    @staticmethod
    def truncated(model: SignedDeepDiagonal, depth) -> Padded:
        """Deprecated: ``Padded(model, depth)``."""
        warnings.warn(
            "PaddedSignedDeepDiagonal.truncated(model, depth) is deprecated; use "
            "Padded(model, depth).",
            DeprecationWarning,
            stacklevel=2,
        )
        return Padded(model, depth)
