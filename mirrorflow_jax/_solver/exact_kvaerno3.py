r"""An implicit Runge–Kutta solver for the exact steepest flow with 1 < q < 2, whose Newton
iteration runs in the velocity, where the flow is C¹.

At ε = 0 the velocity of factor entry i is u_i = φ_q(∂F/∂w_i), φ_q(g) = sign(g)|g|^(q−1):
non-Lipschitz at g = 0, so an explicit method's steps shrink wherever a gradient entry
passes 0 (about 130k Tsit5 steps at rtol 1e-8 on benchmarks/bench_sweep.py's problem), and a
Rosenbrock method would need φ_q', infinite there. The inverse ψ(u) = sign(u)|u|^(1/(q−1)) is
C¹ with ψ'(0) = 0. Both smoothing placements are the same map at ε = 0
(φ_q(g·P) = φ_q(g)·φ_q(P)), so every factor entry has one velocity and an ESDIRK stage
Z = s(B − a·u) solves

    G(u) = ψ(u) − ∂F/∂w(Z(u)) = 0

by Newton's method with the matrix diag(ψ'(u)) + s·a·∂²F/∂w², block diagonal plus rank r
(`BlockLowRankOperator`, solved by Woodbury).
"""

import dataclasses
import functools
from typing import ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np

from .._flow import FlowArgs, SteepestFlow
from .._models import AbstractReparam
from .._problems import AbstractFactoredLoss
from .._validate import check_int, check_range, is_concrete
from .base import NEWTON_RTOL, AbstractFlowSolver, newton_tolerances, unset_tolerances
from .linear import BlockLowRankOperator, woodbury_solve
from .rows import linearized_rows, rows as _rows, unrows as _unrows


def _coefficients(tableau):
    """(number of stages, γ, A, c, b_error) of a stiffly accurate ESDIRK tableau: row i of A
    holds the coefficients of stages 0..i−1 in stage i's base point (the diagonal is γ)."""
    stages = len(tableau.c) + 1
    a_lower = np.zeros((stages, stages))
    for i, row in enumerate(tableau.a_lower):
        a_lower[i + 1, : len(row)] = row
    times = np.concatenate([[0.0], tableau.c])
    return stages, float(tableau.a_diagonal[1]), a_lower, times, np.asarray(tableau.b_error)


# The tolerances of the Newton test where neither the solver nor the controller gives any.


def _unsupported(flow, params, loss) -> str | None:
    """Why `PowerFlowKvaerno3` cannot take the solve (naming the alternative), or None; q and
    ε are judged where they are concrete (traced ones are checked at run time)."""
    if not isinstance(flow, SteepestFlow):
        return "it solves a SteepestFlow through `solve_flow`; use diffrax.Tsit5() otherwise."
    if not isinstance(params, AbstractReparam) or not params.separable:
        return (
            "it needs a separable toolkit model (an AbstractReparam declaring separable = "
            f"True, such as SignedDeepDiagonal); got params of type {type(params).__name__}. "
            "Use diffrax.Tsit5() (or solver='auto') for other parameters."
        )
    if not isinstance(loss, AbstractFactoredLoss):
        return (
            "it needs an AbstractFactoredLoss, with `hessian_factor(x)` (LeastSquares, "
            "LinearClassification, ScalarToy); use diffrax.Tsit5() (or solver='auto') otherwise."
        )
    q, eps = flow.geometry.q, flow.geometry.eps
    if is_concrete(q) and not np.all((np.asarray(q) > 1) & (np.asarray(q) < 2)):
        return (
            f"it needs geometry.q in the open interval (1, 2); got {np.asarray(q)}. Use "
            "`SignFlowKvaerno3` or `Rodas4` for q = 1 with eps > 0, diffrax.Tsit5() for q = 2 "
            "or the exact sign flow (or solver='auto')."
        )
    if is_concrete(eps) and not np.all(np.asarray(eps) == 0):
        return (
            f"it needs geometry.eps = 0 (the exact map); got {np.asarray(eps)}. Use `Rodas4` "
            "(or solver='auto') for a smoothed map."
        )
    return None


def _inverse_map(u, q):
    """ψ(u) = sign(u)|u|^p and ψ'(u) = p|u|^(p−1), p = 1/(q − 1) > 1 (both 0 at u = 0)."""
    size = jnp.abs(u)
    nonzero = size > 0
    logs = jnp.log(jnp.where(nonzero, size, 1.0))
    power = 1 / (q - 1)
    value = jnp.where(nonzero, jnp.sign(u) * jnp.exp(power * logs), 0.0)
    slope = jnp.where(nonzero, power * jnp.exp((power - 1) * logs), 0.0)
    return value, slope


def _valid(geometry):
    """Whether (q, ε) is in this solver's range: 1 < q < 2, ε = 0."""
    return (geometry.q > 1) & (geometry.q < 2) & (geometry.eps == 0)


class AbstractPowerFlowESDIRK(AbstractFlowSolver):
    """The velocity-Newton ESDIRK of `PowerFlowKvaerno3` for a stiffly accurate ESDIRK
    tableau (class variables ``tableau`` and ``method_order``: the local error estimate is
    of order ``method_order``)."""

    tableau: eqx.AbstractClassVar[diffrax.ButcherTableau]
    method_order: eqx.AbstractClassVar[int]
    rtol: float | None = eqx.field(static=True, default=None)
    atol: float | None = eqx.field(static=True, default=None)
    newton_tol: float = eqx.field(static=True, default=0.1)
    max_newton: int = eqx.field(static=True, default=10)

    term_structure = diffrax.AbstractTerm
    interpolation_cls = diffrax.ThirdOrderHermitePolynomialInterpolation

    def __check_init__(self):
        if self.rtol is not None:
            check_range("rtol", self.rtol, 0.0)
        if self.atol is not None:
            check_range("atol", self.atol, 0.0)
        check_range("newton_tol", self.newton_tol, 0.0, 1.0, lo_open=True)
        check_int("max_newton", self.max_newton, 1)

    def unsupported(self, flow, params, loss) -> str | None:
        reason = _unsupported(flow, params, loss)
        return reason if reason is not None else self._precision_problem(params)

    def _precision_problem(self, params) -> str | None:
        """Why the tolerance is too tight for the state's dtype (the Newton test,
        ``newton_tol·rtol`` relative, must lie above twice its resolution), or None."""
        dtypes = [jnp.result_type(leaf) for leaf in jax.tree.leaves(params)]
        dtype = functools.reduce(jnp.promote_types, dtypes, jnp.asarray(0.0).dtype)
        lowest = 2 * float(jnp.finfo(dtype).eps) / self.newton_tol
        if self._rtol < lowest:
            return (
                f"rtol={self._rtol:g} is below what {dtype} resolves: its Newton test needs "
                f"rtol >= {lowest:.2g} (at newton_tol {self.newton_tol:g}). Pass a looser "
                'rtol, or run in float64 (jax.config.update("jax_enable_x64", True)).'
            )
        return None

    def resolve(self, flow, params, loss, controller) -> "PowerFlowKvaerno3":
        """This solver with its tolerances taken from ``controller`` where left None."""
        changes = unset_tolerances(self, controller)
        return dataclasses.replace(self, **changes) if changes else self

    @property
    def _rtol(self) -> float:
        return NEWTON_RTOL if self.rtol is None else self.rtol

    def order(self, terms):
        return self.method_order

    def error_order(self, terms):
        # The embedded estimate is of order one less, so the local error it measures is
        # O(h^method_order).
        return self.method_order

    def init(self, terms, t0, t1, y0, args):
        if not isinstance(args, FlowArgs):
            raise ValueError(
                f"`{type(self).__name__}` solves a SteepestFlow through `solve_flow` (args must "
                "be FlowArgs); use diffrax.Tsit5() for other flows."
            )
        self.check_setup(args.flow, y0, args.loss)
        # diffrax solves t1 < t0 as t ↦ −t with the sign in the control.
        return eqx.error_if(
            self._first_stage(t0, y0, args),
            terms.contr(t0, t1) < 0,
            f"{type(self).__name__} integrates forward in time only (t1 > t0).",
        )

    def _first_stage(self, t0, y0, args):
        """(velocity rows, u) at (t0, y0), evaluated afresh."""
        flow = args.flow
        dim = y0().shape[0]
        u0 = flow.geometry.exact(_rows(jax.grad(flow.objective)(y0, args.loss), dim))
        return -u0 - flow.decay_rate(t0) * _rows(y0, dim), u0

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)

    def _newton(self, base, step, shrink, like, args, u0, active):
        """Solve the stage equation ψ(u) = ∂F/∂w(s(B − a·u)) from u0; returns u and whether
        the iteration converged. Does not iterate unless ``active``."""
        flow, loss = args.flow, args.loss
        q = flow.geometry.q
        slope = shrink * step
        rtol, atol = newton_tolerances(self, args)

        def point(u):
            return shrink * (base - step * u)

        def gradient(model, loss_):
            return jax.grad(flow.objective)(model, loss_)

        def iterate(carry):
            u, count, before, _ = carry
            z = point(u)
            g, hessian = linearized_rows(gradient, _unrows(z, like), loss)
            psi, dpsi = _inverse_map(u, q)
            eye = jnp.eye(hessian.blocks.shape[1], dtype=u.dtype)
            # An entry at u = 0 exactly with no curvature (a padding row, whose gradient is
            # identically 0) would make its block singular: its ψ' counts as 1 in the matrix,
            # where any value leaves the root alone.
            diagonal = jnp.where(dpsi > 0, dpsi, 1.0)
            matrix = BlockLowRankOperator(
                slope * hessian.blocks + eye[None] * diagonal.T[:, :, None],
                slope * hessian.left,
                hessian.right,
                hessian.factor,
            )
            du = -woodbury_solve(matrix, psi - g)
            # Where ψ' dominates the entry's own curvature the equation is nearly linear in
            # the gradient: take φ_q of the predicted gradient; elsewhere the step in u.
            curvature = slope * jnp.abs(lx.diagonal(hessian).reshape(u.shape))
            u_new = jnp.where(dpsi > curvature, flow.geometry.exact(psi + dpsi * du), u + du)
            weight = slope / (atol + rtol * jnp.abs(z))
            change = jnp.max(weight * jnp.abs(u_new - u))
            # Remaining error of a contracting iteration: θ/(1 − θ) times the last change,
            # θ the observed contraction (Hairer & Wanner, §IV.8).
            rate = change / before
            contracting = jnp.isfinite(before) & (rate < 1)
            remaining = jnp.where(contracting, rate / (1 - rate) * change, change)
            return u_new, count + 1, change, jnp.minimum(change, remaining)

        def unfinished(carry):
            _, count, _, remaining = carry
            return active & (count < self.max_newton) & ~(remaining <= self.newton_tol)

        def solve(_, guess):
            inf = jnp.asarray(jnp.inf, guess.dtype)
            u, _, _, remaining = jax.lax.while_loop(unfinished, iterate, (guess, 0, inf, inf))
            return u, jnp.where(remaining <= self.newton_tol, 1.0, 0.0).astype(guess.dtype)

        def residual(u):
            return _inverse_map(u, q)[0] - _rows(
                gradient(_unrows(point(u), like), loss), u.shape[1]
            )

        def tangent_solve(linear, rhs):
            operator = lx.FunctionLinearOperator(linear, jax.eval_shape(lambda: rhs))
            return lx.linear_solve(operator, rhs, lx.LU(), throw=False).value

        # Derivatives of the root by the implicit function theorem, not through the iterates.
        u, converged = jax.lax.custom_root(residual, u0, solve, tangent_solve, has_aux=True)
        return u, converged > 0.5

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        flow = args.flow
        h = t1 - t0
        dim = y0().shape[0]
        w0 = _rows(y0, dim)
        dtype = w0.dtype
        stages, gamma, *coefficients = _coefficients(self.tableau)
        a_lower, times, b_error = (jnp.asarray(m, dtype) for m in coefficients)
        step = jnp.asarray(gamma, dtype) * h
        # A (q, ε) outside the range, arriving traced: no iterates, and the step ends the
        # solve with a result code (a vmapped `lax.switch` of `solver="auto"` also runs this
        # solver for members another one takes; those are discarded).
        valid = _valid(flow.geometry)

        # First same as last: the explicit stage reuses the previous step's last stage.
        field0, u0 = jax.lax.cond(
            made_jump, lambda: self._first_stage(t0, y0, args), lambda: solver_state
        )
        fields = jnp.zeros((stages, *w0.shape), dtype).at[0].set(field0)

        def stage(i, carry):
            fields, _, u, ok = carry
            base = w0 + h * jnp.tensordot(a_lower[i], fields, 1)
            rate = flow.decay_rate(t0 + times[i] * h)
            shrink = 1 / (1 + step * rate)
            u, converged = self._newton(base, step, shrink, y0, args, u, ok)
            z = shrink * (base - step * u)
            fields = fields.at[i].set(-u - rate * z)
            return fields, z, u, ok & converged

        fields, w1, u1, ok = jax.lax.fori_loop(
            1, stages, stage, (fields, w0, u0, valid & jnp.all(jnp.isfinite(u0)))
        )
        error = h * jnp.tensordot(b_error, fields, 1)
        nonfinite = ~jnp.all(jnp.isfinite(w1))
        failed = ~ok | nonfinite
        # A failed step reports it: an adaptive controller rejects it (its error is inf) and
        # diffrax then ignores the code; under a constant step it ends the solve. An invalid
        # (q, ε) is an accepted step (error 0) that keeps y0 and ends the solve with its code.
        result = diffrax.RESULTS.where(
            nonfinite,
            diffrax.RESULTS.nonfinite,
            diffrax.RESULTS.where(
                ok, diffrax.RESULTS.successful, diffrax.RESULTS.nonlinear_divergence
            ),
        )
        error = jnp.where(failed & valid, jnp.inf, jnp.where(valid, error, 0.0))
        y1 = _unrows(jnp.where(failed, w0, w1), y0)
        last = jnp.where(failed, field0, fields[-1])
        dense_info = dict(y0=y0, y1=y1, k0=_unrows(h * field0, y0), k1=_unrows(h * last, y0))
        return y1, _unrows(error, y0), dense_info, (last, jnp.where(failed, u0, u1)), result


class PowerFlowKvaerno3(AbstractPowerFlowESDIRK):
    r"""Kvaerno's ESDIRK method of order 3 (embedded order 2, L-stable, stiffly accurate) for
    the exact steepest flow with 1 < q < 2, each stage's equation solved by Newton's method
    in the velocity. Pass it as ``solver=`` (``solver="auto"`` takes `PowerFlowKvaerno5`: from
    a saddle init, over the smooth plateau, order 3 costs 20–45× more steps than order 5).

    The flow dw/dt = −u − α(t)·w with u_i = φ_q(∂F/∂w_i) = sign·|∂F/∂w_i|^(q−1) (the same
    for both smoothing placements at ε = 0; F includes the coupled decay β) is continuous
    but not Lipschitz where a gradient entry passes 0. In the velocity it is: with
    ψ = φ_q⁻¹, ψ(u) = sign(u)|u|^(1/(q−1)) is C¹ and ψ'(0) = 0. A stage Z = s(B − a·u)
    (a = γh, s = 1/(1 + a·α)) solves

        G(u) = ψ(u) − ∂F/∂w(Z(u)) = 0,    ∂G/∂u = diag(ψ'(u)) + s·a·∂²F/∂w²,

    the Hessian being block diagonal (one R×R block per coordinate, R factor entries) plus
    the loss Hessian C Cᵀ seen through the model: d small block inverses and one r×r solve
    per iterate (Woodbury), re-linearized at every iterate.

    Each iterate's linear step Δu predicts both a velocity u + Δu and a gradient
    ψ(u) + ψ'(u)·Δu. An entry where the iterate's ψ'(u) dominates its Hessian diagonal
    s·a·|∂²F/∂w_i²| (a small step, or an entry the loss does not hold) takes φ_q of the
    predicted gradient, where the stage equation is almost linear; the others take u + Δu.
    Newton's method in u alone would overshoot from near u = 0 (where ψ' → 0) and then
    approach the root at the rate 1 − (q − 1) per iterate. The iteration stops when the
    estimated remaining change of every entry (the last change, times θ/(1 − θ) once a
    contraction θ < 1 is observed) moves Z by at most ``newton_tol`` of ``atol + rtol·|Z|``;
    if it has not after ``max_newton`` iterates the step is rejected. The explicit first
    stage reuses the previous step's last stage (first same as last).

    Works under ``jit`` and ``vmap`` (q may be traced) and differentiation (the stage roots
    by the implicit function theorem, ``jax.lax.custom_root``), with padded models (their
    padding rows, u = 0 without curvature, stay in place). Forward in time only.

    Needs a `SteepestFlow` with geometry ``Lp(q, 0)``, 1 < q < 2, a separable toolkit model
    and an `AbstractFactoredLoss`, inside `solve_flow`; decoupled decay (constant or
    scheduled) and coupled decay. Anything else raises a ValueError naming the solver to use
    instead. A q or ε that arrives traced (swept, or through ``jit``/``vmap``) and out of
    range ends the solve at its first step with the result ``nonlinear_divergence``, its stage
    equation having no meaning there (a result code rather than an error, so that members
    of a vmapped ``solver="auto"`` that another solver takes pass through it harmlessly).

    **Fields:** ``rtol``, ``atol`` the tolerances the Newton test is relative to: None (the
    default) takes them from the step-size controller in `solve_flow` (1e-8 and 1e-10 where
    it has none); ``newton_tol`` in (0, 1]; ``max_newton`` ≥ 1 iterates per stage.

    **Example:**

    ```python
    import jax
    import mirrorflow_jax as mf

    jax.config.update("jax_enable_x64", True)
    problem = mf.sparse_regression(jax.random.key(0), n=10, d=20, k=3)
    model = mf.SignedDeepDiagonal.scaled(1e-2, depth=3, dim=20)
    flow = mf.SteepestFlow(mf.Lp(1.5))
    sol = mf.solve_flow(flow, model, problem, t1=20.0, solver=mf.PowerFlowKvaerno3())
    assert bool(sol.ok)
    ```
    """

    tableau: ClassVar[diffrax.ButcherTableau] = diffrax.Kvaerno3.tableau
    method_order: ClassVar[int] = 3


class PowerFlowKvaerno5(AbstractPowerFlowESDIRK):
    r"""`PowerFlowKvaerno3`'s algorithm with Kvaerno's ESDIRK method of order 5 (embedded
    order 4, L-stable, stiffly accurate; 7 stages): the same stage equations, Newton
    iteration, checks and options, fewer steps where the flow is smooth at tight tolerances
    (benchmarks/README.md, "bench_exact_q.py"). What ``solver="auto"`` takes for the exact
    maps with 1 < q < 2 on a separable toolkit model under a factored loss.

    **Fields:** ``rtol``, ``atol`` the tolerances the Newton test is relative to: None (the
    default) takes them from the step-size controller in `solve_flow` (1e-8 and 1e-10 where
    it has none); ``newton_tol`` in (0, 1]; ``max_newton`` ≥ 1 iterates per stage.

    **Example:**

    ```python
    import jax
    import mirrorflow_jax as mf

    jax.config.update("jax_enable_x64", True)
    problem = mf.sparse_regression(jax.random.key(0), n=10, d=20, k=3)
    model = mf.SignedDeepDiagonal.scaled(1e-2, depth=3, dim=20)
    flow = mf.SteepestFlow(mf.Lp(1.5))
    sol = mf.solve_flow(flow, model, problem, t1=20.0, solver=mf.PowerFlowKvaerno5())
    assert bool(sol.ok)
    ```
    """

    tableau: ClassVar[diffrax.ButcherTableau] = diffrax.Kvaerno5.tableau
    method_order: ClassVar[int] = 5
