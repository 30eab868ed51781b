"""Run-time checks of a solve: what can only be known inside ``jit``/``vmap``/a sweep.

Hyperparameters that arrive traced (sweep axes, a user's own ``jit``) skip the ValueError
checks of the constructors and of `solve_flow`. They are checked here, inside the program: a
member with an out-of-range value ends with the result code ``invalid_hyperparameter`` after
zero solver steps, without disturbing other members. A state that turns non-finite ends the
solve early with ``nonfinite`` (instead of rejecting steps until ``max_steps``).
"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool

NONFINITE_PATIENCE = 12  # consecutive non-finite candidate steps before `nonfinite`


class RESULTS(diffrax.RESULTS):
    """``diffrax.RESULTS`` (same codes, e.g. ``max_steps_reached``, ``nonfinite``) plus
    ``invalid_hyperparameter``. Compare ``FlowSolution.result`` with these, e.g.
    ``sol.result == mf.RESULTS.nonfinite``."""

    invalid_hyperparameter = (
        "A hyperparameter that arrived traced lies outside its valid range (t0 < t1 finite, "
        "dt0 > 0, save times non-decreasing in [t0, t1], q in [1, 2], eps and weight decays "
        ">= 0, rates > 0); the solve was not run."
    )
    stiff = (
        "The explicit solver's steps were held at the edge of its stability region for 100 "
        "accepted steps in a row: the flow is stiff there (a smoothed sign flow near a "
        "minimum), and the result cannot be vouched for. Use solver='auto' (the default), "
        "`Rodas4` or `SignFlowKvaerno3`."
    )


def is_okay(result: RESULTS) -> Bool[Array, "..."]:
    """True where the solve reached t1 or stopped at its event."""
    with jax.ensure_compile_time_eval():
        return (result == RESULTS.successful) | (result == RESULTS.event_occurred)


# name -> (lo, hi, lo_open): the ranges the constructors check on concrete values
_RANGES = {
    "Lp": {"q": (1.0, 2.0, False), "eps": (0.0, jnp.inf, False)},
    "SteepestFlow": {"coupled_wd": (0.0, jnp.inf, False), "decoupled_wd": (0.0, jnp.inf, False)},
    "AdamFlow": {
        "rate1": (0.0, jnp.inf, True),
        "rate2": (0.0, jnp.inf, True),
        "eps": (0.0, jnp.inf, False),
        "decoupled_wd": (0.0, jnp.inf, False),
    },
    "DeepDiagonalMirror": {"q": (1.0, 2.0, False), "c": (0.0, jnp.inf, False)},
    "MirrorFlow": {"c": (0.0, jnp.inf, False), "decoupled_wd": (0.0, jnp.inf, False)},
}


def _in_range(value, lo, hi, lo_open) -> Bool[Array, ""]:
    value = jnp.asarray(value)
    above = value > lo if lo_open else value >= lo
    return jnp.all(above & (value <= hi) & ~jnp.isnan(value))


def _flow_valid(flow) -> Bool[Array, ""]:
    """Every known hyperparameter of the flow and of its sub-modules (geometry, mirror) in
    range; schedules and unknown fields are not checked."""
    valid = jnp.array(True)
    modules = [flow] + [v for v in vars(flow).values() if isinstance(v, eqx.Module)]
    for module in modules:
        for name, (lo, hi, lo_open) in _RANGES.get(type(module).__name__, {}).items():
            value = getattr(module, name, None)
            if isinstance(value, jax.Array | float | int):
                valid &= _in_range(value, lo, hi, lo_open)
    return valid


def check_traced(flow, t0, t1, dt0, saveat: diffrax.SaveAt):
    """Inside the program: whether the setup is valid, and a setup that diffrax runs without
    raising and in zero steps where it is not (t1 = t0, every time 0, dt0 = 1).

    **Returns:** ``(valid, t0, t1, dt0, saveat)``.
    """
    valid = _flow_valid(flow) & jnp.isfinite(t0) & jnp.isfinite(t1) & (t1 > t0)
    if dt0 is not None:
        valid &= jnp.isfinite(dt0) & (dt0 > 0)
    ts = saveat.subs.ts
    if ts is not None and ts.size:
        inside = (ts >= t0) & (ts <= t1)  # False for NaN
        valid &= jnp.all(inside) & jnp.all(ts[1:] >= ts[:-1])
    return (valid, *idle(valid, t0, t1, dt0, saveat))


def idle(keep, t0, t1, dt0, saveat: diffrax.SaveAt):
    """``(t0, t1, dt0, saveat)`` where ``keep``, else a setup that diffrax runs without
    raising and in zero steps (t1 = t0 = 0, every save time 0, dt0 = 1)."""
    zero = jnp.zeros_like(t0)
    t0, t1 = jnp.where(keep, t0, zero), jnp.where(keep, t1, zero)
    if dt0 is not None:
        dt0 = jnp.where(keep, dt0, jnp.ones_like(dt0))

    def zero_times(sub: diffrax.SubSaveAt) -> diffrax.SubSaveAt:
        if sub.ts is None:
            return sub
        return eqx.tree_at(lambda s: s.ts, sub, jnp.where(keep, sub.ts, jnp.zeros_like(sub.ts)))

    is_sub = lambda node: isinstance(node, diffrax.SubSaveAt)  # noqa: E731
    subs = jax.tree.map(zero_times, saveat.subs, is_leaf=is_sub)
    return t0, t1, dt0, eqx.tree_at(lambda s: s.subs, saveat, subs)


def final_result(
    result: diffrax.RESULTS, valid: Bool[Array, ""], stiff: Bool[Array, ""] = False
) -> RESULTS:
    """The solve's result as a `RESULTS` code: ``invalid_hyperparameter`` where not valid,
    ``stiff`` where an explicit solver's stiffness check ended it."""
    result = RESULTS.where(stiff, RESULTS.stiff, RESULTS.promote(result))
    return RESULTS.where(valid, result, RESULTS.invalid_hyperparameter)


def _all_finite(tree) -> Bool[Array, ""]:
    leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _init(controller, terms, t0, t1, y0, dt0, args, func, error_order):
    t1, state = controller.init(terms, t0, t1, y0, dt0, args, func, error_order)
    return t1, (state, jnp.array(0, jnp.int32), jnp.array(0, jnp.int32))


def _adapt(controller, patience, t0, t1, y0, y1, args, y_error, error_order, guard_state):
    """The wrapped controller's decision, with ``nonfinite`` when the state turned
    non-finite (accepted so, or ``patience`` candidates in a row non-finite) and
    ``dt_min_reached`` after ``patience`` steps in a row below 4 float spacings of t."""
    state, bad, small = guard_state
    keep, next_t0, next_t1, jump, state, result = controller.adapt_step_size(
        t0, t1, y0, y1, args, y_error, error_order, state
    )
    finite = _all_finite(y1)
    bad = jnp.where(finite, 0, bad + 1)
    resolution = 4 * jnp.finfo(jnp.result_type(next_t0)).eps * jnp.abs(next_t0)
    small = jnp.where(next_t1 - next_t0 <= resolution, small + 1, 0)
    nonfinite = (keep & ~finite) | (bad >= patience) | ~_all_finite(y0)
    okay = diffrax.is_okay(result)
    result = diffrax.RESULTS.where(okay & nonfinite, diffrax.RESULTS.nonfinite, result)
    stalled = okay & ~nonfinite & (small >= patience)
    result = diffrax.RESULTS.where(stalled, diffrax.RESULTS.dt_min_reached, result)
    return keep, next_t0, next_t1, jump, (state, bad, small), result


class AdaptiveGuard(diffrax.AbstractAdaptiveStepSizeController):
    """Wraps an adaptive step-size controller (every step as it decides) and ends the solve
    with ``nonfinite`` when the accepted state is non-finite, or after ``patience``
    consecutive candidate states were (the step shrank by the controller's factor each time,
    5¹² for the default PID, and still overflowed); with ``dt_min_reached`` after
    ``patience`` consecutive steps below 4 float spacings of t (a solution blowing up in
    finite time, which no step can pass).

    Forwards ``rtol``/``atol``/``norm``, so that implicit solvers take their tolerances from
    the wrapped controller as before.
    """

    controller: diffrax.AbstractAdaptiveStepSizeController
    patience: int = eqx.field(static=True, default=NONFINITE_PATIENCE)

    @property
    def rtol(self):
        return self.controller.rtol

    @property
    def atol(self):
        return self.controller.atol

    @property
    def norm(self):
        return self.controller.norm

    def wrap(self, direction):
        return AdaptiveGuard(self.controller.wrap(direction), self.patience)

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        return _init(self.controller, terms, t0, t1, y0, dt0, args, func, error_order)

    def adapt_step_size(self, t0, t1, y0, y1_candidate, args, y_error, error_order, state):
        return _adapt(
            self.controller, self.patience, t0, t1, y0, y1_candidate, args, y_error,
            error_order, state,
        )  # fmt: skip


class FixedGuard(diffrax.AbstractStepSizeController):
    """`AdaptiveGuard` for a fixed-step controller (``ConstantStepSize``, ``StepTo``), which
    accepts every step: a non-finite state ends the solve with ``nonfinite``."""

    controller: diffrax.AbstractStepSizeController
    patience: int = eqx.field(static=True, default=NONFINITE_PATIENCE)

    def wrap(self, direction):
        return FixedGuard(self.controller.wrap(direction), self.patience)

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        return _init(self.controller, terms, t0, t1, y0, dt0, args, func, error_order)

    def adapt_step_size(self, t0, t1, y0, y1_candidate, args, y_error, error_order, state):
        return _adapt(
            self.controller, self.patience, t0, t1, y0, y1_candidate, args, y_error,
            error_order, state,
        )  # fmt: skip


def guarded(controller: diffrax.AbstractStepSizeController) -> diffrax.AbstractStepSizeController:
    """``controller`` wrapped in an `AdaptiveGuard` or a `FixedGuard`."""
    if isinstance(controller, diffrax.AbstractAdaptiveStepSizeController):
        return AdaptiveGuard(controller)
    return FixedGuard(controller)
