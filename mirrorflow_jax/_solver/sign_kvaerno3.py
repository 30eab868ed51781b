"""An implicit Runge–Kutta solver for the regularized sign flow whose Newton iteration runs in
the velocity, so that its cost hardly grows as ε shrinks.

With the structure-preserving smoothing at q = 1, every factor of coordinate j moves with one
scalar velocity: dw_i/dt = −sign(P_i)·u_j − α(t)·w_i with u = φ^ε(g), g = ∇f(x). A stage of
an implicit method therefore has d unknowns u ∈ (−1, 1)^d, not the R·d factor entries, and its
equation φ^ε(g(x(Z(u)))) = u has a Jacobian diag + rank r (r = rank of ∇²f) that one r×r
Cholesky factor solves. A Rosenbrock method linearizes once per step at the step's start,
where an entry about to enter the |g| ≲ ε layer still looks non-stiff, and steps through the
layer; here the Newton iteration re-linearizes at every iterate, in the unknowns (u, g) where
both sides of the layer are well scaled, so the step only has to resolve the trajectory's
kink, not the layer (benchmarks/README.md measures both).

With the naive smoothing every factor entry has its own velocity u_i = φ^ε(∂F/∂w_i), and
with the structure-preserving one and coupled weight decay β, u_i = φ^ε((∂F/∂w_i)/|∂x/∂w_i|);
the same iteration then runs on R·d unknowns, with the Jacobian of that argument in the
factors (block diagonal plus rank r, `BlockLowRankOperator`) and a Woodbury solve.

Where the structure-preserving flow is discontinuous (sign(∂x/∂w_i) is kept exact) factors can
collapse to 0 at a Filippov sliding point; the stages park them there and restart a resting
part when its velocity turns (`sliding`).

The layout follows diffrax's ESDIRK solvers: `SignFlowKvaerno3.step` runs the tableau's stages
and the error estimate, `SignFlowKvaerno3._newton` the Newton iteration of one stage, and a
stage strategy (`stages.AbstractUnknowns`: per coordinate, per entry, per entry with parking)
supplies what differs between the three kinds of unknowns.
"""

import dataclasses
import functools

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np

from .._flow import FlowArgs, SteepestFlow
from .._models import AbstractReparam, padding_mask
from .._problems import AbstractFactoredLoss
from .._validate import check_choice, check_int, check_range, is_concrete
from .base import NEWTON_RTOL, AbstractFlowSolver, newton_tolerances, unset_tolerances
from .rows import rows as _rows, unrows as _unrows
from .stages import (
    AbstractUnknowns,
    PerCoordinate,
    Stage,
    StepContext,
    per_entry,
    unknowns_for,
)

UNKNOWNS = ("auto", "coordinate", "entry")
_TABLEAU = diffrax.Kvaerno3.tableau
_STAGES = len(_TABLEAU.c) + 1
_GAMMA = float(_TABLEAU.a_diagonal[1])
# Row i: the coefficients of stages 0..i−1 in stage i's base point; the diagonal is _GAMMA.
_A_LOWER = np.zeros((_STAGES, _STAGES))
for _i, _row in enumerate(_TABLEAU.a_lower):
    _A_LOWER[_i + 1, : len(_row)] = _row
_C = np.concatenate([[0.0], _TABLEAU.c])
_B_ERROR = np.asarray(_TABLEAU.b_error)


def _unsupported(flow, params, loss, unknowns="auto") -> str | None:
    """Why `SignFlowKvaerno3` cannot take the solve (naming the alternative), or None; the
    values q, ε, β are judged where they are concrete (traced ones are checked at run
    time)."""
    if not isinstance(flow, SteepestFlow):
        return "it solves a SteepestFlow through `solve_flow`; use `Rodas4` for other flows."
    if not isinstance(params, AbstractReparam) or not params.separable:
        return (
            "it needs a separable toolkit model (AbstractReparam such as SignedDeepDiagonal); "
            f"got params of type {type(params).__name__}. Use `Rodas4` for other parameters."
        )
    if not isinstance(loss, AbstractFactoredLoss):
        return (
            "it needs an AbstractFactoredLoss, with `hessian_factor(x)` (LeastSquares, "
            "LinearClassification, ScalarToy); use `Rodas4(structure='dense')` otherwise."
        )
    geometry = flow.geometry
    checks = [
        ("geometry.q", geometry.q, lambda v: np.all(v == 1.0), "exactly 1", ""),
        ("geometry.eps", geometry.eps, lambda v: np.all(v > 0.0), "> 0", ""),
    ]
    if unknowns == "coordinate" and flow.smoothing_for(params) == "structured":
        checks.append(
            (
                "coupled_wd",
                flow.coupled_wd,
                lambda v: np.all(v == 0.0),
                "0",
                " with unknowns='coordinate' (one velocity per coordinate; pass "
                "unknowns='entry' or 'auto' for coupled decay)",
            )
        )
    for name, value, ok, valid, where in checks:
        if is_concrete(value) and not ok(np.asarray(value)):
            return f"it needs {name} {valid}{where}; got {np.asarray(value)}. Use `Rodas4` there."
    return None


def _valid(flow: SteepestFlow, unknowns: AbstractUnknowns):
    """Whether traced (swept) values lie where the solver works: q = 1, ε > 0, and β = 0
    where the stages take one velocity per coordinate. Checked inside the program without a
    callback (which would keep the program out of JAX's persistent cache): a step outside
    ends the solve with a failure code."""
    geometry = flow.geometry
    valid = (geometry.q == 1) & (geometry.eps > 0)
    if isinstance(unknowns, PerCoordinate):
        valid = valid & (flow.coupled_wd == 0)
    return valid


class SignFlowKvaerno3(AbstractFlowSolver):
    r"""Kvaerno's ESDIRK method of order 3 (embedded order 2, L-stable, stiffly accurate) for
    the regularized sign flow, with each stage's equation solved by Newton's method in the
    velocity. Pass it as ``solver=`` to `solve_flow` (or `sweep` functions).

    For q = 1 and the structure-preserving smoothing, dw_i/dt = −sign(P_i)·u_j − α(t)·w_i with
    u = φ^ε(g), g = ∇f(x), P_i = ∂x_j/∂w_i: one velocity per coordinate. A stage Z = s(B − aσu)
    (a = γh, s = 1/(1 + aα)) solves

        u = φ^ε(g(x(Z(u))))

    for u ∈ (−1, 1)^d by Newton's method on the pair (u, g̃) with g̃ → g: the linear system
    is (I + C Cᵀ diag(saκφ'(g̃))) Δg̃ = rhs with κ_j = Σ_i |P_ij| and ∇²f = C Cᵀ, one r×r
    Cholesky factor per iterate (Woodbury). With the naive smoothing the velocity is per
    factor entry, dw/dt = −u − α(t)·w with u = φ^ε(∇_w F), and the stage is solved for
    u ∈ (−1, 1)^(R×d) the same way, the linear system being (I + sa·∇²_w F·diag(φ'(g̃))) Δg̃
    = rhs, ∇²_w F block diagonal plus rank r (re-linearized at every iterate), solved by
    Woodbury with d small block inverses and one r×r solve per iterate. With the structure-
    preserving smoothing and coupled decay β (see ``unknowns``) the velocity is
    per entry too, u_i = φ^ε((∂F/∂w_i)/|∂x/∂w_i|) (= φ^{ε|∂x/∂w_i|}(∂F/∂w_i) at q = 1), and
    the same iteration runs with that argument's Jacobian.

    An entry whose g̃ jumps across the layer |g̃| ≲ ε in one iterate is restarted at its
    centre (g̃ = u = 0): the solution lies between the two sides; an entry outside |g̃| ≤ ε
    that the iterate drives past u = ±1 restarts at its current gradient when that lies
    farther out on the side it leaves to. The iteration stops when the estimated remaining
    change of every entry (the last change, times θ/(1 − θ) once a contraction rate θ < 1 is
    observed) moves Z by at most ``newton_tol`` of the tolerance ``atol + rtol·|Z|``; if it
    has not after ``max_newton`` iterates, or (per coordinate) a factor would change sign
    within the stage, the step is rejected. The explicit first stage reuses the previous
    step's last stage (first same as last): its u solved the implicit equation, while φ^ε(∇f)
    evaluated afresh would turn the tolerance-level error of the state in g into O(1) errors
    of u for entries in the layer once ε is below about ‖∇²f‖·atol.

    **Factors that collapse to 0.** The structure-preserving flow keeps sign(∂x/∂w_i)
    unsmoothed, so it is discontinuous where a factor's ∂x/∂w_i changes sign. Where the
    factors of a part of a coordinate reach 0 together and that sign flips with them (the
    balanced factors of a shrinking part at even depth, u in u⊙u), both sides push them back
    to 0: a Filippov sliding point, at which error-controlled solvers of the field (`Rodas4`,
    explicit ones) shrink their steps without end. This solver parks such entries at 0 (the
    stage lands on 0 with the velocity −B/a; their error estimate is 0, the value being
    exact), where the field's own velocity is 0, and restarts a part resting at 0 once the
    gradient would make it grow again (with one velocity per coordinate: a gradient above its
    rounding noise; decided on the stage's solved velocity, the stage being solved a second
    time where that reverses its guess), with its factors equal and of one sign: the limit of
    the balanced init α → 0, which the sign flow leaves in time O(α), and what forward Euler
    or sign descent do from a balanced init (equal factors stay equal). The continuation is
    a choice: the Filippov solution there is not unique, and a part slightly off balance
    crosses 0 one factor after the other instead (the solver follows that too). With coupled
    decay β the scaled gradient's term β·w_i/|∂x/∂w_i| jumps from +∞ to −∞ as a part passes
    0, at any depth: the decay holds the part there (the sparsity it is for), and the
    solver parks it likewise; a resting part restarts only at depth 2, where that term stays
    ±β, once |∇f| exceeds β (benchmarks/README.md, "bench_collapse.py").

    Works under ``jit``, ``vmap`` and forward- and reverse-mode differentiation (the stage
    roots are differentiated by the implicit function theorem, ``jax.lax.custom_root``).

    Needs a `SteepestFlow` with geometry ``Lp(1, eps)``, ε > 0, a separable toolkit model and
    a loss with ``hessian_factor``, inside `solve_flow`; decoupled decay (constant or
    scheduled) and coupled decay with either smoothing (a swept β: see ``unknowns``).
    Anything else raises a ValueError that names `Rodas4` as the alternative.

    **Fields:** ``rtol``, ``atol`` the tolerances the Newton test is relative to: None (the
    default) takes them from the step-size controller in `solve_flow` (1e-8 and 1e-10 where
    it has none, e.g. a constant step); ``newton_tol`` in (0, 1];
    ``max_newton`` ≥ 1 iterates per stage; ``unknowns`` for the structure-preserving
    smoothing: ``"coordinate"`` (one velocity per coordinate, no coupled decay), ``"entry"``
    (one per factor entry, any β) or ``"auto"`` (per entry when β is non-zero; settled by
    `solve_flow` while β is concrete, and per coordinate when it is traced, e.g. swept or
    passed through ``jit``, where a non-zero β then raises at run time: pass ``"entry"``
    there).

    **Example:**

    ```python
    import jax
    import mirrorflow_jax as mf

    jax.config.update("jax_enable_x64", True)
    problem = mf.sparse_regression(jax.random.key(0), n=10, d=20, k=3)
    model = mf.SignedDeepDiagonal.scaled(1e-2, depth=3, dim=20)
    flow = mf.SteepestFlow(mf.Lp(1.0, eps=1e-6))
    sol = mf.solve_flow(flow, model, problem, t1=20.0, solver=mf.SignFlowKvaerno3())
    assert float(sol.loss[-1]) < 1e-12
    ```
    """

    rtol: float | None = eqx.field(static=True, default=None)
    atol: float | None = eqx.field(static=True, default=None)
    newton_tol: float = eqx.field(static=True, default=0.1)
    max_newton: int = eqx.field(static=True, default=8)
    unknowns: str = eqx.field(static=True, default="auto")

    term_structure = diffrax.AbstractTerm
    interpolation_cls = diffrax.ThirdOrderHermitePolynomialInterpolation

    def __check_init__(self):
        if self.rtol is not None:
            check_range("rtol", self.rtol, 0.0)
        if self.atol is not None:
            check_range("atol", self.atol, 0.0)
        check_range("newton_tol", self.newton_tol, 0.0, 1.0, lo_open=True)
        check_int("max_newton", self.max_newton, 1)
        check_choice("unknowns", self.unknowns, UNKNOWNS)

    def unsupported(self, flow, params, loss) -> str | None:
        reason = _unsupported(flow, params, loss, self.unknowns)
        return reason if reason is not None else self._precision_problem(params)

    def _precision_problem(self, params) -> str | None:
        """Why the tolerance is too tight for the state's dtype, or None: the Newton test,
        ``newton_tol·rtol`` relative, must lie above twice the dtype's resolution (float32:
        rtol ≥ 2.4e-6 at the default ``newton_tol``), or the iteration could not pass it and
        every step would be rejected. The state's dtype is the parameters' promoted with the
        times' (diffrax promotes y0 so; float64 whenever jax_enable_x64 is on)."""
        dtypes = [jnp.result_type(leaf) for leaf in jax.tree.leaves(params)]
        dtype = functools.reduce(jnp.promote_types, dtypes, jnp.asarray(0.0).dtype)
        lowest = 2 * float(jnp.finfo(dtype).eps) / self.newton_tol
        rtol = NEWTON_RTOL if self.rtol is None else self.rtol
        if rtol < lowest:
            return (
                f"rtol={rtol:g} is below what {dtype} resolves: its Newton test needs rtol "
                f">= {lowest:.2g} in {dtype} (at newton_tol {self.newton_tol:g}). Pass a "
                "stepsize_controller (or SignFlowKvaerno3(rtol=..., atol=...)) with a looser "
                'rtol, or run in float64 (jax.config.update("jax_enable_x64", True)).'
            )
        return None

    def resolve(self, flow, params, loss, controller) -> "SignFlowKvaerno3":
        """This solver with its tolerances taken from ``controller`` where they were left
        None, and ``unknowns="auto"`` settled for ``flow`` and ``params`` where β is
        concrete (inside the solve β is traced)."""
        changes = unset_tolerances(self, controller)
        if self.unknowns == "auto" and is_concrete(flow.coupled_wd):
            changes["unknowns"] = "entry" if per_entry(flow, params, "auto") else "coordinate"
        return dataclasses.replace(self, **changes) if changes else self

    def order(self, terms):
        return 3

    def error_order(self, terms):
        # The embedded estimate is of order 2, so the local error it measures is O(h³).
        return 3

    def init(self, terms, t0, t1, y0, args):
        if not isinstance(args, FlowArgs):
            raise ValueError(
                "`SignFlowKvaerno3` solves a SteepestFlow through `solve_flow` (args must be "
                "FlowArgs); use `Rodas4` for other flows."
            )
        self.check_setup(args.flow, y0, args.loss)
        return self._first_stage(t0, y0, args)

    def _first_stage(self, t0, y0, args):
        """(velocity rows, u, g) at (t0, y0), evaluated afresh."""
        flow, loss = args.flow, args.loss
        dim = y0().shape[0]
        g0 = unknowns_for(flow, y0, self.unknowns).argument(flow, y0, loss)
        return _rows(flow(t0, y0, loss), dim), flow.geometry.map(g0), g0

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)

    def _newton(self, unknowns: AbstractUnknowns, like, args, stage: Stage, u0, g0, active):
        """Solve ``stage``'s equation for its ``unknowns`` from the guess (u0, g̃0); returns u,
        g̃ and whether it converged. Does not iterate unless ``active`` (False once an earlier
        stage of the step has failed: the step is rejected anyway)."""
        flow, loss = args.flow, args.loss
        rtol, atol = newton_tolerances(self, args)
        geometry = flow.geometry
        eps = geometry.eps

        def iterate(carry):
            u, g_guess, count, before, _ = carry
            g, r_u, dphi, dg, weight = unknowns.linearize(
                stage, like, args, u, g_guess, rtol, atol
            )
            g_new = g_guess + dg
            u_new = u + r_u + dphi * dg
            # An entry the linear model drives past ±1 is leaving the layer, where φ^ε's
            # linearization at g̃ holds g̃ back (each iterate would only move it a few ε
            # outwards); its gradient at the current point is the better restart when it lies
            # farther out on the side the entry leaves to. Only once |g̃| > ε: inside that
            # band g is known only to about ‖∇²f‖·atol, and at small ε (1e-10, rtol 1e-4) the
            # restart sent entries resting in the layer out of it (12× the crossings).
            leaving = (jnp.abs(u_new) >= 1) & (g * u_new > 0) & (jnp.abs(g) > jnp.abs(g_new))
            leaving = leaving & (jnp.abs(g_guess) > eps)
            g_new = jnp.where(leaving, g, g_new)
            u_new = jnp.where(jnp.abs(u_new) < 1, u_new, geometry.map(g_new))
            across = (g_guess * g_new < 0) & (jnp.abs(g_guess) > eps) & (jnp.abs(g_new) > eps)
            u_new = jnp.where(across, 0.0, u_new)
            g_new = jnp.where(across, 0.0, g_new)
            change = jnp.max(weight * jnp.abs(u_new - u))
            # Remaining error of a contracting iteration: θ/(1 − θ) times the last change,
            # θ the observed contraction (Hairer & Wanner, §IV.8); the change itself until
            # two changes are known.
            rate = change / before
            contracting = jnp.isfinite(before) & (rate < 1)
            remaining = jnp.where(contracting, rate / (1 - rate) * change, change)
            return u_new, g_new, count + 1, change, jnp.minimum(change, remaining)

        def unfinished(carry):
            _, _, count, _, remaining = carry
            return active & (count < self.max_newton) & ~(remaining <= self.newton_tol)

        def solve(_, guess):
            inf = jnp.asarray(jnp.inf, guess.dtype)
            u, g, _, _, remaining = jax.lax.while_loop(
                unfinished, iterate, (guess, g0, 0, inf, inf)
            )
            converged = jnp.where(remaining <= self.newton_tol, 1.0, 0.0)
            return u, (g, converged.astype(guess.dtype))

        def residual(u):
            return u - geometry.map(unknowns.argument(flow, _unrows(stage.point(u), like), loss))

        def tangent_solve(linear, rhs):
            structure = jax.eval_shape(lambda: rhs)
            operator = lx.FunctionLinearOperator(linear, structure)
            return lx.linear_solve(operator, rhs, lx.LU(), throw=False).value

        # Derivatives of the root by the implicit function theorem, not through the iterates
        # (reverse mode cannot pass a while loop).
        u, (g, converged) = jax.lax.custom_root(residual, u0, solve, tangent_solve, has_aux=True)
        return u, g, converged > 0.5

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        flow = args.flow
        h = t1 - t0
        dim = y0().shape[0]
        w0 = _rows(y0, dim)
        dtype = w0.dtype
        a_lower, times, b_error = (jnp.asarray(m, dtype) for m in (_A_LOWER, _C, _B_ERROR))
        step = jnp.asarray(_GAMMA, dtype) * h

        # First same as last: the explicit stage reuses the previous step's last stage, whose
        # u solved the implicit equation; a fresh φ^ε(∇f) at y0 would carry the tolerance-level
        # error of y0 in g amplified by 1/ε into the velocity of entries in the layer.
        field0, u0, g0 = jax.lax.cond(
            made_jump, lambda: self._first_stage(t0, y0, args), lambda: solver_state
        )
        unknowns = unknowns_for(flow, y0, self.unknowns)
        context = StepContext(y0, args, w0, step, _rows(padding_mask(y0), dim), dim)
        newton = functools.partial(self._newton, unknowns, y0, args)
        fields = jnp.zeros((_STAGES, *w0.shape), dtype).at[0].set(field0)

        def stage(i, carry):
            fields, _, u, g, ok, _ = carry
            base = w0 + h * jnp.tensordot(a_lower[i], fields, 1)
            t = t0 + times[i] * h
            shrink = 1 / (1 + step * flow.decay_rate(t))
            equation, z, u, g, parked, passed = unknowns.solve_stage(
                context, newton, base, shrink, u, g, ok
            )
            velocity = -equation.sign * u - flow.decay_rate(t) * z
            # Z = B + a·k: a parked entry's stage velocity is the Filippov selection −B/a.
            fields = fields.at[i].set(jnp.where(parked, -base / step, velocity))
            return fields, z, u, g, ok & passed, parked

        no_parking = jnp.zeros(w0.shape, bool)
        fields, w1, u1, g1, ok, parked = jax.lax.fori_loop(
            1, _STAGES, stage, (fields, w0, u0, g0, jnp.asarray(True), no_parking)
        )
        # A parked entry is exactly at its Filippov value 0 at t1 (it reached 0 within the step
        # and stays): no error to estimate, and it rests there (first-same-as-last velocity 0).
        error = jnp.where(parked, 0.0, h * jnp.tensordot(b_error, fields, 1))
        last = jnp.where(parked, 0.0, fields[-1])
        nonfinite = ~jnp.all(jnp.isfinite(w1))
        # Traced values out of range, or time running backwards (diffrax solves t1 < t0 as
        # t ↦ −t with the sign in the control): an accepted step (error 0) that keeps y0 and
        # ends the solve with a failure code.
        valid = _valid(flow, unknowns) & ~(terms.contr(t0, t1) < 0)
        failed = ~ok | nonfinite | ~valid
        # A failed step reports it: an adaptive controller rejects the step (its error is
        # inf) and diffrax then ignores the code; under a constant step it ends the solve.
        result = diffrax.RESULTS.where(
            nonfinite & valid,
            diffrax.RESULTS.nonfinite,
            diffrax.RESULTS.where(
                ok & valid, diffrax.RESULTS.successful, diffrax.RESULTS.nonlinear_divergence
            ),
        )
        y1 = _unrows(jnp.where(failed, w0, w1), y0)
        y_error = _unrows(jnp.where(failed & valid, jnp.inf, jnp.where(valid, error, 0.0)), y0)
        dense_info = dict(
            y0=y0,
            y1=y1,
            k0=_unrows(h * fields[0], y0),
            k1=_unrows(h * last, y0),
        )
        return y1, y_error, dense_info, (last, u1, g1), result
