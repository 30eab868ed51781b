"""`solve_flow`: integrate a `SteepestFlow` with diffrax and monitor the trajectory."""

import abc
import functools

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import optimistix as optx
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from . import _guard, _resources
from ._custom_types import Loss, Params, ScalarLike
from ._flow import AbstractFlow, FlowArgs
from ._geometry import Lp
from ._loss import traced_closure
from ._models import AbstractReparam, effective_weights
from ._problems import AbstractLoss
from ._solver.auto import solver_choice
from ._solver.stiffness import StiffnessCheck, is_stiff
from ._validate import as_float, check_int, check_params, check_range, check_times, is_concrete


class EventNewton(optx.AbstractRootFinder):
    """Newton's method for locating an event time, which also stops once the time is resolved
    to float precision.

    optimistix's Newton stops when both the update and the event function are within
    ``atol``/``rtol``; at large times (measured: escape times ≳ 1e8 at tolerance 1e-10) the event
    function cannot get within ``atol`` of 0, because the float spacing of t times its slope
    is larger than ``atol``, and the root find would report failure although t is exact. This
    one runs ``optimistix.Newton``'s iteration and also stops, successfully, when the last
    update is at most ``ulps`` float spacings of t.

    **Arguments:** ``rtol``, ``atol``, ``norm``, ``kappa``, ``linear_solver`` (None: Newton's
    default), ``cauchy_termination`` as for ``optimistix.Newton``; ``ulps`` ≥ 1 (default 64),
    the update size, in float spacings of t, below which t counts as resolved.

    **Fields:** ``newton``, the ``optimistix.Newton`` built from those arguments, and ``ulps``.
    """

    newton: optx.Newton
    ulps: float

    def __init__(
        self,
        rtol: float,
        atol: float,
        norm=optx.max_norm,
        kappa: float = 1e-2,
        linear_solver: lx.AbstractLinearSolver | None = None,
        cauchy_termination: bool = True,
        ulps: float = 64.0,
    ):
        check_range("ulps", ulps, 1.0)
        if linear_solver is None:  # optimistix.Newton's default
            linear_solver = lx.AutoLinearSolver(well_posed=None)
        self.newton = optx.Newton(
            rtol, atol, norm, kappa, linear_solver, cauchy_termination=cauchy_termination
        )
        self.ulps = ulps

    @property
    def rtol(self):
        return self.newton.rtol

    @property
    def atol(self):
        return self.newton.atol

    @property
    def norm(self):
        return self.newton.norm

    def init(self, fn, y, args, options, f_struct, aux_struct, tags):
        return self.newton.init(fn, y, args, options, f_struct, aux_struct, tags)

    def step(self, fn, y, args, options, state, tags):
        return self.newton.step(fn, y, args, options, state, tags)

    def terminate(self, fn, y, args, options, state, tags):
        done, result = self.newton.terminate(fn, y, args, options, state, tags)
        spacing = jnp.finfo(jnp.result_type(y)).eps * jnp.maximum(jnp.abs(y), self.atol)
        resolved = jnp.all(jnp.abs(state.diff) <= self.ulps * spacing)
        return done | (resolved & (state.result == optx.RESULTS.successful)), result

    def postprocess(self, fn, y, aux, args, options, state, tags, result):
        return self.newton.postprocess(fn, y, aux, args, options, state, tags, result)


class AbstractEscape(eqx.Module):
    """An escape condition: a continuous function of the state, positive before the escape and
    crossing zero at it, so that diffrax's root finder locates (and differentiates) its time."""

    @abc.abstractmethod
    def __call__(self, x: Params, value: Array, value0: Array) -> Float[Array, ""]:
        """Evaluate at effective weights ``x`` (an array for toolkit models; the parameter
        PyTree itself for any other params) with loss ``value`` (initial loss ``value0``)."""


class LossBelow(AbstractEscape):
    """Escape when f(x(t)) falls to ``fraction`` · f(x(0)).

    The event function is f(x) − fraction·f(x(0)), which crosses zero at the escape.

    **Arguments:** ``fraction`` in (0, 1) (default 1/2).
    """

    fraction: Array

    def __init__(self, fraction: ScalarLike = 0.5):
        if is_concrete(fraction) and not 0 < float(fraction) < 1:
            raise ValueError(f"`fraction` must lie in (0, 1); got {float(fraction):g}.")
        self.fraction = as_float(fraction)

    def __call__(self, x, value, value0):
        return value - self.fraction * value0


class NormAbove(AbstractEscape):
    """Escape when max_j |x_j(t)| reaches ``threshold`` (e.g. 1/2 on the scalar toy).

    The event function is threshold − ‖x‖_∞, which crosses zero at the escape; for a PyTree
    of parameters (a dict of arrays, …) ‖x‖_∞ is the largest |entry| over all its leaves.

    **Arguments:** ``threshold`` > 0 (default 1/2).
    """

    threshold: Array

    def __init__(self, threshold: ScalarLike = 0.5):
        if is_concrete(threshold) and not float(threshold) > 0:
            raise ValueError(f"`threshold` must lie in (0, inf); got {float(threshold):g}.")
        self.threshold = as_float(threshold)

    def __call__(self, x, value, value0):
        largest = [jnp.max(jnp.abs(leaf)) for leaf in jax.tree.leaves(x)]
        return self.threshold - functools.reduce(jnp.maximum, largest)


class FlowSolution(eqx.Module):
    """The result of `solve_flow` (batched along leading axes when vmapped).

    **Fields:**

    - ``ts``: save times, shape (T,). When a terminating event fires or the solve runs out
      of ``max_steps``, a final save at t1 (``SaveAt(t1=True)``) is written in the first slot
      after the last save time reached, holding the time reached, and every later slot holds
      ``inf`` (e.g. ``[0, 2.3, inf, …]`` for ``ts=[0, 20, 40, …], t1=True`` and an event at
      2.3); select the saved states with ``jnp.isfinite(ts)``.
    - ``params``: the parameter PyTree at ``ts`` (leading axis T).
    - ``x``: effective weights at ``ts``, shape (T, dim) (for plain PyTree params, the params
      themselves, leading axis T).
    - ``loss``: f(x) at ``ts``, shape (T,) (without the coupled weight-decay term).
    - ``balance``: |w_i|^q − |w_1|^q at ``ts`` for toolkit models (leading axis T), else None.
    - ``event_time``: the escape time located by root finding; ``inf`` if no event fired or
      none was asked for. Differentiable.
    - ``num_steps``: accepted + rejected solver steps.
    - ``result``: a `RESULTS` code (diffrax's codes plus ``invalid_hyperparameter``, for a
      traced hyperparameter out of range: not run, every ``ts`` inf); ``nonfinite`` when the
      state turned NaN/inf, ``dt_min_reached`` when steps fell below the resolution of t (a
      finite-time blow-up); see ``ok``.
    - ``geometry``: the flow's `Lp` geometry (q, ε, smoothing kind), or None for flows
      without one; ``smoothing_at``: "naive" or "structured" (None without a geometry).
      ``q``, ``eps`` and ``smoothing`` are shortcuts into ``geometry``.
    - ``solver``: the name of the solver that ran (e.g. ``"SignFlowKvaerno3"``), or, where
      ``solver="auto"`` chose per member because q or ε was traced, the candidates' names
      joined by ``"|"``; ``solver_index``: which of them ran (0 for a single solver).
    """

    ts: Float[Array, " T"]
    params: Params
    x: Array
    loss: Float[Array, " T"]
    balance: Array | None
    event_time: Float[Array, ""]
    num_steps: Int[Array, ""]
    result: _guard.RESULTS
    solver_index: Int[Array, ""]
    geometry: Lp | None
    smoothing_at: str | None = eqx.field(static=True)
    solver: str = eqx.field(static=True)

    @property
    def q(self) -> Array | None:
        return None if self.geometry is None else self.geometry.q

    @property
    def eps(self) -> Array | None:
        return None if self.geometry is None else self.geometry.eps

    @property
    def smoothing(self) -> str | None:
        return None if self.geometry is None else self.geometry.smoothing

    @property
    def ok(self) -> Bool[Array, "..."]:
        """True where the solve reached t1 or stopped at its event."""
        return _guard.is_okay(self.result)


def _vector_field(t, y, args: FlowArgs):
    return args.flow(t, y, args.loss)


def _escape_cond(escape):
    def cond_fn(t, y, args: FlowArgs, **kwargs):
        x = effective_weights(args.flow.params_of(y))
        return escape(x, args.loss(x), args.value0)

    return cond_fn


def _as_saveat(saveat) -> diffrax.SaveAt:
    if saveat is None:
        return diffrax.SaveAt(t0=True, t1=True)
    if isinstance(saveat, diffrax.SaveAt):
        if not isinstance(saveat.subs, diffrax.SubSaveAt) or saveat.dense:
            raise ValueError(
                "`saveat` must save one set of times (no `subs` PyTree, no `dense`); pass "
                "an array of times or diffrax.SaveAt(ts=..., t0=..., t1=...)."
            )
        return saveat
    return diffrax.SaveAt(ts=as_float(saveat))


_SAVE_SLACK_ULPS = 16
DEFAULT_CONTROLLER = diffrax.PIDController(rtol=1e-8, atol=1e-10)


def _save_slack(dtype, t0, t1, xp=jnp):
    """How far outside [t0, t1] a save time may round (``_SAVE_SLACK_ULPS`` float spacings
    of the interval's larger end) and still count as the end itself (``xp=np`` for concrete
    values: jnp operations are staged out inside an enclosing trace)."""
    return _SAVE_SLACK_ULPS * xp.finfo(dtype).eps * xp.maximum(xp.abs(t0), xp.abs(t1))


def _snap_save_times(ts, t0, t1):
    """Save times that round a hair outside [t0, t1] (e.g. ``jnp.arange(k) * (t1 / (k - 1))``)
    moved onto the interval's end. Inside a jitted or vmapped caller (a sweep over t1) they
    cannot be checked beforehand, and diffrax would stop the whole program at run time."""
    slack = _save_slack(ts.dtype, t0, t1)
    ts = jnp.where((ts > t1) & (ts <= t1 + slack), t1, ts)
    return jnp.where((ts < t0) & (ts >= t0 - slack), t0, ts)


def _check_setup(flow, params0, loss, t0, t1, saveat, max_steps):
    if not isinstance(flow, AbstractFlow):
        raise ValueError(
            f"`flow` must be an AbstractFlow such as SteepestFlow; got {type(flow).__name__}."
        )
    if not callable(loss):
        raise ValueError("`loss` must be a callable f(x) -> scalar (e.g. LeastSquares).")
    check_int("max_steps", max_steps, 1)
    if is_concrete((t0, t1)) and not float(t1) > float(t0):
        raise ValueError(f"`t1` must lie in (t0, inf) = ({float(t0):g}, inf); got {float(t1):g}.")
    check_params("params0", params0)
    save_ts = saveat.subs.ts
    if save_ts is not None and is_concrete((save_ts, t0, t1)):
        ts = np.asarray(save_ts)
        slack = _save_slack(ts.dtype, float(t0), float(t1), np) if ts.size else 0.0
        outside = ts.size and (ts.min() < float(t0) - slack or ts.max() > float(t1) + slack)
        if outside or np.any(np.diff(ts) < 0):
            raise ValueError(f"`saveat` times must be non-decreasing and lie in [{t0}, {t1}].")
    flow.smoothing_for(params0)
    dim = loss.dim if isinstance(loss, AbstractLoss) else None
    x_shape = getattr(jax.eval_shape(effective_weights, params0), "shape", None)
    if dim is not None and x_shape is not None and x_shape != (dim,):
        raise ValueError(
            f"`params0` gives effective weights of shape {x_shape} but `loss` expects shape "
            f"({dim},): the model's `dim` must equal the data's d."
        )


def solve_flow(
    flow: AbstractFlow,
    params0: Params,
    loss: Loss,
    t1: ScalarLike,
    *,
    t0: ScalarLike = 0.0,
    dt0: ScalarLike | None = None,
    saveat: diffrax.SaveAt | ArrayLike | None = None,
    solver: diffrax.AbstractSolver | str = "auto",
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    event: AbstractEscape | None = None,
    root_finder: optx.AbstractRootFinder | None = None,
    max_steps: int = 100_000,
    adjoint: diffrax.AbstractAdjoint | None = None,
    progress_meter: diffrax.AbstractProgressMeter | None = None,
) -> FlowSolution:
    r"""Integrate a flow from ``params0`` over [t0, t1]: the steepest flow
    dθ/dt = −φ_q^ε(∇F(θ)) − α(t)·θ of a `SteepestFlow`, or any other `AbstractFlow`
    (`MirrorFlow`, `AdamFlow`).

    **Arguments:**

    - ``flow``: a `SteepestFlow` (or any `AbstractFlow`; its state starts at
      ``flow.init(params0)`` and the solution reports ``flow.params_of(state)``).
    - ``params0``: initial parameters: a toolkit model (`DeepDiagonal`, …) or any PyTree of
      floating arrays.
    - ``loss``: f(x) of the effective weights (a `LeastSquares`, `LinearClassification`,
      `ScalarToy`, or any callable). **Compilation** is cached on everything in the call that
      is not an array, a function by identity: equinox Modules keep their data traced, and so
      do the JAX arrays a plain Python closure captures itself (``lambda x: f(x, A, b)``
      built anew for new A, b reuses the program); any other new callable compiles anew
      (seconds per call), e.g. a bound method or a closure capturing NumPy arrays.
    - ``t1`` (> ``t0``), ``t0``: the time interval.
    - ``dt0``: initial step (None lets the adaptive controller choose).
    - ``saveat``: an array of save times, a ``diffrax.SaveAt``, or None for (t0, t1). Times
      that round at most 16 float spacings outside [t0, t1] count as the ends (so
      ``jnp.arange(k) * (t1 / (k - 1))`` works with a traced t1); others raise.
    - ``solver``: ``"auto"`` (default) chooses from the flow, the model's and the loss's
      structure and q and ε (`Rodas4` for gradient flow of a toolkit model under a factored
      loss, Tsit5 for other gradient flows, `SignFlowKvaerno3` for the smoothed sign flow
      except with the naive placement at ε ≥ 1e-4, `Rodas4` for other stiff flows, Tsit5 for
      the exact maps (ε = 0); per member where q or ε is traced, docs/how-to
      "Choose a solver"); or any diffrax solver. The choice is in
      ``FlowSolution.solver``. An explicit Runge–Kutta solver (Tsit5, Dopri5) is watched for
      stiffness and ends with the result ``stiff`` when its steps stay held by stability.
    - ``stepsize_controller``: default ``PIDController(rtol=1e-8, atol=1e-10)``. That atol
      does not control the error of parameters near or below 1e-10: from initial scales
      α ≲ 1e-8 pass one with atol ≪ α (measured on the depth-3 toy at α = 1e-10: escape time
      off by 1e-3 relative with the default, by 1e-11 with atol = 1e-24).
    - ``event``: an `AbstractEscape` (`LossBelow`, `NormAbove`): the solve stops at its zero,
      located by ``root_finder`` (default `EventNewton`, tolerance 1e-10), and ``event_time`` holds
      that time, differentiable with respect to anything the solve depends on.
    - ``max_steps``: solver step budget; exhausting it is reported in ``result``, not raised.
    - ``adjoint``, ``progress_meter``: passed to ``diffrax.diffeqsolve``.

    **Returns:** a `FlowSolution`.

    Raises ValueError for a bad setup (interval, shapes, non-finite inputs) before compiling.
    """
    saveat = _as_saveat(saveat)
    check_times(t0, t1, dt0, saveat.subs.ts)
    _resources.check_solve(saveat.subs.ts, params0)
    _check_setup(flow, params0, loss, t0, t1, saveat, max_steps)
    loss = traced_closure(loss)
    if stepsize_controller is None:
        stepsize_controller = DEFAULT_CONTROLLER
    choice = solver_choice(solver, flow, params0, loss, stepsize_controller)
    return _solve(
        flow,
        params0,
        loss,
        as_float(t0),
        as_float(t1),
        None if dt0 is None else as_float(dt0),
        saveat,
        choice,
        stepsize_controller,
        event,
        EventNewton(rtol=1e-10, atol=1e-10) if root_finder is None else root_finder,
        max_steps,
        diffrax.RecursiveCheckpointAdjoint() if adjoint is None else adjoint,
        diffrax.NoProgressMeter() if progress_meter is None else progress_meter,
    )


def _tolerances(controller) -> tuple:
    """The (rtol, atol) of a step-size controller that has them (`diffrax.PIDController`),
    concrete or traced; (None, None) otherwise."""
    if isinstance(controller, diffrax.PIDController):
        return controller.rtol, controller.atol
    return None, None


@eqx.filter_jit
def _solve(
    flow,
    params0,
    loss,
    t0,
    t1,
    dt0,
    saveat,
    choice,
    controller,
    escape,
    root_finder,
    max_steps,
    adjoint,
    progress_meter,
):
    value0 = loss(effective_weights(params0))
    if saveat.subs.ts is not None:
        saveat = eqx.tree_at(lambda s: s.subs.ts, saveat, _snap_save_times(saveat.subs.ts, t0, t1))
    valid, t0, t1, dt0, saveat = _guard.check_traced(flow, t0, t1, dt0, saveat)
    diffrax_event = None
    if escape is not None:
        saveat = diffrax.SaveAt(subs=[saveat.subs, diffrax.SubSaveAt(t1=True)])
        diffrax_event = diffrax.Event(_escape_cond(escape), root_finder)

    def run(solver, flow, t0, t1, dt0, saveat):
        watch = isinstance(solver, StiffnessCheck)
        if watch and flow.geometry is not None:
            # Stiffness means trouble for the smoothed maps; the exact ones are not
            # Lipschitz at 0, which the stiffness estimate also reads as large.
            smoothed = (flow.geometry.q < 2) & (flow.geometry.eps > 0)
            solver = eqx.tree_at(lambda s: s.active, solver, smoothed)
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(_vector_field),
            solver,
            t0,
            t1,
            dt0,
            flow.init(params0),
            args=FlowArgs(flow, loss, value0, *_tolerances(controller)),
            saveat=eqx.tree_at(lambda s: s.solver_state, saveat, True) if watch else saveat,
            stepsize_controller=_guard.guarded(controller),
            event=diffrax_event,
            max_steps=max_steps,
            adjoint=adjoint,
            throw=False,
            progress_meter=progress_meter,
        )
        ts, ys = sol.ts, sol.ys
        event_time = jnp.asarray(jnp.inf, t1.dtype)
        if escape is not None:
            (ts, final_ts), (ys, _) = ts, ys
            event_time = jnp.where(sol.event_mask, final_ts[-1], event_time)
        stiff = is_stiff(solver, sol.solver_state) if watch else jnp.asarray(False)
        return ts, ys, event_time, sol.stats["num_steps"], sol.result, stiff

    geometry = flow.geometry
    if len(choice.solvers) == 1:
        index = jnp.asarray(0)
        outputs = run(choice.solvers[0], flow, t0, t1, dt0, saveat)
    else:
        # Each member runs the solver of its (q, ε). Under lax.map only that branch runs;
        # under vmap every branch does, so a branch is idle (zero steps) for the members it
        # does not solve, and costs its own members' steps only. A solver given values
        # outside its range ends with a failure code, never an error, so idle branches are safe.
        index = choice.index(geometry.q, geometry.eps)

        def branch(k):
            idle = _guard.idle(index == k, t0, t1, dt0, saveat)
            return lambda: run(choice.solvers[k], flow, *idle)

        branches = [branch(k) for k in range(len(choice.solvers))]
        outputs = jax.lax.switch(index, branches)
    ts, ys, event_time, num_steps, result, stiff = outputs
    params = jax.vmap(flow.params_of)(ys)
    x = jax.vmap(effective_weights)(params)
    balance = None
    if isinstance(params0, AbstractReparam) and geometry is not None:
        balance = jax.vmap(lambda model: model.balance(geometry.q))(params)
    return FlowSolution(
        ts=jnp.where(valid, ts, jnp.inf),  # an invalid setup reached no time
        params=params,
        x=x,
        loss=jax.vmap(loss)(x),
        balance=balance,
        event_time=event_time,
        num_steps=num_steps,
        result=_guard.final_result(result, valid, stiff),
        solver_index=index,
        solver=choice.label,
        geometry=geometry,
        smoothing_at=flow.smoothing_for(params0),
    )
