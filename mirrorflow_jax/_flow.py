"""Flows as vector fields: the interface, and the steepest flow dθ/dt = −φ_q(∇F(θ)) − α(t)·θ
(docs/theory.md §1)."""

import abc
import warnings
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from ._custom_types import Loss, Params, ScalarLike, Schedule
from ._geometry import Lp
from ._models import AbstractReparam, effective_weights
from ._validate import as_float, check_choice, check_range

SMOOTHING_PLACES = ("auto", "naive", "structured")


def _sum_squares(tree) -> Array:
    return sum(jnp.sum(leaf * leaf) for leaf in jax.tree.leaves(tree))


class AbstractFlow(eqx.Module):
    """A continuous-time optimizer: an ODE on a state that holds the parameters.

    ``state = flow.init(params)``; ``dstate/dt = flow(t, state, loss)``;
    ``params = flow.params_of(state)``. For `SteepestFlow` the state is the parameters
    themselves; flows with memory (e.g. a continuous-time Adam) carry extra state.
    `solve_flow` accepts any subclass.

    ``geometry`` is the flow's steepest-map geometry `Lp` (q, ε), or None for a flow without
    one (`AdamFlow`): `solve_flow` records it, and ``solver="auto"`` reads q and ε from it.
    """

    geometry: eqx.AbstractVar[Lp | None]

    @abc.abstractmethod
    def __call__(self, t: ScalarLike, state, loss: Loss):
        """The time derivative of ``state``."""

    @abc.abstractmethod
    def init(self, params: Params):
        """The initial state for initial parameters ``params``."""

    @abc.abstractmethod
    def params_of(self, state) -> Params:
        """The parameters held in ``state``."""

    @abc.abstractmethod
    def smoothing_for(self, params: Params) -> str | None:
        """Where the flow smooths its steepest map for these params, or None if it has none.

        Raises ValueError if the flow cannot act on ``params``.
        """


class AbstractDecayedFlow(AbstractFlow):
    """An `AbstractFlow` with decoupled (AdamW-style) weight decay: a term −α(t)·θ outside the
    flow's direction, with ``decoupled_wd`` α ≥ 0 or a schedule t ↦ α(t)."""

    decoupled_wd: eqx.AbstractVar[Array | Schedule]

    def decay_rate(self, t: ScalarLike) -> Array:
        """α(t)."""
        if callable(self.decoupled_wd):
            return jnp.asarray(self.decoupled_wd(t))
        return self.decoupled_wd


def checked_decay(
    decoupled_wd: ScalarLike | Schedule, weight_decay: ScalarLike | None = None
) -> Array | Schedule:
    """``decoupled_wd`` checked (α ≥ 0; a schedule is taken as is), or the deprecated
    ``weight_decay`` where that was passed instead (named in its own error messages)."""
    name = "decoupled_wd"
    if weight_decay is not None:
        warnings.warn(
            "`weight_decay` is deprecated; use `decoupled_wd` (the same decoupled decay).",
            DeprecationWarning,
            stacklevel=3,
        )
        name, decoupled_wd = "weight_decay", weight_decay
    if callable(decoupled_wd):
        return decoupled_wd
    check_range(name, decoupled_wd, 0.0)
    return as_float(decoupled_wd)


class FlowArgs(eqx.Module):
    """The ``args`` that `solve_flow` hands to diffrax: the flow, the loss f(x), the initial
    loss value (for escape events) and the step-size controller's tolerances. Solvers that
    exploit a flow's structure (`Rodas4`) read them from here.

    **Fields:** ``flow`` an `AbstractFlow`; ``loss`` f(x); ``value0`` f(x(0)), a scalar;
    ``rtol``, ``atol`` the controller's tolerances (traced where they are, e.g. swept), or
    None for a controller without them (a constant step).
    """

    flow: AbstractFlow
    loss: Loss
    value0: Array
    rtol: Array | None = None
    atol: Array | None = None


class SteepestFlow(AbstractDecayedFlow):
    r"""Steepest flow with coupled and decoupled weight decay.

        dθ/dt = −φ_q^ε(∇_θ F(θ)) − α(t)·θ,    F(θ) = f(x(θ)) + (β/2)‖θ‖²

    where x(θ) is the model's effective weights (θ itself for a plain PyTree), β the *coupled*
    weight decay (inside φ_q) and α(t) the *decoupled*, AdamW-style one (outside φ_q).

    **Where the smoothing acts** (``smoothing_at``, docs/theory.md §1):

    - ``"naive"``: φ_q^ε on the full gradient ∇_θF. Works for any PyTree and mimics Adam's ε,
      but near a saddle (|∇_θF| ≪ ε) it is gradient flow slowed by 1/ε, and it breaks the
      balance laws and the mirror-flow equivalence.
    - ``"structured"`` (models declaring ``separable = True`` only): for ∂F/∂w_i = g ⊙ P_i
      with g = ∇f(x) and P_i = ∂x/∂w_i, the flow is dw_i/dt = −φ_q^ε(g)·φ_q(P_i), which
      keeps the balance laws and the equivalence with the smoothed mirror flow exact. It is
      computed as
      φ_q^{ε|P_i|}(∇_{w_i} F), an identity of both smoothings
      (φ_q^{ε|P|}(gP) = φ_q^ε(g)·φ_q(P)), so coupled weight decay is smoothed per entry on
      the same scale.
    - ``"auto"`` (default): structured for separable `AbstractReparam` models, naive
      otherwise (plain PyTrees, and models declaring ``separable = False``).

    With ε = 0 both are the exact flow.

    **Arguments:**

    - ``geometry``: an `Lp` geometry (q, ε, smoothing kind).
    - ``coupled_wd``: β ≥ 0.
    - ``decoupled_wd``: α ≥ 0, or a schedule ``t ↦ α(t)`` (any JAX-traceable callable,
      e.g. an equinox Module with array fields so that it can be swept).
    - ``smoothing_at``: ``"auto"``, ``"naive"`` or ``"structured"``.

    **Example:**

    ```python
    flow = mf.SteepestFlow(mf.Lp(q=1.0, eps=1e-3), decoupled_wd=1e-2)  # smoothed SignGF, AdamW
    ```
    """

    geometry: Lp
    coupled_wd: Array
    decoupled_wd: Array | Callable
    smoothing_at: str = eqx.field(static=True)

    def __init__(
        self,
        geometry: Lp | None = None,
        *,
        coupled_wd: ScalarLike = 0.0,
        decoupled_wd: ScalarLike | Schedule = 0.0,
        smoothing_at: str = "auto",
    ):
        check_range("coupled_wd", coupled_wd, 0.0)
        check_choice("smoothing_at", smoothing_at, SMOOTHING_PLACES)
        decoupled_wd = checked_decay(decoupled_wd)
        if geometry is not None and not isinstance(geometry, Lp):
            raise ValueError(
                f"`geometry` must be an Lp geometry such as mf.Lp(q=2.0); got "
                f"{type(geometry).__name__}."
            )
        self.geometry = Lp() if geometry is None else geometry
        self.coupled_wd = as_float(coupled_wd)
        self.decoupled_wd = decoupled_wd
        self.smoothing_at = smoothing_at

    def init(self, params: Params) -> Params:
        return params

    def params_of(self, state: Params) -> Params:
        return state

    def smoothing_for(self, params: Params) -> str:
        """Which smoothing this flow applies to ``params``: "naive" or "structured" (only for
        an `AbstractReparam` that declares ``separable = True``)."""
        reparam = isinstance(params, AbstractReparam)
        structured_ok = reparam and params.separable
        if self.smoothing_at == "structured" and not structured_ok:
            if reparam:
                raise ValueError(
                    "`smoothing_at='structured'` needs a separable model; "
                    f"{type(params).__name__} declares separable = False, and the "
                    "structure-preserving smoothing would integrate a different ODE for it. "
                    "Pass smoothing_at='naive' (or 'auto', which chooses it)."
                )
            raise ValueError(
                "`smoothing_at='structured'` needs a separable model (an AbstractReparam such "
                f"as DeepDiagonal); got params of type {type(params).__name__}. "
                "Use smoothing_at='naive' for other PyTrees."
            )
        if self.smoothing_at == "auto":
            return "structured" if structured_ok else "naive"
        return self.smoothing_at

    def objective(self, params: Params, loss: Loss) -> Array:
        """F(θ) = f(x(θ)) + (β/2)‖θ‖²."""
        return loss(effective_weights(params)) + 0.5 * self.coupled_wd * _sum_squares(params)

    def smoothing_scales(self, params: Params) -> Params:
        """The smoothing scale of each parameter entry, a PyTree like ``params`` whose leaves
        broadcast against its leaves: ε for the naive placement, ε·|∂x/∂w_i| for the
        structured one. An entry is in the smoothing layer where |∂F/∂w_i| is below about
        its scale."""
        eps = self.geometry.eps
        if self.smoothing_for(params) == "structured":
            return jax.tree.map(lambda p: eps * jnp.abs(p), params.factor_jacobian())
        return jax.tree.map(lambda _: eps, params)

    def scaled_gradient(self, params: Params, loss: Loss) -> Params:
        """∂F/∂w_i divided by entry i's smoothing scale (`smoothing_scales`), a PyTree like
        ``params``: |r_i| ≲ 1 inside the smoothing layer, where φ^ε is far from ±1, and ≫ 1
        where the entry moves at full speed. Entries with a zero scale (a factor of the
        structure-preserving placement whose ∂x/∂w_i vanishes) give ±inf or nan."""
        grads = jax.grad(self.objective)(params, loss)
        return jax.tree.map(jnp.divide, grads, self.smoothing_scales(params))

    def __call__(self, t: ScalarLike, params: Params, loss: Loss) -> Params:
        """The velocity dθ/dt at time ``t``; a PyTree shaped like ``params``."""
        grads = jax.grad(self.objective)(params, loss)
        eps = self.smoothing_scales(params)
        alpha = self.decay_rate(t)
        return jax.tree.map(
            lambda g, e, p: -self.geometry.map(g, e) - alpha * p, grads, eps, params
        )
