"""The continuous-time Adam/AdamW ODE: Adam's small-step limit with β's tied to the step size
(docs/theory.md §1, §9)."""

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array

from ._custom_types import Loss, Params, ScalarLike, Schedule
from ._flow import AbstractDecayedFlow, checked_decay
from ._models import effective_weights
from ._validate import as_float, check_range, is_concrete


class AdamState(eqx.Module):
    """The state of `AdamFlow`: parameters θ and the moments m, v (each shaped like θ).

    **Fields:** ``params`` θ (any PyTree); ``m``, the first moment, with dm/dt = a·(g − m);
    ``v``, the second moment, with dv/dt = b·(g ⊙ g − v); both start at 0.
    """

    params: Params
    m: Params
    v: Params


def _bias_corrected(moment: Array, rate: Array, t: Array, limit: Array) -> Array:
    """moment / (1 − e^(−rate·t)), and its t → 0 limit ``limit`` at t = 0."""
    started = t > 0
    scale = -jnp.expm1(-rate * jnp.where(started, t, 1.0))
    return jnp.where(started, moment / scale, limit)


def _safe_ratio(num: Array, den: Array) -> Array:
    """num / den with 0/0 := 0 (a coordinate whose gradient has always been 0 stays put)."""
    positive = den > 0
    return jnp.where(positive, num / jnp.where(positive, den, 1.0), 0.0)


def _check_beta(name: str, value):
    if is_concrete(value) and not np.all((np.asarray(value) >= 0) & (np.asarray(value) < 1)):
        raise ValueError(f"`{name}` must lie in [0, 1); got {np.asarray(value)}.")


class AdamFlow(AbstractDecayedFlow):
    r"""Continuous-time Adam/AdamW on F(θ) = f(x(θ)).

        dm/dt = a·(g − m),    dv/dt = b·(g ⊙ g − v),    g = ∇_θ F(θ),    m(0) = v(0) = 0
        dθ/dt = −m̂ / (√v̂ + ε) − λ·θ,    m̂ = m / (1 − e^(−a·t)),    v̂ = v / (1 − e^(−b·t))

    (at t = 0, m̂ = g and v̂ = g², their limits). With β₁ = 1 − a·η, β₂ = 1 − b·η and t = η·k,
    ``optax.adamw(η, β₁, β₂, ε, weight_decay=λ)`` is a first-order discretization of it
    (bias corrections (1 − β^k) → 1 − e^(−a t)), so its iterates approach the ODE as η → 0
    at fixed a, b (Barakat & Bianchi 2021, SIAM J. Optim.; Malladi et al. 2022); `discrete`
    builds that optimizer. The bias corrections use the absolute time t, so solve from t0 = 0.

    **Sign-flow limit** (theory §1): as the time constants 1/a, 1/b → 0, m̂ → g and v̂ → g²,
    so dθ/dt → −g/(|g| + ε) − λθ, and as ε → 0 this is SignGF (q = 1) with decoupled decay.
    Like Adam's, ε acts on ∇_θF itself: it is the *naive* smoothing of `SteepestFlow`, so
    ``smoothing_for`` returns None (there is no `Lp` geometry).

    **Arguments:**

    - ``rate1``: a = (1 − β₁)/η > 0, the first-moment rate (time constant 1/a).
    - ``rate2``: b = (1 − β₂)/η > 0, the second-moment rate.
    - ``eps``: ε ≥ 0 (0/0 is read as 0).
    - ``decoupled_wd``: decoupled (AdamW) decay λ ≥ 0, or a schedule t ↦ λ(t) (the flow only:
      `discrete` needs a constant). ``weight_decay``, its former name, is deprecated.

    **Example:**

    ```python
    flow = mf.AdamFlow.from_betas(1e-2, b1=0.9, b2=0.99, eps=1e-8)  # a = 10, b = 1
    model, problem = mf.DeepDiagonal.scaled(0.1, depth=3, dim=1), mf.ScalarToy()
    sol = mf.solve_flow(flow, model, problem, 5.0)
    run = mf.run_optimizer(flow.discrete(1e-2), model, problem, 500)  # the matching adamw
    ```
    """

    rate1: Array
    rate2: Array
    eps: Array
    decoupled_wd: Array | Schedule

    @property
    def geometry(self) -> None:
        """None: Adam's ε acts inside its own moment ratio, not through an `Lp` geometry."""
        return None

    def __init__(
        self,
        rate1: ScalarLike,
        rate2: ScalarLike,
        eps: ScalarLike = 1e-8,
        decoupled_wd: ScalarLike | Schedule = 0.0,
        *,
        weight_decay: ScalarLike | None = None,
    ):
        check_range("rate1", rate1, 0.0, lo_open=True)
        check_range("rate2", rate2, 0.0, lo_open=True)
        check_range("eps", eps, 0.0)
        self.rate1 = as_float(rate1)
        self.rate2 = as_float(rate2)
        self.eps = as_float(eps)
        self.decoupled_wd = checked_decay(decoupled_wd, weight_decay)

    @property
    def weight_decay(self) -> Array | Schedule:
        """Deprecated: ``decoupled_wd``."""
        warnings.warn(
            "`AdamFlow.weight_decay` is deprecated; use `decoupled_wd`.",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.decoupled_wd

    @classmethod
    def from_betas(
        cls,
        learning_rate: ScalarLike,
        b1: ScalarLike = 0.9,
        b2: ScalarLike = 0.999,
        eps: ScalarLike = 1e-8,
        decoupled_wd: ScalarLike | Schedule = 0.0,
        *,
        weight_decay: ScalarLike | None = None,
    ) -> "AdamFlow":
        """The flow of ``optax.adamw(learning_rate, b1, b2, eps, weight_decay=decoupled_wd)``:
        a = (1 − β₁)/η, b = (1 − β₂)/η, β's in [0, 1) (``weight_decay`` is the deprecated name
        of ``decoupled_wd``)."""
        check_range("learning_rate", learning_rate, 0.0, lo_open=True)
        _check_beta("b1", b1)
        _check_beta("b2", b2)
        lr = as_float(learning_rate)
        decay = checked_decay(decoupled_wd, weight_decay)
        return cls((1 - as_float(b1)) / lr, (1 - as_float(b2)) / lr, eps, decay)

    def betas(self, learning_rate: ScalarLike) -> tuple[Array, Array]:
        """(β₁, β₂) = (1 − a·η, 1 − b·η); needs η ≤ 1/max(a, b) so that both are ≥ 0."""
        check_range("learning_rate", learning_rate, 0.0, lo_open=True)
        if is_concrete((learning_rate, self.rate1, self.rate2)):
            largest = 1.0 / float(jnp.maximum(self.rate1, self.rate2))
            check_range("learning_rate", learning_rate, 0.0, largest, lo_open=True)
        lr = as_float(learning_rate)
        return 1 - self.rate1 * lr, 1 - self.rate2 * lr

    def discrete(self, learning_rate: ScalarLike) -> optax.GradientTransformation:
        """The discrete optimizer with step η whose flow this is: ``optax.adamw`` with
        β = 1 − rate·η, the same ε and decay (its ``update`` needs ``params``)."""
        if callable(self.decoupled_wd):
            raise ValueError(
                "`decoupled_wd` must be a constant for `discrete` (optax.adamw's weight_decay); "
                "got a schedule."
            )
        b1, b2 = self.betas(learning_rate)
        return optax.adamw(
            as_float(learning_rate), b1=b1, b2=b2, eps=self.eps, weight_decay=self.decoupled_wd
        )

    def init(self, params: Params) -> AdamState:
        zeros = jax.tree.map(jnp.zeros_like, params)
        return AdamState(params, zeros, zeros)

    def params_of(self, state: AdamState) -> Params:
        return state.params

    def smoothing_for(self, params: Params) -> None:
        """None: the flow has no `Lp` geometry (ε acts on ∇_θF, like the naive smoothing)."""
        return None

    def direction(self, t: ScalarLike, grads: Params, m: Params, v: Params) -> Params:
        """m̂ / (√v̂ + ε) leafwise, the step direction before weight decay."""
        t = as_float(t)

        def leaf(g, m_leaf, v_leaf):
            m_hat = _bias_corrected(m_leaf, self.rate1, t, g)
            v_hat = _bias_corrected(v_leaf, self.rate2, t, g * g)
            return _safe_ratio(m_hat, jnp.sqrt(jnp.maximum(v_hat, 0.0)) + self.eps)

        return jax.tree.map(leaf, grads, m, v)

    def __call__(self, t: ScalarLike, state: AdamState, loss: Loss) -> AdamState:
        """d(θ, m, v)/dt at time ``t``."""
        params = state.params
        grads = jax.grad(lambda p: loss(effective_weights(p)))(params)
        direction = self.direction(t, grads, state.m, state.v)
        alpha = self.decay_rate(t)
        return AdamState(
            params=jax.tree.map(lambda d, p: -d - alpha * p, direction, params),
            m=jax.tree.map(lambda g, m: self.rate1 * (g - m), grads, state.m),
            v=jax.tree.map(lambda g, v: self.rate2 * (g * g - v), grads, state.v),
        )
